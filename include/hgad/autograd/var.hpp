#pragma once
/// \file
/// Var<Scalar>: a tensor that records the operations applied to it, and reverse-mode
/// differentiation over the recorded graph (in the manner of micrograd and PyTorch's autograd).
///
///     auto w = hgad::Var<double>::parameter(hgad::Tensor<double>::ones({3, 2}));
///     auto x = hgad::Var<double>(hgad::Tensor<double>::full({4, 3}, 0.5));
///     auto loss = hgad::sum(hgad::square(hgad::matmul(x, w)));   // ops.hpp
///     loss.backward();              // w.grad() = 2 x^T (x w), shape (3, 2)
///
/// A Var is a handle: copies share the value and the gradient. An op on Vars returns a new Var
/// whose graph node keeps the op's parents and its backward rule, together with the tensors that
/// rule needs (and nothing else, so an intermediate value no one saved is freed as soon as its
/// last handle goes). `backward()` orders the graph by an iterative depth-first search (no
/// recursion, so chains of any length are safe), runs the rules from the output back to the
/// leaves and adds (`+=`) into the leaves' gradients, which stay until `zero_grad()`. Gradients
/// of intermediate nodes are freed as soon as their rule has run. The graph itself stays as long
/// as the output Var lives, so `backward()` may be called again and accumulates again.

#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_set>
#include <utility>
#include <vector>

#include "../detail/check.hpp"
#include "../tensor.hpp"

namespace hgad {

namespace detail {

/// Whether ops record a graph on this thread (NoGradGuard turns it off).
inline bool& grad_mode() {
  thread_local bool enabled = true;
  return enabled;
}

/// One node of the graph: the gradient of a Var that requires one, its parents (null where a
/// parent needs no gradient) and the backward rule that sends the node's gradient to them.
/// Leaves have no rule. The node does not own the Var's value.
template <class Scalar>
struct Node {
  using BackwardRule = std::function<void(Node&)>;

  Node(Shape shape_, BackendPtr<Scalar> backend_, const char* op_)
      : shape(shape_), backend(std::move(backend_)), op(op_) {}

  /// Releases the parent chain iteratively: a node whose last owner is this destructor hands its
  /// own parents to the loop before it dies, so a long chain never recurses.
  ~Node() {
    std::vector<std::shared_ptr<Node>> pending = std::move(parents);
    while (!pending.empty()) {
      std::shared_ptr<Node> node = std::move(pending.back());
      pending.pop_back();
      if (node && node.use_count() == 1) {
        for (auto& parent : node->parents) pending.push_back(std::move(parent));
        node->parents.clear();
      }
    }
  }
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  bool is_leaf() const { return !backward; }

  /// Parent `i` when it needs a gradient, else null.
  Node* parent(std::size_t i) const { return parents[i].get(); }

  /// Adds alpha t to the gradient. `owned` says that no one else refers to t's storage, so the
  /// node may keep it and later add into it in place; a borrowed t is copied before any write.
  void accumulate(Tensor<Scalar> t, bool owned, Scalar alpha = Scalar(1)) {
    check(t.numel() == shape.numel(), "autograd (", op, "): a gradient of shape ",
          t.shape(), " reached a node of shape ", shape);
    if (!has_grad) {
      if (alpha != Scalar(1)) {
        Tensor<Scalar> out = owned ? t : Tensor<Scalar>::empty(t.shape(), backend);
        backend->unary(UnaryOp::scale, t.numel(), t.data(), out.data(), alpha);
        t = out;
        owned = true;
      }
      grad = t.shape() == shape ? t : t.reshape(shape);
      grad_owned = owned;
      has_grad = true;
      return;
    }
    make_owned();
    backend->axpy(grad.numel(), alpha, t.data(), grad.data());
  }

  /// Sends this node's gradient, times alpha, unchanged to parent i. `exclusive` says that no
  /// other parent receives this buffer, so an owned gradient is handed over without a copy.
  void send_grad(std::size_t i, Scalar alpha = Scalar(1), bool exclusive = true) {
    const bool owned = grad_owned && exclusive;
    grad_owned = false;
    parents[i]->accumulate(grad, owned, alpha);
  }

  /// Adds the constant `value` to every element of the gradient.
  void accumulate_constant(Scalar value) {
    if (!has_grad) {
      grad = Tensor<Scalar>::empty(shape, backend);
      grad.fill(value);
      grad_owned = true;
      has_grad = true;
      return;
    }
    make_owned();
    backend->unary(UnaryOp::add_scalar, grad.numel(), grad.data(), grad.data(), value);
  }

