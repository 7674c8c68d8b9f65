#pragma once
/// \file
/// CudaResNet<Scalar>: the ResNet backbone (resnet.hpp, inference with BN folded) on an NVIDIA GPU.
/// It is BackboneEngine (backbone_engine.hpp, the algorithm, tested on the CPU through HostResNet)
/// with CudaBackboneExec, whose grid-stride kernels run the element bodies of backbone_bodies.hpp
/// on the stream of a CudaBackend; the GEMMs go through that backend's cuBLAS handle.
///
///     auto gpu = hgad::cuda::make_cuda_backend<float>();
///     hgad::cuda::CudaResNet<float> net(hgad::ResNetArch::resnet18,
///         hgad::load_resnet_weights<float>(hgad::ResNetArch::resnet18, "weights/resnet18-imagenet"),
///         hgad::ResNetStage::layer3, hgad::cuda::CudaBackboneExec<float>(gpu));
///     auto feats = net.forward(images, {hgad::ResNetStage::layer2, hgad::ResNetStage::layer3});
///     // feats[i] live on the GPU; feats[i].cpu() copies them back.

#include <cuda_runtime.h>

#include <memory>
#include <utility>

#include "../detail/check.hpp"
#include "backbone_engine.hpp"
#include "check.cuh"
#include "cuda_backend.cuh"
#include "kernels.cuh"

namespace hgad::cuda {

namespace kernels {

template <class Scalar>
__global__ void im2col_kernel(std::int64_t total, WindowGeometry g, std::int64_t n0, std::int64_t count,
                              const Scalar* x, Scalar* col) {
  for (std::int64_t i = thread_index(); i < total; i += grid_stride()) im2col_element(i, g, n0, count, x, col);
}

template <class Scalar>
__global__ void conv_epilogue_kernel(std::int64_t total, std::int64_t plane, const Scalar* bias,
                                     const Scalar* residual, bool relu, Scalar* y) {
  for (std::int64_t i = thread_index(); i < total; i += grid_stride())
    conv_epilogue_element(i, plane, bias, residual, relu, y);
}

template <class Scalar>
__global__ void max_pool_kernel(std::int64_t total, WindowGeometry g, const Scalar* x, Scalar* y) {
  for (std::int64_t i = thread_index(); i < total; i += grid_stride()) max_pool_element(i, g, x, y);
}

template <class Scalar>
__global__ void to_channel_major_kernel(std::int64_t N, std::int64_t C, std::int64_t HW, const Scalar* x,
                                        Scalar* y) {
  const std::int64_t total = N * C * HW;
  for (std::int64_t i = thread_index(); i < total; i += grid_stride())
    batch_to_channel_major_element(i, N, C, HW, x, y);
}

template <class Scalar>
__global__ void to_batch_major_kernel(std::int64_t N, std::int64_t C, std::int64_t HW, const Scalar* x,
                                      Scalar* y) {
  const std::int64_t total = N * C * HW;
  for (std::int64_t i = thread_index(); i < total; i += grid_stride())
    channel_to_batch_major_element(i, N, C, HW, x, y);
}

}  // namespace kernels

/// The backbone kernels on one CudaBackend's stream (the executor of BackboneEngine).
template <class Scalar>
class CudaBackboneExec {
 public:
  explicit CudaBackboneExec(std::shared_ptr<CudaBackend<Scalar>> backend)
      : m_backend(std::move(backend)), m_backend_ptr(m_backend) {
    check(m_backend != nullptr, "CudaResNet: null backend");
  }

  Backend<Scalar>& backend() const { return *m_backend; }
  const BackendPtr<Scalar>& backend_ptr() const { return m_backend_ptr; }
  CudaBackend<Scalar>& cuda_backend() const { return *m_backend; }

  void im2col(Index total, const WindowGeometry& g, Index n0, Index count, const Scalar* x, Scalar* col) {
    if (total <= 0) return;
    kernels::im2col_kernel<<<kernels::grid_for(total), kernels::block_threads, 0, stream()>>>(total, g, n0, count,
                                                                                               x, col);
    HGAD_CUDA_CHECK_LAUNCH();
  }
  void conv_epilogue(Index total, Index plane, const Scalar* bias, const Scalar* residual, bool relu, Scalar* y) {
    if (total <= 0) return;
    kernels::conv_epilogue_kernel<<<kernels::grid_for(total), kernels::block_threads, 0, stream()>>>(
        total, plane, bias, residual, relu, y);
    HGAD_CUDA_CHECK_LAUNCH();
  }
  void max_pool(Index total, const WindowGeometry& g, const Scalar* x, Scalar* y) {
    if (total <= 0) return;
    kernels::max_pool_kernel<<<kernels::grid_for(total), kernels::block_threads, 0, stream()>>>(total, g, x, y);
    HGAD_CUDA_CHECK_LAUNCH();
  }
  void to_channel_major(Index N, Index C, Index HW, const Scalar* x, Scalar* y) {
    if (N * C * HW <= 0) return;
    kernels::to_channel_major_kernel<<<kernels::grid_for(N * C * HW), kernels::block_threads, 0, stream()>>>(
        N, C, HW, x, y);
    HGAD_CUDA_CHECK_LAUNCH();
  }
  void to_batch_major(Index N, Index C, Index HW, const Scalar* x, Scalar* y) {
    if (N * C * HW <= 0) return;
    kernels::to_batch_major_kernel<<<kernels::grid_for(N * C * HW), kernels::block_threads, 0, stream()>>>(
        N, C, HW, x, y);
    HGAD_CUDA_CHECK_LAUNCH();
  }

 private:
  cudaStream_t stream() const { return m_backend->stream(); }

  std::shared_ptr<CudaBackend<Scalar>> m_backend;
  BackendPtr<Scalar> m_backend_ptr;
};

/// The ResNet backbone on the GPU.
template <class Scalar>
using CudaResNet = BackboneEngine<Scalar, CudaBackboneExec<Scalar>>;

}  // namespace hgad::cuda
