#pragma once
/// \file
/// AllInOneBlock: FrEIA's conditional affine coupling block as HGAD uses it (docs/algorithm.md §2.2).

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "../autograd/ops.hpp"
#include "../autograd/var.hpp"
#include "../detail/check.hpp"
#include "../rng.hpp"
#include "../tensor.hpp"
#include "all_in_one_options.hpp"
#include "coupling_element.hpp"
#include "fused_coupling.hpp"
#include "permutation.hpp"

namespace hgad {

/// Whether `cond` can condition `rows` input rows of a block with condition size P: it is (rows, P),
/// or (M, P) with rows a multiple of M, shared periodically (see AllInOneBlock).
template <class Scalar>
bool condition_fits(Index rows, const Tensor<Scalar>& cond, Index P) {
  return cond.rank() == 2 && cond.dim(1) == P && (cond.dim(0) == rows || (cond.dim(0) > 0 && rows % cond.dim(0) == 0));
}

/// The output of a flow on the autograd path: `out` (z for forward, x for inverse) and the
/// per-row log|det J| of the map that was applied, (N,).
template <class Scalar>
struct FlowVarResult {
  Var<Scalar> out;
  Var<Scalar> log_jac_det;
};

/// The output of a flow on the fused path (plain tensors, no graph).
template <class Scalar>
struct FlowResult {
  Tensor<Scalar> out;
  Tensor<Scalar> log_jac_det;
};

/// FrEIA's AllInOneBlock (commit 4e0c6ab) with a condition, as HGAD configures it
/// (docs/algorithm.md §2.1-2.3). For a row v ∈ R^D and the condition c ∈ R^P:
///
///     v1 = v[0 : n1], v2 = v[n1 : D]       n1 = D − ⌊D/2⌋ (passive), n2 = ⌊D/2⌋ (active)
///     a  = 0.1 · (W2 ReLU(W1 [v1 ; c] + b1) + b2)     W1 (H, n1+P), H = 2(n1+P); W2 (2 n2, H)
///     s  = α tanh(a[0:n2])   (SoftClamp::pinned)   or   α tanh(a[0:n2] / α)   (SoftClamp::head)
///     t  = a[n2 : 2 n2]
///     u  = [v1 ; v2 ⊙ exp(s) + t]
///     y  = R (g ⊙ u + b)        g = f(γ) (global_affine_type), R fixed (rotation or permutation)
///     log|det J| = Σ_k s_k + Σ_k log g_k
///
/// Parameters (Var::parameter leaves, PyTorch layouts so a loader maps them one to one):
/// "fc1.weight" (H, n1+P), "fc1.bias" (H,), "fc2.weight" (2 n2, H), "fc2.bias" (2 n2,),
/// "gamma" (D,) and "offset" (D,). The rotation R (D, D) is a fixed tensor, not a parameter.
/// Initialisation: fc1 and fc2 as PyTorch's nn.Linear, weights and biases U(±1/√fan_in), drawn
/// from `rng` in the order fc1.weight, fc1.bias, fc2.weight, fc2.bias; γ = f⁻¹(global_affine_init);
/// b = 0; then R from `rng` (random_rotation with permute_soft, else random_permutation).
///
/// The condition is cond (N, P), one row per input row, or cond (M, P) with N a multiple of M,
/// shared periodically: row n reads cond row n mod M. HGAD's batches (n = b·h·w + i·w + j,
/// docs/algorithm.md §1.3) pass the (h·w, P) encoding once this way; the fused path then computes
/// W1c c + b1 once per position instead of once per row, and dL/dcond has cond's shape (the sum over
/// the repeats).
///
/// Two implementations of the same map:
/// - `forward(Var, Var)` / `inverse(Var, Var)`: composed from autograd ops, the reference;
/// - `forward(Tensor, Tensor)` / `inverse(Tensor, Tensor)` (inference) and `forward_train` +
///   `backward` (training): the fused CPU kernels of fused_coupling.hpp, which write the
///   parameter gradients into each parameter's `ensure_grad()` with +=.
///
///     hgad::Rng rng(0);
///     hgad::AllInOneBlock<float> block(200, 256, hgad::AllInOneOptions::hgad(), rng);
///     auto [z, log_jac_det] = block.forward(x, pos);          // fused, x (N, 200), pos (N, 256)
template <class Scalar>
class AllInOneBlock {
 public:
  /// A condition's share of the first layer, W1c c + b1 (M, H): see condition_projection.
  using ConditionProjection = typename detail::FusedCoupling<Scalar>::RowMatrix;