  /// The gradient buffer for a kernel that writes or adds its result in place: `accumulate` is
  /// set to false when the buffer is fresh (uninitialised, the kernel must overwrite it) and to
  /// true when it holds a gradient the kernel must add to.
  Tensor<Scalar>& writable_grad(bool& accumulate) {
    if (!has_grad) {
      grad = Tensor<Scalar>::empty(shape, backend);
      grad_owned = true;
      has_grad = true;
      accumulate = false;
    } else {
      make_owned();
      accumulate = true;
    }
    return grad;
  }

  /// The gradient buffer for a kernel that adds into part of it: zero-filled when fresh.
  Tensor<Scalar>& zeroed_grad() {
    if (!has_grad) {
      grad = Tensor<Scalar>(shape, backend);
      grad_owned = true;
      has_grad = true;
    } else {
      make_owned();
    }
    return grad;
  }

  /// A buffer of the gradient's shape that a backward rule may overwrite: the node's own gradient
  /// when the node owns it (it is released after the rule anyway), else a fresh one.
  Tensor<Scalar> scratch() {
    if (grad_owned) {
      grad_owned = false;
      return grad;
    }
    return Tensor<Scalar>::empty(shape, backend);
  }

  /// Copies a borrowed gradient so that in-place writes cannot reach its other holders.
  void make_owned() {
    if (grad_owned) return;
    grad = grad.clone();
    grad_owned = true;
  }

  void release_grad() {
    grad = Tensor<Scalar>();
    has_grad = false;
    grad_owned = false;
  }

  Shape shape;
  BackendPtr<Scalar> backend;
  const char* op;
  Tensor<Scalar> grad;
  bool has_grad = false;
  bool grad_owned = false;
  std::vector<std::shared_ptr<Node>> parents;
  BackwardRule backward;
};

template <class Scalar>
struct GraphAccess;

}  // namespace detail

/// True when ops on this thread record a graph (outside every NoGradGuard).
inline bool grad_enabled() { return detail::grad_mode(); }

/// Turns graph recording off on this thread for its lifetime, for inference and for updates of
/// parameters (like `torch.no_grad()`). Guards nest.
///
///     { hgad::NoGradGuard no_grad; auto y = model_forward(x); }   // y.requires_grad() == false
class NoGradGuard {
 public:
  NoGradGuard() : m_previous(detail::grad_mode()) { detail::grad_mode() = false; }
  ~NoGradGuard() { detail::grad_mode() = m_previous; }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool m_previous;
};

/// A tensor in the autograd graph: its value, and a graph node when it requires a gradient.
template <class Scalar>
class Var {
 public:
  using Node = detail::Node<Scalar>;
  using scalar_type = Scalar;

  /// A null handle (defined() is false).
  Var() = default;

  /// A leaf holding `value` (shared, not copied); with `requires_grad` its gradient is
  /// accumulated by backward().
  explicit Var(Tensor<Scalar> value, bool requires_grad = false)
      : m_impl(std::make_shared<Impl>(std::move(value))) {
    if (requires_grad) {
      m_impl->node =
          std::make_shared<Node>(m_impl->value.shape(), m_impl->value.backend_ptr(), "leaf");
    }
  }

  /// A trainable leaf: requires_grad is true.
  static Var parameter(Tensor<Scalar> value) { return Var(std::move(value), true); }

  bool defined() const { return m_impl != nullptr; }

  const Tensor<Scalar>& value() const { return impl("value").value; }
  Tensor<Scalar>& value() { return impl("value").value; }

  bool requires_grad() const { return m_impl && m_impl->node; }
  /// True for a Var made by the user rather than by an op.
  bool is_leaf() const { return !requires_grad() || m_impl->node->is_leaf(); }
  bool has_grad() const { return requires_grad() && m_impl->node->has_grad; }

  /// The accumulated gradient, of value()'s shape. requires: has_grad().
  const Tensor<Scalar>& grad() const { return node_with_grad("grad").grad; }
  Tensor<Scalar>& grad() {
    Node& node = node_with_grad("grad");
    node.make_owned();
    return node.grad;
  }

  /// The gradient, allocated as zeros of value()'s shape when absent, for code that adds its own
  /// gradient contributions (`ensure_grad() += ...`). requires: requires_grad().
  Tensor<Scalar>& ensure_grad() {
    check(requires_grad(), "Var::ensure_grad: the Var of shape ", shape(),
          " does not require a gradient");
    Node& node = *m_impl->node;
    check(node.shape == value().shape(), "Var::ensure_grad: the value's shape ",
          value().shape(), " differs from the shape ", node.shape,
          " the Var was created with");
    node.zeroed_grad();
    return node.grad;
  }

