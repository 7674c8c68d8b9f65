#pragma once
/// \file
/// The HGAD loss terms (docs/algorithm.md §3.3) and the NF baseline loss, composed from autograd ops.
/// This is the reference path: every gradient comes from the ops' backward rules, so `gradcheck`
/// applies, and the fused CPU path (fused_loss.hpp) is tested against it.
///
/// Notation: z (N, D) latents, log_jac_det (N,) the flow's log|det J| per row, labels / classes (N,)
/// class indices in [0, K), d (N, K) = |z - mu_y|^2, e (N, M) the intra distances, every term a mean
/// over the N rows. Every function takes the prior's optional class factors last (empty: the
/// paper's unit covariances; docs/algorithm.md §3.1.2), which change only how d and e are formed.
///
///     auto terms = hgad::objective_loss(prior, z, log_jac_det, labels, /*stage=*/2);
///     terms.total.backward();   // gradients in z, prior.mu(), prior.delta(), ...

#include <cstdint>
#include <vector>

#include "../autograd/ops.hpp"
#include "../autograd/var.hpp"
#include "../detail/check.hpp"
#include "../prior/gaussian_mixture_prior.hpp"
#include "../prior/prior_row.hpp"
#include "../tensor.hpp"
#include "loss_terms.hpp"

namespace hgad {

namespace detail {

template <class Scalar>
void check_latents(const Var<Scalar>& z, const Var<Scalar>& log_jac_det, const char* where) {
  check(z.value().rank() == 2 && z.rows() >= 1 && z.cols() >= 1, where, ": z must be (N, D), got ",
        z.shape());
  check(log_jac_det.shape() == Shape{z.rows()}, where, ": log_jac_det must be (N,) = (", z.rows(),
        ",), got ", log_jac_det.shape());
}

/// The label-smoothed one-hot q_n = onehot(y_n) (1 - eps) + eps / K (docs/algorithm.md §3.2), (N, K).
template <class Scalar>
Tensor<Scalar> smoothed_one_hot(const std::vector<std::int64_t>& labels, Index n_classes, double eps) {
  const Index N = static_cast<Index>(labels.size());
  Tensor<Scalar> q({N, n_classes});
  for (Index n = 0; n < N; ++n) {
    for (Index y = 0; y < n_classes; ++y) {
      const double one_hot = labels[static_cast<std::size_t>(n)] == y ? 1.0 : 0.0;
      q(n, y) = Scalar(one_hot * (1.0 - eps) + eps / static_cast<double>(n_classes));
    }
  }
  return q;
}

/// LSE_k(-1/2 e_{n,k} + log w_{c_n,k}) (N,): the log-density of z_n under class c_n's intra mixture,
/// up to D c0.
template <class Scalar>
Var<Scalar> intra_log_mixture(const Var<Scalar>& z, const Var<Scalar>& mu, const Var<Scalar>& delta,
                              const Var<Scalar>& phi_intra, const std::vector<std::int64_t>& classes,
                              const Tensor<Scalar>& class_factors) {
  const Var<Scalar> e = intra_class_sqdist(z, mu, delta, classes, class_factors);  // (N, M)
  return logsumexp_rows(add(mul(e, Scalar(-0.5)), log_intra_weights(phi_intra, classes)));
}

}  // namespace detail

/// L_g, the inter-class Gaussian-mixture NLL per dimension (paper Eq. 6, docs/algorithm.md §3.3.1):
///   L_g = mean_n [ -LSE_y( -1/2 |z_n - mu_y|^2 + log pi_y ) - log_jac_det_n ] / D,
/// pi = softmax(phi_inter), not detached; the constant -(D/2) ln 2 pi is omitted.
///   requires: z (N, D), log_jac_det (N,), mu (K, D), phi_inter (K,).   ensures: rank 0.
template <class Scalar>
Var<Scalar> loss_g(const Var<Scalar>& z, const Var<Scalar>& log_jac_det, const Var<Scalar>& mu,
                   const Var<Scalar>& phi_inter, const Tensor<Scalar>& class_factors = Tensor<Scalar>()) {
  detail::check_latents(z, log_jac_det, "loss_g");
  const Var<Scalar> d = inter_class_sqdist(z, mu, class_factors);  // (N, K)
  const Var<Scalar> lse = logsumexp_rows(add(mul(d, Scalar(-0.5)), log_class_weights(phi_inter)));  // (N,)
  return mean(mul(sub(neg(lse), log_jac_det), Scalar(1) / Scalar(z.cols())));
}

/// L_mi, the mutual-information (class repulsion) term (paper Eq. 8, docs/algorithm.md §3.3.2):
///   L_mi = mean_n sum_y q_{n,y} [ log_softmax_y( -1/2 d_{n,.} + sg(log pi) ) - sg(log pi_y) ],
/// q the label-smoothed one-hot with eps = label_smoothing. The objective uses -lambda2 L_mi.
///   requires: z (N, D), mu (K, D), phi_inter (K,), labels[n] in [0, K).   ensures: rank 0.
template <class Scalar>
Var<Scalar> loss_mi(const Var<Scalar>& z, const Var<Scalar>& mu, const Var<Scalar>& phi_inter,
                    const std::vector<std::int64_t>& labels, double label_smoothing = 0.02,
                    const Tensor<Scalar>& class_factors = Tensor<Scalar>()) {
  detail::check_labels(labels, z.rows(), mu.rows(), "loss_mi");
  const Var<Scalar> q(detail::smoothed_one_hot<Scalar>(labels, mu.rows(), label_smoothing));  // (N, K)
  const Var<Scalar> log_pi = detach(log_class_weights(phi_inter));                             // (1, K)
  const Var<Scalar> d = inter_class_sqdist(z, mu, class_factors);                               // (N, K)
  const Var<Scalar> log_posterior = log_softmax_rows(add(mul(d, Scalar(-0.5)), log_pi));       // (N, K)
  return mean(sum_rows(mul(q, sub(log_posterior, log_pi))));
}

/// L_e, the entropy of the inter-class posterior without the prior (paper Eq. 9, §3.3.3):
///   L_e = mean_n -sum_y p_{n,y} log p_{n,y},   p_n = softmax_y( -1/2 |z_n - mu_y|^2 ).
///   requires: z (N, D), mu (K, D).   ensures: rank 0.
template <class Scalar>
Var<Scalar> loss_e(const Var<Scalar>& z, const Var<Scalar>& mu, const Tensor<Scalar>& class_factors = Tensor<Scalar>()) {
  const Var<Scalar> d = inter_class_sqdist(z, mu, class_factors);    // (N, K)
  const Var<Scalar> log_p = log_softmax_rows(mul(d, Scalar(-0.5)));  // (N, K)
  return mean(neg(sum_rows(mul(exp(log_p), log_p))));
}

/// L_g_intra, the intra-class mixture NLL per dimension (docs/algorithm.md §3.3.4):
///   L_g_intra = mean_n [ -LSE_k( -1/2 |z_n - m_{y_n,k}|^2 + log w_{y_n,k} ) - log_jac_det_n ] / D,
/// m_{y,0} = sg(mu_y), m_{y,k} = sg(mu_y) + delta_{y,k}, w_y = softmax(phi_intra[y]).
///   requires: z (N, D), log_jac_det (N,), mu (K, D), delta (K, M-1, D), phi_intra (K, M).
template <class Scalar>
Var<Scalar> loss_g_intra(const Var<Scalar>& z, const Var<Scalar>& log_jac_det, const Var<Scalar>& mu,
                         const Var<Scalar>& delta, const Var<Scalar>& phi_intra,
                         const std::vector<std::int64_t>& labels, const Tensor<Scalar>& class_factors = Tensor<Scalar>()) {
  detail::check_latents(z, log_jac_det, "loss_g_intra");
  const Var<Scalar> lse = detail::intra_log_mixture(z, mu, delta, phi_intra, labels, class_factors);  // (N,)
  return mean(mul(sub(neg(lse), log_jac_det), Scalar(1) / Scalar(z.cols())));
}

/// L_z, CFlow's "maximum likelihood" loss on the intra-class mixture (docs/algorithm.md §3.3.5):
///   logp_n = D c0 + LSE_k( -1/2 |z_n - m_{y_n,k}|^2 + log w_{y_n,k} ) + log_jac_det_n,
///   L_z = mean_n -log sigmoid(logp_n / D) = mean_n softplus(-logp_n / D),   c0 = ln(1/sqrt(2 pi)).
template <class Scalar>
Var<Scalar> loss_z(const Var<Scalar>& z, const Var<Scalar>& log_jac_det, const Var<Scalar>& mu,
                   const Var<Scalar>& delta, const Var<Scalar>& phi_intra,
                   const std::vector<std::int64_t>& labels, const Tensor<Scalar>& class_factors = Tensor<Scalar>()) {
  detail::check_latents(z, log_jac_det, "loss_z");
  const Scalar D = Scalar(z.cols());
  const Var<Scalar> lse = detail::intra_log_mixture(z, mu, delta, phi_intra, labels, class_factors);  // (N,)
  const Var<Scalar> logp = add(add(lse, log_jac_det), Scalar(D * log_normal_constant));  // (N,)
  return mean(softplus(mul(logp, Scalar(-1) / D)));
}

/// The NF baseline's loss (CFlow, docs/algorithm.md §3.3.5 with a single N(0, I) prior):
///   logp_n = D c0 - 1/2 |z_n|^2 + log_jac_det_n,   L = mean_n softplus(-logp_n / D).
template <class Scalar>
Var<Scalar> loss_nf(const Var<Scalar>& z, const Var<Scalar>& log_jac_det) {
  detail::check_latents(z, log_jac_det, "loss_nf");
  const Scalar D = Scalar(z.cols());
  const Var<Scalar> logp =
      add(add(mul(sum_rows(square(z)), Scalar(-0.5)), log_jac_det), Scalar(D * log_normal_constant));
  return mean(softplus(mul(logp, Scalar(-1) / D)));
}

/// Every term of the objective as an autograd graph; terms a stage or objective does not use are
/// null Vars.
template <class Scalar>
struct LossVars {
  Var<Scalar> l_g, l_mi, l_e, l_g_intra, l_z;
  Var<Scalar> total;  ///< rank 0; call total.backward()
  int stage = 1;
  Objective objective = Objective::hgad;

