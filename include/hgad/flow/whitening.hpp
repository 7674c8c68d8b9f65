#pragma once
/// \file
/// A fixed affine whitening in front of a level's flow (docs/algorithm.md §2.5; not in the paper):
/// x' = W (x − μ), with μ the mean of the level's training vectors and W = L⁻¹, L the Cholesky
/// factor of their Ledoit–Wolf shrunk covariance. Its log-determinant log|det W| = −Σ_j ln L_jj is
/// a constant that joins the flow's log_jac_det wherever a log-likelihood is formed, so that the
/// density stays a density in x. Together with a flow that starts as a rotation
/// (start_flow_as_rotation), the untrained NF model is then exactly the Gaussian N(μ, Σ_LW).
///
///     auto w = hgad::AffineWhitening<float>::fit(x);     // x (N, D) training vectors
///     hgad::Tensor<float> xw = w.forward(x);             // (N, D)
///     double log_det = w.log_jac_det();                  // the same for every row
///
/// A default-constructed AffineWhitening is the identity (log-determinant 0): the paper's model.
///
/// With a mean per position (fit_per_position; ModelConfig::whiten_mean = position), μ is a
/// (P, D) table and row r of an image-major set of rows (P positions per image) subtracts μ_{r mod P}:
/// the untrained NF model is then N(μ_p, Σ) at position p, Σ the Ledoit–Wolf covariance of the
/// vectors less their position's mean. The log-determinant does not change (a translation).

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "../detail/check.hpp"
#include "../tensor.hpp"
#include "sequence_flow.hpp"

namespace hgad {

/// A Ledoit–Wolf shrunk covariance estimate and the statistics it came from (docs/algorithm.md
/// §2.5), in double.
struct ShrunkCovariance {
  Eigen::VectorXd mean;        ///< μ (D,)
  Eigen::MatrixXd covariance;  ///< Σ_LW = ρ m I + (1 − ρ) S, (D, D)
  double shrinkage = 0;        ///< ρ in [0, 1]
  double trace_mean = 0;       ///< m = tr(S) / D
  Index n_samples = 0;
};

/// The Ledoit–Wolf estimate (Ledoit & Wolf 2004, "A well-conditioned estimator for
/// large-dimensional covariance matrices", J. Multivariate Anal. 88; the form of scikit-learn's
/// `ledoit_wolf_shrinkage`) of the covariance of the rows of x (N, D), docs/algorithm.md §2.5:
///
///     S = (1/N) Σ_n (x_n − μ)(x_n − μ)ᵀ,   m = tr(S) / D
///     δ = ‖S − m I‖²_F / D
///     β = (1 / (N D)) · ( (1/N) Σ_n ‖x_n − μ‖⁴ − ‖S‖²_F ),   β ← min(β, δ)
///     ρ = β / δ  (0 when δ = 0),   Σ_LW = ρ m I + (1 − ρ) S
///
/// Sums run in double, in blocks of rows, so N·D need not fit twice in memory.
///   requires: x of rank >= 2 read as (rows, cols) = (N, D), N >= 2, every value finite, and
///             tr(S) > 0 (not all rows equal).
///   throws: hgad::Error naming the failing value (`what` names the data in the message).
template <class Scalar>
ShrunkCovariance ledoit_wolf_covariance(const Tensor<Scalar>& x,
                                        const std::string& what = "features") {
  check(x.rank() >= 2 && x.device() == Device::cpu, "ledoit_wolf_covariance: ", what,
        " must be a CPU tensor of rank >= 2 read as (N, D), got ", x.shape());
  const Index N = x.rows(), D = x.cols();
  check(N >= 2, "ledoit_wolf_covariance: ", what, " hold ", N,
        " vectors; a covariance needs at least 2");
  check(D >= 1, "ledoit_wolf_covariance: ", what, " have dimension 0");
  const auto X = x.as_matrix();  // (N, D), Scalar
  const Index block = 4096;

  ShrunkCovariance out;
  out.n_samples = N;
  out.mean = Eigen::VectorXd::Zero(D);
  for (Index n = 0; n < N; ++n) {
    for (Index j = 0; j < D; ++j) {
      const double v = double(X(n, j));
      check(std::isfinite(v), "ledoit_wolf_covariance: ", what, " hold a non-finite value (", v,
            ") at vector ", n, ", component ", j);
      out.mean(j) += v;
    }
  }
  out.mean /= double(N);

  // S and Σ_n ‖x_n − μ‖⁴, a block of centred rows at a time.
  Eigen::MatrixXd S = Eigen::MatrixXd::Zero(D, D);
  double sum_norm4 = 0;
  Eigen::MatrixXd centred;
  for (Index first = 0; first < N; first += block) {
    const Index rows = std::min(block, N - first);
    centred = X.block(first, 0, rows, D).template cast<double>();
    centred.rowwise() -= out.mean.transpose();
    S.selfadjointView<Eigen::Lower>().rankUpdate(centred.transpose());
    sum_norm4 += centred.rowwise().squaredNorm().array().square().sum();
  }
  S = S.selfadjointView<Eigen::Lower>();
  S /= double(N);

  const double m = S.trace() / double(D);
  check(m > 0, "ledoit_wolf_covariance: ", what, " have zero variance (all ", N,
        " vectors are equal); there is nothing to whiten");
  const double frob2 = S.squaredNorm();
  const double delta = (frob2 - 2 * m * S.trace() + double(D) * m * m) / double(D);
  double beta = (sum_norm4 / double(N) - frob2) / (double(N) * double(D));
  beta = std::min(std::max(beta, 0.0), delta);
  out.shrinkage = delta > 0 ? beta / delta : 0.0;
  out.trace_mean = m;
  out.covariance = (1 - out.shrinkage) * S;
  out.covariance.diagonal().array() += out.shrinkage * m;
  return out;
}

/// The fixed affine layer x' = W (x − μ), W lower triangular with a positive diagonal
/// (docs/algorithm.md §2.5). Not trained: it holds no Var.
template <class Scalar>
class AffineWhitening {
 public:
  /// The identity: forward returns its input, log_jac_det() is 0.
  AffineWhitening() = default;

