#pragma once
// Values of models and features for the tests that compare two trainings: every parameter in
// order, the relative difference of two values, and float features in another precision. Free of
// Catch2, so that the MPI test program (tests/parallel/mpi_fit.cpp) uses them too.

#include <algorithm>
#include <cmath>
#include <vector>

#include <hgad/model/hgad_model.hpp>

namespace hgad_test {

/// |a - b| / (1 + |b|); infinity when either is not finite.
inline double scaled_difference(double a, double b) {
  if (!std::isfinite(a) || !std::isfinite(b)) return INFINITY;
  return std::abs(a - b) / (1.0 + std::abs(b));
}

/// The largest scaled_difference of two lists of values; infinity when their sizes differ.
template <class Scalar>
double largest_difference(const std::vector<Scalar>& a, const std::vector<Scalar>& b) {
  if (a.size() != b.size()) return INFINITY;
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, scaled_difference(double(a[i]), double(b[i])));
  return worst;
}

/// Every flow and prior parameter value of a model, in order.
template <class Scalar>
std::vector<Scalar> all_parameters(const hgad::HgadModel<Scalar>& model) {
  std::vector<Scalar> out;
  const auto append = [&out](const std::vector<hgad::Var<Scalar>>& parameters) {
    for (const auto& p : parameters) {
      const auto v = p.value().to_vector();
      out.insert(out.end(), v.begin(), v.end());
    }
  };
  for (hgad::Index l = 0; l < model.n_levels(); ++l) {
    append(model.flow(l).parameters());
    if (model.config().objective == hgad::Objective::hgad) append(model.prior(l).parameters());
  }
  return out;
}

/// Float features (per level) as tensors of Scalar.
template <class Scalar>
std::vector<hgad::Tensor<Scalar>> as_scalar(const std::vector<hgad::Tensor<float>>& features) {
  std::vector<hgad::Tensor<Scalar>> out;
  for (const auto& f : features) {
    hgad::Tensor<Scalar> t(f.shape());
    for (hgad::Index i = 0; i < f.numel(); ++i) t.data()[i] = Scalar(f.data()[i]);
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace hgad_test
