#pragma once
/// \file
/// LevelEngine: the training step and the scoring of one HGAD level as the GPU runs them, written
/// once against an executor of the level kernels. CudaLevel (cuda_level.cuh) is the engine with
/// the CUDA executor; HostLevel (below) is the same engine with HostLevelExec, which runs the
/// identical kernel bodies (level_bodies.hpp) in loops on the CPU backend. The test suite checks
/// HostLevel against the fused CPU path (hgad::train_step), so the algorithm of the GPU step is
/// verified without a device; the [cuda] tests then check CudaLevel against the CPU path too.
///
/// The step ports SequenceFlow::forward_train/backward, hgad_loss_fused and Adam (docs/algorithm.md
/// §2.2, §3.3, §4): per block the subnet and rotation are GEMMs and everything else is one
/// fused element-wise pass; the prior's losses and gradients are one pass over the rows, and the
/// prior's parameter gradients one GEMM of the per-row centre coefficients with z.
///
/// The condition may have N rows, or Nc rows with N = B Nc: row n then uses condition row
/// n mod Nc, the layout of a batch of B images sharing one positional encoding (docs/algorithm.md
/// §1.3-1.4). The condition's part of the first subnet layer, c W1c^T, is then computed once per
/// position instead of once per row, and the gradient of W1c from the per-position sums of dL/dh:
/// the same arithmetic regrouped, about 40 % fewer FLOPs for the paper's level.
///
/// Memory of a training step with N rows (Scalars): n_blocks N (H + 2 n2 + D) kept for the
/// backward, plus N (H + 6 D + 2K + K M + 8) of scratch; about 2 GB for the paper's level 0
/// (N = 32768, D = 200, P = 256, H = 712, 12 blocks) in float.

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "../detail/check.hpp"
#include "../flow/sequence_flow.hpp"
#include "../level_device.hpp"
#include "../loss/loss_terms.hpp"
#include "../nn/adam.hpp"
#include "../parallel/data_parallel.hpp"
#include "../prior/gaussian_mixture_prior.hpp"
#include "../tensor.hpp"
#include "level_bodies.hpp"

namespace hgad::cuda {

/// The loss and optimiser settings of a level (docs/algorithm.md §3.4, §4); the objective must be HGAD's.
using LevelOptions = LevelTraining;

/// The per-row test scores of a level (on the level's device).
template <class Scalar>
struct LevelScores {
  Tensor<Scalar> log_p;        ///< (N,) per-dimension log-likelihood under the row class's intra mixture
  Tensor<Scalar> neg_entropy;  ///< (N,) sum_y p~_y ln p~_y of the inter-class posterior
};

/// One HGAD level (flow + prior + Adam state) on the device of `Exec`.
/// Exec provides backend() (a Backend<Scalar>& for GEMMs, column sums, softmax rows and copies),
/// backend_ptr(), upload_labels() and the level kernels (see HostLevelExec for the list).
template <class Scalar, class Exec>
class LevelEngine {
 public:
  /// Copies the parameters and rotations of `flow` and `prior` (CPU) to the device and starts
  /// Adam from zero moments.
  ///   requires: every block of `flow` has the same options; flow.dim() == prior.dim();
  ///             options.loss.objective == Objective::hgad.
  LevelEngine(const SequenceFlow<Scalar>& flow, const GaussianMixturePrior<Scalar>& prior, Exec exec,
              LevelOptions options = {})
      : m_exec(std::move(exec)), m_options(options) {
    check(flow.n_blocks() >= 1, "LevelEngine: the flow has no blocks");
    check(flow.dim() == prior.dim(), "LevelEngine: the flow has D = ", flow.dim(), ", the prior D = ",
          prior.dim());
    check(options.loss.objective == Objective::hgad,
          "LevelEngine: only the HGAD objective is implemented, not ", to_string(options.loss.objective));
    check(!prior.has_class_factors(),
          "LevelEngine: the prior's classes carry their own covariance (class_covariance = class or "
          "intra), which the device levels do not implement; train and score this model on the CPU");
    m_dims = flow.block(0).dims();
    m_n_blocks = flow.n_blocks();
    const AllInOneOptions& o = flow.block(0).options();
    m_alpha = static_cast<Scalar>(o.affine_clamping);
    m_clamp = o.clamp_variant;
    m_affine = o.global_affine_type;
    for (Index b = 1; b < m_n_blocks; ++b) {
      const AllInOneOptions& ob = flow.block(b).options();
      check(ob.affine_clamping == o.affine_clamping && ob.clamp_variant == o.clamp_variant &&
                ob.global_affine_type == o.global_affine_type,
            "LevelEngine: block ", b, " has other options than block 0");
    }
    m_K = prior.n_classes();
    m_M = prior.n_centers();

    const CouplingDims& d = m_dims;
    m_w1 = 0;
    m_b1 = m_w1 + d.H * (d.n1 + d.P);
    m_w2 = m_b1 + d.H;
    m_b2 = m_w2 + 2 * d.n2 * d.H;
    m_gamma = m_b2 + 2 * d.n2;
    m_offset = m_gamma + d.D;
    m_block_stride = m_offset + d.D;
    m_flow_size = m_block_stride * m_n_blocks;
    m_mu = m_flow_size;
    m_phi_inter = m_mu + m_K * d.D;
    m_delta = m_phi_inter + m_K;
    m_phi_intra = m_delta + m_K * (m_M - 1) * d.D;
    m_n_params = m_phi_intra + m_K * m_M;

    // Every parameter by the name make_hgad_adam gives it, with its place in the flat buffer and its
    // Adam segment (0 the flow, 1 mu and phi_inter, 2 delta and phi_intra).
    const Index block_offsets[6] = {m_w1, m_b1, m_w2, m_b2, m_gamma, m_offset};
    Index n_flow_params = 0;
    for (const auto& [name, var] : flow.named_parameters()) {
      const Index b = n_flow_params / 6;
      m_table.push_back({"flow." + name, b * m_block_stride + block_offsets[n_flow_params % 6], var.value().shape(), 0});
      ++n_flow_params;
    }
    check(n_flow_params == 6 * m_n_blocks, "LevelEngine: the flow has ", n_flow_params, " parameters, expected 6 per block");
    m_table.push_back({"prior.mu", m_mu, prior.mu().value().shape(), 1});
    m_table.push_back({"prior.phi_inter", m_phi_inter, prior.phi_inter().value().shape(), 1});
    m_table.push_back({"prior.delta", m_delta, prior.delta().value().shape(), 2});
    m_table.push_back({"prior.phi_intra", m_phi_intra, prior.phi_intra().value().shape(), 2});

    std::vector<Scalar> host(static_cast<std::size_t>(m_n_params));
    std::vector<Scalar> rotation(static_cast<std::size_t>(m_n_blocks * d.D * d.D));
    for (Index b = 0; b < m_n_blocks; ++b) {
      const AllInOneBlock<Scalar>& blk = flow.block(b);
      Scalar* p = host.data() + b * m_block_stride;
      put(blk.fc1_weight().value(), p + m_w1);
      put(blk.fc1_bias().value(), p + m_b1);
      put(blk.fc2_weight().value(), p + m_w2);
      put(blk.fc2_bias().value(), p + m_b2);
      put(blk.gamma().value(), p + m_gamma);
      put(blk.offset().value(), p + m_offset);
      put(blk.rotation(), rotation.data() + b * d.D * d.D);
    }
    put(prior.mu().value(), host.data() + m_mu);
    put(prior.phi_inter().value(), host.data() + m_phi_inter);
    put(prior.delta().value(), host.data() + m_delta);
    put(prior.phi_intra().value(), host.data() + m_phi_intra);

    const BackendPtr<Scalar>& bp = m_exec.backend_ptr();
    m_params = Tensor<Scalar>::empty({m_n_params}, bp);
    m_exec.backend().copy_from_host(host.data(), m_params.data(), m_n_params);
    m_rotation = Tensor<Scalar>::empty({m_n_blocks, d.D, d.D}, bp);
    m_exec.backend().copy_from_host(rotation.data(), m_rotation.data(), m_rotation.numel());
    m_grads = Tensor<Scalar>({m_n_params}, bp);
    m_exp_avg = Tensor<Scalar>({m_n_params}, bp);
    m_exp_avg_sq = Tensor<Scalar>({m_n_params}, bp);
    m_g = Tensor<Scalar>::empty({m_n_blocks, d.D}, bp);
    m_g_derivative = Tensor<Scalar>::empty({m_n_blocks, d.D}, bp);
    m_sum_log_g = Tensor<Scalar>::empty({m_n_blocks}, bp);
    m_centers = Tensor<Scalar>::empty({m_K, m_M, d.D}, bp);
    m_log_pi = Tensor<Scalar>::empty({m_K}, bp);
    m_log_w = Tensor<Scalar>::empty({m_K, m_M}, bp);
  }

