#pragma once
/// \file
/// The affine coupling of FrEIA's AllInOneBlock on its active channels (docs/algorithm.md §2.2 steps
/// 3-6): the one fast body of the 0.1 pre-scale, the soft clamp and the coupling v2' = x2 e^s + t,
/// forward and backward. The autograd reference is AllInOneBlock (flow/all_in_one_block.hpp).
///
/// Each body is written once for a scalar and for a row of scalars: the CUDA level kernels
/// (cuda/level_bodies.hpp) call it per element with float or double, and the fused CPU coupling
/// (flow/fused_coupling.hpp) calls it with Eigen arrays over a whole row, so Eigen vectorises exp
/// and tanh (detail::ElementMath). The bodies return expressions of their arguments; use the
/// result before the arguments go out of scope.
///
/// For one row with passive half x1, active half x2 (n2 channels) and the raw subnet output
/// r = [r_s ; r_t] = W2 h + b2 (2 n2 values):
///   a = 0.1 r                                            (0.1 pre-scale, FrEIA AllInOneBlock)
///   s = alpha tanh(a_s)  (pinned, FrEIA 4e0c6ab)  or  alpha tanh(a_s / alpha)  (head)
///   t = a_t
///   v2' = x2 e^s + t,   log|det J| gets sum_k s_k.

#include "../detail/host_device.hpp"
#include "all_in_one_options.hpp"

namespace hgad {

/// FrEIA's down-scaling of the whole subnet output, "a *= 0.1" in AllInOneBlock._affine
/// (docs/algorithm.md §2.2 step 3).
inline constexpr double coupling_prescale = 0.1;

/// k of the soft clamp s = alpha tanh(k r) of the raw output r, with the pre-scale folded in:
/// 0.1 (pinned) or 0.1 / alpha (head).
template <class Scalar>
HGAD_HOST_DEVICE Scalar soft_clamp_input_scale(Scalar alpha, SoftClamp mode) {
  return mode == SoftClamp::pinned ? Scalar(coupling_prescale) : Scalar(coupling_prescale) / alpha;
}

/// ds/dr at s = 0, k alpha: 0.1 alpha (pinned) or 0.1 (head).
template <class Scalar>
HGAD_HOST_DEVICE Scalar soft_clamp_slope(Scalar alpha, SoftClamp mode) {
  return mode == SoftClamp::pinned ? Scalar(coupling_prescale) * alpha : Scalar(coupling_prescale);
}

/// The log-scale s = alpha tanh(k r) of the raw subnet output r (soft clamp after the pre-scale).
HGAD_EXEC_CHECK_DISABLE
template <class T, class Scalar>
HGAD_HOST_DEVICE auto coupling_log_scale(const T& raw, Scalar alpha, SoftClamp mode) {
  return detail::element_tanh(raw * soft_clamp_input_scale(alpha, mode)) * alpha;
}

/// The shift t = 0.1 r of the raw subnet output r.
HGAD_EXEC_CHECK_DISABLE
template <class Scalar, class T>
HGAD_HOST_DEVICE auto coupling_shift(const T& raw) {
  return raw * Scalar(coupling_prescale);
}

/// The coupled active channel v2' = x2 e^s + t, given e^s.
HGAD_EXEC_CHECK_DISABLE
template <class X, class E, class T>
HGAD_HOST_DEVICE auto coupling_active_output(const X& x2, const E& exp_s, const T& t) {
  return x2 * exp_s + t;
}

/// The backward of the active channels. In: x2, s and e^s, gv = dL/dv2' and g_ld = dL/dlog|det J|
/// of the row. Out: gx2 = dL/dx2 and the gradients of the raw subnet output, grad_raw_s = dL/dr_s
/// and grad_raw_t = dL/dr_t:
///   dv2'/dx2 = e^s;  dv2'/ds = x2 e^s;  dlog|det J|/ds = 1;  dv2'/dt = 1;  dt/dr_t = 0.1;
///   ds/dr_s = k alpha (1 - tanh^2) = slope (1 - (s / alpha)^2)   (soft_clamp_slope).
HGAD_EXEC_CHECK_DISABLE
template <class X, class S, class E, class G, class Scalar, class OutX, class OutS, class OutT>
HGAD_HOST_DEVICE void coupling_active_backward(const X& x2, const S& s, const E& exp_s, const G& gv,
                                               Scalar g_log_jac_det, Scalar alpha, SoftClamp mode,
                                               OutX&& gx2, OutS&& grad_raw_s, OutT&& grad_raw_t) {
  const auto s_over_alpha = s * (Scalar(1) / alpha);
  grad_raw_s = ((gv * x2 * exp_s + g_log_jac_det) * (Scalar(1) - s_over_alpha * s_over_alpha)) *
               soft_clamp_slope(alpha, mode);
  grad_raw_t = gv * Scalar(coupling_prescale);
  gx2 = gv * exp_s;
}

}  // namespace hgad