  /// The values of the terms.
  LossTerms<Scalar> values() const {
    LossTerms<Scalar> out;
    auto item = [](const Var<Scalar>& v) { return v.value().item(); };
    out.stage = stage;
    out.objective = objective;
    if (objective == Objective::hgad) {
      out.l_g = item(l_g);
      out.l_mi = item(l_mi);
      out.l_e = item(l_e);
      if (stage == 2) {
        out.l_g_intra = item(l_g_intra);
        out.l_z = item(l_z);
      }
    } else {
      out.l_z = item(l_z);
    }
    out.total = item(total);
    return out;
  }
};

/// The training objective of one level (docs/algorithm.md §3.4) as an autograd graph.
///   HGAD stage 1: total = lambda1 L_g - lambda2 L_mi + L_e  (delta and phi_intra are not in the graph,
///                 so they get no gradient)
///   HGAD stage 2: total = lambda1 L_g - lambda2 L_mi + L_e + L_g_intra + L_z
///   NF:           total = L_z of loss_nf (the prior is not used)
///   requires: z (N, D) with D = prior.dim(), log_jac_det (N,), labels (N,) in [0, K), stage 1 or 2.
template <class Scalar>
LossVars<Scalar> objective_loss(const GaussianMixturePrior<Scalar>& prior, const Var<Scalar>& z,
                                const Var<Scalar>& log_jac_det, const std::vector<std::int64_t>& labels,
                                int stage, const LossOptions& options = {}) {
  detail::check_stage(stage, "objective_loss");
  detail::check_latents(z, log_jac_det, "objective_loss");
  if (options.log_jac_det_offset != 0) {  // a fixed layer in front of the flow (§2.5)
    LossOptions rest = options;
    rest.log_jac_det_offset = 0;
    return objective_loss(prior, z, add(log_jac_det, Scalar(options.log_jac_det_offset)), labels, stage, rest);
  }
  LossVars<Scalar> out;
  out.stage = stage;
  out.objective = options.objective;
  if (options.objective == Objective::nf) {
    out.l_z = loss_nf(z, log_jac_det);
    out.total = out.l_z;
    return out;
  }
  check(z.cols() == prior.dim(), "objective_loss: z has ", z.cols(), " columns, the prior D = ", prior.dim());
  detail::check_labels(labels, z.rows(), prior.n_classes(), "objective_loss");
  // Empty: the paper's unit covariances (the class level keeps them when only the intra-class
  // components carry factors).
  const Tensor<Scalar>& factors = prior.class_factors();
  const Tensor<Scalar>& inter_factors = prior.inter_factors();
  out.l_g = loss_g(z, log_jac_det, prior.mu(), prior.phi_inter(), inter_factors);
  out.l_mi =
      loss_mi(z, prior.mu(), prior.phi_inter(), labels, options.label_smoothing, inter_factors);
  out.l_e = loss_e(z, prior.mu(), inter_factors);
  out.total = add(sub(mul(out.l_g, Scalar(options.lambda1)), mul(out.l_mi, Scalar(options.lambda2))), out.l_e);
  if (stage == 2) {
    out.l_g_intra = loss_g_intra(z, log_jac_det, prior.mu(), prior.delta(), prior.phi_intra(), labels, factors);
    out.l_z = loss_z(z, log_jac_det, prior.mu(), prior.delta(), prior.phi_intra(), labels, factors);
    out.total = add(add(out.total, out.l_g_intra), out.l_z);
  }
  return out;
}

}  // namespace hgad
