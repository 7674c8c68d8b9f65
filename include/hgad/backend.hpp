#pragma once
/// \file
/// The backend interface: the only way the tensor ops reach the hardware.
///
/// A backend owns memory on one device and runs a small set of kernels on it: copies, GEMM,
/// element-wise maps, row reductions and row softmax, row gather/scatter. The CPU backend
/// (cpu_backend.hpp) implements it with Eigen and OpenMP; the CUDA backend (cuda/) with cuBLAS and
/// kernels. The autograd ops are written once against this interface, so they run on either.
/// All matrices are row-major; `ld` is the distance in elements between consecutive rows.

#include <cstdint>
#include <memory>
#include <string>

namespace hgad {

using Index = std::int64_t;

/// Where a tensor's elements live.
enum class Device { cpu, cuda };

inline std::string to_string(Device device) { return device == Device::cpu ? "cpu" : "cuda"; }

/// Whether a GEMM operand is used as stored or transposed.
enum class Transpose { no, yes };

/// Element-wise maps y = f(x; param).
enum class UnaryOp {
  identity,    ///< y = x
  neg,         ///< y = -x
  exp,         ///< y = e^x
  log,         ///< y = ln x
  tanh,        ///< y = tanh x
  sigmoid,     ///< y = 1 / (1 + e^-x)
  softplus,    ///< y = ln(1 + e^(param x)) / param, linear where param x > 20 (PyTorch's rule)
  relu,        ///< y = max(x, 0)
  square,      ///< y = x^2
  scale,       ///< y = param x
  add_scalar,  ///< y = x + param
  reciprocal,  ///< y = 1 / x
};

/// Element-wise maps y = f(a, b; param). The *_backward ops are the derivative rules of the unary
/// maps: `a` is the forward input or output named below and `b` the incoming gradient.
enum class BinaryOp {
  add,                ///< a + b
  sub,                ///< a - b
  mul,                ///< a b
  div,                ///< a / b
  relu_backward,      ///< b [a > 0], a = x
  tanh_backward,      ///< b (1 - a^2), a = tanh x
  sigmoid_backward,   ///< b a (1 - a), a = sigmoid x
  softplus_backward,  ///< b sigmoid(param a), a = x
};

/// How the second operand of a broadcast binary op is laid out.
enum class Broadcast {
  row,  ///< b has `cols` elements and is reused for every row
  col,  ///< b has `rows` elements; b[i] is reused along row i
};

/// Reductions over a row, a column or a whole buffer.
enum class Reduce { sum, max, logsumexp };

/// The kernels a device provides. Pointers refer to memory of this backend's device, except the
/// index arrays of gather/scatter, which are host memory (small label vectors).
template <class Scalar>
class Backend {
 public:
  virtual ~Backend() = default;

  virtual Device device() const = 0;

  virtual Scalar* allocate(Index n) = 0;
  virtual void deallocate(Scalar* data, Index n) = 0;

  virtual void copy_from_host(const Scalar* host, Scalar* dst, Index n) = 0;
  virtual void copy_to_host(const Scalar* src, Scalar* host, Index n) = 0;
  virtual void copy(const Scalar* src, Scalar* dst, Index n) = 0;
  /// dst[i, j] (+)= src[i, j] for a rows x cols block of two strided matrices. src_ld may be 0:
  /// every row of dst then receives the same source row (a row broadcast, used to seed a bias).
  virtual void copy2d(Index rows, Index cols, const Scalar* src, Index src_ld, Scalar* dst,
                      Index dst_ld, bool accumulate) = 0;
  virtual void fill(Scalar* x, Index n, Scalar value) = 0;

  /// C = alpha op(A) op(B) + beta C with op(A) m x k and op(B) k x n, all row-major.
  virtual void gemm(Transpose trans_a, Transpose trans_b, Index m, Index n, Index k, Scalar alpha,
                    const Scalar* a, Index lda, const Scalar* b, Index ldb, Scalar beta, Scalar* c,
                    Index ldc) = 0;

  virtual void unary(UnaryOp op, Index n, const Scalar* x, Scalar* y, Scalar param) = 0;
  virtual void binary(BinaryOp op, Index n, const Scalar* a, const Scalar* b, Scalar* y,
                      Scalar param) = 0;
  /// y[i, j] = op(a[i, j], b[j]) (row) or op(a[i, j], b[i]) (col), on a dense rows x cols matrix.
  virtual void binary_broadcast(BinaryOp op, Broadcast how, Index rows, Index cols, const Scalar* a,
                                const Scalar* b, Scalar* y, Scalar param) = 0;

  /// y[i] = reduce_j x[i, j].
  virtual void reduce_rows(Reduce op, Index rows, Index cols, const Scalar* x, Scalar* y) = 0;
  /// y[j] (+)= sum_i x[i, j].
  virtual void sum_cols(Index rows, Index cols, const Scalar* x, Scalar* y, bool accumulate) = 0;
  /// Reduction of the whole buffer, returned to the host.
  virtual Scalar reduce_all(Reduce op, Index n, const Scalar* x) = 0;

  /// y = softmax or log_softmax of each row of x, computed stably (max subtracted).
  virtual void softmax_rows(Index rows, Index cols, const Scalar* x, Scalar* y, bool log) = 0;
  /// gx (+)= the gradient through softmax_rows, from its output y and the incoming gradient gy:
  /// softmax: gx = y (gy - sum_j gy y); log_softmax: gx = gy - softmax(x) sum_j gy.
  virtual void softmax_rows_backward(Index rows, Index cols, const Scalar* y, const Scalar* gy,
                                     Scalar* gx, bool log, bool accumulate) = 0;

  /// dst[r, :] = src[index[r], :] for r < n_index.
  virtual void gather_rows(const std::int64_t* index, Index n_index, Index cols, const Scalar* src,
                           Scalar* dst) = 0;
  /// dst[index[r], :] += src[r, :] for r < n_index (repeated indices accumulate).
  virtual void scatter_add_rows(const std::int64_t* index, Index n_index, Index cols,
                                const Scalar* src, Scalar* dst) = 0;

  /// y += alpha x.
  virtual void axpy(Index n, Scalar alpha, const Scalar* x, Scalar* y) = 0;
  /// True when no element is NaN or infinite.
  virtual bool all_finite(Index n, const Scalar* x) = 0;
};

template <class Scalar>
using BackendPtr = std::shared_ptr<Backend<Scalar>>;

}  // namespace hgad
