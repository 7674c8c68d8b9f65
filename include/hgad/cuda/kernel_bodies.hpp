#pragma once
/// \file
/// The per-element and per-row bodies of the CUDA level kernels that have not yet moved next to
/// their CPU counterparts, as HGAD_HOST_DEVICE functions (detail/host_device.hpp).
///
/// This header also compiles as plain C++, so the test suite runs the same bodies on the CPU and
/// compares them with the CPU paths and with naive loops. The element-wise maps, the softmax rows
/// and the mergeable accumulators live in detail/element_ops.hpp and detail/accumulators.hpp,
/// shared with the CPU backend.
///
/// Sections: the AllInOneBlock coupling (ALGORITHM.md §2.2); the prior per row
/// (ALGORITHM.md §3.2-3.3, §5); Adam (torch 1.13, §4).

#include <math.h>

#include <cstdint>

#include "../backend.hpp"
#include "../detail/accumulators.hpp"
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

// ------------------------------------------------------------------------------------------------
// The hierarchical Gaussian-mixture prior, per row (ALGORITHM.md §3.2-3.3).

/// The constant c0 = ln(1 / sqrt(2 pi)) of L_z and the score (ALGORITHM.md §3.3 item 5).
inline constexpr double log_normal_constant = -0.9189385332046727;

/// The loss weights and switches of the prior (ALGORITHM.md §3.4).
template <class Scalar>
struct PriorRowConfig {
  int n_classes = 0;              ///< K
  int n_centers = 0;              ///< M (intra-class centres, centre 0 = mu_y)
  Scalar dim = 0;                 ///< D, the latent dimension (the losses are per dimension)
  Scalar lambda1 = 1;             ///< weight of L_g (lambda1)
  Scalar lambda2 = 100;           ///< weight of -L_mi (lambda2)
  Scalar label_smoothing = 0.02;  ///< epsilon of the smoothed one-hot q
  bool stage2 = true;             ///< add L_g_intra and L_z (meta-epoch >= 2)
  Scalar row_weight = 1;          ///< weight of this row in the total loss (1/N for a mean)
};

/// Indices of the per-row loss terms written by prior_row.
enum PriorTerm : int { term_g = 0, term_mi = 1, term_e = 2, term_g_intra = 3, term_z = 4, n_terms = 5 };

