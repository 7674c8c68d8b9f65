#pragma once
/// \file
/// hgad: HGAD, the hierarchical Gaussian-mixture normalizing flow for unified anomaly detection
/// (Yao et al., ECCV 2024), as a header-only C++17 library.
///
/// The umbrella header of the CPU library. Image and dataset I/O (hgad/io/, which needs stb) and the
/// CUDA backend (hgad/cuda/, included only from .cu files) are included separately.

#include "autograd.hpp"
#include "backend.hpp"
#include "cpu_backend.hpp"
#include "metrics.hpp"
#include "rng.hpp"
#include "tensor.hpp"
