#pragma once
/// \file
/// The CUDA kernels of one HGAD level (CudaLevel): each maps threads, or the lanes of a warp, onto
/// a body of level_bodies.hpp, the same bodies HostLevelExec runs on the CPU in the tests.
/// Element kernels use grid-stride loops; "row" kernels give one block to a row (threads over
/// its columns); "warp" kernels give one warp to a row and reduce the lanes with shuffles.
/// No kernel allocates or throws.

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.cuh"
#include "level_bodies.hpp"

namespace hgad::cuda::kernels {

/// g, dg/dgamma and sum_j ln g_j of flow block blockIdx.x (gamma at gamma + b gamma_stride).
template <class Scalar>
__global__ void global_affine_kernel(std::int64_t D, const Scalar* gamma, std::int64_t gamma_stride,
                                     GlobalAffineType type, Scalar* g, Scalar* g_derivative,
                                     Scalar* sum_log_g) {
  __shared__ Scalar partial[block_threads];
  const std::int64_t b = blockIdx.x;
  Scalar acc = 0;
  for (std::int64_t j = threadIdx.x; j < D; j += blockDim.x)
    acc += global_affine_element(gamma[b * gamma_stride + j], type, g + b * D + j,
                                 g_derivative + b * D + j);
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int offset = block_threads / 2; offset > 0; offset /= 2) {
    if (static_cast<int>(threadIdx.x) < offset) partial[threadIdx.x] += partial[threadIdx.x + offset];
    __syncthreads();
  }
  if (threadIdx.x == 0) sum_log_g[b] = partial[0];
}

/// Row kernel: hidden_row.
template <class Scalar>
__global__ void hidden_kernel(std::int64_t N, std::int64_t H, std::int64_t Nc, Scalar* h,
                              const Scalar* cond_part, const Scalar* b1) {
  for (std::int64_t n = blockIdx.x; n < N; n += gridDim.x)
    hidden_row(n, H, Nc, h, cond_part, b1, static_cast<std::int64_t>(threadIdx.x),
               static_cast<std::int64_t>(blockDim.x));
}

/// Warp kernel: coupling_forward_lane, then lane 0 writes the row's log-det.
template <class Scalar>
__global__ void coupling_forward_kernel(std::int64_t N, std::int64_t n1, std::int64_t n2,
                                        const Scalar* x, Scalar* st, const Scalar* b2,
                                        const Scalar* g, const Scalar* offset,
                                        const Scalar* sum_log_g, Scalar alpha, SoftClamp mode,
                                        Scalar* u_affine, Scalar* log_jac_det, bool accumulate) {
  const int lane = threadIdx.x % warp_threads;
  const std::int64_t stride = grid_stride() / warp_threads;
  for (std::int64_t n = thread_index() / warp_threads; n < N; n += stride) {
    const Scalar partial = coupling_forward_lane(n, lane, warp_threads, n1, n2, x, st, b2, g, offset,
                                                 alpha, mode, u_affine);
    const Scalar s_sum = warp_sum(partial);
    if (lane == 0) coupling_forward_finish(n, s_sum, *sum_log_g, log_jac_det, accumulate);
  }
}

/// Row kernel: coupling_backward_element for every column of the row.
template <class Scalar>
__global__ void coupling_backward_kernel(std::int64_t N, std::int64_t n1, std::int64_t n2,
                                         const Scalar* x, const Scalar* st, Scalar* gu,
                                         const Scalar* g, const Scalar* g_log_jac_det, Scalar alpha,
                                         SoftClamp mode, Scalar* gx, Scalar* ga) {
  for (std::int64_t n = blockIdx.x; n < N; n += gridDim.x)
    for (std::int64_t j = threadIdx.x; j < n1 + n2; j += blockDim.x)
      coupling_backward_element(n, j, n1, n2, x, st, gu, g, g_log_jac_det, alpha, mode, gx, ga);
}

/// Element kernel over (Nc, H): relu_backward_repeat_element.
template <class Scalar>
__global__ void relu_backward_repeat_kernel(std::int64_t N, std::int64_t H, std::int64_t Nc,
                                            const Scalar* h, Scalar* gh, Scalar* gh_sum) {
  for (std::int64_t i = thread_index(); i < Nc * H; i += grid_stride())
    relu_backward_repeat_element(i, N, H, Nc, h, gh, gh_sum);
}

/// Element kernel over D: affine_grad_element (sum_g_ld on the device).
template <class Scalar>
__global__ void affine_grad_kernel(std::int64_t D, const Scalar* cs, const Scalar* g,
                                   const Scalar* g_derivative, const Scalar* sum_g_ld,
                                   Scalar* grad_gamma, Scalar* grad_offset) {
  for (std::int64_t j = thread_index(); j < D; j += grid_stride())
    affine_grad_element(j, D, cs, g, g_derivative, *sum_g_ld, grad_gamma, grad_offset);
}

/// Element kernel over (K, M, D): intra_center_element.
template <class Scalar>
__global__ void intra_centers_kernel(std::int64_t K, std::int64_t M, std::int64_t D,
                                     const Scalar* mu, const Scalar* delta, Scalar* centers) {
  for (std::int64_t i = thread_index(); i < K * M * D; i += grid_stride())
    intra_center_element(i, M, D, mu, delta, centers);
}

/// Sum over the warp of one lane's share of |z - c|^2 (every lane gets the total).
template <class Scalar>
__device__ Scalar warp_squared_distance(const Scalar* z, const Scalar* c, std::int64_t D, int lane) {
  return warp_sum(squared_distance_lane(z, c, D, lane, warp_threads));
}

