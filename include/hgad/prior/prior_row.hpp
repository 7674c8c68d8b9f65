#pragma once
/// \file
/// The hierarchical Gaussian-mixture prior per row (docs/algorithm.md §3.2-3.3, §5): the normal
/// log-constant c0, the five loss terms of one vector with their gradients, and its two test-time
/// scores. These are the one fast body of each formula: the fused CPU objective
/// (loss/fused_loss.hpp), the CPU scores (prior/scores.hpp) and the CUDA level kernels
/// (cuda/level_kernels.cuh) all call them; the autograd reference is loss/hgad_loss.hpp.
/// A row arrives as its squared distances, so the caller chooses how to compute them (Eigen rows
/// on the CPU, a warp on the GPU) and how to apply the gradients back to z and the centres. When
/// the classes carry their own covariance, d and e are |A_y (z - m)|^2 - 2 log|det A_y|
/// (docs/algorithm.md §3.1.2, prior/class_space.hpp) and every formula below holds unchanged.

#include "../detail/host_device.hpp"
#include "../detail/scalar_math.hpp"

namespace hgad {

/// c0 = ln(1 / sqrt(2 pi)), the per-dimension log-normaliser of a unit Gaussian (docs/algorithm.md
/// §3.3).
inline constexpr double log_normal_constant = -0.9189385332046727;

/// logp = D c0 + S + log|det J|: the log-density of z under a Gaussian (mixture) whose exponent
/// part is S (S = LSE_k(-|z - m_k|^2 / 2 + log w_k) for the intra-class mixture, -|z|^2 / 2 for
/// the NF baseline's N(0, I)), pulled back through the flow (docs/algorithm.md §3.3 item 5, §5).
template <class Scalar>
HGAD_HOST_DEVICE Scalar log_density(Scalar dim, Scalar exponent, Scalar log_jac_det) {
  return dim * Scalar(log_normal_constant) + exponent + log_jac_det;
}

/// The loss weights and switches of the prior's per-row objective (docs/algorithm.md §3.4).
template <class Scalar>
struct PriorRowConfig {
  int n_classes = 0;      ///< K
  int n_centers = 0;      ///< M (intra-class centres, centre 0 = mu_y)
  Scalar dim = 0;         ///< D, the latent dimension (the losses are per dimension)
  Scalar lambda1 = 1;     ///< weight of L_g
  Scalar lambda2 = 100;   ///< weight of -L_mi
  Scalar q_true = 0;      ///< the smoothed one-hot q of the row's class: 1 - eps + eps / K
  Scalar q_other = 0;     ///< q of every other class: eps / K
  bool stage2 = true;     ///< add L_g_intra and L_z (meta-epoch >= 2)
  Scalar row_weight = 1;  ///< weight of this row in the total loss (1/N for a mean)

