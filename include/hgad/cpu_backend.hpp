#pragma once
/// \file
/// The CPU backend: 64-byte aligned memory, Eigen GEMM, OpenMP element-wise and row kernels.

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "backend.hpp"
#include "detail/check.hpp"
#include "detail/element_ops.hpp"
#include "detail/parallel.hpp"
#include "detail/scalar_math.hpp"

namespace hgad {

/// Alignment of every CPU buffer: one cache line, and a full AVX-512 register.
inline constexpr std::size_t tensor_alignment = 64;

template <class Scalar>
class CpuBackend final : public Backend<Scalar> {
 public:
  using RowMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Stride = Eigen::OuterStride<>;
  using ConstMap = Eigen::Map<const RowMatrix, Eigen::Unaligned, Stride>;
  using Map = Eigen::Map<RowMatrix, Eigen::Unaligned, Stride>;

  Device device() const override { return Device::cpu; }

  CpuBackend() = default;
  CpuBackend(const CpuBackend&) = delete;
  CpuBackend& operator=(const CpuBackend&) = delete;
  ~CpuBackend() override { release_cached(); }

  /// Blocks of at least cache_min_bytes come from a cache of freed blocks of the same size when
  /// one is there: a training step allocates the same large tensors every step, and fresh pages
  /// cost the kernel's page faults and zeroing (measured: a fresh 24 MiB block took 3 to 4 times
  /// as long to fill as a reused one, because glibc returns freed blocks above its trim threshold
  /// to the kernel). Smaller blocks go straight to malloc. Blocks are aligned by hand on top of
  /// malloc (glibc's aligned_alloc gave back even more memory to the kernel); the malloc'ed
  /// address is stored just below the aligned block, where malloc's 16-byte alignment leaves
  /// room for it.
  Scalar* allocate(Index n) override {
    if (n <= 0) return nullptr;
    const std::size_t bytes = padded_bytes(n);
    void* p = bytes >= cache_min_bytes ? take_cached(bytes) : nullptr;
    if (p == nullptr) {
      void* raw = std::malloc(bytes + tensor_alignment);
      if (raw == nullptr) {
        release_cached();
        raw = std::malloc(bytes + tensor_alignment);
      }
      if (raw == nullptr) throw std::bad_alloc();
      const std::uintptr_t aligned = (reinterpret_cast<std::uintptr_t>(raw) + tensor_alignment) &
                                     ~std::uintptr_t(tensor_alignment - 1);
      p = reinterpret_cast<void*>(aligned);
      static_cast<void**>(p)[-1] = raw;
    }
    const Index in_use =
        m_bytes_in_use.fetch_add(static_cast<Index>(bytes)) + static_cast<Index>(bytes);
    Index peak = m_peak_bytes.load();
    while (in_use > peak && !m_peak_bytes.compare_exchange_weak(peak, in_use)) {
    }
    return static_cast<Scalar*>(p);
  }
  void deallocate(Scalar* data, Index n) override {
    if (data == nullptr) return;
    const std::size_t bytes = padded_bytes(n);
    m_bytes_in_use.fetch_sub(static_cast<Index>(bytes));
    if (bytes >= cache_min_bytes && put_cached(data, bytes)) return;
    std::free(static_cast<void**>(static_cast<void*>(data))[-1]);
  }

  /// Smallest block the cache keeps: 1 MiB, above glibc's default mmap threshold (128 KiB), so
  /// every block that malloc would hand back to the kernel is covered.
  static constexpr std::size_t cache_min_bytes = std::size_t(1) << 20;

  /// Bytes held in the cache of freed blocks (not counted in bytes_in_use()).
  Index bytes_cached() const {
    std::lock_guard<std::mutex> lock(m_cache_mutex);
    return static_cast<Index>(m_cached_bytes);
  }
  /// The most the cache holds; a freed block that does not fit goes back to malloc. Default 1 GiB.
  void set_cache_limit(Index bytes) {
    std::lock_guard<std::mutex> lock(m_cache_mutex);
    m_cache_limit = static_cast<std::size_t>(bytes < 0 ? 0 : bytes);
  }
  /// Returns every cached block to malloc.
  void release_cached() {
    std::lock_guard<std::mutex> lock(m_cache_mutex);
    for (auto& entry : m_cache) {
      for (void* block : entry.second) std::free(static_cast<void**>(block)[-1]);
    }
    m_cache.clear();
    m_cached_bytes = 0;
  }

