#pragma once
/// \file
/// Tensor<Scalar>: an owning, contiguous, row-major array of rank 0 to 4 on one device.
///
///     hgad::Rng rng(0);
///     auto x = hgad::Tensor<float>::randn({8, 3}, rng);   // (8, 3), N(0, 1)
///     auto w = hgad::Tensor<float>::ones({3, 2});
///     hgad::Tensor<float> y({8, 2});
///     y.as_matrix().noalias() = x.as_matrix() * w.as_matrix();   // GEMM through Eigen
///
/// Copies of a Tensor share its storage (like a PyTorch tensor or a shared_ptr): `reshape` and
/// `slice` return views, `clone` a deep copy. Elements live on `device()` and are reached through
/// that device's Backend; element access and Eigen views require a CPU tensor.

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <initializer_list>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "backend.hpp"
#include "cpu_backend.hpp"
#include "detail/check.hpp"
#include "rng.hpp"

namespace hgad {

/// Largest supported rank.
inline constexpr int max_rank = 4;

/// The dimensions of a tensor, rank 0 (a scalar) to 4.
class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<Index> dims) { assign(dims.begin(), dims.end()); }
  explicit Shape(const std::vector<Index>& dims) { assign(dims.begin(), dims.end()); }

  int rank() const { return m_rank; }
  Index operator[](int axis) const {
    check(axis >= 0 && axis < m_rank, "Shape: axis ", axis, " out of range for ", *this);
    return m_dims[static_cast<std::size_t>(axis)];
  }
  /// Number of elements (1 for rank 0).
  Index numel() const {
    Index n = 1;
    for (int i = 0; i < m_rank; ++i) n *= m_dims[static_cast<std::size_t>(i)];
    return n;
  }
  std::vector<Index> dims() const { return {m_dims.begin(), m_dims.begin() + m_rank}; }

  friend bool operator==(const Shape& a, const Shape& b) {
    return a.m_rank == b.m_rank && std::equal(a.m_dims.begin(), a.m_dims.begin() + a.m_rank, b.m_dims.begin());
  }
  friend bool operator!=(const Shape& a, const Shape& b) { return !(a == b); }

  /// "(8, 3)"; "()" for a scalar.
  std::string to_string() const {
    std::string s = "(";
    for (int i = 0; i < m_rank; ++i) {
      if (i) s += ", ";
      s += std::to_string(m_dims[static_cast<std::size_t>(i)]);
    }
    return s + ")";
  }
  /// Writes to_string(); so a check can take the shape itself and build its message only when it fails.
  friend std::ostream& operator<<(std::ostream& out, const Shape& shape) { return out << shape.to_string(); }

 private:
  template <class It>
  void assign(It first, It last) {
    const auto n = std::distance(first, last);
    check(n <= max_rank, "Shape: rank ", n, " exceeds the maximum rank ", max_rank);
    m_rank = static_cast<int>(n);
    int i = 0;
    for (It it = first; it != last; ++it, ++i) {
      check(*it >= 0, "Shape: negative dimension ", *it);
      m_dims[static_cast<std::size_t>(i)] = *it;
    }
  }

  std::array<Index, max_rank> m_dims{};
  int m_rank = 0;
};

namespace detail {

/// A buffer owned by a backend; freed through the backend that allocated it.
template <class Scalar>
struct Storage {
  Storage(BackendPtr<Scalar> backend_, Index size_)
      : backend(std::move(backend_)), data(backend->allocate(size_)), size(size_) {}
  ~Storage() { backend->deallocate(data, size); }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  BackendPtr<Scalar> backend;
  Scalar* data;
  Index size;
};

}  // namespace detail