  Index dim() const { return m_dims.D; }
  Index cond_dim() const { return m_dims.P; }
  Index hidden_dim() const { return m_dims.H; }
  Index n_blocks() const { return m_n_blocks; }
  Index n_classes() const { return m_K; }
  Index n_centers() const { return m_M; }
  /// Trainable scalars (flow and prior).
  Index n_parameters() const { return m_n_params; }
  const LevelOptions& options() const { return m_options; }
  Exec& exec() { return m_exec; }

  /// Sets the learning rate of every Adam group (HGAD's schedule sets them all, docs/algorithm.md §4).
  void set_lr(double lr) {
    check(lr >= 0, "LevelEngine::set_lr: lr must be >= 0, got ", lr);
    m_options.adam.lr = lr;
  }

  /// One training step (docs/algorithm.md §4 "Per iteration", one level): forward, the stage's loss,
  /// backward and one Adam update, as hgad::train_step does on the CPU. Parameters without a
  /// gradient in this stage (delta and phi_intra in stage 1) are skipped, as with gradients reset
  /// to None. Throws NonFiniteError, with the parameters and Adam's state unchanged, when a loss
  /// term or a gradient is NaN or infinite.
  ///   requires: x (N, D); cond (N, P) or (Nc, P) with N a multiple of Nc (ignored when P = 0);
  ///             labels (N,) in [0, K); stage 1 or 2; tensors on the CPU or on this device.
  LossTerms<Scalar> train_step(const Tensor<Scalar>& x, const Tensor<Scalar>& cond,
                               const std::vector<std::int64_t>& labels, int stage,
                               const TrainStepContext& context = {}) {
    LossTerms<Scalar> terms = compute_gradients(x, cond, labels, stage, context);
    if (m_hook) m_hook(m_grads.data(), m_n_params, terms);
    check_finite_gradients(context);
    apply_adam(stage);
    return terms;
  }

  /// Every later train_step calls `hook` between its gradients and its Adam step with the flat
  /// gradient buffer (n_parameters() values on this device, zero where the stage gives none) and
  /// the loss terms; the finiteness check then sees what the hook left (an empty hook: none).
  void set_gradient_hook(FlatGradientHook<Scalar> hook) { m_hook = std::move(hook); }