  /// The configuration of K classes, M centres and dimension D for the weights lambda1, lambda2 and
  /// the label smoothing eps; q is formed in double. row_weight stays 1.
  static PriorRowConfig make(int n_classes, int n_centers, Scalar dim, double lambda1,
                             double lambda2, double label_smoothing, bool stage2) {
    PriorRowConfig c;
    c.n_classes = n_classes;
    c.n_centers = n_centers;
    c.dim = dim;
    c.lambda1 = static_cast<Scalar>(lambda1);
    c.lambda2 = static_cast<Scalar>(lambda2);
    c.q_other = static_cast<Scalar>(label_smoothing / double(n_classes));
    c.q_true = static_cast<Scalar>((1.0 - label_smoothing) + label_smoothing / double(n_classes));
    c.stage2 = stage2;
    return c;
  }
};

/// Indices of the per-row loss terms written by prior_row.
struct PriorTerm {
  enum : int { g = 0, mi = 1, e = 2, g_intra = 3, z = 4, count = 5 };
};

/// The entropy H = -sum_y p~_y ln p~_y of p~ = softmax(-d / 2) for the squared distances d (K,)
/// of a row to the class centres (L_e, Eq. 9; its negative is the score of docs/algorithm.md §5.3).
/// *lse receives LSE(-d / 2).
template <class Scalar>
HGAD_HOST_DEVICE Scalar class_entropy_row(int n_classes, const Scalar* d, Scalar* lse) {
  const Scalar half = Scalar(0.5);
  const Scalar lc =
      detail::logsumexp_of<Scalar>(n_classes, [d, half](long y) { return -half * d[y]; });
  Scalar entropy = 0;
  for (int y = 0; y < n_classes; ++y) {
    const Scalar log_p = -half * d[y] - lc;
    entropy -= detail::hd_exp(log_p) * log_p;
  }
  *lse = lc;
  return entropy;
}

/// The five loss terms of one row and the gradient of the row's weighted total loss
///   l = row_weight [lambda1 L_g - lambda2 L_mi + L_e + stage2 (L_g_intra + L_z)]
/// with respect to the squared distances, the log-weights and the log-det (docs/algorithm.md §3.3):
///   d_y = |z - mu_y|^2 (K),  e_k = |z - m_{y_n,k}|^2 (M),  log_pi (K),  log_w = log w_{y_n,.} (M),
///   A = -d/2 + log_pi:      L_g = (-LSE(A) - ld) / D                       (Eq. 6)
///   B = -d/2 + sg(log_pi):  L_mi = sum_y q_y (B_y - LSE(B) - sg(log_pi_y))  (Eq. 8)
///   C = -d/2:               L_e = -sum_y p~_y ln p~_y, p~ = softmax(C)    (Eq. 9)
///   E = -e/2 + log_w, S = LSE(E):  L_g_intra = (-S - ld) / D,
///   logp = D c0 + S + ld:   L_z = softplus(-logp / D).
/// A and B have the same values (B differs only by the stop-gradient), so LSE(A) = LSE(B) and the
/// posterior r = softmax(A) serves both. Derivatives (w = softmax(E), H = L_e):
///   dL_g/dd_y = r_y / (2D),  dL_g/dlog_pi_y = -r_y / D,  dL_g/dld = -1/D;
///   dL_mi/dd_y = -(q_y - r_y sum q) / 2;
///   dL_e/dd_y = p~_y (ln p~_y + H) / 2;
///   dS/de_k = -w_k / 2,  dS/dlog_w_k = w_k;
///   d(L_g_intra + L_z)/dS = d(L_g_intra + L_z)/dld = -(1 + sigmoid(-logp / D)) / D.
/// The terms are written unweighted; the gradients include the weights and row_weight. A centre
/// whose responsibility w_k lies below underflow_threshold gets the gradient 0 (its exponent is not
/// evaluated: it would be subnormal). In stage 1 e, log_w, grad_e and grad_log_w are not read or
/// written. Every array is caller-owned.
template <class Scalar>
HGAD_HOST_DEVICE void prior_row(const PriorRowConfig<Scalar>& config, const Scalar* d,
                                const Scalar* e, const Scalar* log_pi, const Scalar* log_w,
                                int label, Scalar log_jac_det, Scalar* terms, Scalar* grad_d,
                                Scalar* grad_e, Scalar* grad_log_pi, Scalar* grad_log_w,
                                Scalar* grad_log_jac_det) {
  const int K = config.n_classes;
  const Scalar half = Scalar(0.5);
  const Scalar inv_d = Scalar(1) / config.dim;
  const Scalar lambda1 = config.lambda1, lambda2 = config.lambda2, weight = config.row_weight;
  const Scalar lse_a = detail::logsumexp_of<Scalar>(
      K, [d, log_pi, half](long y) { return -half * d[y] + log_pi[y]; });
  Scalar lse_c;
  const Scalar entropy = class_entropy_row(K, d, &lse_c);
  Scalar mi = 0, sum_q = 0;
  for (int y = 0; y < K; ++y) {
    const Scalar q = y == label ? config.q_true : config.q_other;
    mi += q * ((-half * d[y] + log_pi[y]) - lse_a - log_pi[y]);
    sum_q += q;
  }
  terms[PriorTerm::g] = (-lse_a - log_jac_det) * inv_d;
  terms[PriorTerm::mi] = mi;
  terms[PriorTerm::e] = entropy;
  for (int y = 0; y < K; ++y) {
    const Scalar log_pt = -half * d[y] - lse_c;
    const Scalar r = detail::hd_exp(-half * d[y] + log_pi[y] - lse_a);
    const Scalar q = y == label ? config.q_true : config.q_other;
    grad_d[y] = (lambda1 * half * r * inv_d + lambda2 * half * (q - r * sum_q) +
                 half * detail::hd_exp(log_pt) * (log_pt + entropy)) *
                weight;
    grad_log_pi[y] = -lambda1 * r * inv_d * weight;
  }
  Scalar g_ld = -lambda1 * inv_d;

  if (config.stage2) {
    const int M = config.n_centers;
    const Scalar S = detail::logsumexp_of<Scalar>(
        M, [e, log_w, half](long k) { return -half * e[k] + log_w[k]; });
    const Scalar log_p = log_density(config.dim, S, log_jac_det);
    terms[PriorTerm::g_intra] = (-S - log_jac_det) * inv_d;
    terms[PriorTerm::z] = detail::softplus(-log_p * inv_d, Scalar(1));
    // d softplus(-logp/D)/dlogp = -sigmoid(-logp/D)/D; with L_g_intra: dl/dS = -(1 + sigma)/D.
    const Scalar g_s =
        -(Scalar(1) + detail::softplus_derivative(-log_p * inv_d, Scalar(1))) * inv_d;
    const Scalar log_tiny = detail::hd_log(detail::underflow_threshold<Scalar>());
    for (int k = 0; k < M; ++k) {
      const Scalar f = -half * e[k] + log_w[k];
      if (f - S < log_tiny) {
        grad_e[k] = Scalar(0);
        grad_log_w[k] = Scalar(0);
        continue;
      }
      const Scalar w = detail::hd_exp(f - S);
      grad_e[k] = -half * w * g_s * weight;
      grad_log_w[k] = w * g_s * weight;
    }
    g_ld += g_s;
  } else {
    terms[PriorTerm::g_intra] = Scalar(0);
    terms[PriorTerm::z] = Scalar(0);
  }
  *grad_log_jac_det = g_ld * weight;
}

/// The per-dimension log-likelihood of a row under the intra-class mixture of its class
/// (docs/algorithm.md §5.2): logp = [D c0 + LSE_k(-e_k / 2 + log w_k) + ld] / D, e (M,) the squared
/// distances to the class's centres and log_w (M,) their log-weights.
template <class Scalar>
HGAD_HOST_DEVICE Scalar score_log_p_row(int n_centers, Scalar dim, const Scalar* e,
                                        const Scalar* log_w, Scalar log_jac_det) {
  const Scalar half = Scalar(0.5);
  const Scalar S = detail::logsumexp_of<Scalar>(
      n_centers, [e, log_w, half](long k) { return -half * e[k] + log_w[k]; });
  return log_density(dim, S, log_jac_det) / dim;
}

/// The two test-time scores of one row (docs/algorithm.md §5 steps 2-3): score_log_p_row and the
/// negative class entropy sum_y p~_y ln p~_y = -class_entropy_row.
template <class Scalar>
HGAD_HOST_DEVICE void score_row(int n_classes, int n_centers, Scalar dim, const Scalar* d,
                                const Scalar* e, const Scalar* log_w, Scalar log_jac_det,
                                Scalar* log_p, Scalar* neg_entropy) {
  *log_p = score_log_p_row(n_centers, dim, e, log_w, log_jac_det);
  Scalar lse;
  *neg_entropy = -class_entropy_row(n_classes, d, &lse);
}

}  // namespace hgad