  /// Bytes of tensor storage this backend holds now (allocations padded to tensor_alignment).
  Index bytes_in_use() const { return m_bytes_in_use.load(); }
  /// The largest bytes_in_use() since construction or the last reset_peak_bytes().
  Index peak_bytes() const { return m_peak_bytes.load(); }
  /// Restarts the peak measurement from the current bytes_in_use().
  void reset_peak_bytes() { m_peak_bytes.store(m_bytes_in_use.load()); }

  void copy_from_host(const Scalar* host, Scalar* dst, Index n) override { copy(host, dst, n); }
  void copy_to_host(const Scalar* src, Scalar* host, Index n) override { copy(src, host, n); }
  void copy(const Scalar* src, Scalar* dst, Index n) override {
    if (n > 0 && src != dst) std::memmove(dst, src, static_cast<std::size_t>(n) * sizeof(Scalar));
  }
  void copy2d(Index rows, Index cols, const Scalar* src, Index src_ld, Scalar* dst, Index dst_ld,
              bool accumulate) override {
    detail::parallel_for(rows, rows * cols, [&](Index i) {
      const Scalar* s = src + i * src_ld;
      Scalar* d = dst + i * dst_ld;
      if (accumulate) {
        for (Index j = 0; j < cols; ++j) d[j] += s[j];
      } else {
        std::copy(s, s + cols, d);
      }
    });
  }
  void fill(Scalar* x, Index n, Scalar value) override {
    detail::parallel_for(n, n, [&](Index i) { x[i] = value; });
  }

  void gemm(Transpose trans_a, Transpose trans_b, Index m, Index n, Index k, Scalar alpha,
            const Scalar* a, Index lda, const Scalar* b, Index ldb, Scalar beta, Scalar* c,
            Index ldc) override {
    Map C(c, m, n, Stride(ldc));
    if (beta == Scalar(0)) {
      C.setZero();
    } else if (beta != Scalar(1)) {
      C *= beta;
    }
    if (k == 0) return;
    const Index a_rows = trans_a == Transpose::no ? m : k, a_cols = trans_a == Transpose::no ? k : m;
    const Index b_rows = trans_b == Transpose::no ? k : n, b_cols = trans_b == Transpose::no ? n : k;
    ConstMap A(a, a_rows, a_cols, Stride(lda));
    ConstMap B(b, b_rows, b_cols, Stride(ldb));
    if (trans_a == Transpose::no && trans_b == Transpose::no) {
      C.noalias() += alpha * A * B;
    } else if (trans_a == Transpose::no) {
      C.noalias() += alpha * A * B.transpose();
    } else if (trans_b == Transpose::no) {
      C.noalias() += alpha * A.transpose() * B;
    } else {
      C.noalias() += alpha * A.transpose() * B.transpose();
    }
  }

  // The element bodies are detail/element_ops.hpp's, shared with the CUDA kernels. The op is
  // dispatched once per call (with_op), so each loop below is compiled for one known op and
  // vectorises; a switch inside the loop made relu run at a quarter of memory bandwidth.
  void unary(UnaryOp op, Index n, const Scalar* x, Scalar* y, Scalar param) override {
    with_op(op, [&](auto known) {
      const Index chunk = 4096;
      detail::parallel_for((n + chunk - 1) / chunk, 8 * n, [&](Index c) {
        const Index end = std::min(n, (c + 1) * chunk);
        for (Index i = c * chunk; i < end; ++i) y[i] = detail::unary_op(known.value, x[i], param);
      });
    });
  }
  void binary(BinaryOp op, Index n, const Scalar* a, const Scalar* b, Scalar* y,
              Scalar param) override {
    with_op(op, [&](auto known) {
      const Index chunk = 4096;
      detail::parallel_for((n + chunk - 1) / chunk, 4 * n, [&](Index c) {
        const Index end = std::min(n, (c + 1) * chunk);
        for (Index i = c * chunk; i < end; ++i)
          y[i] = detail::binary_op(known.value, a[i], b[i], param);
      });
    });
  }
  void binary_broadcast(BinaryOp op, Broadcast how, Index rows, Index cols, const Scalar* a,
                        const Scalar* b, Scalar* y, Scalar param) override {
    with_op(op, [&](auto known) {
      detail::parallel_for(rows, 4 * rows * cols, [&](Index i) {
        const Scalar* ai = a + i * cols;
        Scalar* yi = y + i * cols;
        if (how == Broadcast::row) {
          for (Index j = 0; j < cols; ++j)
            yi[j] = detail::binary_op(known.value, ai[j], b[j], param);
        } else {
          const Scalar bi = b[i];
          for (Index j = 0; j < cols; ++j) yi[j] = detail::binary_op(known.value, ai[j], bi, param);
        }
      });
    });
  }

