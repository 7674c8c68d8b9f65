#pragma once
/// \file
/// The reverse-mode autograd: Var and the graph (autograd/var.hpp), the differentiable ops
/// (autograd/ops.hpp) and the finite-difference gradient check (autograd/gradcheck.hpp).

#include "autograd/gradcheck.hpp"
#include "autograd/ops.hpp"
#include "autograd/var.hpp"
