#pragma once
/// \file
/// The per-element bodies of the CUDA level kernels that have not yet moved next to their CPU
/// counterparts, as HGAD_HOST_DEVICE functions (detail/host_device.hpp).
///
/// This header also compiles as plain C++, so the test suite runs the same bodies on the CPU and
/// compares them with the CPU paths and with naive loops. The element-wise maps, the softmax rows
/// and the mergeable accumulators live in detail/element_ops.hpp and detail/accumulators.hpp,
/// shared with the CPU backend.
///
/// Section: the AllInOneBlock coupling (ALGORITHM.md §2.2). The prior per row is
/// prior/prior_row.hpp, Adam's element nn/adam_element.hpp.

#include <math.h>

#include <cstdint>

#include "../backend.hpp"
#include "../detail/element_ops.hpp"
#include "../detail/host_device.hpp"
#include "../detail/scalar_math.hpp"
#include "../flow/all_in_one_options.hpp"

namespace hgad::cuda {

// ------------------------------------------------------------------------------------------------
// The AllInOneBlock coupling (ALGORITHM.md §2.2), the element-wise part between the GEMMs.
//
// Forward, for one row with block input x = [x1 ; x2] (x1: n1 = D - D/2 passive, x2: n2 = D/2
// active) and the raw second-layer output r = h W2^T (2 n2 values, bias b2 not yet added):
//   a = 0.1 (r + b2)                                 (0.1 pre-scale, FrEIA AllInOneBlock)
//   s_k = alpha tanh(a_k)          (pinned FrEIA 4e0c6ab)  or  alpha tanh(a_k / alpha)  (head)
//   t_k = a_{n2+k}
//   v2'_k = x2_k e^(s_k) + t_k,   u = [x1 ; v2'],   u' = g u + b,   g = 0.1 softplus_0.5(gamma)
//   log|det J| (row) = sum_k s_k + sum_j ln g_j
// (the rotation y = u' R^T and the GEMMs are the caller's).

/// The subnet pre-scale 0.1 of FrEIA's AllInOneBlock (ALGORITHM.md §2.2 step 3).
inline constexpr double coupling_prescale = 0.1;

/// s = clamp(a) for the already 0.1-scaled a (SoftClamp of all_in_one_options.hpp).
template <class Scalar>
HGAD_HOST_DEVICE Scalar coupling_clamp(Scalar a, Scalar alpha, SoftClamp mode) {
  return mode == SoftClamp::pinned ? alpha * hgad::detail::hd_tanh(a)
                                   : alpha * hgad::detail::hd_tanh(a / alpha);
}

/// ds/da of coupling_clamp, from s itself (tanh = s / alpha):
/// pinned: d/da alpha tanh(a) = alpha (1 - tanh^2 a);  head: d/da alpha tanh(a/alpha) = 1 - tanh^2.
template <class Scalar>
HGAD_HOST_DEVICE Scalar coupling_clamp_derivative(Scalar s, Scalar alpha, SoftClamp mode) {
  const Scalar th = s / alpha;
  const Scalar d = Scalar(1) - th * th;
  return mode == SoftClamp::pinned ? alpha * d : d;
}

/// The global-affine scale g = f(gamma) of FrEIA's AllInOneBlock (ALGORITHM.md §2.2 step 7):
/// SOFTPLUS 0.1 softplus_0.5(gamma) (HGAD), SIGMOID 10 sigmoid(gamma - 2), EXP e^gamma.
template <class Scalar>
HGAD_HOST_DEVICE Scalar global_affine_scale(Scalar gamma, GlobalAffineType type) {
  switch (type) {
    // 0.1 factor and beta = 0.5 of FrEIA's SOFTPLUS global affine.
    case GlobalAffineType::softplus:
      return Scalar(0.1) * hgad::detail::softplus(gamma, Scalar(0.5));
    // 10 sigmoid(gamma - 2): FrEIA's SIGMOID global affine.
    case GlobalAffineType::sigmoid:
      return Scalar(10) * hgad::detail::sigmoid(gamma - Scalar(2));
    case GlobalAffineType::exp:
      return hgad::detail::hd_exp(gamma);
  }
  return gamma;
}

/// dg/dgamma: SOFTPLUS 0.1 sigmoid(0.5 gamma) (0.1 where softplus is linear); SIGMOID
/// 10 s (1 - s) with s = sigmoid(gamma - 2); EXP e^gamma.
template <class Scalar>
HGAD_HOST_DEVICE Scalar global_affine_scale_derivative(Scalar gamma, GlobalAffineType type) {
  switch (type) {
    case GlobalAffineType::softplus:
      return Scalar(0.1) * hgad::detail::softplus_derivative(gamma, Scalar(0.5));
    case GlobalAffineType::sigmoid: {
      const Scalar sg = hgad::detail::sigmoid(gamma - Scalar(2));
      return Scalar(10) * sg * (Scalar(1) - sg);
    }
    case GlobalAffineType::exp:
      return hgad::detail::hd_exp(gamma);
  }
  return Scalar(0);
}

/// One element of the subnet's hidden layer: ReLU(x1 W1x^T + c W1c^T + b1) from the two GEMM
/// parts and the bias.
template <class Scalar>
HGAD_HOST_DEVICE Scalar hidden_element(Scalar from_x, Scalar from_cond, Scalar bias) {
  const Scalar v = from_x + from_cond + bias;
  return v > Scalar(0) ? v : Scalar(0);
}

/// The forward of one active coordinate k: from x2_k and the raw subnet outputs r_s = r_k and
/// r_t = r_{n2+k} with their biases, writes s_k (for the log-det) and t_k, and returns v2'_k.
template <class Scalar>
HGAD_HOST_DEVICE Scalar coupling_active_forward(Scalar x2, Scalar r_s, Scalar b_s, Scalar r_t,
                                                Scalar b_t, Scalar alpha, SoftClamp mode,
                                                Scalar* s_out, Scalar* t_out) {
  const Scalar a_s = Scalar(coupling_prescale) * (r_s + b_s);
  const Scalar t = Scalar(coupling_prescale) * (r_t + b_t);
  const Scalar s = coupling_clamp(a_s, alpha, mode);
  *s_out = s;
  *t_out = t;
  return x2 * hgad::detail::hd_exp(s) + t;
}

/// The backward of one active coordinate k. In: x2_k, s_k, the gradient gu_k = dL/du (already
/// multiplied by g, i.e. through u' = g u + b) of v2'_k, and g_ld = dL/d log|det J| of the row.
/// Out: gx2 = dL/dx2_k, ga_s = dL/dr_k, ga_t = dL/dr_{n2+k} (gradients of the raw subnet output).
///   dv2'/dx2 = e^s;  dv2'/ds = x2 e^s;  d logdet/ds = 1;  dv2'/dt = 1;
///   ds/dr = 0.1 clamp'(a);  dt/dr = 0.1.
template <class Scalar>
HGAD_HOST_DEVICE void coupling_active_backward(Scalar x2, Scalar s, Scalar gu, Scalar g_log_jac_det,
                                               Scalar alpha, SoftClamp mode, Scalar* gx2,
                                               Scalar* ga_s, Scalar* ga_t) {
  const Scalar es = hgad::detail::hd_exp(s);
  *gx2 = gu * es;
  const Scalar gs = gu * x2 * es + g_log_jac_det;
  *ga_s = gs * coupling_clamp_derivative(s, alpha, mode) * Scalar(coupling_prescale);
  *ga_t = gu * Scalar(coupling_prescale);
}

}  // namespace hgad::cuda
