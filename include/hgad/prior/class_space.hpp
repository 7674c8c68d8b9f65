#pragma once
/// \file
/// Where the fast paths form a prior's squared distances (docs/algorithm.md §3.1.2). prior_row
/// (prior_row.hpp) is written for unit-covariance components: it reads d_y = |z - μ_y|² and
/// e_k = |z - m_k|². When the classes carry fixed factors A_y (Σ_y⁻¹ = A_yᵀ A_y), the same
/// formulas hold for
///
///     d_y = |A_y z - A_y μ_y|² − 2 log|det A_y|,   e_k = |A_y z - A_y m_{y,k}|² − 2 log|det A_y|,
///
/// because −d_y / 2 is then log N(z; μ_y, Σ_y) − D c0, exactly as −|z − μ_y|² / 2 is for the unit
/// covariance. A ClassSpace holds, for a batch z, the rows A_y z of every class (one GEMM per
/// class), the centres A_y μ_y and A_y m_{y,k}, and the offsets −2 log|det A_y|; without factors
/// it is a view of z and the centres themselves, with offset 0, and costs nothing. When only the
/// intra-class components carry the factors (GaussianMixturePrior::class_level_factors() false),
/// the class level (inter_row, mu, inter_offset) is that view and the intra level (row, center,
/// offset) the transformed rows. The fused objective (loss/fused_loss.hpp) and the scores
/// (scores.hpp) read their rows through it and bring their gradients back with rows_backward /
/// center_backward.

#include <Eigen/Core>
#include <vector>

#include "../detail/check.hpp"
#include "../tensor.hpp"
#include "gaussian_mixture_prior.hpp"

namespace hgad {

template <class Scalar>
class ClassSpace {
 public:
  /// The class-space rows of z (N, D) and the centres of `prior`; the intra-class centres only when
  /// `intra_centers` (stage 2 and the likelihood score need them). The rows A_y z are formed only
  /// when something reads them: the class level with factors, or the intra-class centres with
  /// factors.
  ///   requires: CPU tensors, z (N, D) with D = prior.dim().
  ClassSpace(const GaussianMixturePrior<Scalar>& prior, const Tensor<Scalar>& z, bool intra_centers)
      : m_factors(prior.class_factors()),
        m_K(prior.n_classes()),
        m_M(prior.n_centers()),
        m_N(z.rows()),
        m_D(prior.dim()),
        m_transformed(prior.class_level_factors() || (prior.has_class_factors() && intra_centers)),
        m_class_level(prior.class_level_factors()),
        m_offset(static_cast<std::size_t>(m_K), Scalar(0)) {
    check(z.device() == Device::cpu && z.rank() == 2 && z.cols() == m_D,
          "ClassSpace: z must be a CPU (N, ", m_D, ") tensor, got ", z.shape());
    const Tensor<Scalar>& mu = prior.mu().value();
    Tensor<Scalar> centers = intra_centers ? prior.intra_center_values() : Tensor<Scalar>();
    m_z = z;
    if (!m_transformed) {
      m_rows = z;
      m_mu = mu;
      m_centers = std::move(centers);
      cache_pointers();
      return;
    }
    m_rows = Tensor<Scalar>::empty({m_K, m_N, m_D});
    m_mu = m_class_level ? Tensor<Scalar>::empty({m_K, m_D}) : mu;
    if (intra_centers) m_centers = Tensor<Scalar>::empty({m_K, m_M, m_D});
    for (Index y = 0; y < m_K; ++y) {
      const auto A = factor(y);
      // Rows are row vectors: A_y x becomes x A_yᵀ.
      matrix(m_rows.data() + y * m_N * m_D, m_N).noalias() =
          const_matrix(z.data(), m_N) * A.transpose();
      if (m_class_level)
        matrix(m_mu.data() + y * m_D, 1).noalias() =
            const_matrix(mu.data() + y * m_D, 1) * A.transpose();
      if (intra_centers)
        matrix(m_centers.data() + y * m_M * m_D, m_M).noalias() =
            const_matrix(centers.data() + y * m_M * m_D, m_M) * A.transpose();
      m_offset[static_cast<std::size_t>(y)] = Scalar(-2) * prior.class_log_det(y);
    }
    cache_pointers();
  }

  /// Whether the rows A_y z were formed (the class level, or the intra-class centres asked for,
  /// carry factors); otherwise every accessor reads z and the centres.
  bool transformed() const { return m_transformed; }
  /// Whether the class level carries them (otherwise inter_row and mu read z and μ).
  bool class_level_transformed() const { return m_class_level; }

  // The accessors below run once per row and class in the fused objective's loop: plain pointer
  // arithmetic on pointers and offsets fixed at construction.

