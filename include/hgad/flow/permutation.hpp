#pragma once
/// \file
/// The fixed channel mixing after each AllInOne block: a Haar-random rotation in SO(D)
/// (permute_soft, HGAD) or a random index permutation (docs/algorithm.md §2.2 step 8).

#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "../detail/check.hpp"
#include "../rng.hpp"
#include "../tensor.hpp"

namespace hgad {

namespace detail {

/// The sign (+1, −1, or 0 for a singular matrix) of the determinant of the square matrix whose
/// columns are `columns`, by Gaussian elimination with partial pivoting on a copy.
inline int determinant_sign(std::vector<std::vector<double>> columns) {
  const std::size_t n = columns.size();
  int sign = 1;
  // Eliminate on the transpose (rows = the given columns); det Aᵀ = det A.
  auto& a = columns;
  for (std::size_t k = 0; k < n; ++k) {
    std::size_t pivot = k;
    for (std::size_t i = k + 1; i < n; ++i) {
      if (std::abs(a[i][k]) > std::abs(a[pivot][k])) pivot = i;
    }
    if (a[pivot][k] == 0) return 0;
    if (pivot != k) {
      std::swap(a[pivot], a[k]);
      sign = -sign;
    }
    if (a[k][k] < 0) sign = -sign;
    for (std::size_t i = k + 1; i < n; ++i) {
      const double f = a[i][k] / a[k][k];
      for (std::size_t j = k; j < n; ++j) a[i][j] -= f * a[k][j];
    }
  }
  return sign;
}

}  // namespace detail

/// A Haar-distributed random rotation R in SO(D) (scipy's `special_ortho_group`), drawn from `rng`.
///
/// The QR decomposition A = QR of a D x D matrix of i.i.d. N(0, 1) draws, normalised so that R has
/// a positive diagonal, gives a Haar-distributed orthogonal Q (Mezzadri 2007, "How to generate
/// random matrices from the classical compact groups"); negating the first column when
/// det Q = −1 maps O(D) onto SO(D) and keeps the Haar measure. Q is computed column by column by
/// Gram-Schmidt with one re-orthogonalisation pass ("twice is enough", Giraud et al. 2005), whose
/// R has a positive diagonal by construction, in double, and rounded once to `Scalar`.
///
/// requires: D >= 1.   ensures: RᵀR = I and det R = +1 (to rounding).
template <class Scalar>
Tensor<Scalar> random_rotation(Index D, Rng& rng) {
  check(D >= 1, "random_rotation: dimension ", D, " must be >= 1");
  const auto n = static_cast<std::size_t>(D);
  // q[j] is column j of A, then of Q.
  std::vector<std::vector<double>> q(n, std::vector<double>(n));
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t j = 0; j < n; ++j) q[j][i] = rng.normal();
  }
  for (std::size_t j = 0; j < n; ++j) {
    std::vector<double>& v = q[j];
    for (int pass = 0; pass < 2; ++pass) {
      for (std::size_t k = 0; k < j; ++k) {
        double dot = 0;
        for (std::size_t i = 0; i < n; ++i) dot += q[k][i] * v[i];
        for (std::size_t i = 0; i < n; ++i) v[i] -= dot * q[k][i];
      }
    }
    double norm = 0;
    for (double e : v) norm += e * e;
    norm = std::sqrt(norm);
    check(norm > 0, "random_rotation: degenerate Gaussian draw");
    for (double& e : v) e /= norm;
  }
  if (detail::determinant_sign(q) < 0) {
    for (double& e : q[0]) e = -e;
  }
  Tensor<Scalar> out(Shape{D, D});
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t j = 0; j < n; ++j) out(i, j) = static_cast<Scalar>(q[j][i]);
  }
  return out;
}

/// A uniformly random permutation of [0, D) (Fisher-Yates with `rng`).
inline std::vector<Index> random_permutation(Index D, Rng& rng) {
  check(D >= 0, "random_permutation: negative size ", D);
  std::vector<Index> perm(static_cast<std::size_t>(D));
  std::iota(perm.begin(), perm.end(), Index(0));
  for (Index i = D - 1; i > 0; --i) {
    const auto j = static_cast<Index>(rng.uniform_int(static_cast<std::uint64_t>(i + 1)));
    std::swap(perm[static_cast<std::size_t>(i)], perm[static_cast<std::size_t>(j)]);
  }
  return perm;
}

/// The D x D matrix W of the permutation as FrEIA builds it: W[i][perm[i]] = 1, so y = W·u reads
/// y_i = u_{perm[i]}.
template <class Scalar>
Tensor<Scalar> permutation_matrix(const std::vector<Index>& perm) {
  const auto D = static_cast<Index>(perm.size());
  Tensor<Scalar> w(Shape{D, D});
  for (Index i = 0; i < D; ++i) {
    const Index j = perm[static_cast<std::size_t>(i)];
    check(j >= 0 && j < D, "permutation_matrix: entry ", j, " out of range for size ", D);
    w(i, j) = Scalar(1);
  }
  return w;
}

/// The permutation p with W[i][p[i]] = 1 when the D x D matrix W is exactly a permutation matrix
/// (every entry 0 or 1, one 1 per row and column); an empty vector otherwise.
template <class Scalar>
std::vector<Index> permutation_of_matrix(const Tensor<Scalar>& w) {
  check(w.rank() == 2 && w.dim(0) == w.dim(1), "permutation_of_matrix: shape ", w.shape(),
        " is not square");
  const Index D = w.dim(0);
  std::vector<Index> perm(static_cast<std::size_t>(D), -1);
  std::vector<char> used(static_cast<std::size_t>(D), 0);
  for (Index i = 0; i < D; ++i) {
    for (Index j = 0; j < D; ++j) {
      const Scalar v = w(i, j);
      if (v == Scalar(0)) continue;
      if (v != Scalar(1) || perm[static_cast<std::size_t>(i)] >= 0 || used[static_cast<std::size_t>(j)]) {
        return {};
      }
      perm[static_cast<std::size_t>(i)] = j;
      used[static_cast<std::size_t>(j)] = 1;
    }
    if (perm[static_cast<std::size_t>(i)] < 0) return {};
  }
  return perm;
}

}  // namespace hgad