  /// Forward, loss and backward without the update: the gradients stay on the device until the
  /// next call (copy_gradients_to reads them).
  LossTerms<Scalar> compute_gradients(const Tensor<Scalar>& x_in, const Tensor<Scalar>& cond_in,
                                      const std::vector<std::int64_t>& labels, int stage,
                                      const TrainStepContext& context = {}) {
    hgad::detail::check_stage(stage, "LevelEngine::train_step");
    const Batch batch = prepare_batch("train_step", x_in, cond_in, &labels);
    const CouplingDims& d = m_dims;
    const Index N = batch.N, Nc = batch.Nc, NB = m_n_blocks;
    const bool stage2 = stage == 2;
    Backend<Scalar>& be = m_exec.backend();
    const BackendPtr<Scalar>& bp = m_exec.backend_ptr();

    m_grads.fill(Scalar(0));
    update_derived();

    // Activations of the backward: block outputs (the input of block b + 1; the last is z),
    // hidden layers and [s | t] of every block.
    Tensor<Scalar> outputs = Tensor<Scalar>::empty({NB, N, d.D}, bp);  // (NB, N, D)
    Tensor<Scalar> hidden = Tensor<Scalar>::empty({NB, N, d.H}, bp);   // (NB, N, H)
    Tensor<Scalar> st = Tensor<Scalar>::empty({NB, N, 2 * d.n2}, bp);  // (NB, N, 2 n2)
    Tensor<Scalar> ld = Tensor<Scalar>::empty({N}, bp);                // (N,)
    {
      Tensor<Scalar> u_affine = Tensor<Scalar>::empty({N, d.D}, bp);
      Tensor<Scalar> cond_part = Tensor<Scalar>::empty({d.P > 0 ? Nc : 0, d.H}, bp);
      for (Index b = 0; b < NB; ++b) {
        const Scalar* in = b == 0 ? batch.x : outputs.data() + (b - 1) * N * d.D;
        block_forward(b, N, Nc, in, batch.cond, hidden.data() + b * N * d.H,
                      st.data() + b * N * 2 * d.n2, u_affine.data(), cond_part.data(),
                      outputs.data() + b * N * d.D, ld.data());
      }
    }
    const Scalar* z = outputs.data() + (NB - 1) * N * d.D;
    // A fixed layer in front of the flow (the whitening of docs/algorithm.md §2.5) adds its constant
    // log-determinant to every row's before the prior sees it; its gradient is that of ld.
    if (m_options.loss.log_jac_det_offset != 0)
      be.unary(UnaryOp::add_scalar, N, ld.data(), ld.data(),
               static_cast<Scalar>(m_options.loss.log_jac_det_offset));

    // The prior (docs/algorithm.md §3.3): per-row terms, dL/dz, dL/dld and the centre coefficients.
    const Index n_coef = prior_coef_cols(m_K, m_M);
    Tensor<Scalar> grad = Tensor<Scalar>::empty({N, d.D}, bp);  // dL/dz, then dL/dx block by block
    Tensor<Scalar> g_ld = Tensor<Scalar>::empty({N}, bp);
    Tensor<Scalar> coef = Tensor<Scalar>::empty({N, n_coef}, bp);
    Tensor<Scalar> row_terms = Tensor<Scalar>::empty({N, Index(PriorTerm::count)}, bp);
    auto config = PriorRowConfig<Scalar>::make(
        static_cast<int>(m_K), static_cast<int>(m_M), static_cast<Scalar>(d.D),
        m_options.loss.lambda1, m_options.loss.lambda2, m_options.loss.label_smoothing, stage2);
    config.row_weight = Scalar(1) / static_cast<Scalar>(N);
    m_exec.prior_rows(config, N, d.D, z, ld.data(), batch.labels, param(m_mu), m_centers.data(),
                      m_log_pi.data(), m_log_w.data(), grad.data(), coef.data(), g_ld.data(),
                      row_terms.data());
    Tensor<Scalar> term_sums = Tensor<Scalar>::empty({Index(PriorTerm::count)}, bp);
    be.sum_cols(N, PriorTerm::count, row_terms.data(), term_sums.data(), false);

    // The prior's parameter gradients: CZ = coef[:, :K + K M]^T z and the column sums of coef.
    {
      const Index n_centres = m_K + m_K * m_M;
      Tensor<Scalar> cz = Tensor<Scalar>::empty({n_centres, d.D}, bp);
      Tensor<Scalar> cs = Tensor<Scalar>::empty({n_coef}, bp);
      be.gemm(Transpose::yes, Transpose::no, n_centres, d.D, N, Scalar(1), coef.data(), n_coef, z, d.D,
              Scalar(0), cz.data(), d.D);
      be.sum_cols(N, n_coef, coef.data(), cs.data(), false);
      m_exec.prior_center_grad(m_K, m_M, d.D, stage2, cz.data(), cs.data(), param(m_mu),
                               m_centers.data(), grad_of(m_mu), grad_of(m_delta));
      m_exec.prior_logit_grad(m_K, m_M, stage2, cs.data(), param(m_phi_intra), param(m_phi_inter),
                              grad_of(m_phi_intra), grad_of(m_phi_inter));
    }

    // The flow's backward, last block to first.
    {
      Tensor<Scalar> sum_g_ld = Tensor<Scalar>::empty({1}, bp);
      be.sum_cols(N, 1, g_ld.data(), sum_g_ld.data(), false);
      Tensor<Scalar> gu = Tensor<Scalar>::empty({N, 2 * d.D}, bp);
      Tensor<Scalar> ga = Tensor<Scalar>::empty({N, 2 * d.n2}, bp);
      Tensor<Scalar> gh = Tensor<Scalar>::empty({N, d.H}, bp);
      const bool repeat = d.P > 0 && Nc < N;
      Tensor<Scalar> gh_sum = Tensor<Scalar>::empty({repeat ? Nc : 0, d.H}, bp);
      Tensor<Scalar> cs = Tensor<Scalar>::empty({2 * d.D}, bp);
      for (Index b = NB; b-- > 0;) {
        const Scalar* in = b == 0 ? batch.x : outputs.data() + (b - 1) * N * d.D;
        block_backward(b, N, Nc, in, batch.cond, hidden.data() + b * N * d.H,
                       st.data() + b * N * 2 * d.n2, grad.data(), g_ld.data(), sum_g_ld.data(),
                       gu.data(), ga.data(), gh.data(), gh_sum.data(), cs.data(), b > 0);
      }
    }

    // The loss terms (the one synchronisation of the step), means over the rows.
    Scalar sums[PriorTerm::count];
    be.copy_to_host(term_sums.data(), sums, PriorTerm::count);
    LossTerms<Scalar> terms;
    terms.stage = stage;
    terms.objective = Objective::hgad;
    const double inv_n = 1.0 / static_cast<double>(N);
    terms.l_g = static_cast<Scalar>(double(sums[PriorTerm::g]) * inv_n);
    terms.l_mi = static_cast<Scalar>(double(sums[PriorTerm::mi]) * inv_n);
    terms.l_e = static_cast<Scalar>(double(sums[PriorTerm::e]) * inv_n);
    double total = m_options.loss.lambda1 * double(terms.l_g) -
                   m_options.loss.lambda2 * double(terms.l_mi) + double(terms.l_e);
    if (stage2) {
      terms.l_g_intra = static_cast<Scalar>(double(sums[PriorTerm::g_intra]) * inv_n);
      terms.l_z = static_cast<Scalar>(double(sums[PriorTerm::z]) * inv_n);
      total += double(terms.l_g_intra) + double(terms.l_z);
    }
    terms.total = static_cast<Scalar>(total);
    hgad::detail::check_finite_terms(terms, context, "LevelEngine::train_step");
    m_last_stage = stage;
    return terms;
  }

  /// Throws NonFiniteError when a gradient of the last compute_gradients is NaN or infinite.
  void check_finite_gradients(const TrainStepContext& context = {}) {
    if (m_exec.backend().all_finite(m_n_params, m_grads.data())) return;
    throw NonFiniteError(hgad::detail::concat(
        "LevelEngine::train_step: a gradient of the level is not finite (NaN or Inf) at level ",
        context.level, ", step ", context.step, "; the parameters were left unchanged"));
  }

