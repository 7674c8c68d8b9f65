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
#include <new>
#include <type_traits>

#include "backend.hpp"
#include "detail/check.hpp"
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

  /// Aligned by hand on top of malloc: glibc's aligned_alloc returns large blocks to the kernel
  /// on free, so every tensor of a training step paid fresh page faults (about 3x the cost of
  /// writing the block); malloc keeps freed blocks for reuse. The malloc'ed address is stored
  /// just below the aligned block (malloc aligns to 16, so at least 16 bytes precede it).
  Scalar* allocate(Index n) override {
    if (n <= 0) return nullptr;
    const std::size_t bytes = padded_bytes(n);
    void* raw = std::malloc(bytes + tensor_alignment);
    if (raw == nullptr) throw std::bad_alloc();
    const std::uintptr_t aligned =
        (reinterpret_cast<std::uintptr_t>(raw) + tensor_alignment) & ~std::uintptr_t(tensor_alignment - 1);
    void* p = reinterpret_cast<void*>(aligned);
    static_cast<void**>(p)[-1] = raw;
    const Index in_use = m_bytes_in_use.fetch_add(static_cast<Index>(bytes)) + static_cast<Index>(bytes);
    Index peak = m_peak_bytes.load();
    while (in_use > peak && !m_peak_bytes.compare_exchange_weak(peak, in_use)) {
    }
    return static_cast<Scalar*>(p);
  }
  void deallocate(Scalar* data, Index n) override {
    if (data == nullptr) return;
    m_bytes_in_use.fetch_sub(static_cast<Index>(padded_bytes(n)));
    std::free(reinterpret_cast<void**>(data)[-1]);
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

  // The op is dispatched once per call (with_op), so each loop below is compiled for one known op
  // and vectorises; a switch inside the loop made relu run at a quarter of memory bandwidth.
  void unary(UnaryOp op, Index n, const Scalar* x, Scalar* y, Scalar param) override {
    with_op(op, [&](auto known) {
      const Index chunk = 4096;
      detail::parallel_for((n + chunk - 1) / chunk, 8 * n, [&](Index c) {
        const Index end = std::min(n, (c + 1) * chunk);
        for (Index i = c * chunk; i < end; ++i) y[i] = apply(known.value, x[i], param);
      });
    });
  }
  void binary(BinaryOp op, Index n, const Scalar* a, const Scalar* b, Scalar* y,
              Scalar param) override {
    with_op(op, [&](auto known) {
      const Index chunk = 4096;
      detail::parallel_for((n + chunk - 1) / chunk, 4 * n, [&](Index c) {
        const Index end = std::min(n, (c + 1) * chunk);
        for (Index i = c * chunk; i < end; ++i) y[i] = apply(known.value, a[i], b[i], param);
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
          for (Index j = 0; j < cols; ++j) yi[j] = apply(known.value, ai[j], b[j], param);
        } else {
          const Scalar bi = b[i];
          for (Index j = 0; j < cols; ++j) yi[j] = apply(known.value, ai[j], bi, param);
        }
      });
    });
  }

  void reduce_rows(Reduce op, Index rows, Index cols, const Scalar* x, Scalar* y) override {
    detail::parallel_for(rows, 2 * rows * cols, [&](Index i) { y[i] = reduce(op, cols, x + i * cols); });
  }
  void sum_cols(Index rows, Index cols, const Scalar* x, Scalar* y, bool accumulate) override {
    Eigen::Map<Eigen::Matrix<Scalar, 1, Eigen::Dynamic>> out(y, cols);
    Eigen::Map<const RowMatrix> X(x, rows, cols);
    if (accumulate) {
      out.noalias() += X.colwise().sum();
    } else {
      out.noalias() = X.colwise().sum();
    }
  }
  Scalar reduce_all(Reduce op, Index n, const Scalar* x) override { return reduce(op, n, x); }

  void softmax_rows(Index rows, Index cols, const Scalar* x, Scalar* y, bool log) override {
    detail::parallel_for(rows, 8 * rows * cols, [&](Index i) {
      const Scalar* xi = x + i * cols;
      Scalar* yi = y + i * cols;
      const Scalar lse = detail::logsumexp(xi, static_cast<long>(cols));
      for (Index j = 0; j < cols; ++j) yi[j] = log ? xi[j] - lse : std::exp(xi[j] - lse);
    });
  }
  void softmax_rows_backward(Index rows, Index cols, const Scalar* y, const Scalar* gy, Scalar* gx,
                             bool log, bool accumulate) override {
    detail::parallel_for(rows, 4 * rows * cols, [&](Index i) {
      const Scalar* yi = y + i * cols;
      const Scalar* gi = gy + i * cols;
      Scalar* out = gx + i * cols;
      if (log) {
        // y = x - lse(x): dL/dx_j = g_j - softmax_j sum_k g_k, softmax_j = e^{y_j}.
        Scalar total = 0;
        for (Index j = 0; j < cols; ++j) total += gi[j];
        for (Index j = 0; j < cols; ++j) {
          const Scalar v = gi[j] - std::exp(yi[j]) * total;
          out[j] = accumulate ? out[j] + v : v;
        }
      } else {
        // y = softmax(x): dL/dx_j = y_j (g_j - sum_k g_k y_k).
        Scalar dot = 0;
        for (Index j = 0; j < cols; ++j) dot += gi[j] * yi[j];
        for (Index j = 0; j < cols; ++j) {
          const Scalar v = yi[j] * (gi[j] - dot);
          out[j] = accumulate ? out[j] + v : v;
        }
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

  /// The scalar body of every UnaryOp.
  static Scalar apply(UnaryOp op, Scalar x, Scalar param) {
    switch (op) {
      case UnaryOp::identity: return x;
      case UnaryOp::neg: return -x;
      case UnaryOp::exp: return std::exp(x);
      case UnaryOp::log: return std::log(x);
      case UnaryOp::tanh: return std::tanh(x);
      case UnaryOp::sigmoid: return detail::sigmoid(x);
      case UnaryOp::softplus: return detail::softplus(x, param);
      case UnaryOp::relu: return x > Scalar(0) ? x : Scalar(0);
      case UnaryOp::square: return x * x;
      case UnaryOp::scale: return param * x;
      case UnaryOp::add_scalar: return x + param;
      case UnaryOp::reciprocal: return Scalar(1) / x;
    }
    return x;
  }

  /// The scalar body of every BinaryOp.
  static Scalar apply(BinaryOp op, Scalar a, Scalar b, Scalar param) {
    switch (op) {
      case BinaryOp::add: return a + b;
      case BinaryOp::sub: return a - b;
      case BinaryOp::mul: return a * b;
      case BinaryOp::div: return a / b;
      case BinaryOp::relu_backward: return a > Scalar(0) ? b : Scalar(0);
      case BinaryOp::tanh_backward: return b * (Scalar(1) - a * a);
      case BinaryOp::sigmoid_backward: return b * a * (Scalar(1) - a);
      case BinaryOp::softplus_backward: return b * detail::softplus_derivative(a, param);
    }
    return a;
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
  std::atomic<Index> m_bytes_in_use{0};
  std::atomic<Index> m_peak_bytes{0};
};

/// The process-wide CPU backend for `Scalar`.
template <class Scalar>
const BackendPtr<Scalar>& cpu_backend() {
  static const BackendPtr<Scalar> backend = std::make_shared<CpuBackend<Scalar>>();
  return backend;
}

}  // namespace hgad
