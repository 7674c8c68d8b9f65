#pragma once
/// \file
/// One training step of one feature level (docs/algorithm.md §4, "Per iteration"): the flow maps the
/// features with their positional encodings, the objective of the current stage gives the loss
/// terms, back-propagation fills the gradients of the flow and the prior, and Adam updates them.
///
///     hgad::Adam<float> adam = hgad::make_hgad_adam(flow, prior);      // HGAD's groups (§4)
///     hgad::SequenceFlowCache<float> cache;                            // reused across steps
///     for (std::int64_t step = 0; step < n_steps; ++step) {
///       adam.set_lr(schedule.lr_at(meta_epoch, iteration, iterations_per_meta_epoch));
///       auto terms = hgad::train_step(flow, prior, adam, features, pos, labels,
///                                     hgad::training_stage(meta_epoch), {}, {level, step}, cache);
///     }
///
/// Two paths compute the same step: `train_step` (the fused CPU kernels of the flow and the
/// objective) and `train_step_reference` (autograd compositions of both), which the tests compare.
/// A NaN or infinity in a loss term or a gradient stops the step with hgad::NonFiniteError before
/// Adam touches anything, so the parameters and the optimiser state stay those of the last good step.

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "../autograd/var.hpp"
#include "../detail/check.hpp"
#include "../flow/sequence_flow.hpp"
#include "../level_device.hpp"
#include "../loss/fused_loss.hpp"
#include "../loss/hgad_loss.hpp"
#include "../loss/loss_terms.hpp"
#include "../nn/adam.hpp"
#include "../prior/gaussian_mixture_prior.hpp"
#include "../tensor.hpp"

