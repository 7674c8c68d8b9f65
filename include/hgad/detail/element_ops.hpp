#pragma once
/// \file
/// The element bodies of the Backend interface's maps (backend.hpp): every UnaryOp and BinaryOp,
/// and one element of a softmax row and of its backward. The CPU backend's loops and the CUDA
/// kernels (cuda/kernels.cuh) both call these, so the two backends compute the same formula.

#include "../backend.hpp"
#include "host_device.hpp"
#include "scalar_math.hpp"

namespace hgad::detail {

/// y = f(x; param) for every UnaryOp (definitions in backend.hpp). Called with a constant op (as
/// CpuBackend::with_op does), the switch folds away and the caller's loop vectorises.
template <class Scalar>
HGAD_HOST_DEVICE Scalar unary_op(UnaryOp op, Scalar x, Scalar param) {
  switch (op) {
    case UnaryOp::identity: return x;
    case UnaryOp::neg: return -x;
    case UnaryOp::exp: return hd_exp(x);
    case UnaryOp::log: return hd_log(x);
    case UnaryOp::tanh: return hd_tanh(x);
    case UnaryOp::sigmoid: return sigmoid(x);
    case UnaryOp::softplus: return softplus(x, param);
    case UnaryOp::relu: return x > Scalar(0) ? x : Scalar(0);
    case UnaryOp::square: return x * x;
    case UnaryOp::scale: return param * x;
    case UnaryOp::add_scalar: return x + param;
    case UnaryOp::reciprocal: return Scalar(1) / x;
  }
  return x;
}

/// y = f(a, b; param) for every BinaryOp; the *_backward ops are the unary derivatives:
/// relu' = [x > 0], tanh' = 1 - tanh^2, sigmoid' = s (1 - s), softplus_beta' = sigmoid(beta x).
template <class Scalar>
HGAD_HOST_DEVICE Scalar binary_op(BinaryOp op, Scalar a, Scalar b, Scalar param) {
  switch (op) {
    case BinaryOp::add: return a + b;
    case BinaryOp::sub: return a - b;
    case BinaryOp::mul: return a * b;
    case BinaryOp::div: return a / b;
    case BinaryOp::relu_backward: return a > Scalar(0) ? b : Scalar(0);
    case BinaryOp::tanh_backward: return b * (Scalar(1) - a * a);
    case BinaryOp::sigmoid_backward: return b * a * (Scalar(1) - a);
    case BinaryOp::softplus_backward: return b * softplus_derivative(a, param);
  }
  return a;
}

/// One element of softmax (log = false) or log-softmax (log = true) of a row, given the row's
/// log-sum-exp: e^(x - lse) or x - lse.
template <class Scalar>
HGAD_HOST_DEVICE Scalar softmax_element(Scalar x, Scalar lse, bool log) {
  return log ? x - lse : hd_exp(x - lse);
}

/// The per-element term of the row statistic of softmax_backward_element: g (log) or g y.
template <class Scalar>
HGAD_HOST_DEVICE Scalar softmax_backward_row_term(Scalar y, Scalar gy, bool log) {
  return log ? gy : gy * y;
}

/// One element of the gradient through a softmax row, given the row statistic `row` (the sum of
/// softmax_backward_row_term over the row):
/// log-softmax y = x - lse(x): dL/dx_j = g_j - e^(y_j) sum_k g_k;
/// softmax y = e^(x - lse(x)): dL/dx_j = y_j (g_j - sum_k g_k y_k).
template <class Scalar>
HGAD_HOST_DEVICE Scalar softmax_backward_element(Scalar y, Scalar gy, Scalar row, bool log) {
  return log ? gy - hd_exp(y) * row : y * (gy - row);
}

/// The gradient through the log-softmax of a short row given by its logits phi (n,) (the prior's
/// log pi = log_softmax(phi_inter) and log w = log_softmax(phi_intra)): y = phi - LSE(phi),
/// dL/dphi_j = g_j - softmax(phi)_j sum_k g_k (softmax_backward_element). g_phi is set, or added
/// to when `accumulate`.
template <class Scalar>
HGAD_HOST_DEVICE void log_softmax_row_backward(const Scalar* phi, int n, const Scalar* g,
                                               Scalar* g_phi, bool accumulate = false) {
  const Scalar lse = logsumexp(phi, n);
  Scalar total = 0;
  for (int j = 0; j < n; ++j) total += softmax_backward_row_term(phi[j] - lse, g[j], true);
  for (int j = 0; j < n; ++j) {
    const Scalar v = softmax_backward_element(phi[j] - lse, g[j], total, true);
    g_phi[j] = accumulate ? g_phi[j] + v : v;
  }
}

}  // namespace hgad::detail
