#pragma once
/// \file
/// CudaBackend<Scalar>: the Backend interface on one NVIDIA GPU (cuBLAS GEMM, the kernels of
/// kernels.cuh, a caching device allocator). Include from .cu translation units only.
///
///     auto gpu = hgad::cuda::make_cuda_backend<float>();          // device 0
///     hgad::Tensor<float> x = hgad::Tensor<float>::randn({1024, 200}, rng).to(gpu);
///     // every autograd op on x now runs on the GPU; x.cpu() copies it back.
///
/// All work of one backend is ordered on its own stream; copies to the host synchronise it.

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <type_traits>
#include <vector>

#include "../backend.hpp"
#include "../detail/check.hpp"
#include "check.cuh"
#include "kernels.cuh"

namespace hgad::cuda {

/// A caching allocator of device memory: freed blocks go to a free list of their size class and
/// are handed out again, so a steady training loop stops calling cudaMalloc after its first step.
/// Size classes: multiples of 512 bytes up to 1 MiB, above that 8 classes per power of two
/// (at most 12.5 % slack). Thread-safe.
class DeviceAllocator {
 public:
  explicit DeviceAllocator(int device) : m_device(device) {}
  ~DeviceAllocator() { release_cached(); }
  DeviceAllocator(const DeviceAllocator&) = delete;
  DeviceAllocator& operator=(const DeviceAllocator&) = delete;

  /// The size class of a request of `bytes`.
  static std::size_t size_class(std::size_t bytes) {
    constexpr std::size_t small_quantum = 512, small_limit = std::size_t(1) << 20;
    if (bytes <= small_limit) return (bytes + small_quantum - 1) / small_quantum * small_quantum;
    std::size_t top = small_limit;
    while (top < bytes) top <<= 1;
    const std::size_t quantum = top / 16;
    return (bytes + quantum - 1) / quantum * quantum;
  }

  /// A block of at least `bytes` bytes (nullptr for 0), from the cache when one is free.
  void* allocate(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    const std::size_t size = size_class(bytes);
    std::lock_guard<std::mutex> lock(m_mutex);
    auto it = m_free.find(size);
    void* p = nullptr;
    if (it != m_free.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
      m_bytes_cached -= size;
    } else {
      cudaError_t status = cudaMalloc(&p, size);
      if (status == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        release_cached_locked();
        status = cudaMalloc(&p, size);
      }
      if (status != cudaSuccess) {
        (void)cudaGetLastError();
        throw Error(hgad::detail::concat("CudaBackend::allocate: cudaMalloc of ", size,
                                         " bytes failed on device ", m_device, " (",
                                         cudaGetErrorString(status), "); ", m_bytes_in_use,
                                         " bytes in use"));
      }
      ++m_n_device_allocations;
    }
    m_bytes_in_use += size;
    m_peak_bytes_in_use = std::max(m_peak_bytes_in_use, m_bytes_in_use);
    return p;
  }

  /// Returns a block of `bytes` bytes (the size it was allocated with) to the cache.
  void deallocate(void* p, std::size_t bytes) {
    if (p == nullptr) return;
    const std::size_t size = size_class(bytes);
    std::lock_guard<std::mutex> lock(m_mutex);
    m_free[size].push_back(p);
    m_bytes_in_use -= size;
    m_bytes_cached += size;
  }

  /// Gives every cached block back to the driver.
  void release_cached() {
    std::lock_guard<std::mutex> lock(m_mutex);
    release_cached_locked();
  }

  std::size_t bytes_in_use() const { return m_bytes_in_use; }
  std::size_t peak_bytes_in_use() const { return m_peak_bytes_in_use; }
  std::size_t bytes_cached() const { return m_bytes_cached; }
  /// Number of cudaMalloc calls so far (constant across a steady training loop).
  std::size_t n_device_allocations() const { return m_n_device_allocations; }
  void reset_peak() {
    std::lock_guard<std::mutex> lock(m_mutex);
    m_peak_bytes_in_use = m_bytes_in_use;
  }

 private:
  void release_cached_locked() {
    for (auto& entry : m_free)
      for (void* p : entry.second) (void)cudaFree(p);
    m_free.clear();
    m_bytes_cached = 0;
  }