  /// A whitening with the given μ, (D,) or one row per position (P, D), and W (D, D) (for example
  /// read from a model file).
  ///   requires: W lower triangular with a positive, finite diagonal; every value finite.
  ///   throws: hgad::Error naming the offending entry.
  AffineWhitening(Tensor<Scalar> mean, Tensor<Scalar> matrix)
      : m_mean(std::move(mean)), m_matrix(std::move(matrix)) {
    check((m_mean.rank() == 1 || m_mean.rank() == 2) && m_mean.numel() >= 1,
          "AffineWhitening: the mean must be (D,) or (positions, D), got ", m_mean.shape());
    const Index D = m_mean.dim(m_mean.rank() - 1);
    check(m_matrix.shape() == Shape({D, D}), "AffineWhitening: the matrix must be (D, D) = (", D,
          ", ", D, "), got ", m_matrix.shape());
    m_mean = m_mean.cpu();
    m_matrix = m_matrix.cpu();
    for (Index i = 0; i < m_mean.numel(); ++i)
      check(std::isfinite(double(m_mean.data()[i])), "AffineWhitening: the mean holds ",
            double(m_mean.data()[i]), " at position ", i / D, ", component ", i % D);
    for (Index j = 0; j < D; ++j) {
      for (Index k = 0; k < D; ++k) {
        const double w = double(m_matrix(j, k));
        check(std::isfinite(w), "AffineWhitening: the matrix holds ", w, " at (", j, ", ", k, ")");
        check(k <= j || w == 0, "AffineWhitening: the matrix must be lower triangular, but (", j,
              ", ", k, ") holds ", w);
      }
      check(m_matrix(j, j) > 0, "AffineWhitening: the diagonal of the matrix must be positive, (",
            j, ", ", j, ") holds ", double(m_matrix(j, j)));
    }
    // log|det W| = Σ_j ln W_jj = −Σ_j ln L_jj (W = L⁻¹ is triangular).
    for (Index j = 0; j < D; ++j) m_log_jac_det += std::log(double(m_matrix(j, j)));
  }

