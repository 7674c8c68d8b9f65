// HostLevel, the GPU's level algorithm run on the CPU (cuda/level_engine.hpp), registered as the
// CUDA level device for a test's lifetime: HgadModel's device seam exercised without a GPU.
#pragma once

#include <memory>
#include <utility>

#include <hgad/cuda/level_engine.hpp>
#include <hgad/level_device.hpp>

namespace hgad_test {

/// Registers HostLevel as the CUDA level device of Scalar while it lives.
template <class Scalar>
class HostLevelAsCuda {
 public:
  HostLevelAsCuda() {
    m_previous = hgad::register_level_device<Scalar>(
        hgad::Device::cuda,
        {[](hgad::SequenceFlow<Scalar>& flow, hgad::GaussianMixturePrior<Scalar>* prior,
            const hgad::LevelTraining& training) {
           return std::unique_ptr<hgad::LevelDevice<Scalar>>(
               new hgad::EngineLevelDevice<Scalar, hgad::cuda::HostLevel<Scalar>>(
                   hgad::Device::cuda, flow, prior, training));
         },
         {}});
  }
  ~HostLevelAsCuda() {
    hgad::register_level_device<Scalar>(hgad::Device::cuda, std::move(m_previous));
  }
  HostLevelAsCuda(const HostLevelAsCuda&) = delete;
  HostLevelAsCuda& operator=(const HostLevelAsCuda&) = delete;

 private:
  hgad::LevelDeviceSupport<Scalar> m_previous;
};

}  // namespace hgad_test