  /// One Adam update (torch 1.13, coupled weight decay on the flow) from the gradients of the last
  /// compute_gradients. `stage` 1 skips delta and phi_intra, which have no gradient then.
  void apply_adam(int stage) {
    hgad::detail::check_stage(stage, "LevelEngine::apply_adam");
    const HgadAdamOptions& o = m_options.adam;
    ++m_step_flow;
    adam_segment(0, m_flow_size, o, o.flow_weight_decay, m_step_flow);
    ++m_step_inter;
    adam_segment(m_mu, m_delta - m_mu, o, 0.0, m_step_inter);
    if (stage == 2 && m_n_params > m_delta) {
      ++m_step_intra;
      adam_segment(m_delta, m_n_params - m_delta, o, 0.0, m_step_intra);
    }
  }

  /// The flow's forward without a graph: z (N, D) and log|det J| (N,) on the device.
  FlowResult<Scalar> forward(const Tensor<Scalar>& x, const Tensor<Scalar>& cond) {
    const Batch batch = prepare_batch("forward", x, cond, nullptr);
    update_derived();
    return forward_inference(batch);
  }

  /// The test-time scores of docs/algorithm.md §5 for every row, under the intra-class mixture of
  /// class labels[n] (the ground-truth class of the test image in HGAD's protocol).
  LevelScores<Scalar> score(const Tensor<Scalar>& x, const Tensor<Scalar>& cond,
                            const std::vector<std::int64_t>& labels) {
    const Batch batch = prepare_batch("score", x, cond, &labels);
    update_derived();
    FlowResult<Scalar> flow = forward_inference(batch);
    const BackendPtr<Scalar>& bp = m_exec.backend_ptr();
    LevelScores<Scalar> out{Tensor<Scalar>::empty({batch.N}, bp), Tensor<Scalar>::empty({batch.N}, bp)};
    m_exec.score_rows(m_K, m_M, batch.N, m_dims.D, flow.out.data(), flow.log_jac_det.data(),
                      batch.labels, param(m_mu), m_centers.data(), m_log_w.data(), out.log_p.data(),
                      out.neg_entropy.data());
    return out;
  }

  /// Writes the device's parameters into `flow` and `prior` (CPU, the sizes of construction).
  void copy_parameters_to(SequenceFlow<Scalar>& flow, GaussianMixturePrior<Scalar>& prior) const {
    check_same_model("copy_parameters_to", flow, prior);
    std::vector<Scalar> host(static_cast<std::size_t>(m_n_params));
    m_exec.backend().copy_to_host(m_params.data(), host.data(), m_n_params);
    for (Index b = 0; b < m_n_blocks; ++b) {
      AllInOneBlock<Scalar>& blk = flow.block(b);
      const Scalar* p = host.data() + b * m_block_stride;
      take(p + m_w1, blk.fc1_weight().value());
      take(p + m_b1, blk.fc1_bias().value());
      take(p + m_w2, blk.fc2_weight().value());
      take(p + m_b2, blk.fc2_bias().value());
      take(p + m_gamma, blk.gamma().value());
      take(p + m_offset, blk.offset().value());
    }
    take(host.data() + m_mu, prior.mu().value());
    take(host.data() + m_phi_inter, prior.phi_inter().value());
    take(host.data() + m_delta, prior.delta().value());
    take(host.data() + m_phi_intra, prior.phi_intra().value());
  }

  /// Writes the gradients of the last compute_gradients into ensure_grad() of every parameter of
  /// `flow` and `prior` (assigned; delta and phi_intra only after a stage-2 step).
  void copy_gradients_to(SequenceFlow<Scalar>& flow, GaussianMixturePrior<Scalar>& prior) const {
    check_same_model("copy_gradients_to", flow, prior);
    std::vector<Scalar> host(static_cast<std::size_t>(m_n_params));
    m_exec.backend().copy_to_host(m_grads.data(), host.data(), m_n_params);
    for (Index b = 0; b < m_n_blocks; ++b) {
      AllInOneBlock<Scalar>& blk = flow.block(b);
      const Scalar* p = host.data() + b * m_block_stride;
      take(p + m_w1, blk.fc1_weight().ensure_grad());
      take(p + m_b1, blk.fc1_bias().ensure_grad());
      take(p + m_w2, blk.fc2_weight().ensure_grad());
      take(p + m_b2, blk.fc2_bias().ensure_grad());
      take(p + m_gamma, blk.gamma().ensure_grad());
      take(p + m_offset, blk.offset().ensure_grad());
    }
    take(host.data() + m_mu, prior.mu().ensure_grad());
    take(host.data() + m_phi_inter, prior.phi_inter().ensure_grad());
    if (m_last_stage == 2) {
      take(host.data() + m_delta, prior.delta().ensure_grad());
      take(host.data() + m_phi_intra, prior.phi_intra().ensure_grad());
    }
  }

  /// Adam's state by parameter name, as Adam::state_dict() of make_hgad_adam(flow, prior) names it
  /// ("flow.block{b}.<name>", "prior.<name>"): step counts and moments, copied to the CPU.
  std::map<std::string, AdamState<Scalar>> optimizer_state() const {
    std::vector<Scalar> m(static_cast<std::size_t>(m_n_params)), v(static_cast<std::size_t>(m_n_params));
    m_exec.backend().copy_to_host(m_exp_avg.data(), m.data(), m_n_params);
    m_exec.backend().copy_to_host(m_exp_avg_sq.data(), v.data(), m_n_params);
    const std::int64_t steps[3] = {m_step_flow, m_step_inter, m_step_intra};
    std::map<std::string, AdamState<Scalar>> out;
    for (const ParameterEntry& e : m_table) {
      AdamState<Scalar>& state = out[e.name];
      state.step = steps[e.segment];
      if (state.step == 0) continue;
      state.exp_avg = Tensor<Scalar>(e.shape);
      state.exp_avg_sq = Tensor<Scalar>(e.shape);
      std::copy(m.data() + e.offset, m.data() + e.offset + e.shape.numel(), state.exp_avg.data());
      std::copy(v.data() + e.offset, v.data() + e.offset + e.shape.numel(), state.exp_avg_sq.data());
    }
    return out;
  }

