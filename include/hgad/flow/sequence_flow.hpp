#pragma once
/// \file
/// SequenceFlow: a chain of AllInOne blocks sharing one condition (FrEIA's SequenceINN as HGAD
/// builds it, docs/algorithm.md §2.1).

#include <string>
#include <utility>
#include <vector>

#include "../autograd/var.hpp"
#include "../detail/check.hpp"
#include "../rng.hpp"
#include "../tensor.hpp"
#include "all_in_one_block.hpp"

namespace hgad {

/// What SequenceFlow::backward needs from SequenceFlow::forward_train: one CouplingCache per block
/// and the inputs of blocks 1 .. K−1 (block 0's input is the caller's x, referenced). Reusing one
/// cache across training steps reuses its buffers when N is unchanged.
///
/// Activation memory owned: K·N·(H + 2 n2) + (K − 1)·N·D scalars (activation_bytes()).
template <class Scalar>
struct SequenceFlowCache {
  std::vector<CouplingCache<Scalar>> blocks;
  std::vector<Tensor<Scalar>> inputs;  ///< inputs[k] (N, D) is the input of block k; inputs[0] = x
  Index rows = 0;

  /// Bytes of the activations the cache owns (hidden layers, [s | t] and the inner inputs).
  Index activation_bytes() const {
    Index bytes = 0;
    for (const auto& b : blocks) bytes += b.owned_bytes();
    for (std::size_t k = 1; k < inputs.size(); ++k) bytes += static_cast<Index>(sizeof(Scalar)) * inputs[k].numel();
    return bytes;
  }
  /// Frees every buffer.
  void release() { *this = SequenceFlowCache(); }
};

/// A sequence of AllInOne blocks z = f_K ∘ ... ∘ f_1 (x; c), every block conditioned on the same
/// c, with log|det ∂z/∂x| = Σ_k log|det J_k| (docs/algorithm.md §2.2, "Total log|det J| = sum over the
/// blocks"). The condition is (N, P) or shared, (M, P) with N % M = 0 (see AllInOneBlock). Like
/// AllInOneBlock it offers the autograd reference (forward/inverse on Vars) and the
/// fused CPU path (forward/inverse on Tensors, forward_train + backward).
///
///     hgad::Rng rng(0);
///     hgad::SequenceFlow<float> flow(200, 256, 12, hgad::AllInOneOptions::hgad(), rng);   // HGAD
///     hgad::SequenceFlowCache<float> cache;
///     auto [z, log_jac_det] = flow.forward_train(x, pos, cache);
///     // ... dL/dz (N, D) and dL/dlog_jac_det (N,) from the loss ...
///     flow.backward(cache, grad_z, grad_log_jac_det);     // += into every parameter's ensure_grad()
template <class Scalar>
class SequenceFlow {
 public:
  /// An empty flow of D channels and a P-channel condition; add blocks with append().
  SequenceFlow(Index D, Index P) : m_dim(D), m_cond_dim(P) {
    check(D >= 2 && P >= 0, "SequenceFlow: dimensions D = ", D, ", P = ", P, " (need D >= 2, P >= 0)");
  }
  /// n_blocks blocks with the same options, initialised from `rng` one after the other.
  SequenceFlow(Index D, Index P, Index n_blocks, const AllInOneOptions& options, Rng& rng) : SequenceFlow(D, P) {
    check(n_blocks >= 0, "SequenceFlow: negative block count ", n_blocks);
    for (Index k = 0; k < n_blocks; ++k) append(AllInOneBlock<Scalar>(D, P, options, rng));
  }

  void append(AllInOneBlock<Scalar> block) {
    check(block.dim() == m_dim && block.cond_dim() == m_cond_dim, "SequenceFlow::append: a block for D = ",
          block.dim(), ", P = ", block.cond_dim(), " in a flow for D = ", m_dim, ", P = ", m_cond_dim);
    m_blocks.push_back(std::move(block));
  }

  Index dim() const { return m_dim; }
  Index cond_dim() const { return m_cond_dim; }
  Index n_blocks() const { return static_cast<Index>(m_blocks.size()); }
  AllInOneBlock<Scalar>& block(Index k) { return m_blocks.at(static_cast<std::size_t>(k)); }
  const AllInOneBlock<Scalar>& block(Index k) const { return m_blocks.at(static_cast<std::size_t>(k)); }

