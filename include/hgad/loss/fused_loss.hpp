#pragma once
/// \file
/// The fused CPU path of the training objective: every loss term of docs/algorithm.md §3.3 and all its
/// gradients in one parallel pass over the rows, without an autograd graph. It returns dL/dz and
/// dL/dlog_jac_det for the flow's backward and accumulates (+=) the prior's parameter gradients
/// into their ensure_grad(), so the optimiser sees the same leaves as on the autograd path
/// (hgad_loss.hpp), against which it is tested.
///
/// Results do not depend on the thread count: the rows are cut into fixed chunks (a function of N),
/// each chunk sums its rows' contributions in row order, and the chunks' sums are added in chunk
/// order. Each row's differences z - mu_y and z - m_k are formed once and reused for the distances,
/// dL/dz and the centres' gradients, so the whole objective reads z once.
///
///     auto result = hgad::objective_loss_fused(prior, z, log_jac_det, labels, /*stage=*/2);
///     // result.terms.total, result.grad_z (N, D), result.grad_log_jac_det (N,)

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../detail/check.hpp"
#include "../detail/element_ops.hpp"
#include "../detail/parallel.hpp"
#include "../detail/scalar_math.hpp"
#include "../prior/class_space.hpp"
#include "../prior/gaussian_mixture_prior.hpp"
#include "../prior/prior_row.hpp"
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

template <class Scalar>
void check_fused_inputs(const Tensor<Scalar>& z, const Tensor<Scalar>& log_jac_det, const char* where) {
  check(z.device() == Device::cpu && log_jac_det.device() == Device::cpu, where,
        ": the fused path needs CPU tensors; use the autograd path (objective_loss) on other devices");
  check(z.rank() == 2 && z.rows() >= 1 && z.cols() >= 1, where, ": z must be (N, D), got ",
        z.shape());
  check(log_jac_det.shape() == Shape{z.rows()}, where, ": log_jac_det must be (N,) = (", z.rows(),
        ",), got ", log_jac_det.shape());
}

/// The fixed row chunks of the fused objective: about 64 chunks of at least 128 rows, a function
/// of N only, so sums over rows are added in the same order on any number of threads.
struct FusedChunks {
  explicit FusedChunks(Index n_rows) : rows(n_rows) {
    size = std::max<Index>(128, (n_rows + 63) / 64);
    count = (n_rows + size - 1) / size;
  }
  Index begin(Index chunk) const { return chunk * size; }
  Index end(Index chunk) const { return std::min(rows, (chunk + 1) * size); }
  Index rows, size, count;
};

}  // namespace detail

