#include <catch2/catch.hpp>

#include <hgad/cpu_backend.hpp>
#include <hgad/tensor.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

namespace cpu_backend_test {

namespace {

/// 10,007 elements: not a multiple of any chunk or vector width, and large enough to run in
/// parallel.
constexpr hgad::Index n_large = 10007;

template <class T>
std::vector<T> draw(hgad::Index n, std::uint64_t seed, double lo, double hi) {
  hgad::Rng rng(seed);
  std::vector<T> v(static_cast<std::size_t>(n));
  for (T& x : v) x = T(rng.uniform(lo, hi));
  return v;
}

/// The largest error |got - expected| / (1 + |expected|) over a kernel's output, infinite when an
/// element is not finite.
class WorstError {
 public:
  template <class T>
  void add(T got, double expected) {
    const double error = std::isfinite(double(got))
                             ? std::abs(double(got) - expected) / (1 + std::abs(expected))
                             : std::numeric_limits<double>::infinity();
    m_worst = std::max(m_worst, error);
  }
  double value() const { return m_worst; }

 private:
  double m_worst = 0;
};

template <class T>
double tolerance() {
  return std::is_same_v<T, float> ? 1e-6 : 1e-14;
}

}  // namespace

TEMPLATE_TEST_CASE("CpuBackend unary maps match their formulas, in place too", "[tensor]", float,
                   double) {
  hgad::CpuBackend<TestType> backend;
  const auto x = draw<TestType>(n_large, 1, 0.1, 3);
  struct Case {
    hgad::UnaryOp op;
    double param;
    double (*ref)(double, double);
  };
  const Case cases[] = {
      {hgad::UnaryOp::identity, 0, [](double v, double) { return v; }},
      {hgad::UnaryOp::neg, 0, [](double v, double) { return -v; }},
      {hgad::UnaryOp::exp, 0, [](double v, double) { return std::exp(v); }},
      {hgad::UnaryOp::log, 0, [](double v, double) { return std::log(v); }},
      {hgad::UnaryOp::tanh, 0, [](double v, double) { return std::tanh(v); }},
      {hgad::UnaryOp::sigmoid, 0, [](double v, double) { return 1 / (1 + std::exp(-v)); }},
      {hgad::UnaryOp::softplus, 8,
       [](double v, double p) { return p * v > 20 ? v : std::log(1 + std::exp(p * v)) / p; }},
      {hgad::UnaryOp::relu, 0, [](double v, double) { return v - 1.5 > 0 ? v - 1.5 : 0.0; }},
      {hgad::UnaryOp::square, 0, [](double v, double) { return v * v; }},
      {hgad::UnaryOp::scale, -2.5, [](double v, double p) { return p * v; }},
      {hgad::UnaryOp::add_scalar, 0.75, [](double v, double p) { return v + p; }},
      {hgad::UnaryOp::reciprocal, 0, [](double v, double) { return 1 / v; }},
  };
  for (const Case& c : cases) {
    INFO("UnaryOp " << static_cast<int>(c.op));
    std::vector<TestType> in = x;
    if (c.op == hgad::UnaryOp::relu) {
      for (TestType& v : in) v -= TestType(1.5);
    }
    std::vector<TestType> out(in.size());
    backend.unary(c.op, n_large, in.data(), out.data(), TestType(c.param));
    backend.unary(c.op, n_large, in.data(), in.data(), TestType(c.param));
    WorstError worst;
    for (std::size_t i = 0; i < out.size(); ++i) worst.add(out[i], c.ref(double(x[i]), c.param));
    REQUIRE(in == out);
    REQUIRE(worst.value() <= 4 * tolerance<TestType>());
  }
}

TEMPLATE_TEST_CASE("CpuBackend binary maps match their formulas, broadcast too", "[tensor]", float,
                   double) {
  hgad::CpuBackend<TestType> backend;
  const hgad::Index rows = 97, cols = 103;
  const auto a = draw<TestType>(rows * cols, 2, -2, 2), b = draw<TestType>(rows * cols, 3, 0.5, 2);
  const auto b_row = draw<TestType>(cols, 4, 0.5, 2), b_col = draw<TestType>(rows, 5, 0.5, 2);
  struct Case {
    hgad::BinaryOp op;
    double param;
    double (*ref)(double, double, double);
  };
  const Case cases[] = {
      {hgad::BinaryOp::add, 0, [](double x, double y, double) { return x + y; }},
      {hgad::BinaryOp::sub, 0, [](double x, double y, double) { return x - y; }},
      {hgad::BinaryOp::mul, 0, [](double x, double y, double) { return x * y; }},
      {hgad::BinaryOp::div, 0, [](double x, double y, double) { return x / y; }},
      {hgad::BinaryOp::relu_backward, 0,
       [](double x, double y, double) { return x > 0 ? y : 0.0; }},
      {hgad::BinaryOp::tanh_backward, 0,
       [](double x, double y, double) { return y * (1 - x * x); }},
      {hgad::BinaryOp::sigmoid_backward, 0,
       [](double x, double y, double) { return y * x * (1 - x); }},
      {hgad::BinaryOp::softplus_backward, 0.5,
       [](double x, double y, double p) { return p * x > 20 ? y : y / (1 + std::exp(-p * x)); }},
  };
  for (const Case& c : cases) {
    INFO("BinaryOp " << static_cast<int>(c.op));
    std::vector<TestType> out(a.size()), row(a.size()), col(a.size());
    backend.binary(c.op, rows * cols, a.data(), b.data(), out.data(), TestType(c.param));
    backend.binary_broadcast(c.op, hgad::Broadcast::row, rows, cols, a.data(), b_row.data(),
                             row.data(), TestType(c.param));
    backend.binary_broadcast(c.op, hgad::Broadcast::col, rows, cols, a.data(), b_col.data(),
                             col.data(), TestType(c.param));
    WorstError worst;
    for (hgad::Index i = 0; i < rows; ++i)
      for (hgad::Index j = 0; j < cols; ++j) {
        const std::size_t k = static_cast<std::size_t>(i * cols + j);
        worst.add(out[k], c.ref(double(a[k]), double(b[k]), c.param));
        worst.add(row[k], c.ref(double(a[k]), double(b_row[j]), c.param));
        worst.add(col[k], c.ref(double(a[k]), double(b_col[i]), c.param));
      }
    // Float rounding of 1 - x^2 near |x| = 1 and of x / y is a few ulps of the operands.
    REQUIRE(worst.value() <= 8 * tolerance<TestType>());
  }
}

TEMPLATE_TEST_CASE("CpuBackend copy2d copies blocks and broadcasts a row with src_ld 0", "[tensor]",
                   float, double) {
  hgad::CpuBackend<TestType> backend;
  const std::vector<TestType> src{1, 2, 3, 4, 5, 6};  // (2, 3)
  std::vector<TestType> dst(8, TestType(10));         // (2, 4)
  backend.copy2d(2, 2, src.data() + 1, 3, dst.data() + 1, 4, false);
  REQUIRE(dst == std::vector<TestType>{10, 2, 3, 10, 10, 5, 6, 10});
  backend.copy2d(2, 2, src.data() + 1, 3, dst.data() + 1, 4, true);
  REQUIRE(dst == std::vector<TestType>{10, 4, 6, 10, 10, 10, 12, 10});
  std::vector<TestType> rows(12);
  backend.copy2d(4, 3, src.data(), 0, rows.data(), 3, false);
  REQUIRE(rows == std::vector<TestType>{1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3});
}

TEST_CASE("CpuBackend counts the bytes it holds and their peak", "[tensor]") {
  auto backend = std::make_shared<hgad::CpuBackend<float>>();
  REQUIRE(backend->bytes_in_use() == 0);
  {
    hgad::Tensor<float> a({1000}, backend);  // 4,000 bytes, padded to 4,032
    REQUIRE(reinterpret_cast<std::uintptr_t>(a.data()) % hgad::tensor_alignment == 0);
    REQUIRE(backend->bytes_in_use() == 4032);
    {
      auto b = hgad::Tensor<float>::empty({16}, backend);  // 64 bytes
      REQUIRE(backend->bytes_in_use() == 4096);
    }
    REQUIRE(backend->bytes_in_use() == 4032);
    REQUIRE(backend->peak_bytes() == 4096);
    backend->reset_peak_bytes();
    REQUIRE(backend->peak_bytes() == 4032);
  }
  REQUIRE(backend->bytes_in_use() == 0);
  REQUIRE(backend->peak_bytes() == 4032);
}

TEST_CASE("CpuBackend reuses freed large blocks of the same size", "[tensor]") {
  auto backend = std::make_shared<hgad::CpuBackend<float>>();
  const hgad::Index n = 600000;  // 2.4 MB, above cache_min_bytes
  const float* first = nullptr;
  {
    hgad::Tensor<float> a({n}, backend);
    first = a.data();
    REQUIRE(backend->bytes_cached() == 0);
  }
  REQUIRE(backend->bytes_in_use() == 0);
  REQUIRE(backend->bytes_cached() >= n * 4);
  {
    auto b = hgad::Tensor<float>::empty({n}, backend);
    REQUIRE(b.data() == first);
    REQUIRE(backend->bytes_cached() == 0);
    REQUIRE(reinterpret_cast<std::uintptr_t>(b.data()) % hgad::tensor_alignment == 0);
    // A zero-filled tensor from a reused block is still zero-filled.
    hgad::Tensor<float> c({n}, backend);
    c.fill(1.0f);
  }
  hgad::Tensor<float> d({n}, backend);
  const std::vector<float> values = d.to_vector();
  REQUIRE(std::all_of(values.begin(), values.end(), [](float v) { return v == 0.0f; }));
  backend->release_cached();
  REQUIRE(backend->bytes_cached() == 0);
  backend->set_cache_limit(0);
  { hgad::Tensor<float> e({n}, backend); }
  REQUIRE(backend->bytes_cached() == 0);
}

TEMPLATE_TEST_CASE("CpuBackend sum_cols sums every column, with and without accumulation",
                   "[tensor]", float, double) {
  hgad::CpuBackend<TestType> backend;
  for (hgad::Index rows : {1, 7, 256, 1000}) {
    const hgad::Index cols = 37;
    const auto x = draw<TestType>(rows * cols, 6, -1, 1);
    std::vector<TestType> y(cols), z(cols, TestType(2));
    backend.sum_cols(rows, cols, x.data(), y.data(), false);
    backend.sum_cols(rows, cols, x.data(), z.data(), true);
    WorstError worst;
    for (hgad::Index j = 0; j < cols; ++j) {
      double s = 0;
      for (hgad::Index i = 0; i < rows; ++i) s += double(x[static_cast<std::size_t>(i * cols + j)]);
      worst.add(y[static_cast<std::size_t>(j)], s);
      worst.add(z[static_cast<std::size_t>(j)], s + 2);
    }
    INFO("rows " << rows);
    REQUIRE(worst.value() <= 64 * tolerance<TestType>());
  }
}

}  // namespace cpu_backend_test