  /// Drops the gradient (has_grad() becomes false), like PyTorch's `zero_grad(set_to_none=True)`.
  void zero_grad() {
    if (requires_grad()) m_impl->node->release_grad();
  }

  /// Back-propagates from a one-element Var with seed 1.
  void backward() {
    check(value().numel() == 1,
          "Var::backward: backward() without a seed needs a one-element Var, not shape ",
          shape(), "; pass a seed of that shape");
    Tensor<Scalar> seed = Tensor<Scalar>::empty(value().shape(), value().backend_ptr());
    seed.fill(Scalar(1));
    run_backward(seed, true);
  }

  /// Back-propagates `seed` = dL/d(this), of this Var's shape: every leaf that requires a gradient
  /// and lies on a path to this Var gets dL/dleaf added to its gradient.
  void backward(const Tensor<Scalar>& seed) {
    check(seed.shape() == shape(), "Var::backward: seed of shape ", seed.shape(),
          " for a Var of shape ", shape());
    run_backward(seed, false);
  }

  const Shape& shape() const { return value().shape(); }
  Index rows() const { return value().rows(); }
  Index cols() const { return value().cols(); }
  Index numel() const { return value().numel(); }
  /// The single element of a one-element Var, copied to the host.
  Scalar item() const { return value().item(); }

 private:
  friend struct detail::GraphAccess<Scalar>;

  struct Impl {
    explicit Impl(Tensor<Scalar> value_) : value(std::move(value_)) {}
    Tensor<Scalar> value;
    std::shared_ptr<Node> node;
  };

  const Impl& impl(const char* what) const {
    check(m_impl != nullptr, "Var::", what, ": the Var is null");
    return *m_impl;
  }
  Impl& impl(const char* what) {
    check(m_impl != nullptr, "Var::", what, ": the Var is null");
    return *m_impl;
  }
  Node& node_with_grad(const char* what) const {
    check(has_grad(), "Var::", what, ": the Var of shape ", impl(what).value.shape(),
          requires_grad() ? " has no gradient yet (call backward() first)"
                          : " does not require a gradient");
    return *m_impl->node;
  }

  void run_backward(const Tensor<Scalar>& seed, bool seed_owned) {
    check(requires_grad(), "Var::backward: the Var of shape ", shape(),
          " does not require a gradient (no input of its graph is a parameter, or it was made "
          "under NoGradGuard)");
    Node* root = m_impl->node.get();

    // Post-order of an iterative depth-first search: every node comes after all its parents.
    std::vector<Node*> order;
    std::unordered_set<Node*> visited{root};
    std::vector<std::pair<Node*, std::size_t>> stack{{root, 0}};
    while (!stack.empty()) {
      auto& [node, next] = stack.back();
      if (next < node->parents.size()) {
        Node* parent = node->parents[next++].get();
        if (parent != nullptr && visited.insert(parent).second) stack.emplace_back(parent, 0);
      } else {
        order.push_back(node);
        stack.pop_back();
      }
    }

    root->accumulate(seed, seed_owned);
    for (auto it = order.rbegin(); it != order.rend(); ++it) {
      Node& node = **it;
      if (!node.has_grad) continue;
      if (node.is_leaf()) {
        node.make_owned();
      } else {
        node.backward(node);
        node.release_grad();
      }
    }
  }

  std::shared_ptr<Impl> m_impl;
};

namespace detail {

/// How ops build graph nodes; not part of the public interface.
template <class Scalar>
struct GraphAccess {
  static const std::shared_ptr<Node<Scalar>>& node(const Var<Scalar>& v) { return v.m_impl->node; }

  /// The Var of an op's result: a node with `rule` and the inputs as parents when grad mode is on
  /// and some input requires a gradient, else a plain leaf.
  template <class Rule>
  static Var<Scalar> make(const char* op, Tensor<Scalar> value,
                          const std::vector<const Var<Scalar>*>& inputs, Rule&& rule) {
    Var<Scalar> out(std::move(value));
    if (!grad_enabled()) return out;
    bool any = false;
    for (const Var<Scalar>* input : inputs) any = any || input->requires_grad();
    if (!any) return out;
    auto node = std::make_shared<Node<Scalar>>(out.m_impl->value.shape(),
                                               out.m_impl->value.backend_ptr(), op);
    node->parents.reserve(inputs.size());
    for (const Var<Scalar>* input : inputs) {
      node->parents.push_back(input->requires_grad() ? input->m_impl->node : nullptr);
    }
    node->backward = std::forward<Rule>(rule);
    out.m_impl->node = std::move(node);
    return out;
  }
};

}  // namespace detail
}  // namespace hgad