  /// A block for D channels and a P-channel condition (P = 0: unconditional).
  /// requires: D >= 2, P >= 0, options.affine_clamping > 0.
  AllInOneBlock(Index D, Index P, const AllInOneOptions& options, Rng& rng)
      : m_dims(CouplingDims::make(D, P)), m_options(options) {
    check(options.affine_clamping > 0, "AllInOneBlock: affine_clamping = ", options.affine_clamping,
          " must be > 0");
    const Index in1 = m_dims.n1 + P;
    const double bound1 = 1.0 / std::sqrt(static_cast<double>(in1));
    const double bound2 = 1.0 / std::sqrt(static_cast<double>(m_dims.H));
    // PyTorch nn.Linear default init: kaiming_uniform(a = √5) = U(±1/√fan_in) for the weight,
    // U(±1/√fan_in) for the bias.
    m_fc1_weight = Var<Scalar>::parameter(Tensor<Scalar>::uniform({m_dims.H, in1}, rng, -bound1, bound1));
    m_fc1_bias = Var<Scalar>::parameter(Tensor<Scalar>::uniform({m_dims.H}, rng, -bound1, bound1));
    m_fc2_weight =
        Var<Scalar>::parameter(Tensor<Scalar>::uniform({2 * m_dims.n2, m_dims.H}, rng, -bound2, bound2));
    m_fc2_bias = Var<Scalar>::parameter(Tensor<Scalar>::uniform({2 * m_dims.n2}, rng, -bound2, bound2));
    const double gamma0 = detail::global_affine_initial_gamma(options.global_affine_init, options.global_affine_type);
    m_gamma = Var<Scalar>::parameter(Tensor<Scalar>::full({D}, static_cast<Scalar>(gamma0)));
    m_offset = Var<Scalar>::parameter(Tensor<Scalar>::zeros({D}));
    if (options.permute_soft) {
      set_rotation(random_rotation<Scalar>(D, rng));
    } else {
      set_rotation(permutation_matrix<Scalar>(random_permutation(D, rng)));
    }
  }

  Index dim() const { return m_dims.D; }
  Index cond_dim() const { return m_dims.P; }
  const CouplingDims& dims() const { return m_dims; }
  const AllInOneOptions& options() const { return m_options; }

  Var<Scalar>& fc1_weight() { return m_fc1_weight; }
  Var<Scalar>& fc1_bias() { return m_fc1_bias; }
  Var<Scalar>& fc2_weight() { return m_fc2_weight; }
  Var<Scalar>& fc2_bias() { return m_fc2_bias; }
  Var<Scalar>& gamma() { return m_gamma; }
  Var<Scalar>& offset() { return m_offset; }
  const Var<Scalar>& fc1_weight() const { return m_fc1_weight; }
  const Var<Scalar>& fc1_bias() const { return m_fc1_bias; }
  const Var<Scalar>& fc2_weight() const { return m_fc2_weight; }
  const Var<Scalar>& fc2_bias() const { return m_fc2_bias; }
  const Var<Scalar>& gamma() const { return m_gamma; }
  const Var<Scalar>& offset() const { return m_offset; }

  /// The trainable parameters in the order fc1.weight, fc1.bias, fc2.weight, fc2.bias, gamma,
  /// offset (handles sharing value and gradient with the block's).
  std::vector<Var<Scalar>> parameters() const {
    return {m_fc1_weight, m_fc1_bias, m_fc2_weight, m_fc2_bias, m_gamma, m_offset};
  }
  /// The same with their names ("fc1.weight", ..., "offset").
  std::vector<std::pair<std::string, Var<Scalar>>> named_parameters() const {
    return {{"fc1.weight", m_fc1_weight}, {"fc1.bias", m_fc1_bias}, {"fc2.weight", m_fc2_weight},
            {"fc2.bias", m_fc2_bias},     {"gamma", m_gamma},       {"offset", m_offset}};
  }

