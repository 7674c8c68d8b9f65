#pragma once
/// \file
/// CudaLevel<Scalar>: one HGAD level (a SequenceFlow and its GaussianMixturePrior) trained and
/// scored on an NVIDIA GPU. It is LevelEngine (level_engine.hpp, the algorithm, tested on the CPU
/// through HostLevel) with CudaLevelExec, which launches the kernels of level_kernels.cuh on the
/// stream of a CudaBackend and runs the GEMMs through its cuBLAS handle.
///
///     auto gpu = hgad::cuda::make_cuda_backend<float>();
///     hgad::cuda::CudaLevel<float> level(flow, prior, gpu);       // copies the parameters
///     level.set_lr(schedule.lr_at(meta_epoch, iteration, iterations_per_meta_epoch));
///     auto terms = level.train_step(features, pos, labels, stage); // features (N, D), pos (Nc, P)
///     level.copy_parameters_to(flow, prior);                      // back into the CPU model
///
/// After the first step, a loop of steps of one size does not call cudaMalloc (the backend's
/// caching allocator recycles the activations).

#include <cuda_runtime.h>

#include <memory>
#include <utility>
#include <vector>

#include "../detail/check.hpp"
#include "check.cuh"
#include "cuda_backend.cuh"
#include "level_engine.hpp"
#include "level_kernels.cuh"

namespace hgad::cuda {

/// The level kernels on one CudaBackend's stream (the executor of LevelEngine).
template <class Scalar>
class CudaLevelExec {
 public:
  explicit CudaLevelExec(std::shared_ptr<CudaBackend<Scalar>> backend)
      : m_backend(std::move(backend)), m_backend_ptr(m_backend) {
    check(m_backend != nullptr, "CudaLevel: null backend");
  }

  Backend<Scalar>& backend() const { return *m_backend; }
  const BackendPtr<Scalar>& backend_ptr() const { return m_backend_ptr; }
  CudaBackend<Scalar>& cuda_backend() const { return *m_backend; }

  /// Copies the labels to the device; the pointer is valid until the next call. `labels` must stay
  /// alive until the copy has run (LevelEngine keeps them in a member).
  const int* upload_labels(const std::vector<int>& labels) {
    if (m_labels.size() < labels.size())
      m_labels = DeviceBuffer<int>(m_backend->allocator_ptr(), labels.size());
    HGAD_CUDA_CHECK(cudaMemcpyAsync(m_labels.data(), labels.data(), labels.size() * sizeof(int),
                                    cudaMemcpyHostToDevice, stream()));
    return m_labels.data();
  }