namespace hgad {

/// An Adam over one level with HGAD's three groups (docs/algorithm.md §4): the flow (weight decay
/// flow_weight_decay), {mu, delta} and {phi_intra, phi_inter} (no weight decay), all at `lr`
/// (HGAD's nominal 3x lr of the centres is overwritten by the schedule before the first step).
/// Parameters are named "flow.block{k}.<name>" and "prior.<name>" in messages.
template <class Scalar>
Adam<Scalar> make_hgad_adam(const SequenceFlow<Scalar>& flow, const GaussianMixturePrior<Scalar>& prior,
                            const HgadAdamOptions& options = {}) {
  Adam<Scalar> adam;
  std::vector<Var<Scalar>> flow_params;
  std::vector<std::string> flow_names;
  for (const auto& [name, var] : flow.named_parameters()) {
    flow_params.push_back(var);
    flow_names.push_back("flow." + name);
  }
  const AdamOptions flow_options{options.lr, options.beta1, options.beta2, options.eps, options.flow_weight_decay};
  const AdamOptions prior_options{options.lr, options.beta1, options.beta2, options.eps, 0.0};
  adam.add_param_group(std::move(flow_params), flow_options, std::move(flow_names));
  adam.add_param_group({prior.mu(), prior.delta()}, prior_options, {"prior.mu", "prior.delta"});
  adam.add_param_group({prior.phi_intra(), prior.phi_inter()}, prior_options, {"prior.phi_intra", "prior.phi_inter"});
  return adam;
}

/// The Adam of one level: make_hgad_adam's three groups for the HGAD objective (prior given),
/// the flow alone, with weight decay flow_weight_decay, for the NF baseline (prior null).
template <class Scalar>
Adam<Scalar> make_level_adam(const SequenceFlow<Scalar>& flow, const GaussianMixturePrior<Scalar>* prior,
                             const HgadAdamOptions& options = {}) {
  if (prior != nullptr) return make_hgad_adam(flow, *prior, options);
  Adam<Scalar> adam;
  std::vector<Var<Scalar>> params;
  std::vector<std::string> names;
  for (const auto& [name, var] : flow.named_parameters()) {
    params.push_back(var);
    names.push_back("flow." + name);
  }
  adam.add_param_group(std::move(params),
                       {options.lr, options.beta1, options.beta2, options.eps, options.flow_weight_decay},
                       std::move(names));
  return adam;
}

namespace detail {

template <class Scalar>
void check_step_inputs(const SequenceFlow<Scalar>& flow, const Tensor<Scalar>& features, const Tensor<Scalar>& cond,
                       const std::vector<std::int64_t>& labels, int stage, const char* where) {
  check_stage(stage, where);
  check(features.rank() == 2 && features.cols() == flow.dim() && features.rows() >= 1, where,
        ": features must be (N, D) with D = ", flow.dim(), ", got ", features.shape());
  // (N, P), or (M, P) shared by the N / M maps of the batch (row n reads row n mod M).
  const bool cond_ok =
      flow.cond_dim() == 0 ? cond.numel() == 0 : condition_fits(features.rows(), cond, flow.cond_dim());
  check(cond_ok, where, ": positional encodings must be (N, P) = (", features.rows(), ", ", flow.cond_dim(),
        ") or (M, P) with N a multiple of M, got ", cond.shape());
  check(static_cast<Index>(labels.size()) == features.rows(), where, ": ", labels.size(), " labels for ",
        features.rows(), " feature vectors");
}

/// Every (name, parameter) of a level: the flow's, then the prior's (none for the NF baseline).
template <class Scalar>
std::vector<std::pair<std::string, Var<Scalar>>> level_parameters(const SequenceFlow<Scalar>& flow,
                                                                   const GaussianMixturePrior<Scalar>* prior) {
  std::vector<std::pair<std::string, Var<Scalar>>> out;
  for (const auto& [name, var] : flow.named_parameters()) out.emplace_back("flow." + name, var);
  if (prior == nullptr) return out;
  const auto names = GaussianMixturePrior<Scalar>::parameter_names();
  const auto params = prior->parameters();
  for (std::size_t i = 0; i < names.size(); ++i) out.emplace_back("prior." + names[i], params[i]);
  return out;
}

template <class Scalar>
std::vector<std::pair<std::string, Var<Scalar>>> level_parameters(const SequenceFlow<Scalar>& flow,
                                                                   const GaussianMixturePrior<Scalar>& prior) {
  return level_parameters(flow, &prior);
}

template <class Scalar>
void check_finite_gradients(const SequenceFlow<Scalar>& flow, const GaussianMixturePrior<Scalar>* prior,
                            const TrainStepContext& context, const char* where) {
  for (const auto& [name, var] : level_parameters(flow, prior)) {
    if (!var.has_grad()) continue;
    const Tensor<Scalar>& g = var.grad();
    if (!g.backend().all_finite(g.numel(), g.data())) {
      throw NonFiniteError(concat(where, ": the gradient of parameter ", name, " is not finite (NaN or Inf) at level ",
                                  context.level, ", step ", context.step, "; the parameters were left unchanged"));
    }
  }
}

template <class Scalar>
void check_finite_gradients(const SequenceFlow<Scalar>& flow, const GaussianMixturePrior<Scalar>& prior,
                            const TrainStepContext& context, const char* where) {
  check_finite_gradients(flow, &prior, context, where);
}

}  // namespace detail

/// Forward, objective and backward of one level on the fused CPU path, without the optimiser:
/// z, log|det J| = flow.forward_train(features, cond); the fused objective (docs/algorithm.md §3.4, of
/// `stage` and options.objective) adds the prior's gradients; flow.backward adds the flow's.
/// Gradients accumulate (+=): reset them first (Adam::zero_grad) for a fresh step. Throws
/// NonFiniteError, naming the term, when a loss term is not finite (before the flow's backward).
///   requires: CPU tensors, features (N, D), cond (N, P) (empty when P = 0), labels (N,) in [0, K),
///             stage 1 or 2; a prior for Objective::hgad (null for the NF baseline).
template <class Scalar>
LossTerms<Scalar> compute_gradients(SequenceFlow<Scalar>& flow, GaussianMixturePrior<Scalar>* prior,
                                    const Tensor<Scalar>& features, const Tensor<Scalar>& cond,
                                    const std::vector<std::int64_t>& labels, int stage, const LossOptions& options,
                                    const TrainStepContext& context, SequenceFlowCache<Scalar>& cache) {
  detail::check_step_inputs(flow, features, cond, labels, stage, "compute_gradients");
  const FlowResult<Scalar> r = flow.forward_train(features, cond, cache);
  const FusedLoss<Scalar> loss = objective_loss_fused(prior, r.out, r.log_jac_det, labels, stage, options);
  detail::check_finite_terms(loss.terms, context, "compute_gradients");
  flow.backward(cache, loss.grad_z, loss.grad_log_jac_det);
  return loss.terms;
}

template <class Scalar>
LossTerms<Scalar> compute_gradients(SequenceFlow<Scalar>& flow, GaussianMixturePrior<Scalar>& prior,
                                    const Tensor<Scalar>& features, const Tensor<Scalar>& cond,
                                    const std::vector<std::int64_t>& labels, int stage, const LossOptions& options,
                                    const TrainStepContext& context, SequenceFlowCache<Scalar>& cache) {
  return compute_gradients(flow, &prior, features, cond, labels, stage, options, context, cache);
}

/// The same on the autograd path: SequenceFlow::forward on Vars, objective_loss, backward().
template <class Scalar>
LossTerms<Scalar> compute_gradients_reference(SequenceFlow<Scalar>& flow, GaussianMixturePrior<Scalar>& prior,
                                              const Tensor<Scalar>& features, const Tensor<Scalar>& cond,
                                              const std::vector<std::int64_t>& labels, int stage,
                                              const LossOptions& options, const TrainStepContext& context) {
  detail::check_step_inputs(flow, features, cond, labels, stage, "compute_gradients_reference");
  const Var<Scalar> x(features);
  const Var<Scalar> c = cond.numel() == 0 ? Var<Scalar>() : Var<Scalar>(cond);
  const FlowVarResult<Scalar> r = flow.forward(x, c);
  LossVars<Scalar> loss = objective_loss(prior, r.out, r.log_jac_det, labels, stage, options);
  const LossTerms<Scalar> terms = loss.values();
  detail::check_finite_terms(terms, context, "compute_gradients_reference");
  loss.total.backward();
  return terms;
}

/// One optimiser step of one level on the fused path (docs/algorithm.md §4): every gradient of the
/// optimiser reset to none, compute_gradients, a finiteness check of every gradient of the level,
/// then adam.step(). Parameters a stage does not reach (delta and phi_intra in stage 1) have no
/// gradient and are not updated. Returns the loss terms, computed before the update. A non-empty
/// `hook` runs between the gradients and the finiteness check (GradientHook, parallel/data_parallel.hpp);
/// without one the step is exactly the above.
///   throws: NonFiniteError naming the term or parameter, context.level and context.step, with
///           the parameters and Adam's state as before the call.
/// Both objectives take this one step: the NF baseline passes a null prior (and an Adam over the
/// flow alone, make_level_adam).
template <class Scalar>
LossTerms<Scalar> train_step(SequenceFlow<Scalar>& flow, GaussianMixturePrior<Scalar>* prior,
                             Adam<Scalar>& adam, const Tensor<Scalar>& features,
                             const Tensor<Scalar>& cond, const std::vector<std::int64_t>& labels,
                             int stage, const LossOptions& options, const TrainStepContext& context,
                             SequenceFlowCache<Scalar>& cache,
                             const GradientHook<Scalar>& hook = {}) {
  adam.zero_grad();
  LossTerms<Scalar> terms =
      compute_gradients(flow, prior, features, cond, labels, stage, options, context, cache);
  if (hook) {
    std::vector<Var<Scalar>> with_grad;
    for (const auto& [name, var] : detail::level_parameters(flow, prior))
      if (var.has_grad()) with_grad.push_back(var);
    hook(with_grad, terms);
  }
  detail::check_finite_gradients(flow, prior, context, "train_step");
  adam.step();
  return terms;
}

template <class Scalar>
LossTerms<Scalar> train_step(SequenceFlow<Scalar>& flow, GaussianMixturePrior<Scalar>& prior, Adam<Scalar>& adam,
                             const Tensor<Scalar>& features, const Tensor<Scalar>& cond,
                             const std::vector<std::int64_t>& labels, int stage, const LossOptions& options,
                             const TrainStepContext& context, SequenceFlowCache<Scalar>& cache) {
  return train_step(flow, &prior, adam, features, cond, labels, stage, options, context, cache);
}

/// The same step with a cache that lives for this call only.
template <class Scalar>
LossTerms<Scalar> train_step(SequenceFlow<Scalar>& flow, GaussianMixturePrior<Scalar>& prior, Adam<Scalar>& adam,
                             const Tensor<Scalar>& features, const Tensor<Scalar>& cond,
                             const std::vector<std::int64_t>& labels, int stage, const LossOptions& options = {},
                             const TrainStepContext& context = {}) {
  SequenceFlowCache<Scalar> cache;
  return train_step(flow, prior, adam, features, cond, labels, stage, options, context, cache);
}

/// The same step on the autograd path (compute_gradients_reference), the reference of the tests.
template <class Scalar>
LossTerms<Scalar> train_step_reference(SequenceFlow<Scalar>& flow, GaussianMixturePrior<Scalar>& prior,
                                       Adam<Scalar>& adam, const Tensor<Scalar>& features, const Tensor<Scalar>& cond,
                                       const std::vector<std::int64_t>& labels, int stage,
                                       const LossOptions& options = {}, const TrainStepContext& context = {}) {
  adam.zero_grad();
  const LossTerms<Scalar> terms =
      compute_gradients_reference(flow, prior, features, cond, labels, stage, options, context);
  detail::check_finite_gradients(flow, prior, context, "train_step_reference");
  adam.step();
  return terms;
}

}  // namespace hgad
