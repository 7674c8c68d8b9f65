#pragma once
/// \file
/// Scalar formulas shared by the element-wise ops, the fused flow, the prior's rows and the
/// losses: the one body of each, compiled for host and device (detail/host_device.hpp).

#include <float.h>

#include "host_device.hpp"

namespace hgad::detail {

/// 1 / (1 + e^-x) without overflow for large |x|.
template <class Scalar>
HGAD_HOST_DEVICE Scalar sigmoid(Scalar x) {
  if (x >= Scalar(0)) return Scalar(1) / (Scalar(1) + hd_exp(-x));
  const Scalar e = hd_exp(x);
  return e / (Scalar(1) + e);
}

/// ln(1 + e^(beta x)) / beta, switching to the identity where beta x > 20 as PyTorch's F.softplus
/// does.
template <class Scalar>
HGAD_HOST_DEVICE Scalar softplus(Scalar x, Scalar beta) {
  const Scalar bx = beta * x;
  if (bx > Scalar(20)) return x;
  return hd_log1p(hd_exp(bx)) / beta;
}

/// d/dx softplus_beta(x) = sigmoid(beta x), with the same linear switch as softplus.
template <class Scalar>
HGAD_HOST_DEVICE Scalar softplus_derivative(Scalar x, Scalar beta) {
  const Scalar bx = beta * x;
  if (bx > Scalar(20)) return Scalar(1);
  return sigmoid(bx);
}

/// min / epsilon of `Scalar` (1e-31 in float, 2e-292 in double): a gradient contribution below it
/// is dropped by the fused paths rather than carried as subnormal numbers, whose arithmetic costs
/// about 100 times as much on x86 and adds nothing representable next to the other terms.
template <class Scalar>
HGAD_HOST_DEVICE Scalar underflow_threshold();
template <>
HGAD_HOST_DEVICE inline float underflow_threshold<float>() {
  return FLT_MIN / FLT_EPSILON;
}
template <>
HGAD_HOST_DEVICE inline double underflow_threshold<double>() {
  return DBL_MIN / DBL_EPSILON;
}

/// ln(sum_j e^(x_j)) of a contiguous row in two passes (the maximum m, then m + ln sum_j e^(x_j -
/// m)), so no exponent overflows; -inf for an empty or all -inf row. x is read through `value(j)`,
/// so a row that is never stored (the prior's -d/2 + log pi) needs no scratch.
template <class Scalar, class Value>
HGAD_HOST_DEVICE Scalar logsumexp_of(long n, const Value& value) {
  Scalar m = -hd_infinity<Scalar>();
  for (long j = 0; j < n; ++j) {
    const Scalar v = value(j);
    m = v > m ? v : m;
  }
  if (!(m > -hd_infinity<Scalar>())) return m;
  Scalar s = 0;
  for (long j = 0; j < n; ++j) s += hd_exp(value(j) - m);
  return m + hd_log(s);
}

/// logsumexp_of a stored row x[0..n).
template <class Scalar>
HGAD_HOST_DEVICE Scalar logsumexp(const Scalar* x, long n) {
  return logsumexp_of<Scalar>(n, [x](long j) { return x[j]; });
}

}  // namespace hgad::detail