  /// Copies `value` into the parameter `name` (one of named_parameters(), or "rot" for the
  /// rotation). The parameter keeps its storage, so handles held elsewhere (an optimiser) stay valid.
  /// requires: value has the parameter's shape (a (1, n) or (n, 1) value for an (n,) parameter is
  /// accepted too).
  void set_parameter(const std::string& name, const Tensor<Scalar>& value) {
    if (name == "rot") {
      set_rotation(value);
      return;
    }
    for (auto& [param_name, var] : named_parameters()) {
      if (param_name != name) continue;
      Tensor<Scalar>& target = var.value();
      check(value.numel() == target.numel() && (value.shape() == target.shape() || target.rank() == 1),
            "AllInOneBlock::set_parameter: ", name, " has shape ", target.shape(), ", got ",
            value.shape());
      const Tensor<Scalar> host = value.cpu();
      std::copy(host.data(), host.data() + host.numel(), target.data());
      return;
    }
    throw Error("AllInOneBlock::set_parameter: unknown parameter \"" + name +
                "\"; expected fc1.weight, fc1.bias, fc2.weight, fc2.bias, gamma, offset or rot");
  }

  /// The fixed rotation R (D, D): y = R u'. For permute_soft = false it is the permutation matrix.
  const Tensor<Scalar>& rotation() const { return m_rotation; }
  /// The permutation p with y_i = u'_{p[i]} when R is a permutation matrix, else empty.
  const std::vector<Index>& permutation() const { return m_permutation; }

  /// Replaces R by a copy of `rotation` (D, D). Any orthogonal matrix keeps log|det| = Σ s + Σ log g
  /// exact (the block adds no log|det R| term, as FrEIA); an exact permutation matrix is detected
  /// and applied as an index gather by the fused path.
  void set_rotation(const Tensor<Scalar>& rotation) {
    check(rotation.rank() == 2 && rotation.dim(0) == m_dims.D && rotation.dim(1) == m_dims.D,
          "AllInOneBlock::set_rotation: expected (", m_dims.D, ", ", m_dims.D, "), got ",
          rotation.shape());
    m_rotation = rotation.cpu().clone();
    m_permutation = permutation_of_matrix(m_rotation);
  }

  /// The scaled subnet output a = 0.1 (W2 ReLU(W1 [x1 ; c] + b1) + b2), (N, 2 n2), of the input x:
  /// s = clamp(a[:, 0:n2]) and t = a[:, n2:2 n2]. For inspection and tests; computes no graph.
  Tensor<Scalar> subnet_output(const Tensor<Scalar>& x, const Tensor<Scalar>& cond = Tensor<Scalar>()) const {
    check_input("subnet_output", x, cond, true);
    NoGradGuard no_grad;
    const Var<Scalar> c = m_dims.P > 0 ? full_condition(Var<Scalar>(cond), x.rows()) : Var<Scalar>();
    return scaled_subnet(slice_cols(Var<Scalar>(x), 0, m_dims.n1), c).value();
  }

  /// The global scale g = f(γ), (D,).
  Tensor<Scalar> global_scale() const {
    Tensor<Scalar> g({m_dims.D});
    for (Index j = 0; j < m_dims.D; ++j) {
      g.data()[j] = detail::global_affine_scale(m_gamma.value().data()[j], m_options.global_affine_type);
    }
    return g;
  }

  // ----------------------------------------------------------------------------------------
  // Reference path (autograd)
  // ----------------------------------------------------------------------------------------

  /// z = f(x; c) and log|det ∂z/∂x| per row, composed from autograd ops (gradients reach x, cond
  /// and every parameter). requires: x (N, D); cond (N, P) or (M, P) with N % M = 0, or null/empty
  /// when P = 0.
  FlowVarResult<Scalar> forward(const Var<Scalar>& x, const Var<Scalar>& cond = Var<Scalar>()) const {
    check_input("forward", x.defined() ? x.value() : Tensor<Scalar>(), cond, true);
    const Index N = x.rows();
    const Var<Scalar> x1 = slice_cols(x, 0, m_dims.n1);
    const Var<Scalar> x2 = slice_cols(x, m_dims.n1, m_dims.D);
    const auto [s, t] = coupling_coefficients(x1, m_dims.P > 0 ? full_condition(cond, N) : cond);
    const Var<Scalar> u = concat_cols<Scalar>({x1, x2 * exp(s) + t});
    const Var<Scalar> g = global_scale_var();
    const Var<Scalar> u_affine = u * g + m_offset;
    // y = R u' per row: Y = U' Rᵀ.
    const Var<Scalar> z = matmul(u_affine, Var<Scalar>(m_rotation), Transpose::no, Transpose::yes);
    return {z, log_det(s, g, N)};
  }

