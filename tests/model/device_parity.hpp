#pragma once
// The comparison of an HgadModel trained or scored on another level device with the same model on
// the CPU: the largest difference over every parameter, and over the raw scores and class
// posteriors of a set of images, each as |a - b| / (1 + |b|).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <hgad/model/hgad_model.hpp>

#include "model/parameters.hpp"

namespace hgad_test {

/// Every flow and prior parameter of `a` against `b` (models of one configuration).
template <class Scalar>
double max_parameter_difference(const hgad::HgadModel<Scalar>& a, const hgad::HgadModel<Scalar>& b) {
  double worst = 0;
  const auto compare = [&](const std::vector<hgad::Var<Scalar>>& pa, const std::vector<hgad::Var<Scalar>>& pb) {
    REQUIRE(pa.size() == pb.size());
    for (std::size_t i = 0; i < pa.size(); ++i) {
      const auto va = pa[i].value().to_vector(), vb = pb[i].value().to_vector();
      REQUIRE(va.size() == vb.size());
      for (std::size_t k = 0; k < va.size(); ++k) worst = std::max(worst, scaled_difference(va[k], vb[k]));
    }
  };
  for (hgad::Index l = 0; l < a.n_levels(); ++l) {
    compare(a.flow(l).parameters(), b.flow(l).parameters());
    if (a.config().objective == hgad::Objective::hgad) compare(a.prior(l).parameters(), b.prior(l).parameters());
  }
  return worst;
}

/// The raw scores (every level's likelihood and negative-entropy map) and the class posterior of
/// every image of `features`, each scored under its class in `classes`.
template <class Scalar>
double max_score_difference(const hgad::HgadModel<Scalar>& a, const hgad::HgadModel<Scalar>& b,
                            const std::vector<hgad::Tensor<Scalar>>& features,
                            const std::vector<std::int64_t>& classes) {
  double worst = 0;
  for (hgad::Index i = 0; i < features.front().dim(0); ++i) {
    const auto image = hgad::HgadModel<Scalar>::image_view(features, i);
    const auto ra = a.raw_scores(image, classes[static_cast<std::size_t>(i)]);
    const auto rb = b.raw_scores(image, classes[static_cast<std::size_t>(i)]);
    for (std::size_t l = 0; l < ra.log_likelihood.size(); ++l) {
      const auto la = ra.log_likelihood[l].to_vector(), lb = rb.log_likelihood[l].to_vector();
      for (std::size_t k = 0; k < la.size(); ++k) worst = std::max(worst, scaled_difference(la[k], lb[k]));
    }
    for (std::size_t l = 0; l < ra.neg_entropy.size(); ++l) {
      const auto ea = ra.neg_entropy[l].to_vector(), eb = rb.neg_entropy[l].to_vector();
      for (std::size_t k = 0; k < ea.size(); ++k) worst = std::max(worst, scaled_difference(ea[k], eb[k]));
    }
    for (std::size_t y = 0; y < ra.class_posterior.size(); ++y)
      worst = std::max(worst, scaled_difference(ra.class_posterior[y], rb.class_posterior[y]));
  }
  return worst;
}

}  // namespace hgad_test