/// The five loss terms of one row and the gradient of the row's weighted total loss
///   l = row_weight [lambda1 L_g - lambda2 L_mi + L_e + stage2 (L_g_intra + L_z)]
/// with respect to the squared distances, the log-weights and the log-det (ALGORITHM.md §3.3):
///   d_y = |z - mu_y|^2 (K),  e_k = |z - m_{y_n,k}|^2 (M),  log_pi (K),  log_w = log w_{y_n,.} (M),
///   A = -d/2 + log_pi:      L_g = (-LSE(A) - ld) / D                       (Eq. 6)
///   B = -d/2 + sg(log_pi):  L_mi = sum_y q_y (B_y - LSE(B) - sg(log_pi_y))  (Eq. 8)
///   C = -d/2:               L_e = -sum_y p~_y ln p~_y, p~ = softmax(C)    (Eq. 9)
///   E = -e/2 + log_w, S = LSE(E):  L_g_intra = (-S - ld) / D,
///   logp = D c0 + S + ld:   L_z = softplus(-logp / D).
/// Derivatives (r = softmax(A), p = softmax(B), w = softmax(E), H = L_e):
///   dL_g/dd_y = r_y / (2D),  dL_g/dlog_pi_y = -r_y / D,  dL_g/dld = -1/D;
///   dL_mi/dd_y = -(q_y - p_y sum q) / 2;
///   dL_e/dd_y = p~_y (ln p~_y + H) / 2;
///   dS/de_k = -w_k / 2,  dS/dlog_w_k = w_k;  dL_g_intra/dS = -1/D;
///   dL_z/dS = dL_z/dld = -sigmoid(-logp / D) / D.
/// The terms are written unweighted; the gradients include the weights and row_weight. In stage 1
/// e, log_w, grad_e and grad_log_w are not read or written. Every array is caller-owned.
template <class Scalar>
HGAD_HOST_DEVICE void prior_row(const PriorRowConfig<Scalar>& config, const Scalar* d,
                                const Scalar* e, const Scalar* log_pi, const Scalar* log_w,
                                int label, Scalar log_jac_det, Scalar* terms, Scalar* grad_d,
                                Scalar* grad_e, Scalar* grad_log_pi, Scalar* grad_log_w,
                                Scalar* grad_log_jac_det) {
  const int K = config.n_classes;
  const Scalar D = config.dim;
  const Scalar half = Scalar(0.5);
  // A and B have the same values (B differs only by the stop-gradient), so LSE(A) = LSE(B) and
  // softmax(A) = softmax(B): r = p below.
  hgad::detail::LogSumExpAccumulator<Scalar> lse_a;
  for (int y = 0; y < K; ++y) lse_a.push(-half * d[y] + log_pi[y]);
  const Scalar la = lse_a.result();
  hgad::detail::LogSumExpAccumulator<Scalar> lse_c;
  for (int y = 0; y < K; ++y) lse_c.push(-half * d[y]);
  const Scalar lc = lse_c.result();

  const Scalar eps = config.label_smoothing;
  const Scalar q_off = eps / Scalar(K), q_on = Scalar(1) - eps + eps / Scalar(K);
  Scalar l_mi = 0, entropy = 0, q_sum = 0;
  for (int y = 0; y < K; ++y) {
    const Scalar q = y == label ? q_on : q_off;
    q_sum += q;
    l_mi += q * ((-half * d[y] + log_pi[y] - la) - log_pi[y]);
    const Scalar ls = -half * d[y] - lc;
    entropy -= hgad::detail::hd_exp(ls) * ls;
  }
  terms[term_g] = (-la - log_jac_det) / D;
  terms[term_mi] = l_mi;
  terms[term_e] = entropy;

  const Scalar wt = config.row_weight;
  for (int y = 0; y < K; ++y) {
    const Scalar q = y == label ? q_on : q_off;
    const Scalar r = hgad::detail::hd_exp(-half * d[y] + log_pi[y] - la);
    const Scalar ls = -half * d[y] - lc;
    const Scalar pt = hgad::detail::hd_exp(ls);
    const Scalar g_lg = r / (Scalar(2) * D);
    const Scalar g_lmi = -half * (q - r * q_sum);
    const Scalar g_le = half * pt * (ls + entropy);
    grad_d[y] = wt * (config.lambda1 * g_lg - config.lambda2 * g_lmi + g_le);
    grad_log_pi[y] = wt * config.lambda1 * (-r / D);
  }
  Scalar g_ld = -config.lambda1 / D;

  if (config.stage2) {
    const int M = config.n_centers;
    hgad::detail::LogSumExpAccumulator<Scalar> lse_e;
    for (int k = 0; k < M; ++k) lse_e.push(-half * e[k] + log_w[k]);
    const Scalar S = lse_e.result();
    const Scalar log_p = D * Scalar(log_normal_constant) + S + log_jac_det;
    terms[term_g_intra] = (-S - log_jac_det) / D;
    terms[term_z] = hgad::detail::softplus(-log_p / D, Scalar(1));
    const Scalar g_s = -Scalar(1) / D - hgad::detail::sigmoid(-log_p / D) / D;
    for (int k = 0; k < M; ++k) {
      const Scalar w = hgad::detail::hd_exp(-half * e[k] + log_w[k] - S);
      grad_e[k] = wt * g_s * (-half * w);
      grad_log_w[k] = wt * g_s * w;
    }
    g_ld += g_s;
  } else {
    terms[term_g_intra] = Scalar(0);
    terms[term_z] = Scalar(0);
  }
  *grad_log_jac_det = wt * g_ld;
}

