#pragma once
/// \file
/// The conditional normalizing flow of HGAD (docs/algorithm.md §1.4, §2): FrEIA's AllInOne coupling
/// block (flow/all_in_one_block.hpp) with its fused CPU kernels (flow/fused_coupling.hpp), the
/// block sequence (flow/sequence_flow.hpp), the fixed rotations (flow/permutation.hpp) and the
/// 2-D positional encoding of the condition (flow/positional_encoding.hpp).

#include "flow/all_in_one_block.hpp"
#include "flow/all_in_one_options.hpp"
#include "flow/fused_coupling.hpp"
#include "flow/permutation.hpp"
#include "flow/positional_encoding.hpp"
#include "flow/sequence_flow.hpp"
