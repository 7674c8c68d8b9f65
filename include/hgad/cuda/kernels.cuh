#pragma once
/// \file
/// The CUDA kernels of CudaBackend: thin launches of the element bodies that the CPU backend runs
/// too (detail/element_ops.hpp) and of the mergeable accumulators (detail/accumulators.hpp).
///
/// Element-wise kernels use grid-stride loops; row kernels give one warp to a row (lane l takes
/// the elements l, l + 32, ...) and merge the lanes with shuffles in the order that
/// detail::lane_tree_reduce replays on the host. No kernel allocates or throws.

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "../detail/accumulators.hpp"
#include "../detail/element_ops.hpp"
#include "../detail/host_device.hpp"
#include "check.cuh"

namespace hgad::cuda::kernels {

/// Threads per block of the element-wise kernels and of the warp-per-row kernels.
inline constexpr int block_threads = 256;
inline constexpr int warp_threads = 32;
inline constexpr int warps_per_block = block_threads / warp_threads;
/// Upper bound of the grid of a grid-stride launch (enough blocks to fill any current GPU).
inline constexpr std::int64_t max_grid = 1 << 16;

/// Blocks for n independent work items of `per_block` items each, capped for grid-stride loops.
inline unsigned grid_for(std::int64_t n, std::int64_t per_block = block_threads) {
  return static_cast<unsigned>(std::min<std::int64_t>((n + per_block - 1) / per_block, max_grid));
}

/// The global index of this thread and the grid's stride.
__device__ inline std::int64_t thread_index() {
  return static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ inline std::int64_t grid_stride() {
  return static_cast<std::int64_t>(gridDim.x) * blockDim.x;
}

/// Shuffles every Scalar member of an accumulator down by `offset` lanes.
template <class Scalar, class Acc>
__device__ Acc shuffle_down(const Acc& acc, int offset) {
  static_assert(sizeof(Acc) % sizeof(Scalar) == 0, "accumulators hold Scalars only");
  constexpr int n = static_cast<int>(sizeof(Acc) / sizeof(Scalar));
  Acc out = acc;
  const Scalar* in = reinterpret_cast<const Scalar*>(&acc);
  Scalar* o = reinterpret_cast<Scalar*>(&out);
#pragma unroll
  for (int i = 0; i < n; ++i) o[i] = __shfl_down_sync(0xffffffffu, in[i], offset);
  return out;
}

/// Merges the accumulators of a full warp into lane 0 (offsets 16, 8, 4, 2, 1).
template <class Scalar, class Acc>
__device__ Acc warp_merge(Acc acc) {
#pragma unroll
  for (int offset = warp_threads / 2; offset > 0; offset /= 2)
    acc.merge(shuffle_down<Scalar>(acc, offset));
  return acc;
}

/// Sum over a full warp, broadcast to every lane.
template <class Scalar>
__device__ Scalar warp_sum(Scalar x) {
#pragma unroll
  for (int offset = warp_threads / 2; offset > 0; offset /= 2)
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

template <class Scalar>
__global__ void fill_kernel(Scalar* x, std::int64_t n, Scalar value) {
  for (std::int64_t i = thread_index(); i < n; i += grid_stride()) x[i] = value;
}

template <class Scalar>
__global__ void unary_kernel(UnaryOp op, std::int64_t n, const Scalar* x, Scalar* y,
                             Scalar param) {
  for (std::int64_t i = thread_index(); i < n; i += grid_stride())
    y[i] = hgad::detail::unary_op(op, x[i], param);
}

template <class Scalar>
__global__ void binary_kernel(BinaryOp op, std::int64_t n, const Scalar* a, const Scalar* b,
                              Scalar* y, Scalar param) {
  for (std::int64_t i = thread_index(); i < n; i += grid_stride())
    y[i] = hgad::detail::binary_op(op, a[i], b[i], param);
}

template <class Scalar>
__global__ void binary_broadcast_kernel(BinaryOp op, bool by_row, std::int64_t rows,
                                        std::int64_t cols, const Scalar* a, const Scalar* b,
                                        Scalar* y, Scalar param) {
  const std::int64_t n = rows * cols;
  for (std::int64_t i = thread_index(); i < n; i += grid_stride()) {
    const std::int64_t r = i / cols, c = i - r * cols;
    y[i] = hgad::detail::binary_op(op, a[i], by_row ? b[c] : b[r], param);
  }
}

template <class Scalar>
__global__ void copy2d_kernel(std::int64_t rows, std::int64_t cols, const Scalar* src,
                              std::int64_t src_ld, Scalar* dst, std::int64_t dst_ld,
                              bool accumulate) {
  const std::int64_t n = rows * cols;
  for (std::int64_t i = thread_index(); i < n; i += grid_stride()) {
    const std::int64_t r = i / cols, c = i - r * cols;
    const Scalar v = src[r * src_ld + c];
    Scalar& d = dst[r * dst_ld + c];
    d = accumulate ? d + v : v;
  }
}

template <class Scalar>
__global__ void axpy_kernel(std::int64_t n, Scalar alpha, const Scalar* x, Scalar* y) {
  for (std::int64_t i = thread_index(); i < n; i += grid_stride()) y[i] += alpha * x[i];
}

/// y[i] = Acc-reduction of row i; one warp per row.
template <class Scalar, class Acc>
__global__ void reduce_rows_kernel(std::int64_t rows, std::int64_t cols, const Scalar* x,
                                   Scalar* y) {
  const int lane = threadIdx.x % warp_threads;
  const std::int64_t first = thread_index() / warp_threads;
  const std::int64_t stride = grid_stride() / warp_threads;
  for (std::int64_t r = first; r < rows; r += stride) {
    const Scalar* xr = x + r * cols;
    Acc acc;
    for (std::int64_t j = lane; j < cols; j += warp_threads) acc.push(xr[j]);
    acc = warp_merge<Scalar>(acc);
    if (lane == 0) y[r] = acc.result();
  }
}

/// Partial Acc-reductions of x[0..n): one accumulator per block, merged lane-tree then warp-tree.
template <class Scalar, class Acc>
__global__ void reduce_all_kernel(std::int64_t n, const Scalar* x, Acc* partial) {
  __shared__ __align__(16) unsigned char storage[sizeof(Acc) * warps_per_block];
  Acc* warps = reinterpret_cast<Acc*>(storage);
  Acc acc;
  for (std::int64_t i = thread_index(); i < n; i += grid_stride()) acc.push(x[i]);
  acc = warp_merge<Scalar>(acc);
  const int lane = threadIdx.x % warp_threads, warp = threadIdx.x / warp_threads;
  if (lane == 0) warps[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    acc = lane < warps_per_block ? warps[lane] : Acc{};
    acc = warp_merge<Scalar>(acc);
    if (lane == 0) partial[blockIdx.x] = acc;
  }
}

/// Merges n partial accumulators into partial[0] with one block.
template <class Scalar, class Acc>
__global__ void merge_partials_kernel(std::int64_t n, Acc* partial) {
  __shared__ __align__(16) unsigned char storage[sizeof(Acc) * warps_per_block];
  Acc* warps = reinterpret_cast<Acc*>(storage);
  Acc acc;
  for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x) acc.merge(partial[i]);
  acc = warp_merge<Scalar>(acc);
  const int lane = threadIdx.x % warp_threads, warp = threadIdx.x / warp_threads;
  if (lane == 0) warps[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    acc = lane < warps_per_block ? warps[lane] : Acc{};
    acc = warp_merge<Scalar>(acc);
    if (lane == 0) partial[0] = acc;
  }
}

/// *flag = 1 when some x[i] is NaN or infinite (the flag is cleared by the caller).
template <class Scalar>
__global__ void non_finite_kernel(std::int64_t n, const Scalar* x, int* flag) {
  for (std::int64_t i = thread_index(); i < n; i += grid_stride())
    if (!hgad::detail::hd_isfinite(x[i])) *flag = 1;
}

/// Softmax or log-softmax of each row; one warp per row.
template <class Scalar>
__global__ void softmax_rows_kernel(std::int64_t rows, std::int64_t cols, const Scalar* x,
                                    Scalar* y, bool log) {
  const int lane = threadIdx.x % warp_threads;
  const std::int64_t first = thread_index() / warp_threads;
  const std::int64_t stride = grid_stride() / warp_threads;
  for (std::int64_t r = first; r < rows; r += stride) {
    const Scalar* xr = x + r * cols;
    hgad::detail::LogSumExpAccumulator<Scalar> acc;
    for (std::int64_t j = lane; j < cols; j += warp_threads) acc.push(xr[j]);
    acc = warp_merge<Scalar>(acc);
    const Scalar lse = __shfl_sync(0xffffffffu, acc.result(), 0);
    for (std::int64_t j = lane; j < cols; j += warp_threads)
      y[r * cols + j] = hgad::detail::softmax_element(xr[j], lse, log);
  }
}

/// The gradient through softmax_rows; one warp per row.
template <class Scalar>
__global__ void softmax_rows_backward_kernel(std::int64_t rows, std::int64_t cols, const Scalar* y,
                                             const Scalar* gy, Scalar* gx, bool log,
                                             bool accumulate) {
  const int lane = threadIdx.x % warp_threads;
  const std::int64_t first = thread_index() / warp_threads;
  const std::int64_t stride = grid_stride() / warp_threads;
  for (std::int64_t r = first; r < rows; r += stride) {
    const std::int64_t o = r * cols;
    Scalar partial = 0;
    for (std::int64_t j = lane; j < cols; j += warp_threads)
      partial += hgad::detail::softmax_backward_row_term(y[o + j], gy[o + j], log);
    const Scalar row = warp_sum(partial);
    for (std::int64_t j = lane; j < cols; j += warp_threads) {
      const Scalar v = hgad::detail::softmax_backward_element(y[o + j], gy[o + j], row, log);
      gx[o + j] = accumulate ? gx[o + j] + v : v;
    }
  }
}

template <class Scalar>
__global__ void gather_rows_kernel(const std::int64_t* index, std::int64_t n_index,
                                   std::int64_t cols, const Scalar* src, Scalar* dst) {
  const std::int64_t n = n_index * cols;
  for (std::int64_t i = thread_index(); i < n; i += grid_stride()) {
    const std::int64_t r = i / cols, c = i - r * cols;
    dst[i] = src[index[r] * cols + c];
  }
}

template <class Scalar>
__global__ void scatter_add_rows_kernel(const std::int64_t* index, std::int64_t n_index,
                                        std::int64_t cols, const Scalar* src, Scalar* dst) {
  const std::int64_t n = n_index * cols;
  for (std::int64_t i = thread_index(); i < n; i += grid_stride()) {
    const std::int64_t r = i / cols, c = i - r * cols;
    atomicAdd(dst + index[r] * cols + c, src[i]);
  }
}

}  // namespace hgad::cuda::kernels
