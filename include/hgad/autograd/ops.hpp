#pragma once
/// \file
/// The differentiable ops on Var<Scalar>. Each op computes its forward value through the value's
/// Backend (so it runs unchanged on any device) and records, next to it, the backward rule that
/// turns the output gradient g = dL/dy into dL/d(input) for every input that requires a gradient.
///
///     using V = hgad::Var<float>;
///     V x(hgad::Tensor<float>::randn({32, 8}, rng));              // data, no gradient
///     auto w = V::parameter(hgad::Tensor<float>::randn({8, 4}, rng));
///     auto b = V::parameter(hgad::Tensor<float>::zeros({4}));
///     auto loss = hgad::mean(hgad::softplus(hgad::matmul(x, w) + b));
///     loss.backward();                                              // w.grad(), b.grad()
///
/// Broadcasting (add, sub, mul, div): b has a's shape (element-wise); or a is (R, C) and b is (C,)
/// or (1, C), reused for every row; or b is (R, 1), one value per row. add and mul also accept the
/// broadcast operand first. Nothing else broadcasts; every other mismatch throws hgad::Error naming
/// the op and both shapes.

#include <cstdint>
#include <utility>
#include <vector>

#include "../detail/check.hpp"
#include "../tensor.hpp"
#include "var.hpp"

