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
///   flow/coupling_element.hpp     the coupling's 0.1 pre-scale (coupling_prescale), soft clamp
///                                 and affine coupling of the active channels (AllInOneBlock)
///   flow/all_in_one_options.hpp   the global-affine scale g = f(gamma) and dg/dgamma
///                                 (AllInOneBlock::global_scale_var)
///   prior/prior_row.hpp           c0 (log_normal_constant), the five loss terms of one row and
///                                 their gradients, the two scores of one row (loss/hgad_loss.hpp)
///   nn/adam_element.hpp           one element of Adam (nn/adam.hpp's class comment)
///
/// The CUDA kernels (cuda/kernels.cuh, cuda/level_kernels.cuh) and their host model
/// (cuda/level_engine.hpp's HostLevelExec) only distribute these bodies over threads.
///
/// This header, alone in the library, tests a CUDA macro: the macro's expansion is the only thing
/// that differs between a .cpp and a .cu translation unit.

#include <math.h>

#if defined(__CUDACC__)
#define HGAD_HOST_DEVICE __host__ __device__
/// Placed before a HGAD_HOST_DEVICE template that the CPU path also instantiates with host-only
/// types (Eigen arrays): nvcc then checks the execution space of an instantiation only where it
/// runs on the device, instead of warning about every host instantiation (as Eigen does).
#define HGAD_EXEC_CHECK_DISABLE _Pragma("nv_exec_check_disable")
#else
#define HGAD_HOST_DEVICE
#define HGAD_EXEC_CHECK_DISABLE
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

/// The element-wise math of a body that is written once for a scalar and for a row of scalars:
/// ElementMath<T>::exp(x) and ::tanh(x) are e^x and tanh x of a float or double. The fused CPU
/// path, which evaluates such a body on whole rows at once, adds a specialisation for Eigen arrays
/// (flow/fused_coupling.hpp) that maps them to Eigen's vectorised exp and tanh.
template <class T, class Enable = void>
struct ElementMath {
  HGAD_HOST_DEVICE static T exp(T x) { return hd_exp(x); }
  HGAD_HOST_DEVICE static T tanh(T x) { return hd_tanh(x); }
};

/// e^x of a scalar or, element-wise, of an array (ElementMath).
HGAD_EXEC_CHECK_DISABLE
template <class T>
HGAD_HOST_DEVICE auto element_exp(const T& x) {
  return ElementMath<T>::exp(x);
}
/// tanh x of a scalar or, element-wise, of an array (ElementMath).
HGAD_EXEC_CHECK_DISABLE
template <class T>
HGAD_HOST_DEVICE auto element_tanh(const T& x) {
  return ElementMath<T>::tanh(x);
}

}  // namespace hgad::detail
