#pragma once
/// \file
/// Test-time per-vector scores of docs/algorithm.md §5 (steps 2 and 3) and the inter-class posterior for
/// label-free class prediction (§9.1). They read the current parameter values, build no graph and
/// run on CPU tensors, one parallel pass over the rows.
///
///     auto logp = hgad::score_log_likelihood(prior, z, log_jac_det, classes);   // (N,)
///     auto neg_h = hgad::score_neg_entropy(prior, z);                           // (N,)

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../detail/check.hpp"
#include "../detail/parallel.hpp"
#include "../detail/scalar_math.hpp"
#include "../tensor.hpp"
#include "class_space.hpp"
#include "gaussian_mixture_prior.hpp"
#include "prior_row.hpp"

namespace hgad {

namespace detail {

template <class Scalar>
void check_score_inputs(const Tensor<Scalar>& z, Index dim, const char* where) {
  check(z.device() == Device::cpu, where, ": needs a CPU tensor z");
  check(z.rank() == 2 && z.cols() == dim, where, ": z must be (N, D) with D = ", dim, ", got ",
        z.shape());
}

/// A row of n distances: on the stack for up to 64 classes or centres, on the heap beyond.
template <class Scalar>
class DistanceRow {
 public:
  explicit DistanceRow(Index n) : m_heap(n > 64 ? static_cast<std::size_t>(n) : 0) {}
  Scalar* data() { return m_heap.empty() ? m_stack : m_heap.data(); }