  /// Sets Adam's state from `state` (optimizer_state()'s names): a run continues where it stopped.
  ///   throws: hgad::Error naming the parameter when one is missing, has moments of the wrong shape,
  ///           or a step count unlike the others of its segment; the engine is then unchanged.
  void set_optimizer_state(const std::map<std::string, AdamState<Scalar>>& state) {
    std::int64_t steps[3] = {-1, -1, -1};
    std::vector<Scalar> m(static_cast<std::size_t>(m_n_params), Scalar(0)), v(m.size(), Scalar(0));
    for (const ParameterEntry& e : m_table) {
      const auto it = state.find(e.name);
      check(it != state.end(), "LevelEngine::set_optimizer_state: no state for parameter ", e.name);
      const AdamState<Scalar>& s = it->second;
      check(steps[e.segment] < 0 || steps[e.segment] == s.step, "LevelEngine::set_optimizer_state: ", e.name,
            " has taken ", s.step, " steps, the other parameters of its group ", steps[e.segment]);
      steps[e.segment] = s.step;
      if (s.step == 0) continue;
      check(s.exp_avg.shape() == e.shape && s.exp_avg_sq.shape() == e.shape, "LevelEngine::set_optimizer_state: ",
            "the moments of ", e.name, " have shape ", s.exp_avg.shape(), ", expected ",
            e.shape);
      const Tensor<Scalar> avg = s.exp_avg.cpu(), avg_sq = s.exp_avg_sq.cpu();
      std::copy(avg.data(), avg.data() + avg.numel(), m.data() + e.offset);
      std::copy(avg_sq.data(), avg_sq.data() + avg_sq.numel(), v.data() + e.offset);
    }
    m_exec.backend().copy_from_host(m.data(), m_exp_avg.data(), m_n_params);
    m_exec.backend().copy_from_host(v.data(), m_exp_avg_sq.data(), m_n_params);
    m_step_flow = std::max<std::int64_t>(steps[0], 0);
    m_step_inter = std::max<std::int64_t>(steps[1], 0);
    m_step_intra = std::max<std::int64_t>(steps[2], 0);
  }

  /// Writes Adam's moments and step counts into `adam`, an optimiser made by
  /// make_hgad_adam(flow, prior) for a model of this level's sizes. With copy_parameters_to this
  /// hands a GPU run over to the CPU path.
  void copy_optimizer_state_to(Adam<Scalar>& adam) const { adam.load_state_dict(optimizer_state()); }

  /// FLOPs of the GEMMs of one training step on N rows with Nc condition rows, as this engine
  /// runs them (forward, backward, the prior's centre GEMM).
  double train_step_gemm_flops(Index N, Index Nc) const {
    const CouplingDims& d = m_dims;
    const double n = double(N), nc = double(d.P > 0 ? Nc : N), H = double(d.H), D = double(d.D);
    const double n1 = double(d.n1), P = double(d.P), a = double(2 * d.n2);
    const double fwd = nc * P * H + n * n1 * H + n * H * a + n * D * D;
    const double bwd = n * D * D + a * H * n + n * a * H + H * n1 * n + H * P * nc + n * H * n1;
    const double prior = double(m_K + m_K * m_M) * D * n;
    return 2.0 * (double(m_n_blocks) * (fwd + bwd) - n * H * n1 + prior);
  }
  /// FLOPs of the GEMMs of one inference forward on N rows with Nc condition rows.
  double forward_gemm_flops(Index N, Index Nc) const {
    const CouplingDims& d = m_dims;
    const double n = double(N), nc = double(d.P > 0 ? Nc : N);
    return 2.0 * double(m_n_blocks) *
           (nc * double(d.P) * double(d.H) + n * double(d.n1) * double(d.H) +
            n * double(d.H) * double(2 * d.n2) + n * double(d.D) * double(d.D));
  }
  /// FLOPs per row of the flow's forward with a dense [x1 ; c] input, as PyTorch computes it
  /// (docs/algorithm.md §8: about 10.5 MFLOP for the paper's level). A training step is conventionally
  /// three times this.
  double dense_forward_flops_per_row() const {
    const CouplingDims& d = m_dims;
    return 2.0 * double(m_n_blocks) *
           (double(d.n1 + d.P) * double(d.H) + double(d.H) * double(2 * d.n2) + double(d.D) * double(d.D));
  }

 private:
  struct Batch {
    Index N = 0, Nc = 0;
    const Scalar* x = nullptr;
    const Scalar* cond = nullptr;
    const int* labels = nullptr;
    Tensor<Scalar> x_hold, cond_hold;  // device copies of host inputs, alive for the call
  };

  Scalar* param(Index offset) const { return const_cast<Scalar*>(m_params.data()) + offset; }
  Scalar* grad_of(Index offset) const { return const_cast<Scalar*>(m_grads.data()) + offset; }

  static void put(const Tensor<Scalar>& t, Scalar* dst) {
    const Tensor<Scalar> host = t.cpu();
    std::copy(host.data(), host.data() + host.numel(), dst);
  }
  static void take(const Scalar* src, Tensor<Scalar>& t) {
    check(t.device() == Device::cpu, "LevelEngine: the CPU model's tensors must live on the CPU");
    std::copy(src, src + t.numel(), t.data());
  }

  void check_same_model(const char* what, const SequenceFlow<Scalar>& flow,
                        const GaussianMixturePrior<Scalar>& prior) const {
    check(flow.n_blocks() == m_n_blocks && flow.dim() == m_dims.D && flow.cond_dim() == m_dims.P &&
              prior.n_classes() == m_K && prior.n_centers() == m_M && prior.dim() == m_dims.D,
          "LevelEngine::", what, ": the flow or the prior has other sizes than the level");
  }