/// Warp kernel: the prior's losses and gradients of a row. The warp copies z into its shared
/// scratch and computes the distances; lane 0 runs prior_row; every lane then runs
/// prior_row_write_lane. Dynamic shared memory: warps_per_block PriorRowScratch::size Scalars.
template <class Scalar>
__global__ void prior_row_kernel(PriorRowConfig<Scalar> config, std::int64_t N, std::int64_t D,
                                 const Scalar* z, const Scalar* log_jac_det, const int* labels,
                                 const Scalar* mu, const Scalar* centers, const Scalar* log_pi,
                                 const Scalar* log_w, Scalar* gz, Scalar* coef, Scalar* g_ld,
                                 Scalar* terms) {
  extern __shared__ __align__(16) unsigned char prior_shared[];
  const std::int64_t K = config.n_classes, M = config.n_centers;
  const int lane = threadIdx.x % warp_threads, warp = threadIdx.x / warp_threads;
  const auto s = PriorRowScratch<Scalar>::at(
      reinterpret_cast<Scalar*>(prior_shared) + warp * PriorRowScratch<Scalar>::size(D, K, M), D, K, M);
  const std::int64_t stride = grid_stride() / warp_threads;
  for (std::int64_t n = thread_index() / warp_threads; n < N; n += stride) {
    const int label = labels[n];
    const Scalar* m = centers + label * M * D;
    for (std::int64_t j = lane; j < D; j += warp_threads) s.z[j] = z[n * D + j];
    __syncwarp();
    for (std::int64_t y = 0; y < K; ++y) {
      const Scalar dist = warp_squared_distance(s.z, mu + y * D, D, lane);
      if (lane == 0) s.d[y] = dist;
    }
    if (config.stage2) {
      for (std::int64_t k = 0; k < M; ++k) {
        const Scalar dist = warp_squared_distance(s.z, m + k * D, D, lane);
        if (lane == 0) s.e[k] = dist;
      }
    }
    if (lane == 0)
      prior_row(config, s.d, s.e, log_pi, log_w + label * M, label, log_jac_det[n], s.terms,
                s.grad_d, s.grad_e, s.grad_log_pi, s.grad_log_w, s.g_ld);
    __syncwarp();
    prior_row_write_lane(config, n, lane, warp_threads, D, label, mu, m, s, gz, coef, g_ld, terms);
    __syncwarp();
  }
}

/// Element kernel: prior_center_grad_element over K D (+ K (M - 1) D in stage 2).
template <class Scalar>
__global__ void prior_center_grad_kernel(std::int64_t K, std::int64_t M, std::int64_t D,
                                         std::int64_t n, const Scalar* cz, const Scalar* cs,
                                         const Scalar* mu, const Scalar* centers, Scalar* grad_mu,
                                         Scalar* grad_delta) {
  for (std::int64_t i = thread_index(); i < n; i += grid_stride())
    prior_center_grad_element(i, K, M, D, cz, cs, mu, centers, grad_mu, grad_delta);
}

/// One thread per task t <= K: prior_logit_grad_task.
template <class Scalar>
__global__ void prior_logit_grad_kernel(std::int64_t K, std::int64_t M, bool stage2,
                                        const Scalar* cs, const Scalar* phi_intra,
                                        const Scalar* phi_inter, Scalar* grad_phi_intra,
                                        Scalar* grad_phi_inter) {
  for (std::int64_t t = thread_index(); t <= K; t += grid_stride())
    prior_logit_grad_task(t, K, M, stage2, cs, phi_intra, phi_inter, grad_phi_intra,
                          grad_phi_inter);
}

/// Warp kernel: the scores of a row (score_row). The K + M distances go to the scratch's d and e
/// (adjacent). Dynamic shared memory as prior_row_kernel.
template <class Scalar>
__global__ void score_kernel(std::int64_t K, std::int64_t M, std::int64_t N, std::int64_t D,
                             const Scalar* z, const Scalar* log_jac_det, const int* labels,
                             const Scalar* mu, const Scalar* centers, const Scalar* log_w,
                             Scalar* log_p, Scalar* neg_entropy) {
  extern __shared__ __align__(16) unsigned char score_shared[];
  const int lane = threadIdx.x % warp_threads, warp = threadIdx.x / warp_threads;
  const auto s = PriorRowScratch<Scalar>::at(
      reinterpret_cast<Scalar*>(score_shared) + warp * PriorRowScratch<Scalar>::size(D, K, M), D, K, M);
  const std::int64_t stride = grid_stride() / warp_threads;
  for (std::int64_t n = thread_index() / warp_threads; n < N; n += stride) {
    const int label = labels[n];
    const Scalar* m = centers + label * M * D;
    for (std::int64_t j = lane; j < D; j += warp_threads) s.z[j] = z[n * D + j];
    __syncwarp();
    for (std::int64_t c = 0; c < K + M; ++c) {
      const Scalar dist = warp_squared_distance(s.z, c < K ? mu + c * D : m + (c - K) * D, D, lane);
      if (lane == 0) s.d[c] = dist;
    }
    if (lane == 0)
      score_row(static_cast<int>(K), static_cast<int>(M), static_cast<Scalar>(D), s.d, s.e,
                log_w + label * M, log_jac_det[n], log_p + n, neg_entropy + n);
    __syncwarp();
  }
}

/// Element kernel: adam_element.
template <class Scalar>
__global__ void adam_kernel(AdamStepConstants<Scalar> c, std::int64_t n, const Scalar* grad,
                            Scalar* param, Scalar* exp_avg, Scalar* exp_avg_sq) {
  for (std::int64_t i = thread_index(); i < n; i += grid_stride())
    adam_element(c, grad[i], param + i, exp_avg + i, exp_avg_sq + i);
}

}  // namespace hgad::cuda::kernels