  /// x = f⁻¹(z; c) and −log|det ∂z/∂x| per row (the log|det| of the inverse), autograd ops.
  FlowVarResult<Scalar> inverse(const Var<Scalar>& z, const Var<Scalar>& cond = Var<Scalar>()) const {
    check_input("inverse", z.defined() ? z.value() : Tensor<Scalar>(), cond, true);
    const Index N = z.rows();
    // u' = Rᵀ y per row: U' = Y R; u = (u' − b) / g.
    const Var<Scalar> g = global_scale_var();
    const Var<Scalar> u = (matmul(z, Var<Scalar>(m_rotation)) - m_offset) / g;
    const Var<Scalar> x1 = slice_cols(u, 0, m_dims.n1);
    const Var<Scalar> u2 = slice_cols(u, m_dims.n1, m_dims.D);
    const auto [s, t] = coupling_coefficients(x1, m_dims.P > 0 ? full_condition(cond, N) : cond);
    const Var<Scalar> x = concat_cols<Scalar>({x1, (u2 - t) * exp(-s)});
    return {x, -log_det(s, g, N)};
  }

  // ----------------------------------------------------------------------------------------
  // Fused path (CPU tensors)
  // ----------------------------------------------------------------------------------------

  /// The forward map without a graph (inference): the same values as forward(Var, Var).
  /// requires: x (N, D), cond (N, P) or (M, P) with N % M = 0, or empty when P = 0; CPU tensors.
  FlowResult<Scalar> forward(const Tensor<Scalar>& x, const Tensor<Scalar>& cond = Tensor<Scalar>()) const {
    check_input("forward", x, cond, false);
    const Index N = x.rows();
    FlowResult<Scalar> r{Tensor<Scalar>::empty({N, m_dims.D}), Tensor<Scalar>::empty({N})};
    const auto weights = fused_weights();
    kernel(weights).forward(N, x.data(), cond_data(cond), cond_rows(cond, N), r.out.data(), r.log_jac_det.data(), false, nullptr,
                            nullptr);
    return r;
  }

  /// The inverse map without a graph: {x, −log|det J|}.
  FlowResult<Scalar> inverse(const Tensor<Scalar>& z, const Tensor<Scalar>& cond = Tensor<Scalar>()) const {
    check_input("inverse", z, cond, false);
    const Index N = z.rows();
    FlowResult<Scalar> r{Tensor<Scalar>::empty({N, m_dims.D}), Tensor<Scalar>::empty({N})};
    const auto weights = fused_weights();
    kernel(weights).inverse(N, z.data(), cond_data(cond), cond_rows(cond, N), r.out.data(), r.log_jac_det.data(), false);
    return r;
  }

  /// The training forward of the fused path: the forward values, with the activations the
  /// backward needs stored in `cache` (its buffers are reused when N matches). The cache refers to
  /// x and cond (shared storage): leave them unchanged until backward.
  /// Activation memory owned by the cache: N (H + 2 n2) scalars.
  FlowResult<Scalar> forward_train(const Tensor<Scalar>& x, const Tensor<Scalar>& cond,
                                   CouplingCache<Scalar>& cache) const {
    check_input("forward_train", x, cond, false);
    const Index N = x.rows();
    FlowResult<Scalar> r{Tensor<Scalar>::empty({N, m_dims.D}), Tensor<Scalar>::empty({N})};
    forward_train_into(x, cond, cache, r.out, r.log_jac_det, false);
    return r;
  }

  /// The hand-written backward of forward_train: given dL/dz (N, D) and dL/dlog|det J| (N,) (or
  /// an empty tensor for zero), adds dL/dθ into every parameter's ensure_grad(), returns dL/dx
  /// (N, D), and adds dL/dcond into *grad_cond (cond's shape) when grad_cond is non-null.
  ///
  ///     du' = R^T dz;  dL/db = Σ_n du';  dL/dg = Σ_n du' ⊙ u + Σ_n dL/dld / g;  du = g ⊙ du'
  ///     dx2 = du2 ⊙ e^s;  dt = du2;  ds = du2 ⊙ x2 ⊙ e^s + dL/dld;  da_s = ds · ds/da
  ///     draw = 0.1 [da_s ; dt];  dW2 += drawᵀ h;  db2 += Σ draw;  dh = draw W2 ⊙ [h > 0]
  ///     dW1 += dhᵀ [x1 ; c];  db1 += Σ dh;  dx1 = du1 + dh W1x;  dc += dh W1c
  ///     (shared condition: S_m = Σ_{n ≡ m} dh_n;  dW1c += Sᵀ c;  dc_m += S_m W1c)
  ///     dL/dγ = dL/dg · dg/dγ
  Tensor<Scalar> backward(const CouplingCache<Scalar>& cache, const Tensor<Scalar>& grad_out,
                          const Tensor<Scalar>& grad_log_jac_det, Tensor<Scalar>* grad_cond = nullptr) {
    Tensor<Scalar> grad_x = Tensor<Scalar>::empty({cache.rows, m_dims.D});
    backward_into(cache, grad_out, grad_log_jac_det, grad_x, grad_cond);
    return grad_x;
  }