  /// Validates the inputs, puts them on the device and uploads the labels.
  Batch prepare_batch(const char* what, const Tensor<Scalar>& x, const Tensor<Scalar>& cond,
                      const std::vector<std::int64_t>* labels) {
    const CouplingDims& d = m_dims;
    Batch batch;
    check(x.rank() == 2 && x.dim(1) == d.D && x.dim(0) >= 1, "LevelEngine::", what,
          ": x must be (N, ", d.D, "), got ", x.shape());
    batch.N = x.dim(0);
    if (d.P > 0) {
      check(cond.rank() == 2 && cond.dim(1) == d.P && cond.dim(0) >= 1 && batch.N % cond.dim(0) == 0,
            "LevelEngine::", what, ": cond must be (N, ", d.P, ") or (Nc, ", d.P, ") with N = ", batch.N,
            " a multiple of Nc, got ", cond.shape());
      batch.Nc = cond.dim(0);
      batch.cond_hold = cond.to(m_exec.backend_ptr());
      batch.cond = batch.cond_hold.data();
    } else {
      batch.Nc = batch.N;
    }
    batch.x_hold = x.to(m_exec.backend_ptr());
    batch.x = batch.x_hold.data();
    if (labels != nullptr) {
      check(static_cast<Index>(labels->size()) == batch.N, "LevelEngine::", what, ": ", labels->size(),
            " labels for N = ", batch.N, " rows");
      m_host_labels.resize(labels->size());
      for (std::size_t n = 0; n < labels->size(); ++n) {
        const std::int64_t y = (*labels)[n];
        check(y >= 0 && y < m_K, "LevelEngine::", what, ": label ", y, " of row ", n,
              " is outside [0, ", m_K, ")");
        m_host_labels[n] = static_cast<int>(y);
      }
      batch.labels = m_exec.upload_labels(m_host_labels);
    }
    return batch;
  }

  /// g, dg/dgamma and sum ln g of every block; the intra-class centres; log pi and log w.
  void update_derived() {
    m_exec.global_affine(m_n_blocks, m_dims.D, param(m_gamma), m_block_stride, m_affine, m_g.data(),
                         m_g_derivative.data(), m_sum_log_g.data());
    m_exec.intra_centers(m_K, m_M, m_dims.D, param(m_mu), param(m_delta), m_centers.data());
    m_exec.backend().softmax_rows(1, m_K, param(m_phi_inter), m_log_pi.data(), true);
    m_exec.backend().softmax_rows(m_K, m_M, param(m_phi_intra), m_log_w.data(), true);
  }

  /// Block b forward on N rows (docs/algorithm.md §2.2): out (N, D) = y; hidden (N, H) and st (N, 2 n2)
  /// kept; ld set (b = 0) or accumulated. u_affine (N, D) and cond_part (Nc, H) are scratch.
  void block_forward(Index b, Index N, Index Nc, const Scalar* in, const Scalar* cond, Scalar* hidden,
                     Scalar* st, Scalar* u_affine, Scalar* cond_part, Scalar* out, Scalar* ld) {
    const CouplingDims& d = m_dims;
    Backend<Scalar>& be = m_exec.backend();
    const Scalar* w = param(b * m_block_stride);
    const Index in1 = d.n1 + d.P;
    // h = ReLU(x1 W1x^T + c W1c^T + b1), W1 = [W1x | W1c] (H, n1 + P)
    if (d.P > 0)
      be.gemm(Transpose::no, Transpose::yes, Nc, d.H, d.P, Scalar(1), cond, d.P, w + m_w1 + d.n1, in1,
              Scalar(0), cond_part, d.H);
    be.gemm(Transpose::no, Transpose::yes, N, d.H, d.n1, Scalar(1), in, d.D, w + m_w1, in1, Scalar(0),
            hidden, d.H);
    m_exec.hidden(N, d.H, Nc, hidden, d.P > 0 ? cond_part : nullptr, w + m_b1);
    // raw = h W2^T (2 n2), then s, t, u' = g u + b and log|det J|
    be.gemm(Transpose::no, Transpose::yes, N, 2 * d.n2, d.H, Scalar(1), hidden, d.H, w + m_w2, d.H,
            Scalar(0), st, 2 * d.n2);
    m_exec.coupling_forward(N, d.n1, d.n2, in, st, w + m_b2, m_g.data() + b * d.D, w + m_offset,
                            m_sum_log_g.data() + b, m_alpha, m_clamp, u_affine, ld, b > 0);
    // y = R u'  (Y = U' R^T)
    be.gemm(Transpose::no, Transpose::yes, N, d.D, d.D, Scalar(1), u_affine, d.D,
            m_rotation.data() + b * d.D * d.D, d.D, Scalar(0), out, d.D);
  }

  /// Block b backward: grad (N, D) holds dL/dy on entry and dL/dx on exit (when need_grad_x);
  /// parameter gradients are added into m_grads.
  void block_backward(Index b, Index N, Index Nc, const Scalar* in, const Scalar* cond,
                      const Scalar* hidden, const Scalar* st, Scalar* grad, const Scalar* g_ld,
                      const Scalar* sum_g_ld, Scalar* gu, Scalar* ga, Scalar* gh, Scalar* gh_sum,
                      Scalar* cs, bool need_grad_x) {
    const CouplingDims& d = m_dims;
    Backend<Scalar>& be = m_exec.backend();
    const Scalar* w = param(b * m_block_stride);
    Scalar* gw = grad_of(b * m_block_stride);
    const Index in1 = d.n1 + d.P;
    // dL/du' = dL/dy R   (y = R u'), into the first D columns of gu (N, 2D)
    be.gemm(Transpose::no, Transpose::no, N, d.D, d.D, Scalar(1), grad, d.D,
            m_rotation.data() + b * d.D * d.D, d.D, Scalar(0), gu, 2 * d.D);
    m_exec.coupling_backward(N, d.n1, d.n2, in, st, gu, m_g.data() + b * d.D, g_ld, m_alpha, m_clamp,
                             grad, ga);
    // dL/db = sum_n dL/du';  dL/dgamma from sum_n dL/du' u and sum_n dL/dld
    be.sum_cols(N, 2 * d.D, gu, cs, false);
    m_exec.affine_grad(d.D, cs, m_g.data() + b * d.D, m_g_derivative.data() + b * d.D, sum_g_ld,
                       gw + m_gamma, gw + m_offset);
    // raw = h W2^T + b2:  dW2 += ga^T h,  db2 += sum_n ga,  dh = ga W2
    be.gemm(Transpose::yes, Transpose::no, 2 * d.n2, d.H, N, Scalar(1), ga, 2 * d.n2, hidden, d.H,
            Scalar(1), gw + m_w2, d.H);
    be.sum_cols(N, 2 * d.n2, ga, gw + m_b2, true);
    be.gemm(Transpose::no, Transpose::no, N, d.H, 2 * d.n2, Scalar(1), ga, 2 * d.n2, w + m_w2, d.H,
            Scalar(0), gh, d.H);
    // through the ReLU; per-position sums of dL/dh for the condition's weights
    const bool repeat = d.P > 0 && Nc < N;
    const Index rows_c = repeat ? Nc : N;
    m_exec.relu_backward_repeat(N, d.H, rows_c, hidden, gh, repeat ? gh_sum : nullptr);
    const Scalar* gh_c = repeat ? gh_sum : gh;
    // pre = x1 W1x^T + c W1c^T + b1:  dW1x += dh^T x1,  dW1c += dh_c^T c,  db1 += sum dh
    be.gemm(Transpose::yes, Transpose::no, d.H, d.n1, N, Scalar(1), gh, d.H, in, d.D, Scalar(1), gw + m_w1,
            in1);
    if (d.P > 0)
      be.gemm(Transpose::yes, Transpose::no, d.H, d.P, rows_c, Scalar(1), gh_c, d.H, cond, d.P, Scalar(1),
              gw + m_w1 + d.n1, in1);
    be.sum_cols(rows_c, d.H, gh_c, gw + m_b1, true);
    // dL/dx1 += dh W1x
    if (need_grad_x)
      be.gemm(Transpose::no, Transpose::no, N, d.n1, d.H, Scalar(1), gh, d.H, w + m_w1, in1, Scalar(1), grad,
              d.D);
  }