namespace hgad {

namespace detail {

template <class T>
struct TypeIdentity {
  using type = T;
};
/// A Scalar parameter that does not take part in template deduction, so `x * 2` works for
/// Var<float>.
template <class T>
using NonDeduced = typename TypeIdentity<T>::type;

template <class Scalar>
using Graph = GraphAccess<Scalar>;

template <class Scalar>
Tensor<Scalar> empty_like(const Tensor<Scalar>& t) {
  return Tensor<Scalar>::empty(t.shape(), t.backend_ptr());
}

template <class Scalar>
const Tensor<Scalar>& checked_value(const char* op, const Var<Scalar>& a) {
  check(a.defined(), op, ": the input Var is null");
  return a.value();
}

template <class Scalar>
void require_same_device(const char* op, const Tensor<Scalar>& a, const Tensor<Scalar>& b) {
  check(a.device() == b.device(), op, ": operands live on different devices (",
        to_string(a.device()), " ", a.shape(), " and ", to_string(b.device()), " ",
        b.shape(), ")");
}

template <class Scalar>
void require_rank2(const char* op, const Tensor<Scalar>& a) {
  check(a.rank() == 2, op, ": needs a rank-2 (rows, cols) input, got shape ",
        a.shape());
}

/// How the second operand of add/sub/mul/div lines up with the first.
enum class Layout { same, row, col, invalid };

inline Layout broadcast_layout(const Shape& a, const Shape& b) {
  if (a == b) return Layout::same;
  if (a.rank() != 2) return Layout::invalid;
  if ((b.rank() == 1 && b[0] == a[1]) || (b.rank() == 2 && b[0] == 1 && b[1] == a[1]))
    return Layout::row;
  if (b.rank() == 2 && b[0] == a[0] && b[1] == 1) return Layout::col;
  return Layout::invalid;
}

template <class Scalar>
Layout checked_layout(const char* op, const Tensor<Scalar>& a, const Tensor<Scalar>& b) {
  require_same_device(op, a, b);
  const Layout layout = broadcast_layout(a.shape(), b.shape());
  check(layout != Layout::invalid, op, ": cannot broadcast shapes ", a.shape(), " and ",
        b.shape(),
        "; b must have a's shape, or a must be (R, C) and b (C,), (1, C) or (R, 1)");
  return layout;
}

/// y = op(a, b) with b laid out as `layout` relative to a (a's shape).
template <class Scalar>
void binary_kernel(BinaryOp op, Layout layout, const Tensor<Scalar>& a, const Tensor<Scalar>& b,
                   Tensor<Scalar>& y) {
  Backend<Scalar>& backend = a.backend();
  if (layout == Layout::same) {
    backend.binary(op, a.numel(), a.data(), b.data(), y.data(), Scalar(0));
  } else {
    backend.binary_broadcast(op, layout == Layout::row ? Broadcast::row : Broadcast::col, a.rows(),
                             a.cols(), a.data(), b.data(), y.data(), Scalar(0));
  }
}

/// Adds alpha times the gradient `full` (of the broadcast result's shape (R, C)) reduced to the
/// shape of the broadcast operand: the sum over rows (row layout) or over columns (col layout).
/// `owned` says `full` may be kept by the node (same layout only).
template <class Scalar>
void accumulate_reduced(Node<Scalar>& node, Layout layout, const Tensor<Scalar>& full, bool owned,
                        Scalar alpha) {
  Backend<Scalar>& backend = full.backend();
  if (layout == Layout::same) {
    node.accumulate(full, owned, alpha);
  } else if (layout == Layout::row && alpha == Scalar(1)) {
    bool accumulate = false;
    Tensor<Scalar>& grad = node.writable_grad(accumulate);
    backend.sum_cols(full.rows(), full.cols(), full.data(), grad.data(), accumulate);
  } else {
    Tensor<Scalar> reduced = Tensor<Scalar>::empty(node.shape, full.backend_ptr());
    if (layout == Layout::row) {
      backend.sum_cols(full.rows(), full.cols(), full.data(), reduced.data(), false);
    } else {
      backend.reduce_rows(Reduce::sum, full.rows(), full.cols(), full.data(), reduced.data());
    }
    node.accumulate(reduced, true, alpha);
  }
}

/// Adds scale g[i] to every element of row i of the node's (R, C) gradient, g of shape (R,).
template <class Scalar>
void accumulate_row_broadcast(Node<Scalar>& node, const Tensor<Scalar>& g, Scalar scale) {
  Backend<Scalar>& backend = g.backend();
  Tensor<Scalar> source = g;
  if (scale != Scalar(1)) {
    source = empty_like(g);
    backend.unary(UnaryOp::scale, g.numel(), g.data(), source.data(), scale);
  }
  Tensor<Scalar>& grad = node.zeroed_grad();
  backend.binary_broadcast(BinaryOp::add, Broadcast::col, grad.rows(), grad.cols(), grad.data(),
                           source.data(), grad.data(), Scalar(0));
}

/// y = f(a) element-wise through the backend.
template <class Scalar>
Tensor<Scalar> map(UnaryOp op, const Tensor<Scalar>& a, Scalar param = Scalar(0)) {
  Tensor<Scalar> y = empty_like(a);
  a.backend().unary(op, a.numel(), a.data(), y.data(), param);
  return y;
}

/// The backward rule shared by the element-wise maps whose derivative is one BinaryOp:
/// dL/dx = rule(saved, g), `saved` being the forward input or output named by the BinaryOp.
template <class Scalar>
auto binary_backward_rule(BinaryOp rule, Tensor<Scalar> saved, Scalar param = Scalar(0)) {
  return [rule, saved, param](Node<Scalar>& self) {
    Tensor<Scalar> gx = self.scratch();
    self.backend->binary(rule, gx.numel(), saved.data(), self.grad.data(), gx.data(), param);
    self.parent(0)->accumulate(gx, true);
  };
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Matrix product
// ---------------------------------------------------------------------------------------------

/// C = op(A) op(B), op(X) = X or X^T by `trans_a` / `trans_b` (no copy is made for a transpose).
/// requires: A and B rank 2 with matching inner dimensions. ensures: C is (m, n), m and n the outer
/// dimensions of op(A) and op(B).
///
///     auto y = hgad::matmul(x, w);                                      // (N, D) (D, K) -> (N, K)
///     auto gram = hgad::matmul(x, x, hgad::Transpose::yes);             // x^T x, (D, D)
template <class Scalar>
Var<Scalar> matmul(const Var<Scalar>& a, const Var<Scalar>& b, Transpose trans_a = Transpose::no,
                   Transpose trans_b = Transpose::no) {
  const Tensor<Scalar>& A = detail::checked_value("matmul", a);
  const Tensor<Scalar>& B = detail::checked_value("matmul", b);
  check(A.rank() == 2 && B.rank() == 2, "matmul: needs rank-2 operands, got a ",
        A.shape(), " and b ", B.shape());
  detail::require_same_device("matmul", A, B);
  const bool ta = trans_a == Transpose::yes, tb = trans_b == Transpose::yes;
  const Index m = ta ? A.dim(1) : A.dim(0), k = ta ? A.dim(0) : A.dim(1);
  const Index kb = tb ? B.dim(1) : B.dim(0), n = tb ? B.dim(0) : B.dim(1);
  check(k == kb, "matmul: inner dimensions differ: a ", A.shape(),
        ta ? " transposed" : "", " and b ", B.shape(), tb ? " transposed" : "");
  Tensor<Scalar> C = Tensor<Scalar>::empty({m, n}, A.backend_ptr());
  A.backend().gemm(trans_a, trans_b, m, n, k, Scalar(1), A.data(), A.dim(1), B.data(), B.dim(1),
                   Scalar(0), C.data(), n);
  return detail::Graph<Scalar>::make(
      "matmul", C, {&a, &b}, [A, B, trans_a, trans_b, m, n, k](detail::Node<Scalar>& self) {
        // C = op(A) op(B), G = dL/dC (m, n): dL/dop(A) = G op(B)^T, dL/dop(B) = op(A)^T G, so
        //   dL/dA = G op(B)^T (m, k), or op(B) G^T (k, m) when A enters transposed;
        //   dL/dB = op(A)^T G (k, n), or G^T op(A) (n, k) when B enters transposed.
        // GEMM with beta = 1 adds into an existing gradient; beta = 0 fills a fresh one.
        const auto flip = [](Transpose t) {
          return t == Transpose::no ? Transpose::yes : Transpose::no;
        };
        Backend<Scalar>& backend = *self.backend;
        const Tensor<Scalar>& G = self.grad;
        if (auto* pa = self.parent(0)) {
          bool accumulate = false;
          Tensor<Scalar>& gA = pa->writable_grad(accumulate);
          const Scalar beta = accumulate ? Scalar(1) : Scalar(0);
          if (trans_a == Transpose::no) {
            backend.gemm(Transpose::no, flip(trans_b), m, k, n, Scalar(1), G.data(), n, B.data(),
                         B.dim(1), beta, gA.data(), k);
          } else {
            backend.gemm(trans_b, Transpose::yes, k, m, n, Scalar(1), B.data(), B.dim(1), G.data(),
                         n, beta, gA.data(), m);
          }
        }
        if (auto* pb = self.parent(1)) {
          bool accumulate = false;
          Tensor<Scalar>& gB = pb->writable_grad(accumulate);
          const Scalar beta = accumulate ? Scalar(1) : Scalar(0);
          if (trans_b == Transpose::no) {
            backend.gemm(flip(trans_a), Transpose::no, k, n, m, Scalar(1), A.data(), A.dim(1),
                         G.data(), n, beta, gB.data(), n);
          } else {
            backend.gemm(Transpose::yes, trans_a, n, k, m, Scalar(1), G.data(), n, A.data(),
                         A.dim(1), beta, gB.data(), k);
          }
        }
      });
}

/// y = x W + b, a fully connected layer: matmul and a row-broadcast add fused, so the bias is
/// written into the output buffer before the GEMM accumulates onto it (one pass fewer than
/// matmul then add). requires: x (N, D), W (D, K), b (K,) or (1, K). ensures: y (N, K).
template <class Scalar>
Var<Scalar> linear(const Var<Scalar>& x, const Var<Scalar>& w, const Var<Scalar>& b) {
  const Tensor<Scalar>& X = detail::checked_value("linear", x);
  const Tensor<Scalar>& W = detail::checked_value("linear", w);
  const Tensor<Scalar>& B = detail::checked_value("linear", b);
  check(X.rank() == 2 && W.rank() == 2 && X.dim(1) == W.dim(0), "linear: x ", X.shape(),
        " and W ", W.shape(), " do not multiply");
  const Index n = X.dim(0), d = X.dim(1), k = W.dim(1);
  check((B.rank() == 1 && B.dim(0) == k) || (B.rank() == 2 && B.dim(0) == 1 && B.dim(1) == k),
        "linear: bias ", B.shape(), " does not match the output (", n, ", ", k, ")");
  detail::require_same_device("linear", X, W);
  detail::require_same_device("linear", X, B);
  Backend<Scalar>& backend = X.backend();
  Tensor<Scalar> Y = Tensor<Scalar>::empty({n, k}, X.backend_ptr());
  backend.copy2d(n, k, B.data(), 0, Y.data(), k, false);
  backend.gemm(Transpose::no, Transpose::no, n, k, d, Scalar(1), X.data(), d, W.data(), k,
               Scalar(1), Y.data(), k);
  return detail::Graph<Scalar>::make(
      "linear", Y, {&x, &w, &b}, [X, W, n, k, d](detail::Node<Scalar>& self) {
        // y = x W + 1 b^T, G = dL/dy (N, K): dL/dx = G W^T, dL/dW = x^T G, dL/db = sum_rows G.
        Backend<Scalar>& backend = *self.backend;
        const Tensor<Scalar>& G = self.grad;
        bool accumulate = false;
        if (auto* pb = self.parent(2)) {
          Tensor<Scalar>& gb = pb->writable_grad(accumulate);
          backend.sum_cols(n, k, G.data(), gb.data(), accumulate);
        }
        if (auto* pw = self.parent(1)) {
          Tensor<Scalar>& gW = pw->writable_grad(accumulate);
          backend.gemm(Transpose::yes, Transpose::no, d, k, n, Scalar(1), X.data(), d, G.data(), k,
                       accumulate ? Scalar(1) : Scalar(0), gW.data(), k);
        }
        if (auto* px = self.parent(0)) {
          Tensor<Scalar>& gX = px->writable_grad(accumulate);
          backend.gemm(Transpose::no, Transpose::yes, n, d, k, Scalar(1), G.data(), k, W.data(), k,
                       accumulate ? Scalar(1) : Scalar(0), gX.data(), d);
        }
      });
}

// ---------------------------------------------------------------------------------------------
// Element-wise binary ops with broadcasting
// ---------------------------------------------------------------------------------------------

/// y = a + b, b broadcast as described in the file comment.
template <class Scalar>
Var<Scalar> add(const Var<Scalar>& a, const Var<Scalar>& b) {
  const Tensor<Scalar>& A = detail::checked_value("add", a);
  const Tensor<Scalar>& B = detail::checked_value("add", b);
  if (detail::broadcast_layout(A.shape(), B.shape()) == detail::Layout::invalid &&
      detail::broadcast_layout(B.shape(), A.shape()) != detail::Layout::invalid) {
    return add(b, a);
  }
  const detail::Layout layout = detail::checked_layout("add", A, B);
  Tensor<Scalar> Y = detail::empty_like(A);
  detail::binary_kernel(BinaryOp::add, layout, A, B, Y);
  return detail::Graph<Scalar>::make("add", Y, {&a, &b}, [layout](detail::Node<Scalar>& self) {
    // d(a + b)/da = 1, d(a + b)/db = 1 (summed over the broadcast axis).
    if (layout == detail::Layout::same) {
      const bool both = self.parent(0) != nullptr && self.parent(1) != nullptr;
      if (self.parent(0)) self.send_grad(0, Scalar(1), !both);
      if (self.parent(1)) self.send_grad(1, Scalar(1), !both);
      return;
    }
    if (auto* pb = self.parent(1))
      detail::accumulate_reduced(*pb, layout, self.grad, false, Scalar(1));
    if (self.parent(0)) self.send_grad(0);
  });
}

/// y = a - b, b broadcast as described in the file comment.
template <class Scalar>
Var<Scalar> sub(const Var<Scalar>& a, const Var<Scalar>& b) {
  const Tensor<Scalar>& A = detail::checked_value("sub", a);
  const Tensor<Scalar>& B = detail::checked_value("sub", b);
  const detail::Layout layout = detail::checked_layout("sub", A, B);
  Tensor<Scalar> Y = detail::empty_like(A);
  detail::binary_kernel(BinaryOp::sub, layout, A, B, Y);
  return detail::Graph<Scalar>::make("sub", Y, {&a, &b}, [layout](detail::Node<Scalar>& self) {
    // d(a - b)/da = 1, d(a - b)/db = -1 (summed over the broadcast axis).
    if (layout == detail::Layout::same) {
      const bool both = self.parent(0) != nullptr && self.parent(1) != nullptr;
      if (self.parent(0)) self.send_grad(0, Scalar(1), !both);
      if (self.parent(1)) self.send_grad(1, Scalar(-1), !both);
      return;
    }
    if (auto* pb = self.parent(1))
      detail::accumulate_reduced(*pb, layout, self.grad, false, Scalar(-1));
    if (self.parent(0)) self.send_grad(0);
  });
}

/// y = a b element-wise, b broadcast as described in the file comment.
template <class Scalar>
Var<Scalar> mul(const Var<Scalar>& a, const Var<Scalar>& b) {
  const Tensor<Scalar>& A = detail::checked_value("mul", a);
  const Tensor<Scalar>& B = detail::checked_value("mul", b);
  if (detail::broadcast_layout(A.shape(), B.shape()) == detail::Layout::invalid &&
      detail::broadcast_layout(B.shape(), A.shape()) != detail::Layout::invalid) {
    return mul(b, a);
  }
  const detail::Layout layout = detail::checked_layout("mul", A, B);
  Tensor<Scalar> Y = detail::empty_like(A);
  detail::binary_kernel(BinaryOp::mul, layout, A, B, Y);
  return detail::Graph<Scalar>::make(
      "mul", Y, {&a, &b}, [A, B, layout](detail::Node<Scalar>& self) {
        // d(a b)/da = b, d(a b)/db = a (summed over the broadcast axis).
        if (auto* pb = self.parent(1)) {
          Tensor<Scalar> gb = detail::empty_like(A);
          self.backend->binary(BinaryOp::mul, A.numel(), self.grad.data(), A.data(), gb.data(),
                               Scalar(0));
          detail::accumulate_reduced(*pb, layout, gb, true, Scalar(1));
        }
        if (auto* pa = self.parent(0)) {
          Tensor<Scalar> ga = self.scratch();
          detail::binary_kernel(BinaryOp::mul, layout, self.grad, B, ga);
          pa->accumulate(ga, true);
        }
      });
}

/// y = a / b element-wise, b broadcast as described in the file comment.
template <class Scalar>
Var<Scalar> div(const Var<Scalar>& a, const Var<Scalar>& b) {
  const Tensor<Scalar>& A = detail::checked_value("div", a);
  const Tensor<Scalar>& B = detail::checked_value("div", b);
  const detail::Layout layout = detail::checked_layout("div", A, B);
  Tensor<Scalar> Y = detail::empty_like(A);
  detail::binary_kernel(BinaryOp::div, layout, A, B, Y);
  return detail::Graph<Scalar>::make(
      "div", Y, {&a, &b}, [Y, B, layout](detail::Node<Scalar>& self) {
        // d(a / b)/da = 1 / b, d(a / b)/db = -a / b^2 = -y / b (summed over the broadcast axis).
        if (auto* pb = self.parent(1)) {
          Tensor<Scalar> gb = detail::empty_like(Y);
          self.backend->binary(BinaryOp::mul, Y.numel(), self.grad.data(), Y.data(), gb.data(),
                               Scalar(0));
          detail::binary_kernel(BinaryOp::div, layout, gb, B, gb);
          detail::accumulate_reduced(*pb, layout, gb, true, Scalar(-1));
        }
        if (auto* pa = self.parent(0)) {
          Tensor<Scalar> ga = self.scratch();
          detail::binary_kernel(BinaryOp::div, layout, self.grad, B, ga);
          pa->accumulate(ga, true);
        }
      });
}

// ---------------------------------------------------------------------------------------------
// Scalar ops
// ---------------------------------------------------------------------------------------------

/// y = a + s.
template <class Scalar>
Var<Scalar> add(const Var<Scalar>& a, detail::NonDeduced<Scalar> s) {
  Tensor<Scalar> Y = detail::map(UnaryOp::add_scalar, detail::checked_value("add", a), s);
  return detail::Graph<Scalar>::make("add_scalar", Y, {&a}, [](detail::Node<Scalar>& self) {
    // d(a + s)/da = 1.
    self.send_grad(0);
  });
}

/// y = s a.
template <class Scalar>
Var<Scalar> mul(const Var<Scalar>& a, detail::NonDeduced<Scalar> s) {
  Tensor<Scalar> Y = detail::map(UnaryOp::scale, detail::checked_value("mul", a), s);
  return detail::Graph<Scalar>::make("mul_scalar", Y, {&a}, [s](detail::Node<Scalar>& self) {
    // d(s a)/da = s.
    self.send_grad(0, s);
  });
}

// ---------------------------------------------------------------------------------------------
// Element-wise maps
// ---------------------------------------------------------------------------------------------

/// y = -a.
template <class Scalar>
Var<Scalar> neg(const Var<Scalar>& a) {
  Tensor<Scalar> Y = detail::map(UnaryOp::neg, detail::checked_value("neg", a));
  return detail::Graph<Scalar>::make("neg", Y, {&a}, [](detail::Node<Scalar>& self) {
    // d(-a)/da = -1.
    self.send_grad(0, Scalar(-1));
  });
}

/// y = e^a.
template <class Scalar>
Var<Scalar> exp(const Var<Scalar>& a) {
  Tensor<Scalar> Y = detail::map(UnaryOp::exp, detail::checked_value("exp", a));
  return detail::Graph<Scalar>::make("exp", Y, {&a}, [Y](detail::Node<Scalar>& self) {
    // d(e^a)/da = e^a = y.
    Tensor<Scalar> gx = self.scratch();
    self.backend->binary(BinaryOp::mul, gx.numel(), self.grad.data(), Y.data(), gx.data(),
                         Scalar(0));
    self.parent(0)->accumulate(gx, true);
  });
}

/// y = ln a. requires: a > 0 (NaN or -inf otherwise, as in std::log).
template <class Scalar>
Var<Scalar> log(const Var<Scalar>& a) {
  const Tensor<Scalar>& A = detail::checked_value("log", a);
  Tensor<Scalar> Y = detail::map(UnaryOp::log, A);
  return detail::Graph<Scalar>::make("log", Y, {&a}, [A](detail::Node<Scalar>& self) {
    // d(ln a)/da = 1 / a.
    Tensor<Scalar> gx = self.scratch();
    self.backend->binary(BinaryOp::div, gx.numel(), self.grad.data(), A.data(), gx.data(),
                         Scalar(0));
    self.parent(0)->accumulate(gx, true);
  });
}

/// y = 1 / a.
template <class Scalar>
Var<Scalar> reciprocal(const Var<Scalar>& a) {
  Tensor<Scalar> Y = detail::map(UnaryOp::reciprocal, detail::checked_value("reciprocal", a));
  return detail::Graph<Scalar>::make("reciprocal", Y, {&a}, [Y](detail::Node<Scalar>& self) {
    // d(1/a)/da = -1 / a^2 = -y^2.
    Tensor<Scalar> gx = self.scratch();
    self.backend->binary(BinaryOp::mul, gx.numel(), self.grad.data(), Y.data(), gx.data(),
                         Scalar(0));
    self.backend->binary(BinaryOp::mul, gx.numel(), gx.data(), Y.data(), gx.data(), Scalar(0));
    self.parent(0)->accumulate(gx, true, Scalar(-1));
  });
}

/// y = tanh a.
template <class Scalar>
Var<Scalar> tanh(const Var<Scalar>& a) {
  Tensor<Scalar> Y = detail::map(UnaryOp::tanh, detail::checked_value("tanh", a));
  // d(tanh a)/da = 1 - tanh^2 a = 1 - y^2.
  return detail::Graph<Scalar>::make("tanh", Y, {&a},
                                     detail::binary_backward_rule(BinaryOp::tanh_backward, Y));
}

/// y = sigmoid a = 1 / (1 + e^-a), computed without overflow.
template <class Scalar>
Var<Scalar> sigmoid(const Var<Scalar>& a) {
  Tensor<Scalar> Y = detail::map(UnaryOp::sigmoid, detail::checked_value("sigmoid", a));
  // d(sigmoid a)/da = sigmoid(a) (1 - sigmoid(a)) = y (1 - y).
  return detail::Graph<Scalar>::make("sigmoid", Y, {&a},
                                     detail::binary_backward_rule(BinaryOp::sigmoid_backward, Y));
}

/// y = ln(1 + e^(beta a)) / beta, and y = a where beta a > 20 (PyTorch's threshold, where the two
/// agree to float precision), so large inputs neither overflow nor lose their gradient.
/// requires: beta > 0.
template <class Scalar>
Var<Scalar> softplus(const Var<Scalar>& a, detail::NonDeduced<Scalar> beta = Scalar(1)) {
  const Tensor<Scalar>& A = detail::checked_value("softplus", a);
  check(beta > Scalar(0), "softplus: beta must be positive, got ", beta, " for input ",
        A.shape());
  Tensor<Scalar> Y = detail::map(UnaryOp::softplus, A, Scalar(beta));
  // d softplus_beta(a)/da = sigmoid(beta a), and 1 on the linear branch beta a > 20.
  return detail::Graph<Scalar>::make(
      "softplus", Y, {&a},
      detail::binary_backward_rule(BinaryOp::softplus_backward, A, Scalar(beta)));
}

/// y = max(a, 0).
template <class Scalar>
Var<Scalar> relu(const Var<Scalar>& a) {
  Tensor<Scalar> Y = detail::map(UnaryOp::relu, detail::checked_value("relu", a));
  // d max(a, 0)/da = [a > 0] = [y > 0]; the output is saved so the input can be freed.
  return detail::Graph<Scalar>::make("relu", Y, {&a},
                                     detail::binary_backward_rule(BinaryOp::relu_backward, Y));
}

/// y = a^2.
template <class Scalar>
Var<Scalar> square(const Var<Scalar>& a) {
  const Tensor<Scalar>& A = detail::checked_value("square", a);
  Tensor<Scalar> Y = detail::map(UnaryOp::square, A);
  return detail::Graph<Scalar>::make("square", Y, {&a}, [A](detail::Node<Scalar>& self) {
    // d(a^2)/da = 2 a.
    Tensor<Scalar> gx = self.scratch();
    self.backend->binary(BinaryOp::mul, gx.numel(), self.grad.data(), A.data(), gx.data(),
                         Scalar(0));
    self.parent(0)->accumulate(gx, true, Scalar(2));
  });
}

// ---------------------------------------------------------------------------------------------
// Reductions
// ---------------------------------------------------------------------------------------------

namespace detail {

/// sum_i x_i, by rows first (in parallel, and with shorter float accumulations) then over rows.
template <class Scalar>
Scalar total(const Tensor<Scalar>& x) {
  Backend<Scalar>& backend = x.backend();
  if (x.rank() < 2 || x.rows() < 2) return backend.reduce_all(Reduce::sum, x.numel(), x.data());
  Tensor<Scalar> row_sums = Tensor<Scalar>::empty({x.rows()}, x.backend_ptr());
  backend.reduce_rows(Reduce::sum, x.rows(), x.cols(), x.data(), row_sums.data());
  return backend.reduce_all(Reduce::sum, x.rows(), row_sums.data());
}

template <class Scalar>
Var<Scalar> reduce_to_scalar(const char* op, const Var<Scalar>& a, Scalar scale) {
  const Tensor<Scalar>& A = checked_value(op, a);
  Tensor<Scalar> Y = Tensor<Scalar>::empty(Shape{}, A.backend_ptr());
  Y.fill(total(A) * scale);
  return Graph<Scalar>::make(op, Y, {&a}, [scale](Node<Scalar>& self) {
    // d(scale sum_i a_i)/da_j = scale.
    self.parent(0)->accumulate_constant(self.grad.item() * scale);
  });
}

template <class Scalar>
Var<Scalar> reduce_rows(const char* op, const Var<Scalar>& a, Scalar scale) {
  const Tensor<Scalar>& A = checked_value(op, a);
  require_rank2(op, A);
  Tensor<Scalar> Y = Tensor<Scalar>::empty({A.rows()}, A.backend_ptr());
  A.backend().reduce_rows(Reduce::sum, A.rows(), A.cols(), A.data(), Y.data());
  if (scale != Scalar(1)) A.backend().unary(UnaryOp::scale, Y.numel(), Y.data(), Y.data(), scale);
  return Graph<Scalar>::make(op, Y, {&a}, [scale](Node<Scalar>& self) {
    // d(scale sum_j a_ij)/da_ij = scale: g_i is spread along row i.
    accumulate_row_broadcast(*self.parent(0), self.grad, scale);
  });
}

}  // namespace detail

/// sum_i a_i over all elements, as a rank-0 Var.
template <class Scalar>
Var<Scalar> sum(const Var<Scalar>& a) {
  return detail::reduce_to_scalar("sum", a, Scalar(1));
}

/// The mean of all elements, as a rank-0 Var. requires: at least one element.
template <class Scalar>
Var<Scalar> mean(const Var<Scalar>& a) {
  const Index n = detail::checked_value("mean", a).numel();
  check(n > 0, "mean: the input of shape ", a.shape(), " is empty");
  return detail::reduce_to_scalar("mean", a, Scalar(1) / Scalar(n));
}

/// y_i = sum_j a_ij for a rank-2 (R, C) a; y is (R,).
template <class Scalar>
Var<Scalar> sum_rows(const Var<Scalar>& a) {
  return detail::reduce_rows("sum_rows", a, Scalar(1));
}

/// y_i = (1/C) sum_j a_ij for a rank-2 (R, C) a with C > 0; y is (R,).
template <class Scalar>
Var<Scalar> mean_rows(const Var<Scalar>& a) {
  const Tensor<Scalar>& A = detail::checked_value("mean_rows", a);
  detail::require_rank2("mean_rows", A);
  check(A.cols() > 0, "mean_rows: the input of shape ", A.shape(), " has no columns");
  return detail::reduce_rows("mean_rows", a, Scalar(1) / Scalar(A.cols()));
}

/// y_i = ln sum_j e^{a_ij}, computed as m_i + ln sum_j e^{a_ij - m_i} with m_i = max_j a_ij so it
/// neither overflows nor underflows; a is rank 2 (R, C) and y is (R,).
template <class Scalar>
Var<Scalar> logsumexp_rows(const Var<Scalar>& a) {
  const Tensor<Scalar>& A = detail::checked_value("logsumexp_rows", a);
  detail::require_rank2("logsumexp_rows", A);
  Tensor<Scalar> Y = Tensor<Scalar>::empty({A.rows()}, A.backend_ptr());
  A.backend().reduce_rows(Reduce::logsumexp, A.rows(), A.cols(), A.data(), Y.data());
  return detail::Graph<Scalar>::make("logsumexp_rows", Y, {&a}, [A, Y](detail::Node<Scalar>& self) {
    // d lse(a_i)/da_ij = e^{a_ij - y_i} = softmax(a_i)_j, times g_i.
    Backend<Scalar>& backend = *self.backend;
    Tensor<Scalar> gx = detail::empty_like(A);
    backend.binary_broadcast(BinaryOp::sub, Broadcast::col, A.rows(), A.cols(), A.data(), Y.data(),
                             gx.data(), Scalar(0));
    backend.unary(UnaryOp::exp, gx.numel(), gx.data(), gx.data(), Scalar(0));
    backend.binary_broadcast(BinaryOp::mul, Broadcast::col, A.rows(), A.cols(), gx.data(),
                             self.grad.data(), gx.data(), Scalar(0));
    self.parent(0)->accumulate(gx, true);
  });
}

/// y_ij = a_ij - ln sum_k e^{a_ik}, stable (max subtracted); a and y are rank 2 (R, C).
template <class Scalar>
Var<Scalar> log_softmax_rows(const Var<Scalar>& a) {
  const Tensor<Scalar>& A = detail::checked_value("log_softmax_rows", a);
  detail::require_rank2("log_softmax_rows", A);
  Tensor<Scalar> Y = detail::empty_like(A);
  A.backend().softmax_rows(A.rows(), A.cols(), A.data(), Y.data(), true);
  return detail::Graph<Scalar>::make("log_softmax_rows", Y, {&a}, [Y](detail::Node<Scalar>& self) {
    // dL/da_ij = g_ij - softmax(a_i)_j sum_k g_ik, softmax(a_i)_j = e^{y_ij}.
    bool accumulate = false;
    Tensor<Scalar>& gx = self.parent(0)->writable_grad(accumulate);
    self.backend->softmax_rows_backward(Y.rows(), Y.cols(), Y.data(), self.grad.data(), gx.data(),
                                        true, accumulate);
  });
}

/// y_ij = e^{a_ij} / sum_k e^{a_ik}, stable (max subtracted); a and y are rank 2 (R, C).
template <class Scalar>
Var<Scalar> softmax_rows(const Var<Scalar>& a) {
  const Tensor<Scalar>& A = detail::checked_value("softmax_rows", a);
  detail::require_rank2("softmax_rows", A);
  Tensor<Scalar> Y = detail::empty_like(A);
  A.backend().softmax_rows(A.rows(), A.cols(), A.data(), Y.data(), false);
  return detail::Graph<Scalar>::make("softmax_rows", Y, {&a}, [Y](detail::Node<Scalar>& self) {
    // dL/da_ij = y_ij (g_ij - sum_k g_ik y_ik).
    bool accumulate = false;
    Tensor<Scalar>& gx = self.parent(0)->writable_grad(accumulate);
    self.backend->softmax_rows_backward(Y.rows(), Y.cols(), Y.data(), self.grad.data(), gx.data(),
                                        false, accumulate);
  });
}

// ---------------------------------------------------------------------------------------------
// Columns, rows and shapes
// ---------------------------------------------------------------------------------------------

/// [a_0 | a_1 | ...]: rank-2 inputs with equal row counts side by side; y is (R, sum of widths).
template <class Scalar>
Var<Scalar> concat_cols(const std::vector<Var<Scalar>>& parts) {
  check(!parts.empty(), "concat_cols: no inputs");
  const Tensor<Scalar>& first = detail::checked_value("concat_cols", parts[0]);
  detail::require_rank2("concat_cols", first);
  const Index rows = first.dim(0);
  std::vector<Index> widths;
  std::vector<const Var<Scalar>*> inputs;
  Index total_cols = 0;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    const Tensor<Scalar>& part = detail::checked_value("concat_cols", parts[i]);
    check(part.rank() == 2 && part.dim(0) == rows, "concat_cols: input ", i, " has shape ",
          part.shape(), ", input 0 has shape ", first.shape(),
          "; all must be rank 2 with equal rows");
    detail::require_same_device("concat_cols", first, part);
    widths.push_back(part.dim(1));
    inputs.push_back(&parts[i]);
    total_cols += part.dim(1);
  }
  Tensor<Scalar> Y = Tensor<Scalar>::empty({rows, total_cols}, first.backend_ptr());
  Index offset = 0;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    first.backend().copy2d(rows, widths[i], parts[i].value().data(), widths[i], Y.data() + offset,
                           total_cols, false);
    offset += widths[i];
  }
  return detail::Graph<Scalar>::make(
      "concat_cols", Y, inputs, [widths, rows, total_cols](detail::Node<Scalar>& self) {
        // dL/da_i is the block of columns of g that a_i filled.
        Index begin = 0;
        for (std::size_t i = 0; i < widths.size(); ++i) {
          if (auto* p = self.parent(i)) {
            bool accumulate = false;
            Tensor<Scalar>& gx = p->writable_grad(accumulate);
            self.backend->copy2d(rows, widths[i], self.grad.data() + begin, total_cols, gx.data(),
                                 widths[i], accumulate);
          }
          begin += widths[i];
        }
      });
}

/// Columns [begin, end) of a rank-2 a, copied; y is (R, end - begin).
template <class Scalar>
Var<Scalar> slice_cols(const Var<Scalar>& a, Index begin, Index end) {
  const Tensor<Scalar>& A = detail::checked_value("slice_cols", a);
  detail::require_rank2("slice_cols", A);
  const Index rows = A.dim(0), cols = A.dim(1), width = end - begin;
  check(0 <= begin && begin <= end && end <= cols, "slice_cols: columns [", begin, ", ", end,
        ") out of range for shape ", A.shape());
  Tensor<Scalar> Y = Tensor<Scalar>::empty({rows, width}, A.backend_ptr());
  A.backend().copy2d(rows, width, A.data() + begin, cols, Y.data(), width, false);
  return detail::Graph<Scalar>::make(
      "slice_cols", Y, {&a}, [rows, cols, width, begin](detail::Node<Scalar>& self) {
        // dL/da is g in columns [begin, end) and zero elsewhere.
        Tensor<Scalar>& gx = self.parent(0)->zeroed_grad();
        self.backend->copy2d(rows, width, self.grad.data(), width, gx.data() + begin, cols, true);
      });
}

/// a split into consecutive column blocks of the given widths, which must add up to a's columns.
template <class Scalar>
std::vector<Var<Scalar>> split_cols(const Var<Scalar>& a, const std::vector<Index>& widths) {
  const Tensor<Scalar>& A = detail::checked_value("split_cols", a);
  detail::require_rank2("split_cols", A);
  Index total_cols = 0;
  for (Index w : widths) {
    check(w >= 0, "split_cols: negative width ", w, " for shape ", A.shape());
    total_cols += w;
  }
  check(total_cols == A.dim(1), "split_cols: widths add up to ", total_cols,
        " but the input has shape ", A.shape());
  std::vector<Var<Scalar>> parts;
  Index begin = 0;
  for (Index w : widths) {
    parts.push_back(slice_cols(a, begin, begin + w));
    begin += w;
  }
  return parts;
}

/// y_r = a_{index[r]}: rows of a rank-2 (K, C) a picked by index (host memory, each in [0, K));
/// y is (n_index, C). Repeated indices are allowed; their gradients add up.
template <class Scalar>
Var<Scalar> gather_rows(const Var<Scalar>& a, std::vector<std::int64_t> index) {
  const Tensor<Scalar>& A = detail::checked_value("gather_rows", a);
  detail::require_rank2("gather_rows", A);
  for (std::size_t r = 0; r < index.size(); ++r) {
    check(index[r] >= 0 && index[r] < A.dim(0), "gather_rows: index ", index[r], " at position ", r,
          " out of range for shape ", A.shape());
  }
  const Index n_index = static_cast<Index>(index.size()), cols = A.dim(1);
  Tensor<Scalar> Y = Tensor<Scalar>::empty({n_index, cols}, A.backend_ptr());
  A.backend().gather_rows(index.data(), n_index, cols, A.data(), Y.data());
  return detail::Graph<Scalar>::make(
      "gather_rows", Y, {&a},
      [index = std::move(index), n_index, cols](detail::Node<Scalar>& self) {
        // dL/da_k = sum of g_r over the r with index[r] = k.
        Tensor<Scalar>& gx = self.parent(0)->zeroed_grad();
        self.backend->scatter_add_rows(index.data(), n_index, cols, self.grad.data(), gx.data());
      });
}

/// The same value as a leaf that requires no gradient: gradients stop here (stop-gradient).
/// The value is shared, not copied.
template <class Scalar>
Var<Scalar> detach(const Var<Scalar>& a) {
  return Var<Scalar>(detail::checked_value("detach", a));
}

/// The same elements viewed with another shape of equal element count (no copy).
template <class Scalar>
Var<Scalar> reshape(const Var<Scalar>& a, Shape shape) {
  const Tensor<Scalar>& A = detail::checked_value("reshape", a);
  check(A.numel() == shape.numel(), "reshape: cannot view shape ", A.shape(), " as ",
        shape);
  return detail::Graph<Scalar>::make("reshape", A.reshape(shape), {&a},
                                     [](detail::Node<Scalar>& self) {
                                       // The identity on the elements: dL/da = g viewed with a's
                                       // shape.
                                       self.send_grad(0);
                                     });
}

// ---------------------------------------------------------------------------------------------
// Operators
// ---------------------------------------------------------------------------------------------

template <class Scalar>
Var<Scalar> operator+(const Var<Scalar>& a, const Var<Scalar>& b) {
  return add(a, b);
}
template <class Scalar>
Var<Scalar> operator-(const Var<Scalar>& a, const Var<Scalar>& b) {
  return sub(a, b);
}
template <class Scalar>
Var<Scalar> operator*(const Var<Scalar>& a, const Var<Scalar>& b) {
  return mul(a, b);
}
template <class Scalar>
Var<Scalar> operator/(const Var<Scalar>& a, const Var<Scalar>& b) {
  return div(a, b);
}
template <class Scalar>
Var<Scalar> operator-(const Var<Scalar>& a) {
  return neg(a);
}

template <class Scalar>
Var<Scalar> operator+(const Var<Scalar>& a, detail::NonDeduced<Scalar> s) {
  return add(a, s);
}
template <class Scalar>
Var<Scalar> operator+(detail::NonDeduced<Scalar> s, const Var<Scalar>& a) {
  return add(a, s);
}
template <class Scalar>
Var<Scalar> operator-(const Var<Scalar>& a, detail::NonDeduced<Scalar> s) {
  return add(a, Scalar(-s));
}
template <class Scalar>
Var<Scalar> operator-(detail::NonDeduced<Scalar> s, const Var<Scalar>& a) {
  return add(neg(a), s);
}
template <class Scalar>
Var<Scalar> operator*(const Var<Scalar>& a, detail::NonDeduced<Scalar> s) {
  return mul(a, s);
}
template <class Scalar>
Var<Scalar> operator*(detail::NonDeduced<Scalar> s, const Var<Scalar>& a) {
  return mul(a, s);
}
template <class Scalar>
Var<Scalar> operator/(const Var<Scalar>& a, detail::NonDeduced<Scalar> s) {
  return mul(a, Scalar(1) / s);
}
template <class Scalar>
Var<Scalar> operator/(detail::NonDeduced<Scalar> s, const Var<Scalar>& a) {
  return mul(reciprocal(a), s);
}

}  // namespace hgad