/// The HGAD objective (docs/algorithm.md §3.3, §3.4) and its gradients, fused.
///
/// Each row's terms and their derivatives with respect to its squared distances d_y = |z_n -
/// mu_y|^2, e_k = |z_n - m_{y_n,k}|^2, log pi, log w and log|det J| are prior_row's
/// (prior/prior_row.hpp, where the formulas are written out). This function forms the distances and
/// applies the chain rule to the inputs: dd_y/dz = 2 (z - mu_y) = -dd_y/dmu_y, de_k/dz = 2 (z -
/// m_k) = -de_k/ddelta_k (k >= 1; mu is detached in m_k); through log_softmax, dphi_j = g_j -
/// softmax(phi)_j sum_i g_i. Everything is divided by N (the means). With class factors
/// (docs/algorithm.md §3.1.2) the distances are formed in each class's space
/// (prior/class_space.hpp) and the gradients with respect to A_y z, A_y mu_y and A_y delta_{y,k}
/// are brought back through A_y after the pass; when only the intra-class components carry factors,
/// d_y is the paper's and only e_k and delta go through A_y.
///
/// Gradients are added to prior.mu(), prior.phi_inter() and, in stage 2 only, prior.delta() and
/// prior.phi_intra(); in stage 1 those two are not touched, so their has_grad() stays as it was.
/// A per-row contribution smaller than min/epsilon of Scalar (the responsibility of a far centre
/// after underflow: |dL/dd_y| or |dL/de_k| below 1e-31 in float, 1e-292 in double) is dropped
/// rather than carried as subnormal numbers; NaN is never dropped.
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

  const Tensor<Scalar> log_pi = prior.log_pi_values();                                    // (K,)
  const Tensor<Scalar> log_w = intra ? prior.log_w_values() : Tensor<Scalar>();  // (K, M)
  const ClassSpace<Scalar> space(prior, z, intra);  // the rows and centres of the distances
  const bool transformed = space.transformed();     // rows A_y z formed: d_y or e_k through A_y
  const bool inter_transformed = space.class_level_transformed();  // d_y through A_y

  // The per-row objective is prior_row (prior/prior_row.hpp); this loop forms each row's distances
  // and applies the row's gradients to z and the centres.
  auto config = PriorRowConfig<Scalar>::make(static_cast<int>(K), static_cast<int>(M), Scalar(D),
                                             options.lambda1, options.lambda2,
                                             options.label_smoothing, intra);
  config.row_weight = Scalar(1) / Scalar(N);
  // Contributions below underflow_threshold are dropped (subnormal territory; see prior_row).
  const Scalar tiny = detail::underflow_threshold<Scalar>();

  FusedLoss<Scalar> out;
  out.grad_z = transformed ? Tensor<Scalar>({N, D}) : Tensor<Scalar>::empty({N, D});
  out.grad_log_jac_det = Tensor<Scalar>::empty({N});
  // With class factors, dL/d(A_y z_n) per class (K, N, D), brought to z after the pass.
  Tensor<Scalar> grad_rows = transformed ? Tensor<Scalar>({K, N, D}) : Tensor<Scalar>();

  // Rows are processed in fixed chunks, each by one thread in row order; every chunk adds its rows'
  // contributions to its own partial sums, which are then added in chunk order. The chunking
  // depends on N only, so the result does not depend on the thread count.
  const detail::FusedChunks chunks(N);
  const Index n_deltas = M - 1;
  constexpr int n_terms = PriorTerm::count;
  std::vector<double> chunk_terms(static_cast<std::size_t>(chunks.count * n_terms), 0.0);
  std::vector<double> chunk_log_pi_grad(static_cast<std::size_t>(chunks.count * K),
                                        0.0);  // sum_n dL/dlog pi
  std::vector<double> chunk_log_w_grad(intra ? std::size_t(chunks.count * K * M) : 0, 0.0);    // sum_n dL/dlog w
  std::vector<Scalar> chunk_mu_grad(static_cast<std::size_t>(chunks.count * K * D));           // dL/dmu
  std::vector<Scalar> chunk_delta_grad(intra ? std::size_t(chunks.count * K * n_deltas * D) : 0);  // dL/ddelta
  std::vector<char> chunk_has_class(intra ? std::size_t(chunks.count * K) : 0, 0);

  const Scalar* ldj = log_jac_det.data();
  Scalar* gz_data = out.grad_z.data();
  Scalar* gldj = out.grad_log_jac_det.data();

  detail::parallel_for(chunks.count, N * (K + (intra ? M : 0)) * D * 6, [&](Index chunk) {
    // Per row: z - mu_y (K, D) and z - m_{y_n,k} (M, D), reused by the distances and the gradients;
    // the row's distances d (K), e (M) and prior_row's outputs.
    std::vector<Scalar> diff(static_cast<std::size_t>((K + (intra ? M : 0)) * D));
    std::vector<Scalar> row(static_cast<std::size_t>(3 * K + 3 * M));
    Scalar* d = row.data();
    Scalar* e = d + K;
    Scalar* grad_d = e + M;
    Scalar* grad_e = grad_d + K;
    Scalar* grad_log_pi = grad_e + M;
    Scalar* grad_log_w = grad_log_pi + K;
    Scalar row_terms[n_terms];
    double* terms = chunk_terms.data() + chunk * n_terms;
    double* log_pi_grad = chunk_log_pi_grad.data() + chunk * K;
    Scalar* mu_grad = chunk_mu_grad.data() + chunk * K * D;
    std::fill(mu_grad, mu_grad + K * D, Scalar(0));
    for (Index n = chunks.begin(chunk); n < chunks.end(chunk); ++n) {
      const Index label = labels[static_cast<std::size_t>(n)];
      for (Index y = 0; y < K; ++y) {
        detail::RowVectorMap<Scalar> dy(diff.data() + y * D, D);
        dy = detail::ConstRowVectorMap<Scalar>(space.inter_row(y, n), D) -
             detail::ConstRowVectorMap<Scalar>(space.mu(y), D);
        d[y] = dy.squaredNorm() + space.inter_offset(y);
      }
      Scalar* diff_intra = diff.data() + K * D;
      if (intra) {
        for (Index k = 0; k < M; ++k) {
          detail::RowVectorMap<Scalar> dk(diff_intra + k * D, D);
          dk = detail::ConstRowVectorMap<Scalar>(space.row(label, n), D) -
               detail::ConstRowVectorMap<Scalar>(space.center(label, k), D);
          e[k] = dk.squaredNorm() + space.offset(label);
        }
      }
      prior_row(config, d, e, log_pi.data(), intra ? log_w.data() + label * M : nullptr,
                static_cast<int>(label), ldj[n], row_terms, grad_d, grad_e, grad_log_pi, grad_log_w,
                gldj + n);
      for (int t = 0; t < n_terms; ++t) terms[t] += double(row_terms[t]);
      for (Index y = 0; y < K; ++y) log_pi_grad[y] += double(grad_log_pi[y]);

      // dd_y/dz = 2 (z - mu_y) = -dd_y/dmu_y (in class y's space with factors: the gradient
      // goes to the row A_y z_n, which every class has its own of).
      auto gz_row = [&](Index y, bool through_factor) {
        return detail::RowVectorMap<Scalar>(
            through_factor ? grad_rows.data() + (y * N + n) * D : gz_data + n * D, D);
      };
      if (!transformed) gz_row(0, false).setZero();
      for (Index y = 0; y < K; ++y) {
        if (std::abs(grad_d[y]) < tiny) continue;
        const detail::ConstRowVectorMap<Scalar> dy(diff.data() + y * D, D);
        gz_row(y, inter_transformed).noalias() += (Scalar(2) * grad_d[y]) * dy;
        detail::RowVectorMap<Scalar>(mu_grad + y * D, D).noalias() -= (Scalar(2) * grad_d[y]) * dy;
      }
      if (intra) {
        const std::size_t class_slot = static_cast<std::size_t>(chunk * K + label);
        Scalar* delta_grad = chunk_delta_grad.data() + (chunk * K + label) * n_deltas * D;
        if (!chunk_has_class[class_slot]) {
          chunk_has_class[class_slot] = 1;
          std::fill(delta_grad, delta_grad + n_deltas * D, Scalar(0));
        }
        double* log_w_grad = chunk_log_w_grad.data() + (chunk * K + label) * M;
        for (Index k = 0; k < M; ++k) {
          // A far centre's share underflows; its products would be subnormal, which costs ~100x
          // per operation on x86, and add nothing representable next to the other terms.
          if (std::abs(grad_e[k]) < tiny) continue;
          log_w_grad[k] += double(grad_log_w[k]);
          const detail::ConstRowVectorMap<Scalar> dk(diff_intra + k * D, D);
          // de_k/dz = 2 (z - m_k)
          gz_row(label, transformed).noalias() += (Scalar(2) * grad_e[k]) * dk;
          if (k > 0) {
            // de_k/ddelta_k = -2 (z - m_k) for k >= 1; m_0 = sg(mu) has no parameter.
            detail::RowVectorMap<Scalar>(delta_grad + (k - 1) * D, D).noalias() -=
                (Scalar(2) * grad_e[k]) * dk;
          }
        }
      }
    }
  });

  // Means of the terms.
  double sums[n_terms] = {0, 0, 0, 0, 0};
  for (Index c = 0; c < chunks.count; ++c) {
    for (int t = 0; t < n_terms; ++t) sums[t] += chunk_terms[static_cast<std::size_t>(c * n_terms + t)];
  }
  LossTerms<Scalar>& terms = out.terms;
  terms.stage = stage;
  terms.objective = Objective::hgad;
  terms.l_g = Scalar(sums[PriorTerm::g] / double(N));
  terms.l_mi = Scalar(sums[PriorTerm::mi] / double(N));
  terms.l_e = Scalar(sums[PriorTerm::e] / double(N));
  double total = options.lambda1 * double(terms.l_g) - options.lambda2 * double(terms.l_mi) + double(terms.l_e);
  if (intra) {
    terms.l_g_intra = Scalar(sums[PriorTerm::g_intra] / double(N));
    terms.l_z = Scalar(sums[PriorTerm::z] / double(N));
    total += double(terms.l_g_intra) + double(terms.l_z);
  }
  terms.total = Scalar(total);

  if (transformed) space.rows_backward(grad_rows.data(), gz_data);

  // mu: the chunks' partial sums of dL/dmu (of dL/d(A_y mu_y) with factors at the class level,
  // brought back).
  {
    Scalar* grad_mu = prior.mu().ensure_grad().data();
    std::vector<Scalar> sum_mu(inter_transformed ? std::size_t(K * D) : 0, Scalar(0));
    detail::RowVectorMap<Scalar> sum(inter_transformed ? sum_mu.data() : grad_mu, K * D);
    for (Index c = 0; c < chunks.count; ++c) {
      sum += detail::ConstRowVectorMap<Scalar>(chunk_mu_grad.data() + c * K * D, K * D);
    }
    if (inter_transformed)
      for (Index y = 0; y < K; ++y) space.center_backward(y, sum_mu.data() + y * D, 1, grad_mu + y * D);
  }

  // phi_inter: only L_g sees log pi: dL/dlog pi_y (prior_row) summed over n, then through
  // log_softmax: dphi_j = g_j - pi_j sum_y g_y.
  {
    Scalar* grad_phi = prior.phi_inter().ensure_grad().data();
    std::vector<double> g(static_cast<std::size_t>(K), 0.0);
    for (Index c = 0; c < chunks.count; ++c) {
      for (Index y = 0; y < K; ++y)
        g[static_cast<std::size_t>(y)] += chunk_log_pi_grad[static_cast<std::size_t>(c * K + y)];
    }
    double g_sum = 0;
    for (double v : g) g_sum += v;
    for (Index y = 0; y < K; ++y) {
      grad_phi[y] += Scalar(detail::softmax_backward_element(
          double(log_pi.data()[y]), g[static_cast<std::size_t>(y)], g_sum, true));
    }
  }

  if (intra) {
    // delta: the chunks' partial sums, for the classes each chunk saw.
    Scalar* grad_delta = prior.delta().ensure_grad().data();
    detail::parallel_for(K, K * chunks.count * n_deltas * D, [&](Index y) {
      std::vector<Scalar> sum_y(transformed ? std::size_t(n_deltas * D) : 0, Scalar(0));
      detail::RowVectorMap<Scalar> grad_y(transformed ? sum_y.data() : grad_delta + y * n_deltas * D,
                                          n_deltas * D);
      for (Index c = 0; c < chunks.count; ++c) {
        if (!chunk_has_class[static_cast<std::size_t>(c * K + y)]) continue;
        grad_y += detail::ConstRowVectorMap<Scalar>(chunk_delta_grad.data() + (c * K + y) * n_deltas * D, n_deltas * D);
      }
      // m_{y,k} = sg(mu_y) + delta_{y,k}: dL/ddelta = (dL/d(A_y m_{y,k})) A_y with factors.
      if (transformed) space.center_backward(y, sum_y.data(), n_deltas, grad_delta + y * n_deltas * D);
    });
    // phi_intra: dphi_{y,j} = sum_{n in y} (g_{n,j} - w_{y,j} sum_k g_{n,k}), g = dL/dlog w.
    Scalar* grad_phi = prior.phi_intra().ensure_grad().data();
    for (Index y = 0; y < K; ++y) {
      std::vector<double> g(static_cast<std::size_t>(M), 0.0);
      for (Index c = 0; c < chunks.count; ++c) {
        for (Index k = 0; k < M; ++k) {
          g[static_cast<std::size_t>(k)] += chunk_log_w_grad[static_cast<std::size_t>((c * K + y) * M + k)];
        }
      }
      double g_sum = 0;
      for (double v : g) g_sum += v;
      for (Index k = 0; k < M; ++k) {
        grad_phi[y * M + k] += Scalar(detail::softmax_backward_element(
            double(log_w.data()[y * M + k]), g[static_cast<std::size_t>(k)], g_sum, true));
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
    const Scalar logp =
        log_density(Scalar(D), -Scalar(0.5) * zn.squaredNorm(), log_jac_det.data()[n]);
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
///   requires: prior != nullptr for Objective::hgad (the NF baseline has none and may pass null).
template <class Scalar>
FusedLoss<Scalar> objective_loss_fused(GaussianMixturePrior<Scalar>* prior, const Tensor<Scalar>& z,
                                       const Tensor<Scalar>& log_jac_det, const std::vector<std::int64_t>& labels,
                                       int stage, const LossOptions& options = {}) {
  detail::check_stage(stage, "objective_loss_fused");
  if (options.log_jac_det_offset != 0) {  // a fixed layer in front of the flow (§2.5)
    Tensor<Scalar> shifted = log_jac_det.clone();
    for (Index n = 0; n < shifted.numel(); ++n) shifted.data()[n] += Scalar(options.log_jac_det_offset);
    LossOptions rest = options;
    rest.log_jac_det_offset = 0;
    return objective_loss_fused(prior, z, shifted, labels, stage, rest);
  }
  if (options.objective == Objective::hgad) {
    check(prior != nullptr, "objective_loss_fused: the HGAD objective needs a prior");
    return hgad_loss_fused(*prior, z, log_jac_det, labels, stage, options);
  }
  FusedLoss<Scalar> out = nf_loss_fused(z, log_jac_det);
  out.terms.stage = stage;
  return out;
}

template <class Scalar>
FusedLoss<Scalar> objective_loss_fused(GaussianMixturePrior<Scalar>& prior, const Tensor<Scalar>& z,
                                       const Tensor<Scalar>& log_jac_det, const std::vector<std::int64_t>& labels,
                                       int stage, const LossOptions& options = {}) {
  return objective_loss_fused(&prior, z, log_jac_det, labels, stage, options);
}

}  // namespace hgad
