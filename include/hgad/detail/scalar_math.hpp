#pragma once
/// \file
/// Scalar formulas shared by the element-wise kernels, the fused flow and the losses, written
/// once so every path computes the same thing.

#include <cmath>
#include <limits>

namespace hgad::detail {

/// ln(1 + e^(beta x)) / beta, switching to the identity where beta x > 20 as PyTorch does.
template <class Scalar>
Scalar softplus(Scalar x, Scalar beta) {
  const Scalar bx = beta * x;
  if (bx > Scalar(20)) return x;
  return std::log1p(std::exp(bx)) / beta;
}

/// 1 / (1 + e^-x) without overflow for large |x|.
template <class Scalar>
Scalar sigmoid(Scalar x) {
  if (x >= Scalar(0)) return Scalar(1) / (Scalar(1) + std::exp(-x));
  const Scalar e = std::exp(x);
  return e / (Scalar(1) + e);
}

/// d/dx softplus_beta(x) = sigmoid(beta x), with the same linear switch as softplus.
template <class Scalar>
Scalar softplus_derivative(Scalar x, Scalar beta) {
  const Scalar bx = beta * x;
  if (bx > Scalar(20)) return Scalar(1);
  return sigmoid(bx);
}

/// log(sum_j e^{x_j}) of a contiguous row, stable; -inf for an empty or all -inf row.
template <class Scalar>
Scalar logsumexp(const Scalar* x, long n) {
  Scalar m = -std::numeric_limits<Scalar>::infinity();
  for (long j = 0; j < n; ++j) m = x[j] > m ? x[j] : m;
  if (!(m > -std::numeric_limits<Scalar>::infinity())) return m;
  Scalar s = 0;
  for (long j = 0; j < n; ++j) s += std::exp(x[j] - m);
  return m + std::log(s);
}

}  // namespace hgad::detail
