#pragma once
/// \file
/// The device seam under HgadModel: what the model asks of one feature level (an optimiser step,
/// the flow's forward, the trained parameters back) behind one interface, so that fit() and the
/// scores are written once whichever device runs them; and the run-time registry of devices.
///
///     hgad::LevelTraining training;                                // objective and Adam settings
///     auto level = hgad::make_level_device<float>(hgad::Device::cpu, flow, &prior, training);
///     auto terms = level->train_step(x, cond, labels, /*stage=*/2, lr, {0, step});
///     auto r = level->forward(x, cond);                             // z, log|det J| on the CPU
///     level->copy_parameters_back();                                // into flow and prior
///
/// The CPU's level is the fused path of model/train_step.hpp (model/cpu_level.hpp). Other devices
/// are registered at run time by a translation unit compiled with their toolchain:
/// hgad/cuda/model_device.cuh's hgad::cuda::register_model_devices() adds the CUDA engine
/// (EngineLevelDevice over LevelEngine, cuda/level_engine.hpp). The core headers therefore never
/// include CUDA, the backends never include model/, and a program built without CUDA says so
/// when a CUDA level is asked for.

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "backend.hpp"
#include "detail/check.hpp"
#include "flow/sequence_flow.hpp"
#include "loss/loss_terms.hpp"
#include "nn/adam.hpp"
#include "parallel/communicator.hpp"
#include "parallel/data_parallel.hpp"
#include "prior/gaussian_mixture_prior.hpp"
#include "tensor.hpp"

namespace hgad {

/// What a level trains with: the objective (its weights and schedule, docs/algorithm.md §3.4) and
/// Adam's settings (§4; the learning rate is the schedule's, passed to every step).
struct LevelTraining {
  LossOptions loss;
  HgadAdamOptions adam;
};

/// One level (a flow and, for HGAD, its prior) with its optimiser state, on one device.
/// A level device is made from the CPU model's flow and prior and keeps referring to them:
/// copy_parameters_back() writes what it trained into them.
template <class Scalar>
class LevelDevice {
 public:
  virtual ~LevelDevice() = default;

  virtual Device device() const = 0;

  /// One optimiser step at learning rate `lr` (docs/algorithm.md §4 "Per iteration"): forward, the
  /// stage's objective, backward, Adam. Returns the loss terms, computed before the update.
  ///   requires: x (N, D); cond (N, P) or (Nc, P) with N a multiple of Nc (empty when P = 0);
  ///             labels (N,) in [0, K); stage 1 or 2.
  ///   throws: NonFiniteError naming the term or parameter, context.level and context.step, with
  ///           the parameters and the optimiser state as before the call.
  virtual LossTerms<Scalar> train_step(const Tensor<Scalar>& x, const Tensor<Scalar>& cond,
                                       const std::vector<std::int64_t>& labels, int stage, double lr,
                                       const TrainStepContext& context) = 0;

  /// The flow's forward without a graph: z (N, D) and log|det J| (N,), as CPU tensors.
  virtual FlowResult<Scalar> forward(const Tensor<Scalar>& x, const Tensor<Scalar>& cond) = 0;

  /// Writes the parameters as this device holds them into the flow and prior it was made from
  /// (nothing to do on the CPU, which trains them in place).
  virtual void copy_parameters_back() = 0;

  /// The optimiser's state by parameter name (Adam::state_dict()'s names), and its restoration:
  /// with the parameters, what a run needs to continue where it stopped.
  virtual std::map<std::string, AdamState<Scalar>> optimizer_state() const = 0;
  virtual void set_optimizer_state(const std::map<std::string, AdamState<Scalar>>& state) = 0;

  /// Makes every later train_step one rank's part of a data-parallel step
  /// (parallel/data_parallel.hpp): between its gradients and its optimiser step, the gradients and
  /// loss terms times `weight` (the rank's share of the batch's rows) are summed over the ranks of
  /// `comm` in rank order, so every rank takes the same step. `comm` must outlive the level.
  ///   requires: 0 < weight <= 1.
  virtual void set_data_parallel(Communicator& comm, double weight) = 0;
};

/// A level device over an engine that holds its own copy of the level (LevelEngine: CudaLevel
/// on the GPU, HostLevel for the tests): Engine(flow, prior, engine_args..., training), with
/// set_lr, train_step, forward (results on the engine's device) and copy_parameters_to.
template <class Scalar, class Engine>
class EngineLevelDevice final : public LevelDevice<Scalar> {
 public:
  /// requires: the HGAD objective (a prior); the engine's requirements on the flow.
  template <class... EngineArgs>
  EngineLevelDevice(Device device, SequenceFlow<Scalar>& flow, GaussianMixturePrior<Scalar>* prior,
                    const LevelTraining& training, EngineArgs&&... engine_args)
      : m_device(device),
        m_flow(flow),
        m_prior(checked(prior, training)),
        m_engine(flow, *m_prior, std::forward<EngineArgs>(engine_args)..., training) {}