  /// The inference forward: two ping-pong buffers, no activations kept. Requires update_derived().
  FlowResult<Scalar> forward_inference(const Batch& batch) {
    const CouplingDims& d = m_dims;
    const BackendPtr<Scalar>& bp = m_exec.backend_ptr();
    const Index N = batch.N, Nc = batch.Nc, NB = m_n_blocks;
    FlowResult<Scalar> r{Tensor<Scalar>::empty({N, d.D}, bp), Tensor<Scalar>::empty({N}, bp)};
    Tensor<Scalar> other = Tensor<Scalar>::empty({NB > 1 ? N : 0, d.D}, bp);
    Tensor<Scalar> hidden = Tensor<Scalar>::empty({N, d.H}, bp);
    Tensor<Scalar> st = Tensor<Scalar>::empty({N, 2 * d.n2}, bp);
    Tensor<Scalar> u_affine = Tensor<Scalar>::empty({N, d.D}, bp);
    Tensor<Scalar> cond_part = Tensor<Scalar>::empty({d.P > 0 ? Nc : 0, d.H}, bp);
    // Block b writes r.out when NB - 1 - b is even, so the last block writes r.out.
    const auto buffer = [&](Index b) { return (NB - 1 - b) % 2 == 0 ? r.out.data() : other.data(); };
    for (Index b = 0; b < NB; ++b) {
      const Scalar* in = b == 0 ? batch.x : buffer(b - 1);
      block_forward(b, N, Nc, in, batch.cond, hidden.data(), st.data(), u_affine.data(), cond_part.data(),
                    buffer(b), r.log_jac_det.data());
    }
    return r;
  }

  void adam_segment(Index offset, Index n, const HgadAdamOptions& o, double weight_decay, std::int64_t step) {
    if (n <= 0) return;
    const auto c = adam_step_constants<Scalar>(o.lr, o.beta1, o.beta2, o.eps, weight_decay, step);
    m_exec.adam(c, n, m_grads.data() + offset, m_params.data() + offset, m_exp_avg.data() + offset,
                m_exp_avg_sq.data() + offset);
  }

  Exec m_exec;
  LevelOptions m_options;
  FlatGradientHook<Scalar> m_hook;  // between the gradients and Adam (data-parallel training)
  CouplingDims m_dims;
  Index m_n_blocks = 0, m_K = 0, m_M = 0;
  Scalar m_alpha = 0;
  SoftClamp m_clamp = SoftClamp::pinned;
  GlobalAffineType m_affine = GlobalAffineType::softplus;

  // Offsets in the flat parameter buffer: per block [W1 | b1 | W2 | b2 | gamma | offset], then the
  // prior [mu | phi_inter | delta | phi_intra]. The Adam segments: the flow; mu and phi_inter, which
  // both stages train; delta and phi_intra, which only stage 2 trains.
  Index m_w1 = 0, m_b1 = 0, m_w2 = 0, m_b2 = 0, m_gamma = 0, m_offset = 0, m_block_stride = 0;
  Index m_flow_size = 0, m_mu = 0, m_phi_inter = 0, m_delta = 0, m_phi_intra = 0, m_n_params = 0;
  struct ParameterEntry {
    std::string name;
    Index offset;
    Shape shape;
    int segment;
  };
  std::vector<ParameterEntry> m_table;

  Tensor<Scalar> m_params, m_grads, m_exp_avg, m_exp_avg_sq, m_rotation;
  Tensor<Scalar> m_g, m_g_derivative, m_sum_log_g, m_centers, m_log_pi, m_log_w;
  std::vector<int> m_host_labels;
  std::int64_t m_step_flow = 0, m_step_inter = 0, m_step_intra = 0;
  int m_last_stage = 0;
};

/// The level kernels run on the CPU: the bodies of level_bodies.hpp in loops that follow the
/// CUDA kernels' decomposition (32 lanes per row where the GPU uses a warp), with the GEMMs of the
/// CPU backend. Used by the tests to check the GPU algorithm without a device.
template <class Scalar>
class HostLevelExec {
 public:
  static constexpr int n_lanes = 32;

  Backend<Scalar>& backend() const { return *cpu_backend<Scalar>(); }
  const BackendPtr<Scalar>& backend_ptr() const { return cpu_backend<Scalar>(); }
  const int* upload_labels(const std::vector<int>& labels) { return labels.data(); }

