#pragma once
/// \file
/// Data-dependent centres of the hierarchical prior (docs/algorithm.md §3.1.1; not in the paper):
/// each class centre μ_y at the mean of its class's (whitened) training vectors, and the M − 1
/// further intra-class centres μ_y + δ_y,k at the k-means centres of the class, or at its mean plus
/// small Gaussian noise.
///
///     hgad::Rng rng(seed);
///     auto c = hgad::data_centers(xw, row_labels, K, M, hgad::IntraCenterInit::kmeans, rng);
///     // c.class_means (K, D), c.intra_centers (K, M − 1, D): positions, not offsets

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "../detail/check.hpp"
#include "../detail/text.hpp"
#include "../rng.hpp"
#include "../tensor.hpp"

namespace hgad {

/// Where the M − 1 intra-class centres of a class start (ModelConfig::intra_center_init).
enum class IntraCenterInit {
  kmeans,  ///< the k-means (k = M − 1) centres of the class's vectors, k-means++ seeding
  noise,   ///< the class mean plus N(0, intra_center_noise² I)
};

/// The spelling of each IntraCenterInit in text (the config key `intra_center_init`).
inline constexpr detail::NamedValue<IntraCenterInit> intra_center_init_names[] = {
    {"kmeans", IntraCenterInit::kmeans}, {"noise", IntraCenterInit::noise}};

/// The standard deviation, per component, of IntraCenterInit::noise: small against the unit
/// variance of whitened vectors, so the M centres start together and separate as they train.
inline constexpr double intra_center_noise = 0.1;

/// Lloyd iterations of the k-means of IntraCenterInit::kmeans, and the most vectors of one class it
/// reads (an even stride over the class's vectors beyond that).
inline constexpr int kmeans_iterations = 25;
inline constexpr Index kmeans_max_vectors = 20000;

/// Class means and intra-class centre positions (not offsets) of a set of vectors.
template <class Scalar>
struct DataCenters {
  Tensor<Scalar> class_means;    ///< (K, D)
  Tensor<Scalar> intra_centers;  ///< (K, M − 1, D)
};

namespace detail {

/// k centres of the rows of X (n, D) by k-means (Lloyd) from a k-means++ seeding (Arthur &
/// Vassilvitskii 2007) drawn from `rng`; a centre that loses all its rows keeps its place.
inline Eigen::MatrixXd kmeans_centers(const Eigen::MatrixXd& X, Index k, Rng& rng) {
  const Index n = X.rows(), D = X.cols();
  Eigen::MatrixXd C(k, D);
  Eigen::VectorXd nearest = Eigen::VectorXd::Constant(n, std::numeric_limits<double>::infinity());
  for (Index c = 0; c < k; ++c) {
    Index pick = 0;
    const double total = nearest.allFinite() ? nearest.sum() : 0.0;
    if (c == 0 || !(total > 0)) {
      pick = static_cast<Index>(rng.uniform_int(static_cast<std::uint64_t>(n)));
    } else {  // probability proportional to the squared distance to the nearest chosen centre
      double u = rng.uniform() * total;
      for (pick = 0; pick < n - 1; ++pick) {
        u -= nearest(pick);
        if (u < 0) break;
      }
    }
    C.row(c) = X.row(pick);
    nearest = nearest.cwiseMin((X.rowwise() - C.row(c)).rowwise().squaredNorm());
  }
  std::vector<Index> assign(static_cast<std::size_t>(n), 0);
  for (int it = 0; it < kmeans_iterations; ++it) {
    // |x − c|² = |x|² − 2 x·c + |c|²; the |x|² term does not change the arg-min.
    const Eigen::MatrixXd score =
        (-2.0 * X * C.transpose()).rowwise() + C.rowwise().squaredNorm().transpose();
    bool changed = false;
    for (Index r = 0; r < n; ++r) {
      Index best = 0;
      score.row(r).minCoeff(&best);
      changed = changed || best != assign[static_cast<std::size_t>(r)];
      assign[static_cast<std::size_t>(r)] = best;
    }
    if (!changed && it > 0) break;
    Eigen::MatrixXd sum = Eigen::MatrixXd::Zero(k, D);
    Eigen::VectorXd count = Eigen::VectorXd::Zero(k);
    for (Index r = 0; r < n; ++r) {
      sum.row(assign[static_cast<std::size_t>(r)]) += X.row(r);
      count(assign[static_cast<std::size_t>(r)]) += 1;
    }
    for (Index c = 0; c < k; ++c)
      if (count(c) > 0) C.row(c) = sum.row(c) / count(c);
  }
  return C;
}

}  // namespace detail

/// The class means of the rows of x (N, D) by their labels, and M − 1 intra-class centres per
/// class (docs/algorithm.md §3.1.1): k-means centres (k = M − 1, at most kmeans_max_vectors rows of
/// the class, evenly strided) or the mean plus N(0, intra_center_noise² I), drawn from `rng` class
/// by class.
///   requires: x (N, D) on the CPU; labels (N,) in [0, K); every class has at least one row;
///             M >= 1.
///   throws: hgad::Error naming the class without rows or the label out of range.
template <class Scalar>
DataCenters<Scalar> data_centers(const Tensor<Scalar>& x, const std::vector<std::int64_t>& labels,
                                 Index K, Index M, IntraCenterInit how, Rng& rng) {
  check(x.rank() == 2 && x.device() == Device::cpu,
        "data_centers: x must be a CPU tensor (N, D), got ", x.shape());
  const Index N = x.rows(), D = x.cols();
  check(static_cast<Index>(labels.size()) == N, "data_centers: ", labels.size(), " labels for ", N,
        " vectors");
  check(K >= 1 && M >= 1, "data_centers: need K >= 1 and M >= 1, got K = ", K, ", M = ", M);
  std::vector<std::vector<Index>> rows(static_cast<std::size_t>(K));
  for (Index n = 0; n < N; ++n) {
    const std::int64_t y = labels[static_cast<std::size_t>(n)];
    check(y >= 0 && y < K, "data_centers: label ", y, " of vector ", n, " is outside [0, ", K, ")");
    rows[static_cast<std::size_t>(y)].push_back(n);
  }
  DataCenters<Scalar> out{Tensor<Scalar>({K, D}),
                          Tensor<Scalar>({K, std::max<Index>(M - 1, 0), D})};
  const auto X = x.as_matrix();
  for (Index y = 0; y < K; ++y) {
    const std::vector<Index>& mine = rows[static_cast<std::size_t>(y)];
    check(!mine.empty(), "data_centers: class ", y, " has no vectors");
    const Index n_y = static_cast<Index>(mine.size());
    Eigen::VectorXd mean = Eigen::VectorXd::Zero(D);
    for (Index r : mine) mean += X.row(r).template cast<double>().transpose();
    mean /= double(n_y);
    for (Index j = 0; j < D; ++j) out.class_means(y, j) = Scalar(mean(j));
    if (M == 1) continue;
    Eigen::MatrixXd centers(M - 1, D);
    if (how == IntraCenterInit::kmeans) {
      const Index n_used = std::min(n_y, kmeans_max_vectors);
      Eigen::MatrixXd Xy(n_used, D);
      for (Index r = 0; r < n_used; ++r)  // an even stride over the class's rows
        Xy.row(r) = X.row(mine[static_cast<std::size_t>(r * n_y / n_used)]).template cast<double>();
      centers = detail::kmeans_centers(Xy, M - 1, rng);
    } else {
      for (Index k = 0; k < M - 1; ++k)
        for (Index j = 0; j < D; ++j) centers(k, j) = mean(j) + intra_center_noise * rng.normal();
    }
    for (Index k = 0; k < M - 1; ++k)
      for (Index j = 0; j < D; ++j) out.intra_centers(y, k, j) = Scalar(centers(k, j));
  }
  return out;
}

}  // namespace hgad