 private:
  Scalar m_stack[64];
  std::vector<Scalar> m_heap;
};

}  // namespace detail

/// The per-dimension log-likelihood of each vector under the intra-class mixture of a given class
/// (docs/algorithm.md §5.2):
///   logp_n = [ D c0 + LSE_k( -1/2 |z_n - m_{c_n,k}|^2 + log w_{c_n,k} ) + log_jac_det_n ] / D.
/// HGAD's code passes the ground-truth class of the test set as c_n; a predicted class works too.
/// With class factors the components have the class's covariance (docs/algorithm.md §3.1.2; the
/// squared distances are class_space.hpp's).
///   requires: CPU tensors, z (N, D), log_jac_det (N,), classes (N,) in [0, K).   ensures: (N,).
template <class Scalar>
Tensor<Scalar> score_log_likelihood(const GaussianMixturePrior<Scalar>& prior, const Tensor<Scalar>& z,
                                    const Tensor<Scalar>& log_jac_det, const std::vector<std::int64_t>& classes) {
  detail::check_score_inputs(z, prior.dim(), "score_log_likelihood");
  const Index N = z.rows(), D = z.cols(), M = prior.n_centers();
  check(log_jac_det.device() == Device::cpu && log_jac_det.shape() == Shape{N},
        "score_log_likelihood: log_jac_det must be a CPU (N,) = (", N, ",) tensor, got ",
        log_jac_det.shape());
  detail::check_labels(classes, N, prior.n_classes(), "score_log_likelihood");
  const ClassSpace<Scalar> space(prior, z, true);
  const Tensor<Scalar> log_w = prior.log_w_values();  // (K, M)
  Tensor<Scalar> out({N});
  detail::parallel_for(N, N * M * D * 3, [&](Index n) {
    const Index c = classes[static_cast<std::size_t>(n)];
    detail::DistanceRow<Scalar> e(M);  // |z_n - m_{c,k}|^2
    for (Index k = 0; k < M; ++k) e.data()[k] = space.squared_distance(c, n, space.center(c, k));
    out.data()[n] = score_log_p_row(static_cast<int>(M), Scalar(D), e.data(), log_w.data() + c * M,
                                    log_jac_det.data()[n]);
  });
  return out;
}

/// The same score for every row under one class c.
template <class Scalar>
Tensor<Scalar> score_log_likelihood(const GaussianMixturePrior<Scalar>& prior, const Tensor<Scalar>& z,
                                    const Tensor<Scalar>& log_jac_det, std::int64_t c) {
  return score_log_likelihood(prior, z, log_jac_det, std::vector<std::int64_t>(static_cast<std::size_t>(z.rows()), c));
}

/// The per-dimension log-likelihood under the NF baseline's N(0, I) prior:
///   logp_n = [ D c0 - 1/2 |z_n|^2 + log_jac_det_n ] / D.
template <class Scalar>
Tensor<Scalar> score_log_likelihood_nf(const Tensor<Scalar>& z, const Tensor<Scalar>& log_jac_det) {
  check(z.device() == Device::cpu && z.rank() == 2, "score_log_likelihood_nf: z must be a CPU (N, D) tensor, got ",
        z.shape());
  const Index N = z.rows(), D = z.cols();
  check(log_jac_det.device() == Device::cpu && log_jac_det.shape() == Shape{N},
        "score_log_likelihood_nf: log_jac_det must be a CPU (N,) = (", N, ",) tensor, got ",
        log_jac_det.shape());
  Tensor<Scalar> out({N});
  detail::parallel_for(N, N * D * 2, [&](Index n) {
    const Eigen::Map<const Eigen::Matrix<Scalar, 1, Eigen::Dynamic>> zn(z.data() + n * D, D);
    out.data()[n] =
        log_density(Scalar(D), -Scalar(0.5) * zn.squaredNorm(), log_jac_det.data()[n]) / Scalar(D);
  });
  return out;
}

namespace detail {

/// out (N, K) = log_softmax_y( -1/2 d_{n,y} + bias_y ), bias = log pi or 0, d the squared distances
/// to the class centres (class_space.hpp).
template <class Scalar>
Tensor<Scalar> inter_log_softmax(const GaussianMixturePrior<Scalar>& prior, const Tensor<Scalar>& z,
                                 const Scalar* bias) {
  const Index N = z.rows(), D = z.cols(), K = prior.n_classes();
  const ClassSpace<Scalar> space(prior, z, false);
  Tensor<Scalar> out({N, K});
  detail::parallel_for(N, N * K * D * 3, [&](Index n) {
    Scalar* row = out.data() + n * K;
    for (Index y = 0; y < K; ++y) {
      row[y] = Scalar(-0.5) * space.inter_squared_distance(y, n) + (bias ? bias[y] : Scalar(0));
    }
    const Scalar lse = detail::logsumexp(row, static_cast<long>(K));
    for (Index y = 0; y < K; ++y) row[y] -= lse;
  });
  return out;
}

}  // namespace detail

/// The negative entropy of the inter-class posterior without the prior (docs/algorithm.md §5.3):
///   negH_n = sum_y p_{n,y} log p_{n,y},   p_n = softmax_y( -1/2 |z_n - mu_y|^2 ).
/// Class-agnostic; it is highest (0) when z_n sits on one class centre.
///   requires: CPU tensor z (N, D).   ensures: (N,).
template <class Scalar>
Tensor<Scalar> score_neg_entropy(const GaussianMixturePrior<Scalar>& prior, const Tensor<Scalar>& z) {
  detail::check_score_inputs(z, prior.dim(), "score_neg_entropy");
  const Index N = z.rows(), D = z.cols(), K = prior.n_classes();
  const ClassSpace<Scalar> space(prior, z, false);
  Tensor<Scalar> out({N});
  detail::parallel_for(N, N * K * D * 3, [&](Index n) {
    detail::DistanceRow<Scalar> d(K);  // |z_n - mu_y|^2 (class_space.hpp)
    for (Index y = 0; y < K; ++y) d.data()[y] = space.inter_squared_distance(y, n);
    Scalar lse;
    out.data()[n] = -class_entropy_row(static_cast<int>(K), d.data(), &lse);
  });
  return out;
}

/// The inter-class posterior p(y | z_n) = softmax_y( -1/2 |z_n - mu_y|^2 + log pi_y ), the Bayes
/// posterior of the class level of the prior (with pi = softmax(phi_inter)); its arg-max is the
/// label-free class prediction of docs/algorithm.md §9.1.
///   requires: CPU tensor z (N, D).   ensures: (N, K), rows sum to 1.
template <class Scalar>
Tensor<Scalar> class_posterior(const GaussianMixturePrior<Scalar>& prior, const Tensor<Scalar>& z) {
  detail::check_score_inputs(z, prior.dim(), "class_posterior");
  const Tensor<Scalar> log_pi = prior.log_pi_values();
  Tensor<Scalar> out = detail::inter_log_softmax<Scalar>(prior, z, log_pi.data());
  for (Index i = 0; i < out.numel(); ++i) out.data()[i] = std::exp(out.data()[i]);
  return out;
}

}  // namespace hgad
