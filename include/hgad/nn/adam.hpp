#pragma once
/// \file
/// Adam with parameter groups, in the exact form of torch.optim.Adam 1.13 (single-tensor path,
/// amsgrad off), with coupled L2 weight decay and per-tensor step counts (docs/algorithm.md §4).
///
///     hgad::Adam<float> adam;
///     adam.add_param_group(flow_parameters, {2e-4, 0.95, 0.99, 1e-8, 1e-4});
///     adam.add_param_group(prior.parameters(), {2e-4, 0.95, 0.99, 1e-8, 0.0});
///     adam.zero_grad();   // every gradient back to "none"
///     /* forward, backward */
///     adam.step();        // parameters without a gradient are skipped

#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "../autograd/var.hpp"
#include "../detail/check.hpp"
#include "../detail/parallel.hpp"
#include "../tensor.hpp"
#include "adam_element.hpp"

namespace hgad {

/// Hyper-parameters of one parameter group (torch's defaults).
struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;  ///< coupled L2: g' = g + weight_decay p (torch.optim.Adam, not AdamW)
};

/// Adam's settings for a level as HGAD configures them (docs/algorithm.md §4): betas (0.95, 0.99),
/// eps 1e-8, coupled weight decay 1e-4 on the flow and none on the prior.
struct HgadAdamOptions {
  double lr = 2e-4;              ///< overwritten by the schedule every step (§4)
  double beta1 = 0.95;
  double beta2 = 0.99;
  double eps = 1e-8;
  double flow_weight_decay = 1e-4;
};

/// The optimiser state of one parameter tensor.
template <class Scalar>
struct AdamState {
  Tensor<Scalar> exp_avg;     ///< m, the first moment (empty until the first update)
  Tensor<Scalar> exp_avg_sq;  ///< v, the second moment
  std::int64_t step = 0;      ///< updates this tensor has received
};

/// Adam (Kingma & Ba) as torch.optim.Adam 1.13 computes it, per parameter tensor p with gradient g:
///   g' = g + weight_decay p
///   m  = beta1 m + (1 - beta1) g'
///   v  = beta2 v + (1 - beta2) g'^2
///   t  = t + 1
///   p  = p - (lr / (1 - beta1^t)) m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
/// A parameter whose has_grad() is false in a step is skipped entirely: no moment update, no step
/// increment, no weight decay (the semantics of gradients reset to None, docs/algorithm.md §4).
/// CPU parameters only; the update of one element is adam_element (nn/adam_element.hpp), which the
/// CUDA level engine runs too.
template <class Scalar>
class Adam {
 public:
  /// One group: its parameters (Var handles sharing the model's leaves), options and optional names.
  struct ParamGroup {
    std::vector<Var<Scalar>> params;
    AdamOptions options;
    std::vector<std::string> names;
    std::vector<AdamState<Scalar>> state;
  };

  Adam() = default;

  /// Appends a group. `names`, if given, has one entry per parameter and names it in messages.
  ///   requires: every parameter requires_grad(); options.lr >= 0, 0 <= beta < 1, eps >= 0.
  void add_param_group(std::vector<Var<Scalar>> params, AdamOptions options,
                       std::vector<std::string> names = {}) {
    check(options.lr >= 0 && options.beta1 >= 0 && options.beta1 < 1 && options.beta2 >= 0 &&
              options.beta2 < 1 && options.eps >= 0 && options.weight_decay >= 0,
          "Adam::add_param_group: invalid options lr = ", options.lr, ", betas = (", options.beta1, ", ",
          options.beta2, "), eps = ", options.eps, ", weight_decay = ", options.weight_decay);
    check(names.empty() || names.size() == params.size(), "Adam::add_param_group: ", names.size(),
          " names for ", params.size(), " parameters");
    for (std::size_t i = 0; i < params.size(); ++i) {
      check(params[i].requires_grad(), "Adam::add_param_group: parameter ", i, " of group ", m_groups.size(),
            " does not require a gradient");
      if (names.size() < params.size()) names.resize(params.size());
      if (names[i].empty()) names[i] = "group" + std::to_string(m_groups.size()) + ".param" + std::to_string(i);
    }
    ParamGroup group;
    group.state.resize(params.size());
    group.params = std::move(params);
    group.options = options;
    group.names = std::move(names);
    m_groups.push_back(std::move(group));
  }