  /// Row n of the batch in class y's space for the intra-class components: A_y z_n, or z_n itself.
  const Scalar* row(Index y, Index n) const { return m_row_data + y * m_class_stride + n * m_D; }
  /// The intra-class centre A_y m_{y,k} (or m_{y,k}).
  ///   requires: constructed with intra_centers.
  const Scalar* center(Index y, Index k) const { return m_center_data + (y * m_M + k) * m_D; }
  /// −2 log|det A_y|, added to every intra-class squared distance of class y (0 without factors).
  Scalar offset(Index y) const { return m_offset[static_cast<std::size_t>(y)]; }

  /// Row n of the batch for the class level of class y: row(y, n), or z_n when the class level
  /// keeps unit covariances.
  const Scalar* inter_row(Index y, Index n) const {
    return m_inter_row_data + y * m_inter_class_stride + n * m_D;
  }
  /// The class centre A_y μ_y, or μ_y (no factors, or a class level of unit covariance).
  const Scalar* mu(Index y) const { return m_mu_data + y * m_D; }
  /// offset(y) for a class level with factors, else 0.
  Scalar inter_offset(Index y) const { return m_class_level ? offset(y) : Scalar(0); }

  /// |row(y, n) − c|² + offset(y): the squared distance prior_row reads, for an intra-class centre
  /// c of class y in its space.
  Scalar squared_distance(Index y, Index n, const Scalar* c) const {
    using Row = Eigen::Map<const Eigen::Matrix<Scalar, 1, Eigen::Dynamic>>;
    return (Row(row(y, n), m_D) - Row(c, m_D)).squaredNorm() + offset(y);
  }
  /// d_y = |inter_row(y, n) − mu(y)|² + inter_offset(y): the distance of row n to class y's centre.
  Scalar inter_squared_distance(Index y, Index n) const {
    using Row = Eigen::Map<const Eigen::Matrix<Scalar, 1, Eigen::Dynamic>>;
    return (Row(inter_row(y, n), m_D) - Row(mu(y), m_D)).squaredNorm() + inter_offset(y);
  }

  /// grad_z (N, D) += Σ_y G_y A_y for the gradients G (K, N, D) with respect to the class-space rows
  /// (d(A_y z)/dz = A_y).   requires: transformed().
  void rows_backward(const Scalar* grad_rows, Scalar* grad_z) const {
    auto gz = matrix(grad_z, m_N);
    for (Index y = 0; y < m_K; ++y)
      gz.noalias() += const_matrix(grad_rows + y * m_N * m_D, m_N) * factor(y);
  }

  /// out (count, D) += g A_y for `count` gradient rows g with respect to centres of class y in its
  /// space (d(A_y c)/dc = A_y).   requires: transformed().
  void center_backward(Index y, const Scalar* grad, Index count, Scalar* out) const {
    matrix(out, count).noalias() += const_matrix(grad, count) * factor(y);
  }

 private:
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

  void cache_pointers() {
    m_row_data = m_rows.data();
    m_class_stride = m_transformed ? m_N * m_D : 0;  // without factors every class reads z
    m_inter_row_data = m_class_level ? m_rows.data() : m_z.data();
    m_inter_class_stride = m_class_level ? m_class_stride : 0;
    m_mu_data = m_mu.data();
    m_center_data = m_centers.numel() > 0 ? m_centers.data() : nullptr;
  }

  Eigen::Map<Matrix> matrix(Scalar* p, Index rows) const { return Eigen::Map<Matrix>(p, rows, m_D); }
  Eigen::Map<const Matrix> const_matrix(const Scalar* p, Index rows) const {
    return Eigen::Map<const Matrix>(p, rows, m_D);
  }
  /// A_y, lower triangular (the zeros above the diagonal are stored).
  Eigen::Map<const Matrix> factor(Index y) const {
    return Eigen::Map<const Matrix>(m_factors.data() + y * m_D * m_D, m_D, m_D);
  }

  Tensor<Scalar> m_factors;  // (K, D, D) or empty (a shared handle, not a copy)
  Index m_K, m_M, m_N, m_D;
  bool m_transformed, m_class_level;
  std::vector<Scalar> m_offset;  // (K,): −2 log|det A_y|, or 0
  Tensor<Scalar> m_z;            // z (N, D) as given (a shared handle)
  Tensor<Scalar> m_rows;     // (K, N, D), or z (N, D)
  Tensor<Scalar> m_mu;       // (K, D): A_y μ_y with class-level factors, else μ
  Tensor<Scalar> m_centers;  // (K, M, D), or empty
  const Scalar* m_row_data = nullptr;
  Index m_class_stride = 0;
  const Scalar* m_inter_row_data = nullptr;
  Index m_inter_class_stride = 0;
  const Scalar* m_mu_data = nullptr;
  const Scalar* m_center_data = nullptr;
};

}  // namespace hgad