  /// The training forward writing into caller-owned out (N, D) and log_jac_det (N,); with
  /// `accumulate` the block's log|det| is added to log_jac_det. out may be x itself only when the
  /// cache need not keep x (it does here, so pass distinct tensors).
  void forward_train_into(const Tensor<Scalar>& x, const Tensor<Scalar>& cond, CouplingCache<Scalar>& cache,
                          Tensor<Scalar>& out, Tensor<Scalar>& log_jac_det, bool accumulate) const {
    check_input("forward_train", x, cond, false);
    const Index N = x.rows();
    check(out.shape() == Shape({N, m_dims.D}) && log_jac_det.numel() == N && !out.shares_storage(x),
          "AllInOneBlock::forward_train: output buffers of shape ", out.shape(), " and ",
          log_jac_det.shape(), " for ", N, " rows (the output must not alias the input)");
    cache.x = x;
    cache.cond = cond;
    cache.rows = N;
    if (cache.hidden.shape() != Shape({N, m_dims.H})) cache.hidden = Tensor<Scalar>::empty({N, m_dims.H});
    if (cache.s_t.shape() != Shape({N, 2 * m_dims.n2})) cache.s_t = Tensor<Scalar>::empty({N, 2 * m_dims.n2});
    const auto weights = fused_weights();
    kernel(weights).forward(N, x.data(), cond_data(cond), cond_rows(cond, N), out.data(), log_jac_det.data(), accumulate,
                            cache.hidden.data(), cache.s_t.data());
  }

  /// The backward writing dL/dx into caller-owned grad_x (N, D), which may be grad_out itself.
  void backward_into(const CouplingCache<Scalar>& cache, const Tensor<Scalar>& grad_out,
                     const Tensor<Scalar>& grad_log_jac_det, Tensor<Scalar>& grad_x, Tensor<Scalar>* grad_cond) {
    const Index N = cache.rows;
    check(cache.hidden.shape() == Shape({N, m_dims.H}) && cache.x.shape() == Shape({N, m_dims.D}),
          "AllInOneBlock::backward: the cache does not hold a training forward of this block for ", N, " rows");
    check(grad_out.shape() == Shape({N, m_dims.D}) && grad_out.device() == Device::cpu,
          "AllInOneBlock::backward: grad_out has shape ", grad_out.shape(), ", expected (", N, ", ",
          m_dims.D, ") on the CPU");
    check(grad_log_jac_det.numel() == 0 || grad_log_jac_det.numel() == N,
          "AllInOneBlock::backward: grad_log_jac_det has shape ", grad_log_jac_det.shape(),
          ", expected (", N, ",) or empty");
    check(grad_x.shape() == Shape({N, m_dims.D}), "AllInOneBlock::backward: grad_x has shape ",
          grad_x.shape());
    if (grad_cond && m_dims.P > 0) {
      check(grad_cond->shape() == cache.cond.shape(), "AllInOneBlock::backward: grad_cond has shape ",
            grad_cond->shape(), ", expected the condition's ", cache.cond.shape());
    }
    CouplingGradients<Scalar> grads{&m_fc1_weight.ensure_grad(), &m_fc1_bias.ensure_grad(),
                                    &m_fc2_weight.ensure_grad(), &m_fc2_bias.ensure_grad(),
                                    &m_gamma.ensure_grad(),      &m_offset.ensure_grad()};
    const auto weights = fused_weights();
    kernel(weights).backward(N, cache.x.data(), cond_data(cache.cond), cond_rows(cache.cond, N), cache.hidden.data(), cache.s_t.data(),
                             grad_out.data(), grad_log_jac_det.numel() ? grad_log_jac_det.data() : nullptr,
                             grad_x.data(), grad_cond && m_dims.P > 0 ? grad_cond->data() : nullptr, grads);
  }