  /// The whitening of the rows of x (rank >= 2, read as (N, D)) by their Ledoit–Wolf covariance:
  /// μ their mean, W = L⁻¹ with L Lᵀ = Σ_LW (ledoit_wolf_covariance).
  ///   throws: hgad::Error as ledoit_wolf_covariance, or when Σ_LW is not numerically positive
  ///           definite.
  static AffineWhitening fit(const Tensor<Scalar>& x, const std::string& what = "features") {
    const ShrunkCovariance c = ledoit_wolf_covariance(x, what);
    return from_covariance(c.mean, c.covariance, what);
  }

  /// The whitening of an image-major set of rows x (rank >= 2, read as (N·P, D); P rows per image,
  /// position p of every image at rows p, P + p, 2P + p, ...) with a mean per position: μ_p the mean
  /// of position p's rows, W = L⁻¹ with L Lᵀ the Ledoit–Wolf covariance of the rows less their
  /// position's mean (the residuals' own mean, zero but for rounding, joins μ_p).
  ///   requires: P >= 1 dividing the number of rows, at least two images.
  ///   throws: hgad::Error as fit.
  static AffineWhitening fit_per_position(const Tensor<Scalar>& x, Index positions,
                                          const std::string& what = "features") {
    check(x.rank() >= 2 && x.device() == Device::cpu && positions >= 1 && x.rows() % positions == 0 &&
              x.rows() / positions >= 2,
          "AffineWhitening::fit_per_position: ", what, " must be a CPU tensor of at least two images of ",
          positions, " positions, got ", x.shape());
    const Index P = positions, N = x.rows() / P, D = x.cols();
    const auto X = x.as_matrix();
    Eigen::MatrixXd means = Eigen::MatrixXd::Zero(P, D);
    for (Index n = 0; n < N; ++n) means += X.block(n * P, 0, P, D).template cast<double>();
    means /= double(N);
    Tensor<Scalar> residuals = Tensor<Scalar>::empty({N * P, D});
    auto R = residuals.as_matrix();
    for (Index n = 0; n < N; ++n)
      R.block(n * P, 0, P, D) =
          (X.block(n * P, 0, P, D).template cast<double>() - means).template cast<Scalar>();
    const ShrunkCovariance c = ledoit_wolf_covariance(residuals, what + " less their position's mean");
    AffineWhitening shared = from_covariance(c.mean, c.covariance, what);
    Tensor<Scalar> mu({P, D});
    for (Index p = 0; p < P; ++p)
      for (Index j = 0; j < D; ++j) mu(p, j) = Scalar(means(p, j) + c.mean(j));
    return AffineWhitening(std::move(mu), shared.m_matrix);
  }

  /// μ and W = L⁻¹ of a given mean and covariance, L L^T = covariance.
  static AffineWhitening from_covariance(const Eigen::VectorXd& mean,
                                         const Eigen::MatrixXd& covariance,
                                         const std::string& what = "features") {
    const Index D = mean.size();
    const Eigen::LLT<Eigen::MatrixXd> llt(covariance);
    check(llt.info() == Eigen::Success, "AffineWhitening: the covariance of ", what,
          " is not positive definite (Cholesky failed)");
    const Eigen::MatrixXd L = llt.matrixL();
    const Eigen::MatrixXd W =
        L.triangularView<Eigen::Lower>().solve(Eigen::MatrixXd::Identity(D, D));
    Tensor<Scalar> mu({D}), w({D, D});
    for (Index j = 0; j < D; ++j) {
      mu(j) = Scalar(mean(j));
      for (Index k = 0; k <= j; ++k) w(j, k) = Scalar(W(j, k));
    }
    return AffineWhitening(std::move(mu), std::move(w));
  }

  /// Whether this is the identity (no statistics held).
  bool is_identity() const { return m_matrix.numel() == 0; }
  /// D; 0 for the identity.
  Index dim() const { return is_identity() ? 0 : m_matrix.dim(0); }
  /// P, the positions of a mean per position; 0 for one mean (and for the identity).
  Index positions() const { return m_mean.rank() == 2 ? m_mean.dim(0) : 0; }
  /// μ: (D,), or (P, D) with a mean per position; empty for the identity.
  const Tensor<Scalar>& mean() const { return m_mean; }
  /// W = L⁻¹ (D, D), lower triangular; empty for the identity.
  const Tensor<Scalar>& matrix() const { return m_matrix; }
  /// log|det ∂x'/∂x| = Σ_j ln W_jj = −Σ_j ln L_jj, the same for every row (0 for the identity).
  double log_jac_det() const { return m_log_jac_det; }