  /// Every block's parameters, block by block in AllInOneBlock::parameters() order.
  std::vector<Var<Scalar>> parameters() const {
    std::vector<Var<Scalar>> out;
    for (const auto& b : m_blocks) {
      for (const auto& p : b.parameters()) out.push_back(p);
    }
    return out;
  }
  /// The same named "block{k}.<name>", e.g. "block0.fc1.weight" (the golden files' names).
  std::vector<std::pair<std::string, Var<Scalar>>> named_parameters() const {
    std::vector<std::pair<std::string, Var<Scalar>>> out;
    for (std::size_t k = 0; k < m_blocks.size(); ++k) {
      for (const auto& [name, p] : m_blocks[k].named_parameters()) {
        out.emplace_back("block" + std::to_string(k) + "." + name, p);
      }
    }
    return out;
  }
  /// Sets "block{k}.<name>" (a parameter name of AllInOneBlock, or "rot").
  void set_parameter(const std::string& name, const Tensor<Scalar>& value) {
    const auto dot = name.find('.');
    check(name.rfind("block", 0) == 0 && dot != std::string::npos && dot > 5,
          "SequenceFlow::set_parameter: name \"", name, "\" is not of the form block<k>.<parameter>");
    std::size_t used = 0;
    Index k = -1;
    try {
      k = std::stoll(name.substr(5, dot - 5), &used);
    } catch (const std::exception&) {
    }
    check(k >= 0 && k < n_blocks() && used == dot - 5, "SequenceFlow::set_parameter: no block in \"", name,
          "\" (the flow has ", n_blocks(), " blocks)");
    block(k).set_parameter(name.substr(dot + 1), value);
  }

  // ----------------------------------------------------------------------------------------
  // Reference path (autograd)
  // ----------------------------------------------------------------------------------------

  /// z and Σ_k log|det J_k| per row, composed from autograd ops.
  FlowVarResult<Scalar> forward(const Var<Scalar>& x, const Var<Scalar>& cond = Var<Scalar>()) const {
    check(!m_blocks.empty(), "SequenceFlow::forward: the flow has no blocks");
    FlowVarResult<Scalar> r = m_blocks.front().forward(x, cond);
    for (std::size_t k = 1; k < m_blocks.size(); ++k) {
      FlowVarResult<Scalar> next = m_blocks[k].forward(r.out, cond);
      r.out = next.out;
      r.log_jac_det = r.log_jac_det + next.log_jac_det;
    }
    return r;
  }

  /// x = f⁻¹(z) and −Σ_k log|det J_k| per row, blocks in reverse order (autograd ops).
  FlowVarResult<Scalar> inverse(const Var<Scalar>& z, const Var<Scalar>& cond = Var<Scalar>()) const {
    check(!m_blocks.empty(), "SequenceFlow::inverse: the flow has no blocks");
    FlowVarResult<Scalar> r = m_blocks.back().inverse(z, cond);
    for (std::size_t k = m_blocks.size() - 1; k-- > 0;) {
      FlowVarResult<Scalar> next = m_blocks[k].inverse(r.out, cond);
      r.out = next.out;
      r.log_jac_det = r.log_jac_det + next.log_jac_det;
    }
    return r;
  }

  // ----------------------------------------------------------------------------------------
  // Fused path (CPU tensors)
  // ----------------------------------------------------------------------------------------

  /// The forward map without a graph (inference); the blocks run in place on one (N, D) buffer.
  FlowResult<Scalar> forward(const Tensor<Scalar>& x, const Tensor<Scalar>& cond = Tensor<Scalar>()) const {
    check_fused("forward", x);
    FlowResult<Scalar> r{x.clone(), Tensor<Scalar>::empty({x.rows()})};
    for (std::size_t k = 0; k < m_blocks.size(); ++k) m_blocks[k].forward_into(r.out, cond, r.out, r.log_jac_det, k > 0);
    return r;
  }

  /// A condition with each block's share of the first layer computed once
  /// (AllInOneBlock::condition_projection), for mapping many inputs under one condition: the
  /// scores map every image of a level under the same positional encoding. It holds for the
  /// parameters it was made from; make it again after they change. Empty for P = 0.
  struct ProjectedCondition {
    std::vector<typename AllInOneBlock<Scalar>::ConditionProjection> blocks;
  };
  ProjectedCondition project_condition(const Tensor<Scalar>& cond) const {
    ProjectedCondition p;
    if (m_cond_dim == 0) return p;
    for (const AllInOneBlock<Scalar>& block : m_blocks) p.blocks.push_back(block.condition_projection(cond));
    return p;
  }