  /// The fused inference forward/inverse on caller-owned buffers; out may be x itself (in place).
  void forward_into(const Tensor<Scalar>& x, const Tensor<Scalar>& cond, Tensor<Scalar>& out,
                    Tensor<Scalar>& log_jac_det, bool accumulate) const {
    check_input("forward", x, cond, false);
    const auto weights = fused_weights();
    kernel(weights).forward(x.rows(), x.data(), cond_data(cond), cond_rows(cond, x.rows()), out.data(), log_jac_det.data(), accumulate,
                            nullptr, nullptr);
  }
  /// This block's W1c c + b1 for a condition cond (M, P): (M, H), for forward_projected_into
  /// (detail::FusedCoupling::condition_projection). It holds for the parameters it was made from.
  ConditionProjection condition_projection(const Tensor<Scalar>& cond) const {
    check(m_dims.P > 0 && cond.rank() == 2 && cond.dim(1) == m_dims.P && cond.rows() > 0 &&
              cond.device() == Device::cpu,
          "AllInOneBlock::condition_projection: expected a CPU condition (M, ", m_dims.P, "), got ", cond.shape());
    const auto weights = fused_weights();
    return kernel(weights).condition_projection(cond.data(), cond.rows());
  }
  /// forward_into under a condition given by this block's condition_projection (M, H) of it: the
  /// same values without the condition's share of the first layer (N a multiple of M).
  void forward_projected_into(const Tensor<Scalar>& x, const ConditionProjection& cond_proj, Tensor<Scalar>& out,
                              Tensor<Scalar>& log_jac_det, bool accumulate) const {
    check(x.rank() == 2 && x.dim(1) == m_dims.D && x.device() == Device::cpu,
          "AllInOneBlock::forward_projected_into: input of shape ", x.shape(), ", expected a CPU (N, ", m_dims.D, ")");
    const auto weights = fused_weights();
    kernel(weights).forward_projected(x.rows(), x.data(), cond_proj, out.data(), log_jac_det.data(), accumulate);
  }
  void inverse_into(const Tensor<Scalar>& z, const Tensor<Scalar>& cond, Tensor<Scalar>& out,
                    Tensor<Scalar>& log_jac_det, bool accumulate) const {
    check_input("inverse", z, cond, false);
    const auto weights = fused_weights();
    kernel(weights).inverse(z.rows(), z.data(), cond_data(cond), cond_rows(cond, z.rows()), out.data(), log_jac_det.data(), accumulate);
  }

  /// Views of the parameters for the fused kernels.
  CouplingWeights<Scalar> fused_weights() const {
    return {m_fc1_weight.value(), m_fc1_bias.value(), m_fc2_weight.value(), m_fc2_bias.value(),
            m_gamma.value(),      m_offset.value(),     m_rotation,           m_permutation};
  }

 private:
  detail::FusedCoupling<Scalar> kernel(const CouplingWeights<Scalar>& weights) const {
    return detail::FusedCoupling<Scalar>(m_dims, static_cast<Scalar>(m_options.affine_clamping),
                                         m_options.clamp_variant, m_options.global_affine_type, weights);
  }

  const Scalar* cond_data(const Tensor<Scalar>& cond) const { return m_dims.P > 0 ? cond.data() : nullptr; }
  Index cond_rows(const Tensor<Scalar>& cond, Index N) const { return m_dims.P > 0 ? cond.rows() : N; }

  /// The condition of every row: cond itself when it has N rows, else cond repeated (row n reads
  /// cond row n mod M) by a gather, whose backward sums the gradients of the repeats.
  Var<Scalar> full_condition(const Var<Scalar>& cond, Index N) const {
    const Index M = cond.rows();
    if (M == N) return cond;
    std::vector<std::int64_t> index(static_cast<std::size_t>(N));
    for (Index n = 0; n < N; ++n) index[static_cast<std::size_t>(n)] = n % M;
    return gather_rows(cond, std::move(index));
  }