  /// x' = (x − μ) Wᵀ row by row, (N, D); x itself (shared, not copied) for the identity. With a
  /// mean per position, x is image-major: row r subtracts μ_{r mod P}.
  ///   requires: x (N, D) on the CPU with D = dim(); N a multiple of P with a mean per position.
  Tensor<Scalar> forward(const Tensor<Scalar>& x) const {
    if (is_identity()) return x;
    check(positions() == 0 || (x.rank() == 2 && x.rows() % positions() == 0),
          "AffineWhitening::forward: a mean per position needs whole images of ", positions(),
          " rows, got ", x.shape());
    return whiten(x, [P = positions()](Index r) { return P == 0 ? Index(0) : r % P; });
  }

  /// forward() of rows picked from an image-major set: x's row i is row `row_index[i]` of the set
  /// (its position row_index[i] mod P).
  ///   requires: as forward, with one index per row of x.
  Tensor<Scalar> forward_rows(const Tensor<Scalar>& x, const std::vector<Index>& row_index) const {
    if (is_identity()) return x;
    check(x.rank() == 2 && static_cast<Index>(row_index.size()) == x.rows(),
          "AffineWhitening::forward_rows: ", row_index.size(), " row indices for x of shape ",
          x.shape());
    return whiten(x, [&row_index, P = positions()](Index r) {
      return P == 0 ? Index(0) : row_index[static_cast<std::size_t>(r)] % P;
    });
  }

  /// Adds log_jac_det() to every entry of a flow's log-determinants (N,).
  void add_log_jac_det(Tensor<Scalar>& log_jac_det) const {
    if (is_identity()) return;
    const Scalar c = Scalar(m_log_jac_det);
    for (Index n = 0; n < log_jac_det.numel(); ++n) log_jac_det.data()[n] += c;
  }

 private:
  /// (x − μ_{mean_row(r)}) Wᵀ for every row r of x: the one body of forward and forward_rows.
  template <class MeanRow>
  Tensor<Scalar> whiten(const Tensor<Scalar>& x, const MeanRow& mean_row) const {
    check(x.rank() == 2 && x.cols() == dim() && x.device() == Device::cpu,
          "AffineWhitening::forward: x must be a CPU tensor (N, ", dim(), "), got ",
          x.shape());
    const Index D = dim();
    Tensor<Scalar> out = Tensor<Scalar>::empty(x.shape());
    auto Y = out.as_matrix();
    Y = x.as_matrix();
    for (Index r = 0; r < Y.rows(); ++r) {
      const Scalar* mu = m_mean.data() + mean_row(r) * D;
      for (Index j = 0; j < D; ++j) Y(r, j) -= mu[j];
    }
    // (N, D) · Wᵀ with W lower triangular: Y ← Y Wᵀ = (W Yᵀ)ᵀ.
    const auto W = m_matrix.as_matrix();
    Y = (Y * W.transpose()).eval();
    return out;
  }

  Tensor<Scalar> m_mean;    // (D,), or (P, D) with a mean per position
  Tensor<Scalar> m_matrix;  // (D, D)
  double m_log_jac_det = 0;
};

/// Makes every coupling of `flow` start as the identity by zeroing the last layer of its subnet
/// (fc2.weight, fc2.bias: s = t = 0, as Glow initialises its couplings), so that with the global
/// affine at its start (g = 1, b = 0) each block is its fixed rotation R and the whole flow is an
/// orthogonal map with log-determinant 0 (docs/algorithm.md §2.5). The first layer keeps its
/// random values, so the gradients reach it once fc2 has moved.
///   requires: an untrained flow (its global affine at g = 1, b = 0) for the flow to be a rotation.
template <class Scalar>
void start_flow_as_rotation(SequenceFlow<Scalar>& flow) {
  const auto ends_with = [](const std::string& name, const std::string& suffix) {
    return name.size() >= suffix.size() &&
           name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  for (const auto& [name, var] : flow.named_parameters()) {
    if (!ends_with(name, ".fc2.weight") && !ends_with(name, ".fc2.bias")) continue;
    flow.set_parameter(name, Tensor<Scalar>(var.value().shape()));  // zeros
  }
}

}  // namespace hgad