  void reduce_rows(Reduce op, Index rows, Index cols, const Scalar* x, Scalar* y) override {
    detail::parallel_for(rows, 2 * rows * cols, [&](Index i) { y[i] = reduce(op, cols, x + i * cols); });
  }
  /// Sums blocks of 256 rows in parallel, then the block sums in order: a fixed split, so the
  /// result does not depend on the number of threads (and float sums stay short).
  void sum_cols(Index rows, Index cols, const Scalar* x, Scalar* y, bool accumulate) override {
    Eigen::Map<Eigen::Matrix<Scalar, 1, Eigen::Dynamic>> out(y, cols);
    Eigen::Map<const RowMatrix> X(x, rows, cols);
    const Index block = 256;
    const Index n_blocks = (rows + block - 1) / block;
    if (n_blocks <= 1) {
      if (accumulate) {
        out.noalias() += X.colwise().sum();
      } else {
        out.noalias() = X.colwise().sum();
      }
      return;
    }
    RowMatrix partial(n_blocks, cols);
    detail::parallel_for(n_blocks, rows * cols, [&](Index b) {
      const Index begin = b * block;
      partial.row(b).noalias() = X.middleRows(begin, std::min(block, rows - begin)).colwise().sum();
    });
    if (accumulate) {
      out.noalias() += partial.colwise().sum();
    } else {
      out.noalias() = partial.colwise().sum();
    }
  }
  Scalar reduce_all(Reduce op, Index n, const Scalar* x) override { return reduce(op, n, x); }

  void softmax_rows(Index rows, Index cols, const Scalar* x, Scalar* y, bool log) override {
    detail::parallel_for(rows, 8 * rows * cols, [&](Index i) {
      const Scalar* xi = x + i * cols;
      Scalar* yi = y + i * cols;
      const Scalar lse = detail::logsumexp(xi, static_cast<long>(cols));
      for (Index j = 0; j < cols; ++j) yi[j] = detail::softmax_element(xi[j], lse, log);
    });
  }
  void softmax_rows_backward(Index rows, Index cols, const Scalar* y, const Scalar* gy, Scalar* gx,
                             bool log, bool accumulate) override {
    detail::parallel_for(rows, 4 * rows * cols, [&](Index i) {
      const Scalar* yi = y + i * cols;
      const Scalar* gi = gy + i * cols;
      Scalar* out = gx + i * cols;
      Scalar row = 0;
      for (Index j = 0; j < cols; ++j) row += detail::softmax_backward_row_term(yi[j], gi[j], log);
      for (Index j = 0; j < cols; ++j) {
        const Scalar v = detail::softmax_backward_element(yi[j], gi[j], row, log);
        out[j] = accumulate ? out[j] + v : v;
      }
    });
  }

  void gather_rows(const std::int64_t* index, Index n_index, Index cols, const Scalar* src,
                   Scalar* dst) override {
    detail::parallel_for(n_index, n_index * cols, [&](Index r) {
      std::copy(src + index[r] * cols, src + (index[r] + 1) * cols, dst + r * cols);
    });
  }
  void scatter_add_rows(const std::int64_t* index, Index n_index, Index cols, const Scalar* src,
                        Scalar* dst) override {
    // Sequential: repeated indices would race, and the target is small (class tables).
    for (Index r = 0; r < n_index; ++r) {
      Scalar* d = dst + index[r] * cols;
      const Scalar* s = src + r * cols;
      for (Index j = 0; j < cols; ++j) d[j] += s[j];
    }
  }

  void axpy(Index n, Scalar alpha, const Scalar* x, Scalar* y) override {
    detail::parallel_for(n, n, [&](Index i) { y[i] += alpha * x[i]; });
  }
  bool all_finite(Index n, const Scalar* x) override {
    bool finite = true;
    for (Index i = 0; i < n; ++i) finite &= std::isfinite(x[i]);
    return finite;
  }