  std::size_t n_groups() const { return m_groups.size(); }
  ParamGroup& param_group(std::size_t i) {
    check(i < m_groups.size(), "Adam::param_group: index ", i, " of ", m_groups.size(), " groups");
    return m_groups[i];
  }
  const ParamGroup& param_group(std::size_t i) const {
    check(i < m_groups.size(), "Adam::param_group: index ", i, " of ", m_groups.size(), " groups");
    return m_groups[i];
  }

  /// Sets the learning rate of every group (HGAD's schedule overwrites all groups, docs/algorithm.md §4).
  void set_lr(double lr) {
    check(lr >= 0, "Adam::set_lr: lr must be >= 0, got ", lr);
    for (auto& g : m_groups) g.options.lr = lr;
  }

  /// Resets every gradient to none (has_grad() false), as zero_grad(set_to_none=True).
  void zero_grad() {
    for (auto& g : m_groups) {
      for (auto& p : g.params) p.zero_grad();
    }
  }

  /// The optimiser state by parameter name (torch's state_dict()): step count and moments of every
  /// parameter (empty moments before its first update). With load_state_dict this continues a run
  /// where it stopped.
  std::map<std::string, AdamState<Scalar>> state_dict() const {
    std::map<std::string, AdamState<Scalar>> out;
    for (const auto& group : m_groups)
      for (std::size_t i = 0; i < group.params.size(); ++i) out[group.names[i]] = group.state[i];
    return out;
  }

  /// Sets the state of every parameter from `state` (names as in state_dict()).
  ///   throws: hgad::Error naming the parameter when one is missing or its moments have the wrong
  ///           shape; the optimiser is then unchanged.
  void load_state_dict(const std::map<std::string, AdamState<Scalar>>& state) {
    for (const auto& group : m_groups)
      for (std::size_t i = 0; i < group.params.size(); ++i) {
        const auto it = state.find(group.names[i]);
        check(it != state.end(), "Adam::load_state_dict: no state for parameter ", group.names[i]);
        const AdamState<Scalar>& s = it->second;
        const Shape& shape = group.params[i].value().shape();
        check(s.step >= 0 && (s.step == 0 || (s.exp_avg.shape() == shape && s.exp_avg_sq.shape() == shape)),
              "Adam::load_state_dict: the state of ", group.names[i], " (step ", s.step, ", moments ",
              s.exp_avg.shape(), ") does not fit its shape ", shape);
      }
    for (auto& group : m_groups)
      for (std::size_t i = 0; i < group.params.size(); ++i) {
        const AdamState<Scalar>& s = state.at(group.names[i]);
        group.state[i].step = s.step;
        group.state[i].exp_avg = s.step == 0 ? Tensor<Scalar>() : s.exp_avg.clone();
        group.state[i].exp_avg_sq = s.step == 0 ? Tensor<Scalar>() : s.exp_avg_sq.clone();
      }
  }

  /// One update of every parameter that has a gradient.
  void step() {
    for (auto& group : m_groups) {
      for (std::size_t i = 0; i < group.params.size(); ++i) {
        Var<Scalar>& p = group.params[i];
        if (!p.has_grad()) continue;
        update(p.value(), p.grad(), group.state[i], group.options, group.names[i]);
      }
    }
  }

 private:
  static void update(Tensor<Scalar>& param, const Tensor<Scalar>& grad, AdamState<Scalar>& state,
                     const AdamOptions& o, const std::string& name) {
    check(param.device() == Device::cpu && grad.device() == Device::cpu, "Adam::step: parameter ", name,
          " is not on the CPU");
    check(grad.shape() == param.shape(), "Adam::step: gradient of ", name, " has shape ",
          grad.shape(), ", the parameter ", param.shape());
    if (state.step == 0) {
      state.exp_avg = Tensor<Scalar>(param.shape());
      state.exp_avg_sq = Tensor<Scalar>(param.shape());
    }
    ++state.step;
    const auto c =
        adam_step_constants<Scalar>(o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, state.step);
    Scalar* p = param.data();
    const Scalar* g = grad.data();
    Scalar* m = state.exp_avg.data();
    Scalar* v = state.exp_avg_sq.data();
    detail::parallel_for(param.numel(), param.numel() * 8,
                         [&](Index i) { adam_element(c, g[i], p + i, m + i, v + i); });
  }

  std::vector<ParamGroup> m_groups;
};

}  // namespace hgad
