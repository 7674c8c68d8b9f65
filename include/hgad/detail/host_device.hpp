#pragma once
/// \file
/// HGAD_HOST_DEVICE, the one macro that compiles a formula body for the CPU and the GPU (as
/// Eigen's EIGEN_DEVICE_FUNC), and the scalar math those bodies use.
///
/// Every formula of the method has one autograd reference (readable, citing its equation) and one
/// fast body, marked HGAD_HOST_DEVICE, that the fused CPU path, the CPU scores, the CPU backend and
/// the CUDA kernels all call. Under nvcc the macro is `__host__ __device__`; a plain C++ compiler
/// sees nothing, so these headers are ordinary inline C++ there and the test suite runs the GPU's
/// arithmetic on the CPU. Where each body lives (its reference in parentheses):
///
///   detail/scalar_math.hpp        sigmoid, softplus and its derivative, log-sum-exp
///   detail/element_ops.hpp        every UnaryOp and BinaryOp of the Backend, the softmax rows and
///                                 their backward (autograd/ops.hpp)
///   detail/accumulators.hpp       the mergeable reductions of the warp kernels (sum, max, online
///                                 log-sum-exp)
///   prior/prior_row.hpp           c0 (log_normal_constant), the five loss terms of one row and
///                                 their gradients, the two scores of one row (loss/hgad_loss.hpp)
///   nn/adam_element.hpp           one element of Adam (nn/adam.hpp's class comment)
///   cuda/kernel_bodies.hpp        the coupling, until it moves next to its CPU path
///
/// The CUDA kernels (cuda/kernels.cuh, cuda/level_kernels.cuh) and their host model
/// (cuda/level_engine.hpp's HostLevelExec) only distribute these bodies over threads.
///
/// This header, alone in the library, tests a CUDA macro: the macro's expansion is the only thing
/// that differs between a .cpp and a .cu translation unit.

#include <math.h>

#if defined(__CUDACC__)
#define HGAD_HOST_DEVICE __host__ __device__
#else
#define HGAD_HOST_DEVICE
#endif

namespace hgad::detail {

// One overload per precision of each function the bodies use: the C math library on the host
// (what std::exp and friends call for float and double), CUDA's math functions on the device.

HGAD_HOST_DEVICE inline float hd_exp(float x) { return ::expf(x); }
HGAD_HOST_DEVICE inline double hd_exp(double x) { return ::exp(x); }
HGAD_HOST_DEVICE inline float hd_log(float x) { return ::logf(x); }
HGAD_HOST_DEVICE inline double hd_log(double x) { return ::log(x); }
HGAD_HOST_DEVICE inline float hd_log1p(float x) { return ::log1pf(x); }
HGAD_HOST_DEVICE inline double hd_log1p(double x) { return ::log1p(x); }
HGAD_HOST_DEVICE inline float hd_tanh(float x) { return ::tanhf(x); }
HGAD_HOST_DEVICE inline double hd_tanh(double x) { return ::tanh(x); }
HGAD_HOST_DEVICE inline float hd_sqrt(float x) { return ::sqrtf(x); }
HGAD_HOST_DEVICE inline double hd_sqrt(double x) { return ::sqrt(x); }

/// +infinity of `Scalar`.
template <class Scalar>
HGAD_HOST_DEVICE Scalar hd_infinity() {
  return static_cast<Scalar>(HUGE_VAL);
}
/// True for NaN (IEEE: NaN is the only value unequal to itself).
template <class Scalar>
HGAD_HOST_DEVICE bool hd_isnan(Scalar x) {
  return x != x;
}
/// True for a finite value (x - x is 0 for finite x and NaN for +-inf and NaN).
template <class Scalar>
HGAD_HOST_DEVICE bool hd_isfinite(Scalar x) {
  return x - x == Scalar(0);
}

}  // namespace hgad::detail
