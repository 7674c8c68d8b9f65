#pragma once
/// \file
/// HgadModel on the GPU: the CUDA level device (CudaLevel behind level_device.hpp's interface) and
/// the GPU backbone as a FeatureExtractor, registered with the core at run time.
///
///     // in one .cu file of the program, once before a model or extractor asks for Device::cuda:
///     hgad::cuda::register_model_devices();
///     model.set_device(hgad::Device::cuda);        // fit() and the scores' flows on the GPU
///     auto fx = hgad::make_feature_extractor<float>(config, weights_dir, hgad::Device::cuda);
///
/// Every level of every model of one Scalar shares one CudaBackend (one stream, one cuBLAS handle,
/// one caching allocator) on one GPU: device 0, or the one use_gpu chose first (each process of a
/// data-parallel training on its own GPU).

#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "../backbone/feature_extractor.hpp"
#include "../backbone/resnet.hpp"
#include "../detail/check.hpp"
#include "../level_device.hpp"
#include "check.cuh"
#include "cuda_backend.cuh"
#include "cuda_level.cuh"
#include "cuda_resnet.cuh"

namespace hgad::cuda {

namespace detail {

struct ModelGpu {
  std::mutex mutex;
  int index = 0;
  bool in_use = false;  // a shared backend was made on `index`
};

inline ModelGpu& model_gpu() {
  static ModelGpu gpu;
  return gpu;
}

inline int take_model_gpu() {
  ModelGpu& gpu = model_gpu();
  std::lock_guard<std::mutex> lock(gpu.mutex);
  gpu.in_use = true;
  return gpu.index;
}

}  // namespace detail

/// Makes GPU `index` the one of the model devices and the GPU backbone of this process, and the
/// calling thread's current GPU (the level devices run on the thread that calls fit() or score).
///   throws: hgad::Error when a model device already runs on another GPU (call it first).
inline void use_gpu(int index) {
  detail::ModelGpu& gpu = detail::model_gpu();
  std::lock_guard<std::mutex> lock(gpu.mutex);
  check(index >= 0, "use_gpu: GPU index ", index, " is negative");
  check(!gpu.in_use || gpu.index == index, "use_gpu(", index,
        "): the model devices already run on GPU ", gpu.index, "; choose the GPU before the first use");
  gpu.index = index;
  HGAD_CUDA_CHECK(cudaSetDevice(index));  // this thread's current GPU (the training loop's)
}

/// The CUDA backend of Scalar shared by the model devices; an hgad::Error without a GPU.
template <class Scalar>
std::shared_ptr<CudaBackend<Scalar>> shared_backend() {
  check(device_available(), "the CUDA device was asked for, but no CUDA device is usable here (",
        device_description(), ")");
  static const std::shared_ptr<CudaBackend<Scalar>> backend =
      make_cuda_backend<Scalar>(detail::take_model_gpu());
  return backend;
}

/// One HGAD level on the GPU: CudaLevel behind the level-device interface.
template <class Scalar>
using CudaLevelDevice = EngineLevelDevice<Scalar, CudaLevel<Scalar>>;

/// A ResNet's stages computed on the GPU (CudaResNet); the features come back as CPU tensors,
/// the FeatureExtractor contract.
template <class Scalar>
class CudaResNetFeatureExtractor final : public FeatureExtractor<Scalar> {
 public:
  /// Loads `arch` from `weights_dir` up to the deepest of `stages` (the CPU network answers the
  /// shape questions; its weights are uploaded once).
  CudaResNetFeatureExtractor(ResNetArch arch, const std::string& weights_dir, std::vector<ResNetStage> stages)
      : m_cpu(arch, weights_dir, std::move(stages)),
        m_net(arch, load_resnet_weights<Scalar>(arch, weights_dir, deepest(m_cpu.stages())),
              deepest(m_cpu.stages()), CudaBackboneExec<Scalar>(shared_backend<Scalar>())) {}

  std::vector<FeatureLevel> levels() const override { return m_cpu.levels(); }
  Shape feature_shape(std::size_t level, Index height, Index width) const override {
    return m_cpu.feature_shape(level, height, width);
  }
  std::vector<Tensor<Scalar>> extract(const Tensor<Scalar>& images) const override {
    std::lock_guard<std::mutex> lock(m_mutex);
    HGAD_CUDA_CHECK(cudaSetDevice(m_net.exec().cuda_backend().device_index()));  // any calling thread
    std::vector<Tensor<Scalar>> out;
    for (const Tensor<Scalar>& f : m_net.forward(images, m_cpu.stages())) out.push_back(f.cpu());
    return out;
  }

 private:
  static ResNetStage deepest(const std::vector<ResNetStage>& stages) {
    ResNetStage last = stages.front();
    for (ResNetStage s : stages)
      if (static_cast<int>(s) > static_cast<int>(last)) last = s;
    return last;
  }

  ResNetFeatureExtractor<Scalar> m_cpu;
  mutable CudaResNet<Scalar> m_net;  // its forward keeps scratch: one call at a time
  mutable std::mutex m_mutex;
};

/// Registers the CUDA level devices and the GPU backbone of float and double with the core
/// (level_device.hpp, feature_extractor.hpp). Idempotent; needs no GPU until one is used.
inline void register_model_devices() {
  const auto require_gpu = [] {
    check(device_available(), "the CUDA device was asked for, but no CUDA device is usable here (",
          device_description(), ")");
  };
  register_level_device<float>(
      Device::cuda, {[](SequenceFlow<float>& flow, GaussianMixturePrior<float>* prior, const LevelTraining& training) {
                       return std::unique_ptr<LevelDevice<float>>(new CudaLevelDevice<float>(
                           Device::cuda, flow, prior, training, shared_backend<float>()));
                     },
                     require_gpu});
  register_level_device<double>(
      Device::cuda, {[](SequenceFlow<double>& flow, GaussianMixturePrior<double>* prior, const LevelTraining& training) {
                       return std::unique_ptr<LevelDevice<double>>(new CudaLevelDevice<double>(
                           Device::cuda, flow, prior, training, shared_backend<double>()));
                     },
                     require_gpu});
  register_backbone_device<float>(Device::cuda, [](ResNetArch arch, const std::string& dir,
                                                   std::vector<ResNetStage> stages) {
    return std::shared_ptr<FeatureExtractor<float>>(
        std::make_shared<CudaResNetFeatureExtractor<float>>(arch, dir, std::move(stages)));
  });
  register_backbone_device<double>(Device::cuda, [](ResNetArch arch, const std::string& dir,
                                                    std::vector<ResNetStage> stages) {
    return std::shared_ptr<FeatureExtractor<double>>(
        std::make_shared<CudaResNetFeatureExtractor<double>>(arch, dir, std::move(stages)));
  });
}

}  // namespace hgad::cuda
