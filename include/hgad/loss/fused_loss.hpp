#pragma once
/// \file
/// The fused CPU path of the training objective: every loss term of ALGORITHM.md §3.3 and all its
/// gradients in one parallel pass over the rows, without an autograd graph. It returns dL/dz and
/// dL/dlog_jac_det for the flow's backward and accumulates (+=) the prior's parameter gradients
/// into their ensure_grad(), so the optimiser sees the same leaves as on the autograd path
/// (hgad_loss.hpp), against which it is tested.
///
/// Results do not depend on the thread count: rows are independent, and every reduction over rows
/// (loss means, parameter gradients) runs in row order inside one task.
///
///     auto result = hgad::objective_loss_fused(prior, z, log_jac_det, labels, /*stage=*/2);
///     // result.terms.total, result.grad_z (N, D), result.grad_log_jac_det (N,)

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../detail/check.hpp"
#include "../detail/parallel.hpp"
#include "../detail/scalar_math.hpp"
#include "../prior/gaussian_mixture_prior.hpp"
#include "../tensor.hpp"
#include "loss_terms.hpp"

namespace hgad {

/// The output of the fused objective.
template <class Scalar>
struct FusedLoss {
  LossTerms<Scalar> terms;          ///< every term and the total
  Tensor<Scalar> grad_z;            ///< (N, D) dL/dz
  Tensor<Scalar> grad_log_jac_det;  ///< (N,) dL/dlog_jac_det
};

namespace detail {

template <class Scalar>
using RowVectorMap = Eigen::Map<Eigen::Matrix<Scalar, 1, Eigen::Dynamic>>;
template <class Scalar>
using ConstRowVectorMap = Eigen::Map<const Eigen::Matrix<Scalar, 1, Eigen::Dynamic>>;

/// |x - c|^2 by direct differences over n values (ALGORITHM.md §3.2).
template <class Scalar>
Scalar squared_distance(const Scalar* x, const Scalar* c, Index n) {
  return (ConstRowVectorMap<Scalar>(x, n) - ConstRowVectorMap<Scalar>(c, n)).squaredNorm();
}

/// g += alpha (x - c) over n values.
template <class Scalar>
void add_scaled_difference(Scalar alpha, const Scalar* x, const Scalar* c, Scalar* g, Index n) {
  RowVectorMap<Scalar>(g, n).noalias() +=
      alpha * (ConstRowVectorMap<Scalar>(x, n) - ConstRowVectorMap<Scalar>(c, n));
}

template <class Scalar>
void check_fused_inputs(const Tensor<Scalar>& z, const Tensor<Scalar>& log_jac_det, const char* where) {
  check(z.device() == Device::cpu && log_jac_det.device() == Device::cpu, where,
        ": the fused path needs CPU tensors; use the autograd path (objective_loss) on other devices");
  check(z.rank() == 2 && z.rows() >= 1 && z.cols() >= 1, where, ": z must be (N, D), got ",
        z.shape().to_string());
  check(log_jac_det.shape() == Shape{z.rows()}, where, ": log_jac_det must be (N,) = (", z.rows(),
        ",), got ", log_jac_det.shape().to_string());
}

/// Rows of each class in increasing order.
inline std::vector<std::vector<Index>> rows_by_class(const std::vector<std::int64_t>& labels, Index n_classes) {
  std::vector<std::vector<Index>> rows(static_cast<std::size_t>(n_classes));
  for (std::size_t n = 0; n < labels.size(); ++n) rows[static_cast<std::size_t>(labels[n])].push_back(Index(n));
  return rows;
}

/// Sum over rows of a (rows, cols) buffer column `col`, in row order, in double.
template <class Scalar>
double column_sum(const std::vector<Scalar>& buffer, Index rows, Index cols, Index col) {
  double s = 0;
  for (Index n = 0; n < rows; ++n) s += double(buffer[static_cast<std::size_t>(n * cols + col)]);
  return s;
}

}  // namespace detail

/// The HGAD objective (ALGORITHM.md §3.3, §3.4) and its gradients, fused.
///
/// Per row n, with d_y = |z_n - mu_y|^2, a_y = -1/2 d_y + log pi_y, r = softmax(a) (the class
/// posterior; the same vector as softmax(-1/2 d + sg(log pi)) in Eq. 8), p~ = softmax(-1/2 d) and
/// H = -sum p~ log p~:
///   L_g   = (-LSE(a) - ldj) / D                          dL_g/dd_y   = r_y / (2D)
///   L_mi  = sum_y q_y (a_y - LSE(a) - log pi_y)          dL_mi/dd_y  = -1/2 (q_y - r_y sum q)
///   L_e   = H                                            dL_e/dd_y   = 1/2 p~_y (log p~_y + H)
/// and, in stage 2, with e_k = |z_n - m_{y_n,k}|^2, f_k = -1/2 e_k + log w_{y_n,k}, S = LSE(f),
/// rho = softmax(f), logp = D c0 + S + ldj, sigma = sigmoid(-logp / D):
///   L_g_intra = (-S - ldj) / D,  L_z = softplus(-logp / D),   d(L_g_intra + L_z)/dS = -(1 + sigma)/D
///   dS/de_k = -rho_k / 2,  dS/dlog w_k = rho_k.
/// Chain rule to the inputs: dd_y/dz = 2 (z - mu_y) = -dd_y/dmu_y, de_k/dz = 2 (z - m_k) =
/// -de_k/ddelta_k (k >= 1; mu is detached in m_k); through log_softmax,
/// dphi_j = g_j - softmax(phi)_j sum_i g_i. Everything is divided by N (the means).
///
/// Gradients are added to prior.mu(), prior.phi_inter() and, in stage 2 only, prior.delta() and
/// prior.phi_intra(); in stage 1 those two are not touched, so their has_grad() stays as it was.
///   requires: CPU tensors, z (N, D) with D = prior.dim(), log_jac_det (N,), labels (N,) in [0, K),
///             stage 1 or 2.
template <class Scalar>
FusedLoss<Scalar> hgad_loss_fused(GaussianMixturePrior<Scalar>& prior, const Tensor<Scalar>& z,
                                  const Tensor<Scalar>& log_jac_det, const std::vector<std::int64_t>& labels,
                                  int stage, const LossOptions& options = {}) {
  detail::check_stage(stage, "hgad_loss_fused");
  detail::check_fused_inputs(z, log_jac_det, "hgad_loss_fused");
  const Index N = z.rows(), D = z.cols(), K = prior.n_classes(), M = prior.n_centers();
  check(D == prior.dim(), "hgad_loss_fused: z has ", D, " columns, the prior D = ", prior.dim());
  detail::check_labels(labels, N, K, "hgad_loss_fused");
  const bool intra = stage == 2;

  const Tensor<Scalar> log_pi = prior.log_pi_values();                               // (K,)
  const Tensor<Scalar> log_w = intra ? prior.log_w_values() : Tensor<Scalar>();      // (K, M)
  const Tensor<Scalar> centers = intra ? prior.intra_center_values() : Tensor<Scalar>();  // (K, M, D)
  const Scalar* mu = prior.mu().value().data();                                      // (K, D)

  const Scalar inv_n = Scalar(1) / Scalar(N);
  const Scalar inv_d = Scalar(1) / Scalar(D);
  const Scalar half = Scalar(0.5);
  const Scalar lambda1 = Scalar(options.lambda1), lambda2 = Scalar(options.lambda2);
  const Scalar q_other = Scalar(options.label_smoothing / double(K));
  const Scalar q_true = Scalar((1.0 - options.label_smoothing) + options.label_smoothing / double(K));
  const Scalar c0 = Scalar(log_normal_constant);

  FusedLoss<Scalar> out;
  out.grad_z = Tensor<Scalar>({N, D});
  out.grad_log_jac_det = Tensor<Scalar>({N});
  enum { term_g, term_mi, term_e, term_g_intra, term_z, n_terms };
  std::vector<Scalar> row_terms(static_cast<std::size_t>(N * n_terms), Scalar(0));
  std::vector<Scalar> posterior(static_cast<std::size_t>(N * K));      // r (N, K)
  std::vector<Scalar> grad_dist(static_cast<std::size_t>(N * K));      // dL/dd (N, K), holds d first
  std::vector<Scalar> grad_intra(intra ? static_cast<std::size_t>(N * M) : 0);    // dL/de (N, M)
  std::vector<Scalar> grad_log_w(intra ? static_cast<std::size_t>(N * M) : 0);    // dL/dlog w (N, M)

  const Scalar* z_data = z.data();
  const Scalar* ldj = log_jac_det.data();
  Scalar* gz_data = out.grad_z.data();
  Scalar* gldj = out.grad_log_jac_det.data();

  detail::parallel_for(N, N * (K + (intra ? M : 0)) * D * 4, [&](Index n) {
    const Scalar* zn = z_data + n * D;
    Scalar* gz = gz_data + n * D;
    Scalar* g = grad_dist.data() + n * K;
    Scalar* r = posterior.data() + n * K;
    Scalar* terms = row_terms.data() + n * n_terms;
    const Index label = labels[static_cast<std::size_t>(n)];

    // Inter-class level: g holds d first.
    for (Index y = 0; y < K; ++y) g[y] = detail::squared_distance(zn, mu + y * D, D);
    Scalar max_a = -std::numeric_limits<Scalar>::infinity(), max_c = max_a;
    for (Index y = 0; y < K; ++y) {
      max_a = std::max(max_a, -half * g[y] + log_pi.data()[y]);
      max_c = std::max(max_c, -half * g[y]);
    }
    Scalar sum_a = 0, sum_c = 0;
    for (Index y = 0; y < K; ++y) {
      sum_a += std::exp(-half * g[y] + log_pi.data()[y] - max_a);
      sum_c += std::exp(-half * g[y] - max_c);
    }
    const Scalar lse_a = max_a + std::log(sum_a), lse_c = max_c + std::log(sum_c);
    Scalar entropy = 0, mi = 0, sum_q = 0;
    for (Index y = 0; y < K; ++y) {
      const Scalar a = -half * g[y] + log_pi.data()[y];
      const Scalar log_pt = -half * g[y] - lse_c;
      const Scalar q = y == label ? q_true : q_other;
      r[y] = std::exp(a - lse_a);
      entropy -= std::exp(log_pt) * log_pt;
      mi += q * (a - lse_a - log_pi.data()[y]);
      sum_q += q;
    }
    terms[term_g] = (-lse_a - ldj[n]) * inv_d;
    terms[term_mi] = mi;
    terms[term_e] = entropy;
    for (Index y = 0; y < K; ++y) {
      const Scalar log_pt = -half * g[y] - lse_c;
      const Scalar q = y == label ? q_true : q_other;
      // dL/dd_y of lambda1 L_g - lambda2 L_mi + L_e, per row, over N.
      g[y] = (lambda1 * half * r[y] * inv_d + lambda2 * half * (q - r[y] * sum_q) +
              half * std::exp(log_pt) * (log_pt + entropy)) * inv_n;
    }
    for (Index j = 0; j < D; ++j) gz[j] = Scalar(0);
    for (Index y = 0; y < K; ++y) detail::add_scaled_difference(Scalar(2) * g[y], zn, mu + y * D, gz, D);
    Scalar g_ldj = -lambda1 * inv_d;

    if (intra) {
      const Scalar* m = centers.data() + label * M * D;
      const Scalar* lw = log_w.data() + label * M;
      Scalar* h = grad_intra.data() + n * M;
      Scalar* gw = grad_log_w.data() + n * M;
      Scalar max_f = -std::numeric_limits<Scalar>::infinity();
      for (Index k = 0; k < M; ++k) {
        h[k] = -half * detail::squared_distance(zn, m + k * D, D) + lw[k];  // f_k
        max_f = std::max(max_f, h[k]);
      }
      Scalar sum_f = 0;
      for (Index k = 0; k < M; ++k) sum_f += std::exp(h[k] - max_f);
      const Scalar S = max_f + std::log(sum_f);
      const Scalar logp = Scalar(D) * c0 + S + ldj[n];
      terms[term_g_intra] = (-S - ldj[n]) * inv_d;
      terms[term_z] = detail::softplus(-logp * inv_d, Scalar(1));
      // d softplus(-logp/D)/dlogp = -sigmoid(-logp/D)/D; with L_g_intra: dL/dS = -(1 + sigma)/D.
      const Scalar dS = -(Scalar(1) + detail::softplus_derivative(-logp * inv_d, Scalar(1))) * inv_d;
      for (Index k = 0; k < M; ++k) {
        const Scalar rho = std::exp(h[k] - S);
        gw[k] = rho * dS * inv_n;      // dL/dlog w_k
        h[k] = -half * rho * dS * inv_n;  // dL/de_k
        detail::add_scaled_difference(Scalar(2) * h[k], zn, m + k * D, gz, D);
      }
      g_ldj += dS;
    }
    gldj[n] = g_ldj * inv_n;
  });

  // Means of the terms, in row order.
  double sums[n_terms] = {0, 0, 0, 0, 0};
  for (Index n = 0; n < N; ++n) {
    for (int t = 0; t < n_terms; ++t) sums[t] += double(row_terms[static_cast<std::size_t>(n * n_terms + t)]);
  }
  LossTerms<Scalar>& terms = out.terms;
  terms.stage = stage;
  terms.objective = Objective::hgad;
  terms.l_g = Scalar(sums[term_g] / double(N));
  terms.l_mi = Scalar(sums[term_mi] / double(N));
  terms.l_e = Scalar(sums[term_e] / double(N));
  double total = options.lambda1 * double(terms.l_g) - options.lambda2 * double(terms.l_mi) + double(terms.l_e);
  if (intra) {
    terms.l_g_intra = Scalar(sums[term_g_intra] / double(N));
    terms.l_z = Scalar(sums[term_z] / double(N));
    total += double(terms.l_g_intra) + double(terms.l_z);
  }
  terms.total = Scalar(total);

  // mu: dL/dmu_y = sum_n dL/dd_{n,y} 2 (mu_y - z_n).
  Scalar* grad_mu = prior.mu().ensure_grad().data();
  detail::parallel_for(K, N * K * D * 2, [&](Index y) {
    Eigen::Matrix<Scalar, 1, Eigen::Dynamic> acc = Eigen::Matrix<Scalar, 1, Eigen::Dynamic>::Zero(D);
    for (Index n = 0; n < N; ++n) {
      detail::add_scaled_difference(grad_dist[static_cast<std::size_t>(n * K + y)], mu + y * D, z_data + n * D,
                                    acc.data(), D);
    }
    detail::RowVectorMap<Scalar>(grad_mu + y * D, D) += Scalar(2) * acc;
  });

  // phi_inter: only L_g sees log pi: dL/dlog pi_y = -lambda1 r_{n,y} / (D N) summed over n.
  {
    Scalar* grad_phi = prior.phi_inter().ensure_grad().data();
    std::vector<double> g(static_cast<std::size_t>(K));
    double g_sum = 0;
    for (Index y = 0; y < K; ++y) {
      g[static_cast<std::size_t>(y)] =
          -options.lambda1 / (double(D) * double(N)) * detail::column_sum(posterior, N, K, y);
      g_sum += g[static_cast<std::size_t>(y)];
    }
    for (Index y = 0; y < K; ++y) {
      grad_phi[y] += Scalar(g[static_cast<std::size_t>(y)] - std::exp(double(log_pi.data()[y])) * g_sum);
    }
  }

  if (intra) {
    const auto class_rows = detail::rows_by_class(labels, K);
    // delta: dL/ddelta_{y,k} = sum_{n in y} dL/de_{n,k} 2 (m_{y,k} - z_n), k >= 1.
    Scalar* grad_delta = prior.delta().ensure_grad().data();
    detail::parallel_for(K * (M - 1), N * M * D * 2, [&](Index task) {
      const Index y = task / (M - 1), k = 1 + task % (M - 1);
      const Scalar* m = centers.data() + (y * M + k) * D;
      Eigen::Matrix<Scalar, 1, Eigen::Dynamic> acc = Eigen::Matrix<Scalar, 1, Eigen::Dynamic>::Zero(D);
      for (Index n : class_rows[static_cast<std::size_t>(y)]) {
        detail::add_scaled_difference(grad_intra[static_cast<std::size_t>(n * M + k)], m, z_data + n * D,
                                      acc.data(), D);
      }
      detail::RowVectorMap<Scalar>(grad_delta + (y * (M - 1) + k - 1) * D, D) += Scalar(2) * acc;
    });
    // phi_intra: dphi_{y,j} = sum_{n in y} (g_{n,j} - w_{y,j} sum_k g_{n,k}), g = dL/dlog w.
    Scalar* grad_phi = prior.phi_intra().ensure_grad().data();
    for (Index y = 0; y < K; ++y) {
      std::vector<double> g(static_cast<std::size_t>(M), 0.0);
      for (Index n : class_rows[static_cast<std::size_t>(y)]) {
        for (Index k = 0; k < M; ++k) g[static_cast<std::size_t>(k)] += double(grad_log_w[static_cast<std::size_t>(n * M + k)]);
      }
      double g_sum = 0;
      for (double v : g) g_sum += v;
      for (Index k = 0; k < M; ++k) {
        grad_phi[y * M + k] +=
            Scalar(g[static_cast<std::size_t>(k)] - std::exp(double(log_w.data()[y * M + k])) * g_sum);
      }
    }
  }
  return out;
}

/// The NF baseline's loss (CFlow, single N(0, I) prior) and its gradients, fused:
///   logp = D c0 - 1/2 |z|^2 + ldj,  L = mean softplus(-logp / D),
///   dL/dlogp = -sigmoid(-logp / D) / (D N),  dlogp/dz = -z,  dlogp/dldj = 1.
///   requires: CPU tensors, z (N, D), log_jac_det (N,).
template <class Scalar>
FusedLoss<Scalar> nf_loss_fused(const Tensor<Scalar>& z, const Tensor<Scalar>& log_jac_det) {
  detail::check_fused_inputs(z, log_jac_det, "nf_loss_fused");
  const Index N = z.rows(), D = z.cols();
  const Scalar inv_n = Scalar(1) / Scalar(N), inv_d = Scalar(1) / Scalar(D);
  FusedLoss<Scalar> out;
  out.grad_z = Tensor<Scalar>({N, D});
  out.grad_log_jac_det = Tensor<Scalar>({N});
  std::vector<Scalar> row_loss(static_cast<std::size_t>(N));
  detail::parallel_for(N, N * D * 3, [&](Index n) {
    const detail::ConstRowVectorMap<Scalar> zn(z.data() + n * D, D);
    const Scalar logp = Scalar(D) * Scalar(log_normal_constant) - Scalar(0.5) * zn.squaredNorm() +
                        log_jac_det.data()[n];
    row_loss[static_cast<std::size_t>(n)] = detail::softplus(-logp * inv_d, Scalar(1));
    const Scalar dlogp = -detail::softplus_derivative(-logp * inv_d, Scalar(1)) * inv_d * inv_n;
    detail::RowVectorMap<Scalar>(out.grad_z.data() + n * D, D) = -dlogp * zn;
    out.grad_log_jac_det.data()[n] = dlogp;
  });
  double sum = 0;
  for (Scalar v : row_loss) sum += double(v);
  out.terms.objective = Objective::nf;
  out.terms.stage = 2;
  out.terms.l_z = Scalar(sum / double(N));
  out.terms.total = out.terms.l_z;
  return out;
}

/// The objective chosen by options.objective, fused: hgad_loss_fused or nf_loss_fused (which does
/// not use the prior, and whose terms report the given stage).
template <class Scalar>
FusedLoss<Scalar> objective_loss_fused(GaussianMixturePrior<Scalar>& prior, const Tensor<Scalar>& z,
                                       const Tensor<Scalar>& log_jac_det, const std::vector<std::int64_t>& labels,
                                       int stage, const LossOptions& options = {}) {
  detail::check_stage(stage, "objective_loss_fused");
  if (options.objective == Objective::hgad) return hgad_loss_fused(prior, z, log_jac_det, labels, stage, options);
  FusedLoss<Scalar> out = nf_loss_fused(z, log_jac_det);
  out.terms.stage = stage;
  return out;
}

}  // namespace hgad