  void global_affine(Index n_blocks, Index D, const Scalar* gamma, Index gamma_stride,
                     GlobalAffineType type, Scalar* g, Scalar* g_derivative, Scalar* sum_log_g) {
    kernels::global_affine_kernel<<<static_cast<unsigned>(n_blocks), kernels::block_threads, 0, stream()>>>(
        D, gamma, gamma_stride, type, g, g_derivative, sum_log_g);
    HGAD_CUDA_CHECK_LAUNCH();
  }
  void hidden(Index N, Index H, Index Nc, Scalar* h, const Scalar* cond_part, const Scalar* b1) {
    kernels::hidden_kernel<<<kernels::grid_for(N, 1), kernels::block_threads, 0, stream()>>>(
        N, H, Nc, h, cond_part, b1);
    HGAD_CUDA_CHECK_LAUNCH();
  }
  void coupling_forward(Index N, Index n1, Index n2, const Scalar* x, Scalar* st, const Scalar* b2,
                        const Scalar* g, const Scalar* offset, const Scalar* sum_log_g, Scalar alpha,
                        SoftClamp mode, Scalar* u_affine, Scalar* log_jac_det, bool accumulate) {
    kernels::coupling_forward_kernel<<<kernels::grid_for(N, kernels::warps_per_block),
                                       kernels::block_threads, 0, stream()>>>(
        N, n1, n2, x, st, b2, g, offset, sum_log_g, alpha, mode, u_affine, log_jac_det, accumulate);
    HGAD_CUDA_CHECK_LAUNCH();
  }
  void coupling_backward(Index N, Index n1, Index n2, const Scalar* x, const Scalar* st, Scalar* gu,
                         const Scalar* g, const Scalar* g_log_jac_det, Scalar alpha, SoftClamp mode,
                         Scalar* gx, Scalar* ga) {
    kernels::coupling_backward_kernel<<<kernels::grid_for(N, 1), kernels::block_threads, 0, stream()>>>(
        N, n1, n2, x, st, gu, g, g_log_jac_det, alpha, mode, gx, ga);
    HGAD_CUDA_CHECK_LAUNCH();
  }
  void relu_backward_repeat(Index N, Index H, Index Nc, const Scalar* h, Scalar* gh, Scalar* gh_sum) {
    kernels::relu_backward_repeat_kernel<<<kernels::grid_for(Nc * H), kernels::block_threads, 0, stream()>>>(
        N, H, Nc, h, gh, gh_sum);
    HGAD_CUDA_CHECK_LAUNCH();
  }
  void affine_grad(Index D, const Scalar* cs, const Scalar* g, const Scalar* g_derivative,
                   const Scalar* sum_g_ld, Scalar* grad_gamma, Scalar* grad_offset) {
    kernels::affine_grad_kernel<<<kernels::grid_for(D), kernels::block_threads, 0, stream()>>>(
        D, cs, g, g_derivative, sum_g_ld, grad_gamma, grad_offset);
    HGAD_CUDA_CHECK_LAUNCH();
  }
  void intra_centers(Index K, Index M, Index D, const Scalar* mu, const Scalar* delta, Scalar* centers) {
    kernels::intra_centers_kernel<<<kernels::grid_for(K * M * D), kernels::block_threads, 0, stream()>>>(
        K, M, D, mu, delta, centers);
    HGAD_CUDA_CHECK_LAUNCH();
  }
  void prior_rows(const PriorRowConfig<Scalar>& config, Index N, Index D, const Scalar* z,
                  const Scalar* log_jac_det, const int* labels, const Scalar* mu, const Scalar* centers,
                  const Scalar* log_pi, const Scalar* log_w, Scalar* gz, Scalar* coef, Scalar* g_ld,
                  Scalar* terms) {
    kernels::prior_row_kernel<<<kernels::grid_for(N, kernels::warps_per_block), kernels::block_threads,
                                row_shared_bytes(D, config.n_classes, config.n_centers), stream()>>>(
        config, N, D, z, log_jac_det, labels, mu, centers, log_pi, log_w, gz, coef, g_ld, terms);
    HGAD_CUDA_CHECK_LAUNCH();
  }
  void prior_center_grad(Index K, Index M, Index D, bool stage2, const Scalar* cz, const Scalar* cs,
                         const Scalar* mu, const Scalar* centers, Scalar* grad_mu, Scalar* grad_delta) {
    const Index n = K * D + (stage2 ? K * (M - 1) * D : 0);
    kernels::prior_center_grad_kernel<<<kernels::grid_for(n), kernels::block_threads, 0, stream()>>>(
        K, M, D, n, cz, cs, mu, centers, grad_mu, grad_delta);
    HGAD_CUDA_CHECK_LAUNCH();
  }
  void prior_logit_grad(Index K, Index M, bool stage2, const Scalar* cs, const Scalar* phi_intra,
                        const Scalar* phi_inter, Scalar* grad_phi_intra, Scalar* grad_phi_inter) {
    kernels::prior_logit_grad_kernel<<<kernels::grid_for(K + 1), kernels::block_threads, 0, stream()>>>(
        K, M, stage2, cs, phi_intra, phi_inter, grad_phi_intra, grad_phi_inter);
    HGAD_CUDA_CHECK_LAUNCH();
  }
  void score_rows(Index K, Index M, Index N, Index D, const Scalar* z, const Scalar* log_jac_det,
                  const int* labels, const Scalar* mu, const Scalar* centers, const Scalar* log_w,
                  Scalar* log_p, Scalar* neg_entropy) {
    kernels::score_kernel<<<kernels::grid_for(N, kernels::warps_per_block), kernels::block_threads,
                            row_shared_bytes(D, K, M), stream()>>>(K, M, N, D, z, log_jac_det, labels, mu,
                                                                   centers, log_w, log_p, neg_entropy);
    HGAD_CUDA_CHECK_LAUNCH();
  }
  void adam(const AdamStepConstants<Scalar>& c, Index n, const Scalar* grad, Scalar* param,
            Scalar* exp_avg, Scalar* exp_avg_sq) {
    kernels::adam_kernel<<<kernels::grid_for(n), kernels::block_threads, 0, stream()>>>(
        c, n, grad, param, exp_avg, exp_avg_sq);
    HGAD_CUDA_CHECK_LAUNCH();
  }

 private:
  cudaStream_t stream() const { return m_backend->stream(); }

  /// Dynamic shared memory of the prior and score kernels: one PriorRowScratch per warp.
  static std::size_t row_shared_bytes(Index D, Index K, Index M) {
    const std::size_t bytes = static_cast<std::size_t>(kernels::warps_per_block) *
                              static_cast<std::size_t>(PriorRowScratch<Scalar>::size(D, K, M)) *
                              sizeof(Scalar);
    check(bytes <= 48 * 1024, "CudaLevel: D = ", D, ", K = ", K, ", M = ", M, " need ", bytes,
          " bytes of shared memory per block of the prior kernel, more than 48 KiB");
    return bytes;
  }

  std::shared_ptr<CudaBackend<Scalar>> m_backend;
  BackendPtr<Scalar> m_backend_ptr;
  DeviceBuffer<int> m_labels;
};

/// One HGAD level on the GPU: LevelEngine with the CUDA executor (see level_engine.hpp for the
/// methods: train_step, compute_gradients, apply_adam, forward, score, copy_parameters_to, ...).
template <class Scalar>
class CudaLevel : public LevelEngine<Scalar, CudaLevelExec<Scalar>> {
 public:
  CudaLevel(const SequenceFlow<Scalar>& flow, const GaussianMixturePrior<Scalar>& prior,
            std::shared_ptr<CudaBackend<Scalar>> backend, LevelOptions options = {})
      : LevelEngine<Scalar, CudaLevelExec<Scalar>>(flow, prior, CudaLevelExec<Scalar>(std::move(backend)),
                                                   options) {}

  CudaBackend<Scalar>& cuda_backend() { return this->exec().cuda_backend(); }
};

}  // namespace hgad::cuda
