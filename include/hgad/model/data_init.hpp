#pragma once
/// \file
/// The data-dependent start of a model (ModelConfig::init = whiten; docs/algorithm.md §2.5 and
/// §3.1.1): per level, the Ledoit–Wolf whitening of its training vectors in front of the flow,
/// couplings that start at the identity (so the flow is an orthogonal map), and, for the HGAD
/// objective, the class centres at the class means and the intra-class centres at the k-means
/// centres of each class, all in the flow's latent space. At step 0 the NF model is then the
/// Gaussian N(μ, Σ_LW) of the training vectors, and the HGAD model's inter-class mixture has one
/// component N(m_y, Σ_LW) per class mean m_y. HgadModel::fit calls it before the first step.

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "../detail/check.hpp"
#include "../flow/sequence_flow.hpp"
#include "../flow/whitening.hpp"
#include "../prior/center_init.hpp"
#include "../prior/gaussian_mixture_prior.hpp"
#include "../rng.hpp"
#include "../tensor.hpp"
#include "config.hpp"

namespace hgad {

/// Initialises one level from its training features (N, H, W, D) and the image labels (N,):
/// returns the whitening of the level's N·H·W vectors (with one mean, or with a mean per position
/// for WhitenMean::position), zeroes the last layer of every coupling of
/// `flow` (start_flow_as_rotation) and, when `prior` is given, sets μ_y to the image under the flow
/// of the whitened class mean and μ_y + δ_y,k to the images of the intra-class centres
/// (data_centers over at most kmeans_max_vectors vectors of each class, evenly strided; the whole
/// class below that). The flow is linear at that point, so these are the class statistics of the
/// latents themselves. φ keeps its value (uniform weights). With ClassCovariance::class_, each
/// class's components also get the class's covariance (docs/algorithm.md §3.1.2): the Ledoit–Wolf
/// covariance Σ_y of the same vectors' latents, set as the factor A_y = L_y⁻¹ (L_y Lᵀ_y = Σ_y), so
/// that with M = 1 the untrained model is one Gaussian N(m_y, Σ_y) per class; with
/// ClassCovariance::intra only the intra-class components get it, and the class level (its
/// posterior) stays N(μ_y, I).
///   requires: an untrained flow; labels in [0, K) with every class present.
///   throws: hgad::Error as ledoit_wolf_covariance (too few vectors, a non-finite value, zero
///           variance) or data_centers, naming the level.
template <class Scalar>
AffineWhitening<Scalar> initialise_level_from_data(Index level, const Tensor<Scalar>& features,
                                                   const std::vector<std::int64_t>& labels,
                                                   SequenceFlow<Scalar>& flow,
                                                   GaussianMixturePrior<Scalar>* prior,
                                                   IntraCenterInit how, Rng& rng,
                                                   ClassCovariance covariance = ClassCovariance::unit,
                                                   WhitenMean whiten_mean = WhitenMean::shared) {
  check(features.rank() == 4 && features.dim(0) == static_cast<Index>(labels.size()),
        "initialise_level_from_data: level ", level,
        " features must be (N, H, W, D) with N = ", labels.size(), " labels, got ",
        features.shape());
  const Index N = features.dim(0), D = features.dim(3), hw = features.dim(1) * features.dim(2);
  const Tensor<Scalar> rows = features.reshape({N * hw, D});
  const std::string level_features = "the features of level " + std::to_string(level);
  AffineWhitening<Scalar> whitening;
  try {
    whitening = whiten_mean == WhitenMean::position
                    ? AffineWhitening<Scalar>::fit_per_position(rows, hw, level_features)
                    : AffineWhitening<Scalar>::fit(rows, level_features);
  } catch (const Error& e) {
    throw Error(std::string(e.what()) +
                " (the whitening of init = whiten; init = identity, the paper's start, has none)");
  }
  start_flow_as_rotation(flow);
  if (prior == nullptr) return whitening;

  const Index K = prior->n_classes(), M = prior->n_centers();
  std::vector<std::vector<Index>> class_rows(static_cast<std::size_t>(K));
  for (Index i = 0; i < N; ++i) {
    const std::int64_t y = labels[static_cast<std::size_t>(i)];
    check(y >= 0 && y < K, "initialise_level_from_data: label ", y, " of image ", i,
          " is outside [0, ", K, ")");
    for (Index p = 0; p < hw; ++p) class_rows[static_cast<std::size_t>(y)].push_back(i * hw + p);
  }
  std::vector<Index> chosen;
  std::vector<std::int64_t> chosen_labels;
  std::vector<Index> class_begin;  // class y's vectors are chosen[class_begin[y], class_begin[y + 1])
  for (Index y = 0; y < K; ++y) {
    class_begin.push_back(static_cast<Index>(chosen.size()));
    const std::vector<Index>& all = class_rows[static_cast<std::size_t>(y)];
    check(!all.empty(), "initialise_level_from_data: class ", y, " has no training images");
    const Index n = static_cast<Index>(all.size()), n_used = std::min(n, kmeans_max_vectors);
    for (Index r = 0; r < n_used; ++r) {
      chosen.push_back(all[static_cast<std::size_t>(r * n / n_used)]);
      chosen_labels.push_back(y);
    }
  }
  class_begin.push_back(static_cast<Index>(chosen.size()));
  Tensor<Scalar> subset({static_cast<Index>(chosen.size()), D});
  for (std::size_t r = 0; r < chosen.size(); ++r)
    std::copy(rows.data() + chosen[r] * D, rows.data() + (chosen[r] + 1) * D,
              subset.data() + Index(r) * D);
  const Tensor<Scalar> whitened = whitening.forward_rows(subset, chosen);
  const DataCenters<Scalar> centers = data_centers(whitened, chosen_labels, K, M, how, rng);

  // Through the flow, which is an orthogonal map now (its condition has no effect).
  const Tensor<Scalar> cond =
      flow.cond_dim() == 0 ? Tensor<Scalar>() : Tensor<Scalar>({1, flow.cond_dim()});
  const Tensor<Scalar> mu = flow.forward(centers.class_means, cond).out;  // (K, D)
  prior->mu().value().as_matrix() = mu.as_matrix();
  if (M > 1) {
    const Tensor<Scalar> intra =
        flow.forward(centers.intra_centers.reshape({K * (M - 1), D}), cond).out;
    Tensor<Scalar>& delta = prior->delta().value();  // (K, M − 1, D)
    for (Index y = 0; y < K; ++y)
      for (Index k = 0; k < M - 1; ++k)
        for (Index j = 0; j < D; ++j) delta(y, k, j) = intra(y * (M - 1) + k, j) - mu(y, j);
  }
  if (has_class_covariance(covariance)) {
    const Tensor<Scalar> latents = flow.forward(whitened, cond).out;
    Tensor<Scalar> factors({K, D, D});
    for (Index y = 0; y < K; ++y) {
      const std::string what =
          "the latents of class " + std::to_string(y) + " at level " + std::to_string(level);
      const ShrunkCovariance c = ledoit_wolf_covariance(
          latents.slice(class_begin[static_cast<std::size_t>(y)],
                        class_begin[static_cast<std::size_t>(y) + 1]),
          what);
      const Tensor<Scalar> a =
          AffineWhitening<Scalar>::from_covariance(c.mean, c.covariance, what).matrix();
      std::copy(a.data(), a.data() + D * D, factors.data() + y * D * D);
    }
    prior->set_class_factors(std::move(factors), covariance == ClassCovariance::class_);
  }
  return whitening;
}

}  // namespace hgad
