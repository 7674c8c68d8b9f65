#pragma once
/// \file
/// The CPU's level device (level_device.hpp): the fused path of train_step.hpp on the model's own
/// flow and prior, and make_level_device, which HgadModel calls for every device.

#include <map>
#include <memory>
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
#include "train_step.hpp"

namespace hgad {

/// The CPU's level: train_step's fused path on the flow and prior themselves, with one Adam
/// (make_level_adam) and one activation cache for the whole run.
template <class Scalar>
class CpuLevelDevice final : public LevelDevice<Scalar> {
 public:
  /// requires: a prior for Objective::hgad, null for the NF baseline.
  CpuLevelDevice(SequenceFlow<Scalar>& flow, GaussianMixturePrior<Scalar>* prior, const LevelTraining& training)
      : m_flow(flow),
        m_prior(prior),
        m_loss(training.loss),
        m_adam(make_level_adam(flow, prior, training.adam)) {
    check((prior != nullptr) == (training.loss.objective == Objective::hgad),
          "CpuLevelDevice: the HGAD objective needs a prior and the NF baseline has none");
  }

  Device device() const override { return Device::cpu; }

  LossTerms<Scalar> train_step(const Tensor<Scalar>& x, const Tensor<Scalar>& cond,
                               const std::vector<std::int64_t>& labels, int stage, double lr,
                               const TrainStepContext& context) override {
    m_adam.set_lr(lr);
    return hgad::train_step(m_flow, m_prior, m_adam, x, cond, labels, stage, m_loss, context,
                            m_cache, m_hook);
  }

  FlowResult<Scalar> forward(const Tensor<Scalar>& x, const Tensor<Scalar>& cond) override {
    return m_flow.forward(x, cond);
  }

  void copy_parameters_back() override {}

  std::map<std::string, AdamState<Scalar>> optimizer_state() const override { return m_adam.state_dict(); }
  void set_optimizer_state(const std::map<std::string, AdamState<Scalar>>& state) override {
    m_adam.load_state_dict(state);
  }

  void set_data_parallel(Communicator& comm, double weight) override {
    m_hook = all_reduce_gradient_hook<Scalar>(comm, weight);
  }

 private:
  SequenceFlow<Scalar>& m_flow;
  GaussianMixturePrior<Scalar>* m_prior;
  LossOptions m_loss;
  Adam<Scalar> m_adam;
  SequenceFlowCache<Scalar> m_cache;
  GradientHook<Scalar> m_hook;
};

/// The level of `flow` and `prior` (null for the NF baseline) on `device`.
///   throws: hgad::Error when `device` is CUDA and this program registered no CUDA levels (it was
///           built without hgad's CUDA part), or when the registered maker finds no GPU.
template <class Scalar>
std::unique_ptr<LevelDevice<Scalar>> make_level_device(Device device, SequenceFlow<Scalar>& flow,
                                                       GaussianMixturePrior<Scalar>* prior,
                                                       const LevelTraining& training) {
  if (device == Device::cpu) return std::make_unique<CpuLevelDevice<Scalar>>(flow, prior, training);
  require_level_device<Scalar>(device);
  return detail::cuda_level_support<Scalar>().make(flow, prior, training);
}

}  // namespace hgad