  void global_affine(Index n_blocks, Index D, const Scalar* gamma, Index gamma_stride, GlobalAffineType type,
                     Scalar* g, Scalar* g_derivative, Scalar* sum_log_g) {
    for (Index b = 0; b < n_blocks; ++b) {
      Scalar sum = 0;
      for (Index j = 0; j < D; ++j)
        sum += global_affine_element(gamma[b * gamma_stride + j], type, g + b * D + j, g_derivative + b * D + j);
      sum_log_g[b] = sum;
    }
  }
  void hidden(Index N, Index H, Index Nc, Scalar* h, const Scalar* cond_part, const Scalar* b1) {
    for (Index n = 0; n < N; ++n) hidden_row(n, H, Nc, h, cond_part, b1, 0, 1);
  }
  void coupling_forward(Index N, Index n1, Index n2, const Scalar* x, Scalar* st, const Scalar* b2,
                        const Scalar* g, const Scalar* offset, const Scalar* sum_log_g, Scalar alpha,
                        SoftClamp mode, Scalar* u_affine, Scalar* log_jac_det, bool accumulate) {
    for (Index n = 0; n < N; ++n) {
      Scalar s_sum = 0;
      for (int lane = 0; lane < n_lanes; ++lane)
        s_sum += coupling_forward_lane(n, lane, n_lanes, n1, n2, x, st, b2, g, offset, alpha, mode, u_affine);
      coupling_forward_finish(n, s_sum, *sum_log_g, log_jac_det, accumulate);
    }
  }
  void coupling_backward(Index N, Index n1, Index n2, const Scalar* x, const Scalar* st, Scalar* gu,
                         const Scalar* g, const Scalar* g_log_jac_det, Scalar alpha, SoftClamp mode, Scalar* gx,
                         Scalar* ga) {
    for (Index n = 0; n < N; ++n)
      for (Index j = 0; j < n1 + n2; ++j)
        coupling_backward_element(n, j, n1, n2, x, st, gu, g, g_log_jac_det, alpha, mode, gx, ga);
  }
  void relu_backward_repeat(Index N, Index H, Index Nc, const Scalar* h, Scalar* gh, Scalar* gh_sum) {
    for (Index i = 0; i < Nc * H; ++i) relu_backward_repeat_element(i, N, H, Nc, h, gh, gh_sum);
  }
  void affine_grad(Index D, const Scalar* cs, const Scalar* g, const Scalar* g_derivative, const Scalar* sum_g_ld,
                   Scalar* grad_gamma, Scalar* grad_offset) {
    for (Index j = 0; j < D; ++j) affine_grad_element(j, D, cs, g, g_derivative, *sum_g_ld, grad_gamma, grad_offset);
  }
  void intra_centers(Index K, Index M, Index D, const Scalar* mu, const Scalar* delta, Scalar* centers) {
    for (Index i = 0; i < K * M * D; ++i) intra_center_element(i, M, D, mu, delta, centers);
  }
  void prior_rows(const PriorRowConfig<Scalar>& config, Index N, Index D, const Scalar* z, const Scalar* log_jac_det,
                  const int* labels, const Scalar* mu, const Scalar* centers, const Scalar* log_pi,
                  const Scalar* log_w, Scalar* gz, Scalar* coef, Scalar* g_ld, Scalar* terms) {
    const Index K = config.n_classes, M = config.n_centers;
    std::vector<Scalar> scratch(static_cast<std::size_t>(PriorRowScratch<Scalar>::size(D, K, M)));
    const auto s = PriorRowScratch<Scalar>::at(scratch.data(), D, K, M);
    for (Index n = 0; n < N; ++n) {
      const int label = labels[n];
      const Scalar* m = centers + label * M * D;
      std::copy(z + n * D, z + (n + 1) * D, s.z);
      for (Index y = 0; y < K; ++y) s.d[y] = lanes_distance(s.z, mu + y * D, D);
      if (config.stage2)
        for (Index k = 0; k < M; ++k) s.e[k] = lanes_distance(s.z, m + k * D, D);
      prior_row(config, s.d, s.e, log_pi, log_w + label * M, label, log_jac_det[n], s.terms, s.grad_d, s.grad_e,
                s.grad_log_pi, s.grad_log_w, s.g_ld);
      for (int lane = 0; lane < n_lanes; ++lane)
        prior_row_write_lane(config, n, lane, n_lanes, D, label, mu, m, s, gz, coef, g_ld, terms);
    }
  }
  void prior_center_grad(Index K, Index M, Index D, bool stage2, const Scalar* cz, const Scalar* cs,
                         const Scalar* mu, const Scalar* centers, Scalar* grad_mu, Scalar* grad_delta) {
    const Index n = K * D + (stage2 ? K * (M - 1) * D : 0);
    for (Index i = 0; i < n; ++i) prior_center_grad_element(i, K, M, D, cz, cs, mu, centers, grad_mu, grad_delta);
  }
  void prior_logit_grad(Index K, Index M, bool stage2, const Scalar* cs, const Scalar* phi_intra,
                        const Scalar* phi_inter, Scalar* grad_phi_intra, Scalar* grad_phi_inter) {
    for (Index t = 0; t <= K; ++t)
      prior_logit_grad_task(t, K, M, stage2, cs, phi_intra, phi_inter, grad_phi_intra, grad_phi_inter);
  }
  void score_rows(Index K, Index M, Index N, Index D, const Scalar* z, const Scalar* log_jac_det, const int* labels,
                  const Scalar* mu, const Scalar* centers, const Scalar* log_w, Scalar* log_p, Scalar* neg_entropy) {
    std::vector<Scalar> d(static_cast<std::size_t>(K + M));
    for (Index n = 0; n < N; ++n) {
      const int label = labels[n];
      const Scalar* m = centers + label * M * D;
      for (Index c = 0; c < K + M; ++c)
        d[static_cast<std::size_t>(c)] = lanes_distance(z + n * D, c < K ? mu + c * D : m + (c - K) * D, D);
      score_row(static_cast<int>(K), static_cast<int>(M), static_cast<Scalar>(D), d.data(), d.data() + K,
                log_w + label * M, log_jac_det[n], log_p + n, neg_entropy + n);
    }
  }
  void adam(const AdamStepConstants<Scalar>& c, Index n, const Scalar* grad, Scalar* param, Scalar* exp_avg,
            Scalar* exp_avg_sq) {
    for (Index i = 0; i < n; ++i) adam_element(c, grad[i], param + i, exp_avg + i, exp_avg_sq + i);
  }

 private:
  static Scalar lanes_distance(const Scalar* z, const Scalar* c, Index D) {
    Scalar total = 0;
    for (int lane = 0; lane < n_lanes; ++lane) total += squared_distance_lane(z, c, D, lane, n_lanes);
    return total;
  }
};

/// The GPU's level algorithm on the CPU (tests and debugging).
template <class Scalar>
class HostLevel : public LevelEngine<Scalar, HostLevelExec<Scalar>> {
 public:
  HostLevel(const SequenceFlow<Scalar>& flow, const GaussianMixturePrior<Scalar>& prior, LevelOptions options = {})
      : LevelEngine<Scalar, HostLevelExec<Scalar>>(flow, prior, HostLevelExec<Scalar>(), options) {}
};

}  // namespace hgad::cuda