template <class Scalar>
class Tensor {
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>,
                "hgad::Tensor supports float and double");

 public:
  using scalar_type = Scalar;
  using RowMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  using MatrixMap = Eigen::Map<RowMatrix, Eigen::Unaligned>;
  using ConstMatrixMap = Eigen::Map<const RowMatrix, Eigen::Unaligned>;
  using VectorMap = Eigen::Map<Vector, Eigen::Unaligned>;
  using ConstVectorMap = Eigen::Map<const Vector, Eigen::Unaligned>;

  /// An empty rank-1 tensor of size 0 on the CPU.
  Tensor() : Tensor(Shape{0}) {}

  /// A zero-filled tensor of `shape` allocated by `backend` (the CPU by default).
  explicit Tensor(Shape shape, BackendPtr<Scalar> backend = cpu_backend<Scalar>())
      : m_storage(std::make_shared<detail::Storage<Scalar>>(std::move(backend), shape.numel())),
        m_shape(shape) {
    m_storage->backend->fill(m_storage->data, shape.numel(), Scalar(0));
  }

  /// A tensor of `shape` whose elements are left uninitialised, for outputs a kernel overwrites
  /// entirely (saves the zero-fill of the constructor).
  static Tensor empty(Shape shape, BackendPtr<Scalar> backend = cpu_backend<Scalar>()) {
    return Tensor(shape, std::move(backend), Uninitialized{});
  }

  static Tensor zeros(Shape shape) { return Tensor(shape); }
  static Tensor ones(Shape shape) { return full(shape, Scalar(1)); }
  static Tensor full(Shape shape, Scalar value) {
    Tensor t(shape);
    t.fill(value);
    return t;
  }
  /// I.i.d. N(mean, stddev^2) from `rng`, drawn in row-major order.
  static Tensor randn(Shape shape, Rng& rng, Scalar mean = 0, Scalar stddev = 1) {
    Tensor t(shape);
    for (Index i = 0; i < t.numel(); ++i) t.m_storage->data[i] = Scalar(mean + stddev * rng.normal());
    return t;
  }
  /// I.i.d. U[lo, hi) from `rng`, drawn in row-major order.
  static Tensor uniform(Shape shape, Rng& rng, Scalar lo, Scalar hi) {
    Tensor t(shape);
    for (Index i = 0; i < t.numel(); ++i) t.m_storage->data[i] = Scalar(rng.uniform(lo, hi));
    return t;
  }
  /// A CPU tensor holding `values` (row-major), which must have shape.numel() elements.
  static Tensor from_vector(Shape shape, const std::vector<Scalar>& values) {
    check(static_cast<Index>(values.size()) == shape.numel(), "Tensor::from_vector: ",
          values.size(), " values for shape ", shape);
    Tensor t(shape);
    std::copy(values.begin(), values.end(), t.m_storage->data);
    return t;
  }

  const Shape& shape() const { return m_shape; }
  int rank() const { return m_shape.rank(); }
  Index numel() const { return m_shape.numel(); }
  Index dim(int axis) const { return m_shape[axis]; }
  /// Rows of the matrix view: dim(0), or 1 for a scalar.
  Index rows() const { return rank() == 0 ? 1 : m_shape[0]; }
  /// Columns of the matrix view: the product of the trailing dimensions (1 for rank 0 and 1).
  Index cols() const {
    Index c = 1;
    for (int i = 1; i < rank(); ++i) c *= m_shape[i];
    return c;
  }
  /// Elements between consecutive indices along `axis` (row-major, contiguous).
  Index stride(int axis) const {
    check(axis >= 0 && axis < rank(), "Tensor::stride: axis ", axis, " out of range for shape ",
          m_shape);
    Index s = 1;
    for (int i = rank() - 1; i > axis; --i) s *= m_shape[i];
    return s;
  }

  Device device() const { return m_storage->backend->device(); }
  Backend<Scalar>& backend() const { return *m_storage->backend; }
  const BackendPtr<Scalar>& backend_ptr() const { return m_storage->backend; }

  Scalar* data() { return m_storage->data + m_offset; }
  const Scalar* data() const { return m_storage->data + m_offset; }

  /// True when both tensors view the same elements.
  bool shares_storage(const Tensor& other) const { return m_storage == other.m_storage; }

  /// Element access with rank and bounds checks (CPU tensors only).
  template <class... Indices>
  Scalar& operator()(Indices... indices) {
    return data()[offset_of({static_cast<Index>(indices)...})];
  }
  template <class... Indices>
  const Scalar& operator()(Indices... indices) const {
    return data()[offset_of({static_cast<Index>(indices)...})];
  }

  /// A view with another shape of the same number of elements.
  Tensor reshape(Shape shape) const {
    check(shape.numel() == numel(), "Tensor::reshape: cannot view shape ", m_shape,
          " as ", shape);
    Tensor t = *this;
    t.m_shape = shape;
    return t;
  }

  /// A view of rows [begin, end) along the first axis.
  Tensor slice(Index begin, Index end) const {
    check(rank() >= 1, "Tensor::slice: a scalar has no first axis");
    check(0 <= begin && begin <= end && end <= m_shape[0], "Tensor::slice: range [", begin, ", ",
          end, ") out of range for shape ", m_shape);
    Tensor t = *this;
    std::vector<Index> dims = m_shape.dims();
    dims[0] = end - begin;
    t.m_shape = Shape(dims);
    t.m_offset = m_offset + begin * stride(0);
    return t;
  }

  /// A deep copy on the same device.
  Tensor clone() const {
    Tensor t(m_shape, m_storage->backend);
    backend().copy(data(), t.data(), numel());
    return t;
  }

  /// A copy on the device of `backend` (this tensor itself when it is already there).
  Tensor to(const BackendPtr<Scalar>& target) const {
    if (target == m_storage->backend) return *this;
    Tensor t(m_shape, target);
    if (device() == Device::cpu) {
      target->copy_from_host(data(), t.data(), numel());
    } else if (target->device() == Device::cpu) {
      backend().copy_to_host(data(), t.data(), numel());
    } else {
      std::vector<Scalar> host(static_cast<std::size_t>(numel()));
      backend().copy_to_host(data(), host.data(), numel());
      target->copy_from_host(host.data(), t.data(), numel());
    }
    return t;
  }
  /// A copy in host memory.
  Tensor cpu() const { return to(cpu_backend<Scalar>()); }

  /// The elements, row-major, copied to a std::vector.
  std::vector<Scalar> to_vector() const {
    std::vector<Scalar> out(static_cast<std::size_t>(numel()));
    backend().copy_to_host(data(), out.data(), numel());
    return out;
  }

  void fill(Scalar value) { backend().fill(data(), numel(), value); }
  void set_zero() { fill(Scalar(0)); }

  /// Eigen view as rows() x cols() (rank >= 1) in row-major order; CPU only.
  MatrixMap as_matrix() {
    require_cpu("as_matrix");
    return MatrixMap(data(), rows(), cols());
  }
  ConstMatrixMap as_matrix() const {
    require_cpu("as_matrix");
    return ConstMatrixMap(data(), rows(), cols());
  }
  /// Eigen view of all elements as a column vector; CPU only.
  VectorMap as_vector() {
    require_cpu("as_vector");
    return VectorMap(data(), numel());
  }
  ConstVectorMap as_vector() const {
    require_cpu("as_vector");
    return ConstVectorMap(data(), numel());
  }

  /// The single element of a one-element tensor, copied to the host.
  Scalar item() const {
    check(numel() == 1, "Tensor::item: shape ", m_shape, " has ", numel(), " elements, not 1");
    Scalar v;
    backend().copy_to_host(data(), &v, 1);
    return v;
  }

 private:
  struct Uninitialized {};
  Tensor(Shape shape, BackendPtr<Scalar> backend, Uninitialized)
      : m_storage(std::make_shared<detail::Storage<Scalar>>(std::move(backend), shape.numel())),
        m_shape(shape) {}

  void require_cpu(const char* what) const {
    check(device() == Device::cpu, "Tensor::", what, ": the tensor lives on ", hgad::to_string(device()),
          "; copy it with .cpu() first");
  }

  Index offset_of(std::initializer_list<Index> indices) const {
    require_cpu("operator()");
    check(static_cast<int>(indices.size()) == rank(), "Tensor::operator(): ", indices.size(),
          " indices for shape ", m_shape);
    Index offset = 0;
    int axis = 0;
    for (Index i : indices) {
      check(i >= 0 && i < m_shape[axis], "Tensor::operator(): index ", i, " out of range along axis ",
            axis, " of shape ", m_shape);
      offset = offset * m_shape[axis] + i;
      ++axis;
    }
    return offset;
  }

  std::shared_ptr<detail::Storage<Scalar>> m_storage;
  Shape m_shape;
  Index m_offset = 0;
};

}  // namespace hgad
