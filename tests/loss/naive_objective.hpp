#pragma once
// The training objective of docs/algorithm.md §3.3 as plain loops in double: the independent
// reference of the loss tests. A test supplies each row's component log-densities (up to D c0): under
// every class centre, and under its own class's intra-class centres; the unit-covariance tests form
// them as −|z − m|² / 2, the class-covariance tests from Σ_y by Eigen's LLT.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include <hgad/tensor.hpp>

namespace hgad_test {

inline constexpr double naive_c0 = -0.9189385332046727;  // ln(1/sqrt(2 pi))

inline double naive_lse(const std::vector<double>& v) {
  double m = v[0];
  for (double x : v) m = std::max(m, x);
  double s = 0;
  for (double x : v) s += std::exp(x - m);
  return m + std::log(s);
}

inline std::vector<double> naive_log_softmax(const std::vector<double>& x) {
  const double lse = naive_lse(x);
  std::vector<double> out;
  for (double v : x) out.push_back(v - lse);
  return out;
}

struct NaiveTerms {
  double g = 0, mi = 0, e = 0, g_intra = 0, z = 0;
};

/// One row's component log-densities, each log N(z_n; m, Σ) − D c0: `classes` (K) under the class
/// centres, `intra` (M) under the row's class's intra-class centres.
struct NaiveRow {
  std::vector<double> classes, intra;
};

/// The log-likelihood under the row's intra-class mixture, up to D c0: LSE_k(intra_k + log w_k).
inline double naive_intra_log_mixture(const NaiveRow& row, const hgad::Tensor<double>& phi_intra,
                                      std::int64_t label) {
  std::vector<double> phi;
  for (hgad::Index k = 0; k < phi_intra.dim(1); ++k) phi.push_back(phi_intra(label, k));
  const std::vector<double> log_w = naive_log_softmax(phi);
  std::vector<double> f;
  for (std::size_t k = 0; k < row.intra.size(); ++k) f.push_back(row.intra[k] + log_w[k]);
  return naive_lse(f);
}

/// The five terms, means over the rows: L_g, L_mi (log p(z | y) − log p(z) under the smoothed
/// one-hot q with eps), L_e (the entropy of the class likelihoods), L_g_intra and L_z.
inline NaiveTerms naive_objective(hgad::Index dim, const std::vector<std::int64_t>& labels,
                                  const hgad::Tensor<double>& phi_inter,
                                  const hgad::Tensor<double>& phi_intra, const hgad::Tensor<double>& ldj,
                                  const std::function<NaiveRow(hgad::Index)>& row_of, double eps) {
  const hgad::Index N = static_cast<hgad::Index>(labels.size()), K = phi_inter.dim(0);
  const double D = double(dim);
  std::vector<double> phi;
  for (hgad::Index y = 0; y < K; ++y) phi.push_back(phi_inter(y));
  const std::vector<double> log_pi = naive_log_softmax(phi);
  NaiveTerms t;
  for (hgad::Index n = 0; n < N; ++n) {
    const std::int64_t label = labels[static_cast<std::size_t>(n)];
    const NaiveRow row = row_of(n);
    std::vector<double> a(static_cast<std::size_t>(K));
    for (std::size_t y = 0; y < a.size(); ++y) a[y] = row.classes[y] + log_pi[y];
    const double lse_a = naive_lse(a), lse_c = naive_lse(row.classes);
    t.g += (-lse_a - ldj(n)) / D;
    for (std::size_t y = 0; y < a.size(); ++y) {
      const double q = (std::int64_t(y) == label ? 1.0 : 0.0) * (1 - eps) + eps / double(K);
      t.mi += q * ((a[y] - lse_a) - log_pi[y]);
      const double pt = std::exp(row.classes[y] - lse_c);
      t.e -= pt * (row.classes[y] - lse_c);
    }
    const double S = naive_intra_log_mixture(row, phi_intra, label);
    t.g_intra += (-S - ldj(n)) / D;
    const double logp = D * naive_c0 + S + ldj(n);
    t.z += std::log1p(std::exp(-logp / D));
  }
  t.g /= double(N);
  t.mi /= double(N);
  t.e /= double(N);
  t.g_intra /= double(N);
  t.z /= double(N);
  return t;
}

/// λ1 L_g − λ2 L_mi + L_e (+ L_g_intra + L_z in stage 2) with the paper's λ1 = 1, λ2 = 100.
inline double naive_total(const NaiveTerms& t, int stage) {
  double total = 1.0 * t.g - 100.0 * t.mi + t.e;
  if (stage == 2) total += t.g_intra + t.z;
  return total;
}

}  // namespace hgad_test