  /// forward(x, cond) with cond given by its project_condition: the same values, without each
  /// block's product of the condition.
  FlowResult<Scalar> forward(const Tensor<Scalar>& x, const ProjectedCondition& cond) const {
    if (m_cond_dim == 0) return forward(x);
    check_fused("forward", x);
    check(cond.blocks.size() == m_blocks.size(), "SequenceFlow::forward: a projected condition of ",
          cond.blocks.size(), " blocks for a flow of ", m_blocks.size());
    FlowResult<Scalar> r{x.clone(), Tensor<Scalar>::empty({x.rows()})};
    for (std::size_t k = 0; k < m_blocks.size(); ++k)
      m_blocks[k].forward_projected_into(r.out, cond.blocks[k], r.out, r.log_jac_det, k > 0);
    return r;
  }

  /// The inverse map without a graph: {x, −Σ_k log|det J_k|}.
  FlowResult<Scalar> inverse(const Tensor<Scalar>& z, const Tensor<Scalar>& cond = Tensor<Scalar>()) const {
    check_fused("inverse", z);
    FlowResult<Scalar> r{z.clone(), Tensor<Scalar>::empty({z.rows()})};
    for (std::size_t k = m_blocks.size(); k-- > 0;) {
      m_blocks[k].inverse_into(r.out, cond, r.out, r.log_jac_det, k + 1 < m_blocks.size());
    }
    return r;
  }

  /// The training forward of the fused path: the forward values, with every block's activations
  /// in `cache` for backward(). The cache refers to x and cond: leave them unchanged until then.
  FlowResult<Scalar> forward_train(const Tensor<Scalar>& x, const Tensor<Scalar>& cond,
                                   SequenceFlowCache<Scalar>& cache) const {
    check_fused("forward_train", x);
    const Index N = x.rows(), K = n_blocks();
    cache.blocks.resize(static_cast<std::size_t>(K));
    cache.inputs.resize(static_cast<std::size_t>(K));
    cache.rows = N;
    cache.inputs[0] = x;
    for (Index k = 1; k < K; ++k) {
      Tensor<Scalar>& in = cache.inputs[static_cast<std::size_t>(k)];
      if (in.shape() != Shape({N, m_dim}) || in.shares_storage(x)) in = Tensor<Scalar>::empty({N, m_dim});
    }
    FlowResult<Scalar> r{Tensor<Scalar>::empty({N, m_dim}), Tensor<Scalar>::empty({N})};
    for (Index k = 0; k < K; ++k) {
      const auto i = static_cast<std::size_t>(k);
      Tensor<Scalar>& out = k + 1 < K ? cache.inputs[i + 1] : r.out;
      m_blocks[i].forward_train_into(cache.inputs[i], cond, cache.blocks[i], out, r.log_jac_det, k > 0);
    }
    return r;
  }

  /// The hand-written backward of forward_train over all blocks, last to first: given dL/dz
  /// (N, D) and dL/dlog|det J| (N,) (empty for zero; every block's log|det| enters the sum with
  /// weight 1, so each block receives the same dL/dlog|det J_k|), adds dL/dθ into every parameter's
  /// ensure_grad(), returns dL/dx (N, D), and adds dL/dcond into *grad_cond (cond's shape: (N, P),
  /// or (M, P) for a shared condition, see AllInOneBlock) when non-null.
  /// Extra memory: one (N, D) gradient buffer, updated in place block by block.
  Tensor<Scalar> backward(const SequenceFlowCache<Scalar>& cache, const Tensor<Scalar>& grad_z,
                          const Tensor<Scalar>& grad_log_jac_det, Tensor<Scalar>* grad_cond = nullptr) {
    check(static_cast<Index>(cache.blocks.size()) == n_blocks() && n_blocks() > 0,
          "SequenceFlow::backward: the cache holds ", cache.blocks.size(), " blocks, the flow has ", n_blocks(),
          "; call forward_train first");
    check(grad_z.shape() == Shape({cache.rows, m_dim}), "SequenceFlow::backward: grad_z has shape ",
          grad_z.shape(), ", expected (", cache.rows, ", ", m_dim, ")");
    Tensor<Scalar> grad = grad_z.clone();
    for (std::size_t k = m_blocks.size(); k-- > 0;) {
      m_blocks[k].backward_into(cache.blocks[k], grad, grad_log_jac_det, grad, grad_cond);
    }
    return grad;
  }

 private:
  void check_fused(const char* what, const Tensor<Scalar>& x) const {
    check(!m_blocks.empty(), "SequenceFlow::", what, ": the flow has no blocks");
    check(x.rank() == 2 && x.dim(1) == m_dim && x.device() == Device::cpu, "SequenceFlow::", what,
          ": input of shape ", x.shape(), " on ", to_string(x.device()), ", expected (N, ", m_dim,
          ") on the CPU");
  }

  Index m_dim;
  Index m_cond_dim;
  std::vector<AllInOneBlock<Scalar>> m_blocks;
};

}  // namespace hgad