  Device device() const override { return m_device; }

  LossTerms<Scalar> train_step(const Tensor<Scalar>& x, const Tensor<Scalar>& cond,
                               const std::vector<std::int64_t>& labels, int stage, double lr,
                               const TrainStepContext& context) override {
    m_engine.set_lr(lr);
    return m_engine.train_step(x, cond, labels, stage, context);
  }

  FlowResult<Scalar> forward(const Tensor<Scalar>& x, const Tensor<Scalar>& cond) override {
    const FlowResult<Scalar> r = m_engine.forward(x, cond);
    return {r.out.cpu(), r.log_jac_det.cpu()};
  }

  void copy_parameters_back() override { m_engine.copy_parameters_to(m_flow, *m_prior); }

  std::map<std::string, AdamState<Scalar>> optimizer_state() const override { return m_engine.optimizer_state(); }
  void set_optimizer_state(const std::map<std::string, AdamState<Scalar>>& state) override {
    m_engine.set_optimizer_state(state);
  }

  void set_data_parallel(Communicator& comm, double weight) override {
    m_engine.set_gradient_hook(
        all_reduce_flat_gradient_hook<Scalar>(comm, weight, m_engine.exec().backend()));
  }

  Engine& engine() { return m_engine; }

 private:
  static GaussianMixturePrior<Scalar>* checked(GaussianMixturePrior<Scalar>* prior, const LevelTraining& training) {
    check(prior != nullptr && training.loss.objective == Objective::hgad,
          "levels off the CPU run HGAD's objective; the NF baseline trains and scores on the CPU");
    return prior;
  }

  Device m_device;
  SequenceFlow<Scalar>& m_flow;
  GaussianMixturePrior<Scalar>* m_prior;
  Engine m_engine;
};

/// Makes the level device of a device other than the CPU (see register_level_device).
template <class Scalar>
using LevelDeviceMaker = std::function<std::unique_ptr<LevelDevice<Scalar>>(
    SequenceFlow<Scalar>& flow, GaussianMixturePrior<Scalar>* prior, const LevelTraining& training)>;

/// A registered device: how its levels are made, and a check that throws hgad::Error, naming
/// what is missing, when the device cannot be used here (no GPU, say).
template <class Scalar>
struct LevelDeviceSupport {
  LevelDeviceMaker<Scalar> make;
  std::function<void()> require_usable;
};

namespace detail {

/// What is registered for Device::cuda (one per Scalar in the whole program: an inline
/// function's static).
template <class Scalar>
LevelDeviceSupport<Scalar>& cuda_level_support() {
  static LevelDeviceSupport<Scalar> support;
  return support;
}

inline const char* const no_cuda_part =
    "the CUDA device was asked for, but this program was built without hgad's CUDA part "
    "(configure with -DHGAD_ENABLE_CUDA=ON where nvcc is installed, and call "
    "hgad::cuda::register_model_devices() from a .cu file of the program)";

}  // namespace detail

/// Registers how levels are made for `device` (only Device::cuda takes one) and returns what it
/// replaces; an empty support unregisters. Called by hgad::cuda::register_model_devices().
template <class Scalar>
LevelDeviceSupport<Scalar> register_level_device(Device device, LevelDeviceSupport<Scalar> support) {
  check(device == Device::cuda, "register_level_device: the CPU level is built in; only Device::cuda takes a maker");
  return std::exchange(detail::cuda_level_support<Scalar>(), std::move(support));
}

/// Whether levels can be made for `device` in this program (the CPU always; CUDA once
/// registered, which does not yet mean that a GPU is present).
template <class Scalar>
bool level_device_registered(Device device) {
  return device == Device::cpu || static_cast<bool>(detail::cuda_level_support<Scalar>().make);
}

/// Throws hgad::Error, naming what is missing, unless levels of `device` can run here: the CPU
/// always; CUDA in a program that registered it, with a usable GPU.
template <class Scalar>
void require_level_device(Device device) {
  if (device == Device::cpu) return;
  const LevelDeviceSupport<Scalar>& support = detail::cuda_level_support<Scalar>();
  check(static_cast<bool>(support.make), detail::no_cuda_part);
  if (support.require_usable) support.require_usable();
}

/// "cpu" or "cuda".
inline Device parse_device(const std::string& text) {
  if (text == "cpu") return Device::cpu;
  if (text == "cuda" || text == "gpu") return Device::cuda;
  throw Error("unknown device '" + text + "' (expected cpu or cuda)");
}

}  // namespace hgad