/// The two test-time scores of one row (ALGORITHM.md §5 steps 2-3):
///   logp = [D c0 + LSE_k(-e_k / 2 + log_w_k) + ld] / D   (intra-class mixture of the given class)
///   neg_entropy = sum_y p~_y ln p~_y,  p~ = softmax_y(-d_y / 2).
template <class Scalar>
HGAD_HOST_DEVICE void score_row(int n_classes, int n_centers, Scalar dim, const Scalar* d,
                                const Scalar* e, const Scalar* log_w, Scalar log_jac_det,
                                Scalar* log_p, Scalar* neg_entropy) {
  const Scalar half = Scalar(0.5);
  hgad::detail::LogSumExpAccumulator<Scalar> lse_e;
  for (int k = 0; k < n_centers; ++k) lse_e.push(-half * e[k] + log_w[k]);
  *log_p = (dim * Scalar(log_normal_constant) + lse_e.result() + log_jac_det) / dim;
  hgad::detail::LogSumExpAccumulator<Scalar> lse_c;
  for (int y = 0; y < n_classes; ++y) lse_c.push(-half * d[y]);
  const Scalar lc = lse_c.result();
  Scalar s = 0;
  for (int y = 0; y < n_classes; ++y) {
    const Scalar ls = -half * d[y] - lc;
    s += hgad::detail::hd_exp(ls) * ls;
  }
  *neg_entropy = s;
}

// ------------------------------------------------------------------------------------------------
// Adam, torch 1.13's single-tensor formula with coupled (L2) weight decay (ALGORITHM.md §4).

/// The per-step constants of Adam at step t (1-based).
template <class Scalar>
struct AdamStepConstants {
  Scalar lr, beta1, beta2, eps, weight_decay;
  Scalar step_size;             ///< lr / (1 - beta1^t)
  Scalar bias_correction2_sqrt; ///< sqrt(1 - beta2^t)
};

/// Computes the bias corrections of step t in double precision, as torch does on the host.
template <class Scalar>
AdamStepConstants<Scalar> adam_step_constants(double lr, double beta1, double beta2, double eps,
                                              double weight_decay, long step) {
  const double bc1 = 1.0 - ::pow(beta1, static_cast<double>(step));
  const double bc2 = 1.0 - ::pow(beta2, static_cast<double>(step));
  return {static_cast<Scalar>(lr),           static_cast<Scalar>(beta1),
          static_cast<Scalar>(beta2),        static_cast<Scalar>(eps),
          static_cast<Scalar>(weight_decay), static_cast<Scalar>(lr / bc1),
          static_cast<Scalar>(::sqrt(bc2))};
}

/// One element of Adam (torch 1.13 `_single_tensor_adam`, amsgrad off):
///   g <- g + wd theta;  m <- beta1 m + (1 - beta1) g;  v <- beta2 v + (1 - beta2) g^2;
///   theta <- theta - (lr / (1 - beta1^t)) m / (sqrt(v) / sqrt(1 - beta2^t) + eps).
template <class Scalar>
HGAD_HOST_DEVICE void adam_element(const AdamStepConstants<Scalar>& c, Scalar grad, Scalar* param,
                                   Scalar* exp_avg, Scalar* exp_avg_sq) {
  const Scalar g = c.weight_decay != Scalar(0) ? grad + c.weight_decay * *param : grad;
  const Scalar m = *exp_avg * c.beta1 + (Scalar(1) - c.beta1) * g;
  const Scalar v = *exp_avg_sq * c.beta2 + (Scalar(1) - c.beta2) * g * g;
  *exp_avg = m;
  *exp_avg_sq = v;
  const Scalar denom = hgad::detail::hd_sqrt(v) / c.bias_correction2_sqrt + c.eps;
  *param -= c.step_size * (m / denom);
}

}  // namespace hgad::cuda