  template <class CondT>
  void check_input(const char* what, const Tensor<Scalar>& x, const CondT& cond, bool autograd) const {
    check(x.rank() == 2 && x.dim(1) == m_dims.D, "AllInOneBlock::", what, ": input of shape ",
          x.shape(), ", expected (N, ", m_dims.D, ")");
    if (!autograd) {
      check(x.device() == Device::cpu, "AllInOneBlock::", what, ": the fused path needs CPU tensors");
    }
    if constexpr (std::is_same_v<CondT, Var<Scalar>>) {
      if (m_dims.P == 0) {
        if (cond.defined() && cond.value().numel() != 0) {
          throw Error(detail::concat("AllInOneBlock::", what, ": an unconditional block (P = 0) got a condition of shape ",
                                     cond.value().shape().to_string()));
        }
        return;
      }
      check(cond.defined(), "AllInOneBlock::", what, ": the block needs a condition (N, ", m_dims.P, ")");
      check_cond(what, x, cond.value());
    } else {
      if (m_dims.P == 0) {
        check(cond.numel() == 0, "AllInOneBlock::", what, ": an unconditional block (P = 0) got a condition of shape ",
              cond.shape());
        return;
      }
      check_cond(what, x, cond);
      check(cond.device() == Device::cpu, "AllInOneBlock::", what, ": the fused path needs CPU tensors");
    }
  }
  void check_cond(const char* what, const Tensor<Scalar>& x, const Tensor<Scalar>& cond) const {
    check(condition_fits(x.dim(0), cond, m_dims.P), "AllInOneBlock::", what, ": condition of shape ",
          cond.shape(), ", expected (", x.dim(0), ", ", m_dims.P, "), or (M, ", m_dims.P, ") with ",
          x.dim(0), " a multiple of M");
  }

  /// a = 0.1 (W2 ReLU(W1 [x1 ; c] + b1) + b2) from the passive half x1 and the condition.
  Var<Scalar> scaled_subnet(const Var<Scalar>& x1, const Var<Scalar>& cond) const {
    const Var<Scalar> in = m_dims.P > 0 ? concat_cols<Scalar>({x1, cond}) : x1;
    const Var<Scalar> h = relu(matmul(in, m_fc1_weight, Transpose::no, Transpose::yes) + m_fc1_bias);
    // FrEIA scales the whole subnet output down ("a *= 0.1", docs/algorithm.md §2.2 step 3).
    return (matmul(h, m_fc2_weight, Transpose::no, Transpose::yes) + m_fc2_bias) *
           Scalar(coupling_prescale);
  }

  /// s and t from the passive half x1 and the condition (autograd ops).
  std::pair<Var<Scalar>, Var<Scalar>> coupling_coefficients(const Var<Scalar>& x1, const Var<Scalar>& cond) const {
    const Var<Scalar> a = scaled_subnet(x1, cond);
    const Var<Scalar> a_s = slice_cols(a, 0, m_dims.n2);
    const Var<Scalar> t = slice_cols(a, m_dims.n2, 2 * m_dims.n2);
    const Scalar alpha = static_cast<Scalar>(m_options.affine_clamping);
    const Var<Scalar> s = m_options.clamp_variant == SoftClamp::pinned ? tanh(a_s) * alpha
                                                                       : tanh(a_s * (Scalar(1) / alpha)) * alpha;
    return {s, t};
  }

  /// g = f(γ) as a Var of shape (D,).
  Var<Scalar> global_scale_var() const {
    switch (m_options.global_affine_type) {
      // 0.1 and β = 0.5: FrEIA's SOFTPLUS global affine.
      case GlobalAffineType::softplus: return softplus(m_gamma, Scalar(0.5)) * Scalar(0.1);
      // 10 sigmoid(γ − 2): FrEIA's SIGMOID global affine.
      case GlobalAffineType::sigmoid: return sigmoid(m_gamma - Scalar(2)) * Scalar(10);
      case GlobalAffineType::exp: return exp(m_gamma);
    }
    return m_gamma;
  }

  /// Σ_k s_k + Σ_k log g_k per row, (N,).
  static Var<Scalar> log_det(const Var<Scalar>& s, const Var<Scalar>& g, Index N) {
    const Var<Scalar> per_row = reshape(sum_rows(s), Shape{N, 1});
    const Var<Scalar> global = reshape(sum(log(g)), Shape{1});
    return reshape(per_row + global, Shape{N});
  }

  CouplingDims m_dims;
  AllInOneOptions m_options;
  Var<Scalar> m_fc1_weight, m_fc1_bias, m_fc2_weight, m_fc2_bias, m_gamma, m_offset;
  Tensor<Scalar> m_rotation;
  std::vector<Index> m_permutation;
};

}  // namespace hgad