  int m_device;
  std::mutex m_mutex;
  std::map<std::size_t, std::vector<void*>> m_free;
  std::size_t m_bytes_in_use = 0, m_peak_bytes_in_use = 0, m_bytes_cached = 0;
  std::size_t m_n_device_allocations = 0;
};

/// A device buffer of the allocator, released when it goes out of scope.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(std::shared_ptr<DeviceAllocator> allocator, std::size_t n)
      : m_allocator(std::move(allocator)),
        m_data(static_cast<T*>(m_allocator->allocate(n * sizeof(T)))),
        m_size(n) {}
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(DeviceBuffer&& other) noexcept { swap(other); }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      reset();
      swap(other);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* data() const { return m_data; }
  std::size_t size() const { return m_size; }
  void reset() {
    if (m_data != nullptr) m_allocator->deallocate(m_data, m_size * sizeof(T));
    m_data = nullptr;
    m_size = 0;
  }

 private:
  void swap(DeviceBuffer& other) noexcept {
    std::swap(m_allocator, other.m_allocator);
    std::swap(m_data, other.m_data);
    std::swap(m_size, other.m_size);
  }
  std::shared_ptr<DeviceAllocator> m_allocator;
  T* m_data = nullptr;
  std::size_t m_size = 0;
};

/// The Backend of one CUDA device: its memory (through a DeviceAllocator), one stream, one cuBLAS
/// handle. GEMMs run in full float32/float64 (no TF32 unless set_allow_tf32(true)).
template <class Scalar>
class CudaBackend final : public Backend<Scalar> {
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>,
                "CudaBackend supports float and double");

 public:
  /// Binds to `device`; throws hgad::Error when there is no such device.
  explicit CudaBackend(int device = 0) : m_device(device) {
    check(device_available(), "CudaBackend: no CUDA device is available (",
          device_description(), ")");
    int count = 0;
    HGAD_CUDA_CHECK(cudaGetDeviceCount(&count));
    check(device >= 0 && device < count, "CudaBackend: device ", device, " out of range (",
          count, " devices)");
    HGAD_CUDA_CHECK(cudaSetDevice(device));
    HGAD_CUDA_CHECK(cudaStreamCreateWithFlags(&m_stream, cudaStreamNonBlocking));
    HGAD_CUBLAS_CHECK(cublasCreate(&m_blas));
    HGAD_CUBLAS_CHECK(cublasSetStream(m_blas, m_stream));
    HGAD_CUBLAS_CHECK(cublasSetPointerMode(m_blas, CUBLAS_POINTER_MODE_HOST));
    HGAD_CUBLAS_CHECK(cublasSetMathMode(m_blas, CUBLAS_DEFAULT_MATH));
    m_allocator = std::make_shared<DeviceAllocator>(device);
    m_flag = DeviceBuffer<int>(m_allocator, 1);
    m_partial = DeviceBuffer<hgad::detail::LogSumExpAccumulator<Scalar>>(m_allocator, max_partials);
  }
  ~CudaBackend() override {
    (void)cudaStreamSynchronize(m_stream);
    m_ones.reset();
    m_index.reset();
    m_flag.reset();
    m_partial.reset();
    if (m_blas != nullptr) (void)cublasDestroy(m_blas);
    if (m_stream != nullptr) (void)cudaStreamDestroy(m_stream);
  }
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  Device device() const override { return Device::cuda; }
  int device_index() const { return m_device; }
  cudaStream_t stream() const { return m_stream; }
  cublasHandle_t blas() const { return m_blas; }
  DeviceAllocator& allocator() const { return *m_allocator; }
  const std::shared_ptr<DeviceAllocator>& allocator_ptr() const { return m_allocator; }
  /// Waits until every operation issued on this backend has finished.
  void synchronize() { HGAD_CUDA_CHECK(cudaStreamSynchronize(m_stream)); }
  /// Lets cuBLAS use TF32 tensor cores for float GEMMs (faster; 10-bit mantissa products).
  void set_allow_tf32(bool allow) {
    HGAD_CUBLAS_CHECK(
        cublasSetMathMode(m_blas, allow ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  }

  Scalar* allocate(Index n) override {
    check(n >= 0, "CudaBackend::allocate: negative size ", n);
    return static_cast<Scalar*>(m_allocator->allocate(static_cast<std::size_t>(n) * sizeof(Scalar)));
  }
  void deallocate(Scalar* data, Index n) override {
    m_allocator->deallocate(data, static_cast<std::size_t>(n) * sizeof(Scalar));
  }

  void copy_from_host(const Scalar* host, Scalar* dst, Index n) override {
    if (n <= 0) return;
    HGAD_CUDA_CHECK(cudaMemcpyAsync(dst, host, bytes(n), cudaMemcpyHostToDevice, m_stream));
    HGAD_CUDA_CHECK(cudaStreamSynchronize(m_stream));
  }
  void copy_to_host(const Scalar* src, Scalar* host, Index n) override {
    if (n <= 0) return;
    HGAD_CUDA_CHECK(cudaMemcpyAsync(host, src, bytes(n), cudaMemcpyDeviceToHost, m_stream));
    HGAD_CUDA_CHECK(cudaStreamSynchronize(m_stream));
  }
  void copy(const Scalar* src, Scalar* dst, Index n) override {
    if (n <= 0 || src == dst) return;
    HGAD_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes(n), cudaMemcpyDeviceToDevice, m_stream));
  }
  void copy2d(Index rows, Index cols, const Scalar* src, Index src_ld, Scalar* dst, Index dst_ld,
              bool accumulate) override {
    if (rows <= 0 || cols <= 0) return;
    if (!accumulate && src_ld >= cols) {
      HGAD_CUDA_CHECK(cudaMemcpy2DAsync(dst, bytes(dst_ld), src, bytes(src_ld), bytes(cols),
                                        static_cast<std::size_t>(rows), cudaMemcpyDeviceToDevice,
                                        m_stream));
      return;
    }
    kernels::copy2d_kernel<<<kernels::grid_for(rows * cols), kernels::block_threads, 0, m_stream>>>(
        rows, cols, src, src_ld, dst, dst_ld, accumulate);
    HGAD_CUDA_CHECK_LAUNCH();
  }
  void fill(Scalar* x, Index n, Scalar value) override {
    if (n <= 0) return;
    if (value == Scalar(0)) {
      HGAD_CUDA_CHECK(cudaMemsetAsync(x, 0, bytes(n), m_stream));
      return;
    }
    kernels::fill_kernel<<<kernels::grid_for(n), kernels::block_threads, 0, m_stream>>>(x, n, value);
    HGAD_CUDA_CHECK_LAUNCH();
  }

  /// Row-major C = alpha op(A) op(B) + beta C as the column-major product C^T = op(B)^T op(A)^T:
  /// a row-major matrix with leading dimension ld is the column-major transpose with the same ld.
  void gemm(Transpose trans_a, Transpose trans_b, Index m, Index n, Index k, Scalar alpha,
            const Scalar* a, Index lda, const Scalar* b, Index ldb, Scalar beta, Scalar* c,
            Index ldc) override {
    if (m <= 0 || n <= 0) return;
    check_int("gemm", m, n, k, lda, ldb, ldc);
    const cublasOperation_t op_a = trans_a == Transpose::no ? CUBLAS_OP_N : CUBLAS_OP_T;
    const cublasOperation_t op_b = trans_b == Transpose::no ? CUBLAS_OP_N : CUBLAS_OP_T;
    const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
    if constexpr (std::is_same_v<Scalar, float>) {
      HGAD_CUBLAS_CHECK(cublasSgemm(m_blas, op_b, op_a, ni, mi, ki, &alpha, b,
                                    static_cast<int>(ldb), a, static_cast<int>(lda), &beta, c,
                                    static_cast<int>(ldc)));
    } else {
      HGAD_CUBLAS_CHECK(cublasDgemm(m_blas, op_b, op_a, ni, mi, ki, &alpha, b,
                                    static_cast<int>(ldb), a, static_cast<int>(lda), &beta, c,
                                    static_cast<int>(ldc)));
    }
  }

  void unary(UnaryOp op, Index n, const Scalar* x, Scalar* y, Scalar param) override {
    if (n <= 0) return;
    kernels::unary_kernel<<<kernels::grid_for(n), kernels::block_threads, 0, m_stream>>>(op, n, x, y,
                                                                                        param);
    HGAD_CUDA_CHECK_LAUNCH();
  }
  void binary(BinaryOp op, Index n, const Scalar* a, const Scalar* b, Scalar* y,
              Scalar param) override {
    if (n <= 0) return;
    kernels::binary_kernel<<<kernels::grid_for(n), kernels::block_threads, 0, m_stream>>>(
        op, n, a, b, y, param);
    HGAD_CUDA_CHECK_LAUNCH();
  }
  void binary_broadcast(BinaryOp op, Broadcast how, Index rows, Index cols, const Scalar* a,
                        const Scalar* b, Scalar* y, Scalar param) override {
    if (rows <= 0 || cols <= 0) return;
    kernels::binary_broadcast_kernel<<<kernels::grid_for(rows * cols), kernels::block_threads, 0,
                                       m_stream>>>(op, how == Broadcast::row, rows, cols, a, b, y,
                                                   param);
    HGAD_CUDA_CHECK_LAUNCH();
  }

  void reduce_rows(Reduce op, Index rows, Index cols, const Scalar* x, Scalar* y) override {
    if (rows <= 0) return;
    const unsigned grid = kernels::grid_for(rows, kernels::warps_per_block);
    switch (op) {
      case Reduce::sum:
        kernels::reduce_rows_kernel<Scalar, hgad::detail::SumAccumulator<Scalar>>
            <<<grid, kernels::block_threads, 0, m_stream>>>(rows, cols, x, y);
        break;
      case Reduce::max:
        kernels::reduce_rows_kernel<Scalar, hgad::detail::MaxAccumulator<Scalar>>
            <<<grid, kernels::block_threads, 0, m_stream>>>(rows, cols, x, y);
        break;
      case Reduce::logsumexp:
        kernels::reduce_rows_kernel<Scalar, hgad::detail::LogSumExpAccumulator<Scalar>>
            <<<grid, kernels::block_threads, 0, m_stream>>>(rows, cols, x, y);
        break;
    }
    HGAD_CUDA_CHECK_LAUNCH();
  }

  /// y (+)= 1^T X through cuBLAS gemv: the row-major rows x cols X is the column-major
  /// cols x rows X^T, and X^T 1 sums its columns. Deterministic.
  void sum_cols(Index rows, Index cols, const Scalar* x, Scalar* y, bool accumulate) override {
    if (cols <= 0) return;
    if (rows <= 0) {
      if (!accumulate) fill(y, cols, Scalar(0));
      return;
    }
    check_int("sum_cols", rows, cols);
    const Scalar* ones = ones_vector(rows);
    const Scalar alpha = 1, beta = accumulate ? Scalar(1) : Scalar(0);
    if constexpr (std::is_same_v<Scalar, float>) {
      HGAD_CUBLAS_CHECK(cublasSgemv(m_blas, CUBLAS_OP_N, static_cast<int>(cols),
                                    static_cast<int>(rows), &alpha, x, static_cast<int>(cols), ones,
                                    1, &beta, y, 1));
    } else {
      HGAD_CUBLAS_CHECK(cublasDgemv(m_blas, CUBLAS_OP_N, static_cast<int>(cols),
                                    static_cast<int>(rows), &alpha, x, static_cast<int>(cols), ones,
                                    1, &beta, y, 1));
    }
  }

  Scalar reduce_all(Reduce op, Index n, const Scalar* x) override {
    switch (op) {
      case Reduce::sum: return reduce_all_with<hgad::detail::SumAccumulator<Scalar>>(n, x);
      case Reduce::max: return reduce_all_with<hgad::detail::MaxAccumulator<Scalar>>(n, x);
      case Reduce::logsumexp:
        return reduce_all_with<hgad::detail::LogSumExpAccumulator<Scalar>>(n, x);
    }
    return Scalar(0);
  }

  void softmax_rows(Index rows, Index cols, const Scalar* x, Scalar* y, bool log) override {
    if (rows <= 0 || cols <= 0) return;
    kernels::softmax_rows_kernel<<<kernels::grid_for(rows, kernels::warps_per_block),
                                   kernels::block_threads, 0, m_stream>>>(rows, cols, x, y, log);
    HGAD_CUDA_CHECK_LAUNCH();
  }
  void softmax_rows_backward(Index rows, Index cols, const Scalar* y, const Scalar* gy, Scalar* gx,
                             bool log, bool accumulate) override {
    if (rows <= 0 || cols <= 0) return;
    kernels::softmax_rows_backward_kernel<<<kernels::grid_for(rows, kernels::warps_per_block),
                                            kernels::block_threads, 0, m_stream>>>(
        rows, cols, y, gy, gx, log, accumulate);
    HGAD_CUDA_CHECK_LAUNCH();
  }

  void gather_rows(const std::int64_t* index, Index n_index, Index cols, const Scalar* src,
                   Scalar* dst) override {
    if (n_index <= 0 || cols <= 0) return;
    const std::int64_t* device_index = upload_index(index, n_index);
    kernels::gather_rows_kernel<<<kernels::grid_for(n_index * cols), kernels::block_threads, 0,
                                  m_stream>>>(device_index, n_index, cols, src, dst);
    HGAD_CUDA_CHECK_LAUNCH();
  }
  void scatter_add_rows(const std::int64_t* index, Index n_index, Index cols, const Scalar* src,
                        Scalar* dst) override {
    if (n_index <= 0 || cols <= 0) return;
    const std::int64_t* device_index = upload_index(index, n_index);
    kernels::scatter_add_rows_kernel<<<kernels::grid_for(n_index * cols), kernels::block_threads,
                                       0, m_stream>>>(device_index, n_index, cols, src, dst);
    HGAD_CUDA_CHECK_LAUNCH();
  }

  void axpy(Index n, Scalar alpha, const Scalar* x, Scalar* y) override {
    if (n <= 0) return;
    kernels::axpy_kernel<<<kernels::grid_for(n), kernels::block_threads, 0, m_stream>>>(n, alpha, x,
                                                                                       y);
    HGAD_CUDA_CHECK_LAUNCH();
  }
  bool all_finite(Index n, const Scalar* x) override {
    if (n <= 0) return true;
    HGAD_CUDA_CHECK(cudaMemsetAsync(m_flag.data(), 0, sizeof(int), m_stream));
    kernels::non_finite_kernel<<<kernels::grid_for(n), kernels::block_threads, 0, m_stream>>>(
        n, x, m_flag.data());
    HGAD_CUDA_CHECK_LAUNCH();
    int flag = 0;
    HGAD_CUDA_CHECK(cudaMemcpyAsync(&flag, m_flag.data(), sizeof(int), cudaMemcpyDeviceToHost,
                                    m_stream));
    HGAD_CUDA_CHECK(cudaStreamSynchronize(m_stream));
    return flag == 0;
  }

  /// A device vector of at least n ones (kept between calls; grows on demand).
  const Scalar* ones_vector(Index n) {
    if (static_cast<std::size_t>(n) > m_ones.size()) {
      m_ones = DeviceBuffer<Scalar>(m_allocator, static_cast<std::size_t>(n));
      fill(m_ones.data(), n, Scalar(1));
    }
    return m_ones.data();
  }

 private:
  /// Blocks of the first reduce_all pass; their partial accumulators are merged by one block.
  static constexpr std::int64_t max_partials = 1024;

  static std::size_t bytes(Index n) { return static_cast<std::size_t>(n) * sizeof(Scalar); }

  template <class... Sizes>
  static void check_int(const char* what, Sizes... sizes) {
    const bool fits = ((sizes >= 0 && sizes <= Index(0x7fffffff)) && ...);
    check(fits, "CudaBackend::", what, ": a size or leading dimension exceeds cuBLAS's int range");
  }

  const std::int64_t* upload_index(const std::int64_t* index, Index n) {
    if (static_cast<std::size_t>(n) > m_index.size())
      m_index = DeviceBuffer<std::int64_t>(m_allocator, static_cast<std::size_t>(n));
    HGAD_CUDA_CHECK(cudaMemcpyAsync(m_index.data(), index, static_cast<std::size_t>(n) * sizeof(std::int64_t),
                                    cudaMemcpyHostToDevice, m_stream));
    return m_index.data();
  }

  template <class Acc>
  Scalar reduce_all_with(Index n, const Scalar* x) {
    static_assert(sizeof(Acc) <= sizeof(hgad::detail::LogSumExpAccumulator<Scalar>),
                  "partial buffer too small");
    if (n <= 0) return Acc{}.result();
    Acc* partial = reinterpret_cast<Acc*>(m_partial.data());
    const unsigned grid = static_cast<unsigned>(
        std::min<std::int64_t>((n + kernels::block_threads - 1) / kernels::block_threads, max_partials));
    kernels::reduce_all_kernel<Scalar, Acc><<<grid, kernels::block_threads, 0, m_stream>>>(n, x, partial);
    HGAD_CUDA_CHECK_LAUNCH();
    kernels::merge_partials_kernel<Scalar, Acc><<<1, kernels::block_threads, 0, m_stream>>>(grid, partial);
    HGAD_CUDA_CHECK_LAUNCH();
    Acc result;
    HGAD_CUDA_CHECK(cudaMemcpyAsync(&result, partial, sizeof(Acc), cudaMemcpyDeviceToHost, m_stream));
    HGAD_CUDA_CHECK(cudaStreamSynchronize(m_stream));
    return result.result();
  }

  int m_device = 0;
  cudaStream_t m_stream = nullptr;
  cublasHandle_t m_blas = nullptr;
  std::shared_ptr<DeviceAllocator> m_allocator;
  DeviceBuffer<Scalar> m_ones;
  DeviceBuffer<std::int64_t> m_index;
  DeviceBuffer<int> m_flag;
  DeviceBuffer<hgad::detail::LogSumExpAccumulator<Scalar>> m_partial;
};

/// A new CudaBackend on `device`, as the BackendPtr that Tensor::to takes.
template <class Scalar>
std::shared_ptr<CudaBackend<Scalar>> make_cuda_backend(int device = 0) {
  return std::make_shared<CudaBackend<Scalar>>(device);
}

}  // namespace hgad::cuda