  /// Calls f(std::integral_constant<UnaryOp, op>{}): the op as a compile-time constant.
  template <class F>
  static void with_op(UnaryOp op, F&& f) {
    using U = UnaryOp;
    switch (op) {
      case U::identity: return f(std::integral_constant<U, U::identity>{});
      case U::neg: return f(std::integral_constant<U, U::neg>{});
      case U::exp: return f(std::integral_constant<U, U::exp>{});
      case U::log: return f(std::integral_constant<U, U::log>{});
      case U::tanh: return f(std::integral_constant<U, U::tanh>{});
      case U::sigmoid: return f(std::integral_constant<U, U::sigmoid>{});
      case U::softplus: return f(std::integral_constant<U, U::softplus>{});
      case U::relu: return f(std::integral_constant<U, U::relu>{});
      case U::square: return f(std::integral_constant<U, U::square>{});
      case U::scale: return f(std::integral_constant<U, U::scale>{});
      case U::add_scalar: return f(std::integral_constant<U, U::add_scalar>{});
      case U::reciprocal: return f(std::integral_constant<U, U::reciprocal>{});
    }
  }
  /// Calls f(std::integral_constant<BinaryOp, op>{}).
  template <class F>
  static void with_op(BinaryOp op, F&& f) {
    using B = BinaryOp;
    switch (op) {
      case B::add: return f(std::integral_constant<B, B::add>{});
      case B::sub: return f(std::integral_constant<B, B::sub>{});
      case B::mul: return f(std::integral_constant<B, B::mul>{});
      case B::div: return f(std::integral_constant<B, B::div>{});
      case B::relu_backward: return f(std::integral_constant<B, B::relu_backward>{});
      case B::tanh_backward: return f(std::integral_constant<B, B::tanh_backward>{});
      case B::sigmoid_backward: return f(std::integral_constant<B, B::sigmoid_backward>{});
      case B::softplus_backward: return f(std::integral_constant<B, B::softplus_backward>{});
    }
  }

  static std::size_t padded_bytes(Index n) {
    const std::size_t bytes = static_cast<std::size_t>(n) * sizeof(Scalar);
    return (bytes + tensor_alignment - 1) / tensor_alignment * tensor_alignment;
  }

  static Scalar reduce(Reduce op, Index n, const Scalar* x) {
    switch (op) {
      case Reduce::sum: {
        Scalar s = 0;
        for (Index j = 0; j < n; ++j) s += x[j];
        return s;
      }
      case Reduce::max: {
        Scalar m = -std::numeric_limits<Scalar>::infinity();
        for (Index j = 0; j < n; ++j) m = x[j] > m || std::isnan(x[j]) ? x[j] : m;
        return m;
      }
      case Reduce::logsumexp: return detail::logsumexp(x, static_cast<long>(n));
    }
    return Scalar(0);
  }

 private:
  void* take_cached(std::size_t bytes) {
    std::lock_guard<std::mutex> lock(m_cache_mutex);
    const auto it = m_cache.find(bytes);
    if (it == m_cache.end() || it->second.empty()) return nullptr;
    void* block = it->second.back();
    it->second.pop_back();
    m_cached_bytes -= bytes;
    return block;
  }
  bool put_cached(void* block, std::size_t bytes) {
    std::lock_guard<std::mutex> lock(m_cache_mutex);
    if (m_cached_bytes + bytes > m_cache_limit) return false;
    m_cache[bytes].push_back(block);
    m_cached_bytes += bytes;
    return true;
  }

  std::atomic<Index> m_bytes_in_use{0};
  std::atomic<Index> m_peak_bytes{0};
  mutable std::mutex m_cache_mutex;
  std::unordered_map<std::size_t, std::vector<void*>> m_cache;
  std::size_t m_cached_bytes = 0;
  std::size_t m_cache_limit = std::size_t(1) << 30;
};

/// The process-wide CPU backend for `Scalar`.
template <class Scalar>
const BackendPtr<Scalar>& cpu_backend() {
  static const BackendPtr<Scalar> backend = std::make_shared<CpuBackend<Scalar>>();
  return backend;
}

}  // namespace hgad
