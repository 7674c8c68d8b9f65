#include <catch2/catch.hpp>

#include <hgad/autograd.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

namespace ops_test {

namespace {

using hgad::Index;
using hgad::Shape;
using hgad::Transpose;
template <class T>
using V = hgad::Var<T>;
template <class T>
using Tn = hgad::Tensor<T>;
using Values = std::vector<double>;

/// Deterministic values in [lo, hi), drawn in double and shared by the float and double tests.
Values draw(Index n, std::uint64_t seed, double lo = -2, double hi = 2) {
  hgad::Rng rng(seed);
  Values v(static_cast<std::size_t>(n));
  for (double& x : v) x = rng.uniform(lo, hi);
  return v;
}

template <class T>
Tn<T> tensor(Shape shape, const Values& v) {
  return Tn<T>::from_vector(shape, std::vector<T>(v.begin(), v.end()));
}

/// The values a T tensor actually holds, in double, so references start from the same inputs.
template <class T>
Values held(const Tn<T>& t) {
  const std::vector<T> v = t.to_vector();
  return Values(v.begin(), v.end());
}

template <class T>
double tolerance() {
  return std::is_same_v<T, float> ? 2e-5 : 1e-12;
}

/// Requires `got` to have `shape`, finite elements, and each within tolerance * (1 + |expected|).
template <class T>
void require_values(const Tn<T>& got, const Shape& shape, const Values& expected,
                    double scale = 1) {
  REQUIRE(got.shape() == shape);
  const std::vector<T> g = got.to_vector();
  REQUIRE(g.size() == expected.size());
  double worst = 0;
  std::size_t worst_at = 0;
  bool finite = true;
  for (std::size_t i = 0; i < g.size(); ++i) {
    finite = finite && std::isfinite(double(g[i])) && std::isfinite(expected[i]);
    const double error = std::abs(double(g[i]) - expected[i]) / (1 + std::abs(expected[i]));
    if (error > worst) {
      worst = error;
      worst_at = i;
    }
  }
  INFO("worst relative error " << worst << " at element " << worst_at << ": got "
                               << double(g[worst_at]) << ", expected " << expected[worst_at]);
  REQUIRE(finite);
  REQUIRE(worst <= scale * tolerance<T>());
}

using Fn = std::function<V<double>(const std::vector<V<double>>&)>;

void require_gradcheck(const Fn& f, std::vector<Tn<double>> inputs,
                       hgad::GradcheckOptions options = {}) {
  const hgad::GradcheckResult result = hgad::gradcheck(f, std::move(inputs), options);
  INFO(result.log);
  REQUIRE(std::isfinite(result.max_abs_error));
  REQUIRE(result.ok);
}

Tn<double> input(Shape shape, std::uint64_t seed, double lo = -2, double hi = 2) {
  return tensor<double>(shape, draw(shape.numel(), seed, lo, hi));
}

constexpr Index R = 7, C = 13;

}  // namespace

// ---------------------------------------------------------------------------------------------
// matmul and linear
// ---------------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("matmul matches a naive triple loop for every transpose combination",
                   "[autograd]", float, double) {
  const Index m = 7, k = 13, n = 5;
  for (Transpose ta : {Transpose::no, Transpose::yes}) {
    for (Transpose tb : {Transpose::no, Transpose::yes}) {
      const bool a_t = ta == Transpose::yes, b_t = tb == Transpose::yes;
      const Shape sa = a_t ? Shape{k, m} : Shape{m, k}, sb = b_t ? Shape{n, k} : Shape{k, n};
      const auto A = tensor<TestType>(sa, draw(m * k, 1)), B = tensor<TestType>(sb, draw(k * n, 2));
      const Values a = held(A), b = held(B);
      Values expected(static_cast<std::size_t>(m * n), 0.0);
      for (Index i = 0; i < m; ++i)
        for (Index j = 0; j < n; ++j)
          for (Index p = 0; p < k; ++p) {
            const double aip = a_t ? a[p * m + i] : a[i * k + p];
            const double bpj = b_t ? b[j * k + p] : b[p * n + j];
            expected[i * n + j] += aip * bpj;
          }
      INFO("transposes " << a_t << b_t);
      require_values(hgad::matmul(V<TestType>(A), V<TestType>(B), ta, tb).value(), Shape{m, n},
                     expected, 4);
    }
  }
}

TEST_CASE("matmul passes gradcheck for every transpose combination", "[autograd]") {
  const Index m = 7, k = 13, n = 5;
  for (Transpose ta : {Transpose::no, Transpose::yes}) {
    for (Transpose tb : {Transpose::no, Transpose::yes}) {
      const Shape sa = ta == Transpose::yes ? Shape{k, m} : Shape{m, k};
      const Shape sb = tb == Transpose::yes ? Shape{n, k} : Shape{k, n};
      require_gradcheck([ta, tb](const auto& in) { return hgad::matmul(in[0], in[1], ta, tb); },
                        {input(sa, 3), input(sb, 4)});
    }
  }
  // A product of a Var with itself sends two gradients to one node.
  require_gradcheck([](const auto& in) { return hgad::matmul(in[0], in[0], Transpose::yes); },
                    {input({R, 5}, 5)});
}

TEMPLATE_TEST_CASE("linear matches a naive x W + b", "[autograd]", float, double) {
  const Index n = 9, d = 13, k = 5;
  const auto X = tensor<TestType>({n, d}, draw(n * d, 6)),
             W = tensor<TestType>({d, k}, draw(d * k, 7));
  const auto B = tensor<TestType>({k}, draw(k, 8));
  const Values x = held(X), w = held(W), b = held(B);
  Values expected(static_cast<std::size_t>(n * k));
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < k; ++j) {
      double s = b[j];
      for (Index p = 0; p < d; ++p) s += x[i * d + p] * w[p * k + j];
      expected[i * k + j] = s;
    }
  require_values(hgad::linear(V<TestType>(X), V<TestType>(W), V<TestType>(B)).value(), Shape{n, k},
                 expected, 4);
  require_values(
      hgad::linear(V<TestType>(X), V<TestType>(W), V<TestType>(B.reshape({1, k}))).value(),
      Shape{n, k}, expected, 4);
}

TEST_CASE("linear passes gradcheck with a (K,) and a (1, K) bias", "[autograd]") {
  require_gradcheck([](const auto& in) { return hgad::linear(in[0], in[1], in[2]); },
                    {input({9, C}, 9), input({C, 5}, 10), input({5}, 11)});
  require_gradcheck([](const auto& in) { return hgad::tanh(hgad::linear(in[0], in[1], in[2])); },
                    {input({9, C}, 12), input({C, 5}, 13), input({1, 5}, 14)});
}

// ---------------------------------------------------------------------------------------------
// Element-wise binary ops and broadcasting
// ---------------------------------------------------------------------------------------------

namespace {

struct BinaryCase {
  const char* name;
  double (*ref)(double, double);
};

const BinaryCase binary_cases[] = {
    {"add", [](double a, double b) { return a + b; }},
    {"sub", [](double a, double b) { return a - b; }},
    {"mul", [](double a, double b) { return a * b; }},
    {"div", [](double a, double b) { return a / b; }},
};

template <class T>
V<T> apply_binary(const std::string& name, const V<T>& a, const V<T>& b) {
  if (name == "add") return a + b;
  if (name == "sub") return a - b;
  if (name == "mul") return a * b;
  return a / b;
}

/// The shapes b may have against a (R, C) a, and where b's element for a(i, j) sits.
struct Layout {
  const char* name;
  Shape shape;
  Index (*at)(Index i, Index j);
};

const Layout layouts[] = {
    {"same", Shape{R, C}, [](Index i, Index j) { return i * C + j; }},
    {"row (C,)", Shape{C}, [](Index, Index j) { return j; }},
    {"row (1, C)", Shape{1, C}, [](Index, Index j) { return j; }},
    {"col (R, 1)", Shape{R, 1}, [](Index i, Index) { return i; }},
};

}  // namespace

TEMPLATE_TEST_CASE("add, sub, mul and div match naive loops with every broadcast layout",
                   "[autograd]", float, double) {
  const auto A = tensor<TestType>({R, C}, draw(R * C, 20));
  const Values a = held(A);
  for (const Layout& layout : layouts) {
    // b in [0.5, 2) keeps the division well conditioned.
    const auto B = tensor<TestType>(layout.shape, draw(layout.shape.numel(), 21, 0.5, 2));
    const Values b = held(B);
    for (const BinaryCase& op : binary_cases) {
      Values expected(static_cast<std::size_t>(R * C));
      for (Index i = 0; i < R; ++i)
        for (Index j = 0; j < C; ++j)
          expected[i * C + j] = op.ref(a[i * C + j], b[layout.at(i, j)]);
      INFO(op.name << " with b " << layout.name);
      require_values(apply_binary(op.name, V<TestType>(A), V<TestType>(B)).value(), Shape{R, C},
                     expected);
      if (std::string(op.name) == "add" || std::string(op.name) == "mul") {
        INFO("broadcast operand first");
        require_values(apply_binary(op.name, V<TestType>(B), V<TestType>(A)).value(), Shape{R, C},
                       expected);
      }
    }
  }
}

TEST_CASE("add, sub, mul and div pass gradcheck with every broadcast layout", "[autograd]") {
  for (const Layout& layout : layouts) {
    for (const BinaryCase& op : binary_cases) {
      const std::string name = op.name;
      INFO(name << " with b " << layout.name);
      require_gradcheck([name](const auto& in) { return apply_binary(name, in[0], in[1]); },
                        {input({R, C}, 22), input(layout.shape, 23, 0.5, 2)});
      // Only one operand requiring a gradient: the other is a constant.
      require_gradcheck([name, b = input(layout.shape, 24, 0.5, 2)](
                            const auto& in) { return apply_binary(name, in[0], V<double>(b)); },
                        {input({R, C}, 25)});
      require_gradcheck([name, a = input({R, C}, 26)](
                            const auto& in) { return apply_binary(name, V<double>(a), in[0]); },
                        {input(layout.shape, 27, 0.5, 2)});
    }
    require_gradcheck([](const auto& in) { return in[1] + in[0]; },
                      {input({R, C}, 28), input(layout.shape, 29)});
    require_gradcheck([](const auto& in) { return in[1] * in[0]; },
                      {input({R, C}, 30), input(layout.shape, 31)});
  }
  // The same Var on both sides.
  require_gradcheck(
      [](const auto& in) { return in[0] * in[0] + in[0] - in[0] / (in[0] * in[0] + 3.0); },
      {input({R, C}, 32)});
}

TEMPLATE_TEST_CASE("Scalar ops and operators match naive loops", "[autograd]", float, double) {
  const auto A = tensor<TestType>({R, C}, draw(R * C, 40, 0.5, 2));
  const Values a = held(A);
  const V<TestType> x(A);
  const TestType s = TestType(1.75);
  const double sd = double(s);
  struct Case {
    const char* name;
    V<TestType> y;
    std::function<double(double)> ref;
  };
  const Case cases[] = {
      {"add(a, s)", hgad::add(x, s), [&](double v) { return v + sd; }},
      {"mul(a, s)", hgad::mul(x, s), [&](double v) { return v * sd; }},
      {"a + s", x + s, [&](double v) { return v + sd; }},
      {"s + a", s + x, [&](double v) { return sd + v; }},
      {"a - s", x - s, [&](double v) { return v - sd; }},
      {"s - a", s - x, [&](double v) { return sd - v; }},
      {"a * s", x * s, [&](double v) { return v * sd; }},
      {"s * a", s * x, [&](double v) { return sd * v; }},
      {"a / s", x / s, [&](double v) { return v / sd; }},
      {"s / a", s / x, [&](double v) { return sd / v; }},
      {"-a", -x, [](double v) { return -v; }},
      {"a * 2 (int)", x * 2, [](double v) { return 2 * v; }},
  };
  for (const Case& c : cases) {
    Values expected(a.size());
    for (std::size_t i = 0; i < a.size(); ++i) expected[i] = c.ref(a[i]);
    INFO(c.name);
    require_values(c.y.value(), Shape{R, C}, expected);
  }
}

TEST_CASE("Scalar ops and operators pass gradcheck", "[autograd]") {
  require_gradcheck([](const auto& in) { return hgad::add(in[0], 0.3) * hgad::mul(in[0], -1.5); },
                    {input({R, C}, 41)});
  require_gradcheck(
      [](const auto& in) { return (2.0 - in[0]) * (in[0] - 0.5) + 3.0 * in[0] + in[0] * 0.25; },
      {input({R, C}, 42)});
  require_gradcheck(
      [](const auto& in) { return 1.5 / in[0] + in[0] / 4.0 + (1.0 + in[0]) + (-in[0]); },
      {input({R, C}, 43, 0.5, 2)});
}

// ---------------------------------------------------------------------------------------------
// Element-wise maps
// ---------------------------------------------------------------------------------------------

namespace {

struct UnaryCase {
  const char* name;
  double lo, hi;
  double (*ref)(double);
};

const UnaryCase unary_cases[] = {
    {"neg", -3, 3, [](double x) { return -x; }},
    {"exp", -3, 3, [](double x) { return std::exp(x); }},
    {"log", 0.25, 4, [](double x) { return std::log(x); }},
    {"reciprocal", 0.25, 4, [](double x) { return 1 / x; }},
    {"tanh", -3, 3, [](double x) { return std::tanh(x); }},
    {"sigmoid", -30, 30, [](double x) { return 1 / (1 + std::exp(-x)); }},
    // PyTorch's definition: ln(1 + e^{beta x}) / beta, and x itself where beta x > 20.
    {"softplus", -30, 30, [](double x) { return x > 20 ? x : std::log(1 + std::exp(x)); }},
    {"softplus beta 0.5", -60, 60,
     [](double x) { return 0.5 * x > 20 ? x : std::log(1 + std::exp(0.5 * x)) / 0.5; }},
    {"softplus beta 3", -10, 10,
     [](double x) { return 3 * x > 20 ? x : std::log(1 + std::exp(3 * x)) / 3; }},
    {"relu", -3, 3, [](double x) { return x > 0 ? x : 0.0; }},
    {"square", -3, 3, [](double x) { return x * x; }},
};

template <class T>
V<T> apply_unary(const std::string& name, const V<T>& a) {
  if (name == "neg") return hgad::neg(a);
  if (name == "exp") return hgad::exp(a);
  if (name == "log") return hgad::log(a);
  if (name == "reciprocal") return hgad::reciprocal(a);
  if (name == "tanh") return hgad::tanh(a);
  if (name == "sigmoid") return hgad::sigmoid(a);
  if (name == "softplus") return hgad::softplus(a);
  if (name == "softplus beta 0.5") return hgad::softplus(a, 0.5);
  if (name == "softplus beta 3") return hgad::softplus(a, 3);
  if (name == "relu") return hgad::relu(a);
  return hgad::square(a);
}

}  // namespace

TEMPLATE_TEST_CASE("Element-wise maps match naive loops", "[autograd]", float, double) {
  for (const UnaryCase& op : unary_cases) {
    const auto A = tensor<TestType>({R, C}, draw(R * C, 50, op.lo, op.hi));
    const Values a = held(A);
    Values expected(a.size());
    for (std::size_t i = 0; i < a.size(); ++i) expected[i] = op.ref(a[i]);
    INFO(op.name);
    require_values(apply_unary(op.name, V<TestType>(A)).value(), Shape{R, C}, expected);
  }
}

TEST_CASE("Element-wise maps pass gradcheck", "[autograd]") {
  for (const UnaryCase& op : unary_cases) {
    const std::string name = op.name;
    INFO(name);
    // Inputs narrowed to where the central difference is accurate (|x| <= 10 keeps e^x moderate).
    const double lo = std::max(op.lo, -8.0), hi = std::min(op.hi, 8.0);
    require_gradcheck([name](const auto& in) { return apply_unary(name, in[0]); },
                      {input({R, C}, 51, lo, hi)});
  }
  // Both sides of softplus' linear switch at beta x = 20, and rank 1 and rank 3 inputs.
  require_gradcheck([](const auto& in) { return hgad::softplus(in[0], 2.0); },
                    {input({C}, 52, 5, 15)});
  require_gradcheck([](const auto& in) { return hgad::sigmoid(hgad::tanh(in[0])); },
                    {input({3, 2, 5}, 53)});
}

TEMPLATE_TEST_CASE("softplus and sigmoid stay finite and exact for large inputs", "[autograd]",
                   float, double) {
  const auto A = Tn<TestType>::from_vector(
      {4}, {TestType(-1e4), TestType(-100), TestType(100), TestType(1e4)});
  auto x = V<TestType>::parameter(A);
  auto y = hgad::softplus(x, TestType(0.5));
  const std::vector<TestType> v = y.value().to_vector();
  for (TestType e : v) REQUIRE(std::isfinite(double(e)));
  REQUIRE(double(v[0]) == Approx(0.0).margin(1e-30));
  REQUIRE(double(v[2]) == Approx(100.0));
  REQUIRE(double(v[3]) == Approx(1e4));
  hgad::sum(y).backward();
  const std::vector<TestType> g = x.grad().to_vector();
  for (TestType e : g) REQUIRE(std::isfinite(double(e)));
  REQUIRE(double(g[0]) == Approx(0.0).margin(1e-30));
  REQUIRE(double(g[2]) == Approx(1.0));
  REQUIRE(double(g[3]) == Approx(1.0));
  const std::vector<TestType> s = hgad::sigmoid(V<TestType>(A)).value().to_vector();
  REQUIRE(double(s[0]) == Approx(0.0).margin(1e-30));
  REQUIRE(double(s[3]) == Approx(1.0));
}

// ---------------------------------------------------------------------------------------------
// Reductions and row-wise softmax
// ---------------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("sum, mean, sum_rows and mean_rows match naive loops", "[autograd]", float,
                   double) {
  const auto A = tensor<TestType>({R, C}, draw(R * C, 60));
  const Values a = held(A);
  double total = 0;
  Values rows(R, 0.0), row_means(R);
  for (Index i = 0; i < R; ++i) {
    for (Index j = 0; j < C; ++j) rows[i] += a[i * C + j];
    row_means[i] = rows[i] / C;
    total += rows[i];
  }
  const V<TestType> x(A);
  require_values(hgad::sum(x).value(), Shape{}, {total}, 4);
  require_values(hgad::mean(x).value(), Shape{}, {total / (R * C)}, 4);
  require_values(hgad::sum_rows(x).value(), Shape{R}, rows);
  require_values(hgad::mean_rows(x).value(), Shape{R}, row_means);
  require_values(hgad::sum(V<TestType>(A.reshape({91}))).value(), Shape{}, {total}, 4);
}

TEST_CASE("sum, mean, sum_rows and mean_rows pass gradcheck", "[autograd]") {
  require_gradcheck([](const auto& in) { return hgad::sum(in[0]); }, {input({R, C}, 61)});
  require_gradcheck([](const auto& in) { return hgad::mean(in[0]); }, {input({R, C}, 62)});
  require_gradcheck([](const auto& in) { return hgad::sum(in[0]) * hgad::mean(in[0]); },
                    {input({C}, 63)});
  require_gradcheck([](const auto& in) { return hgad::sum_rows(in[0]); }, {input({R, C}, 64)});
  require_gradcheck([](const auto& in) { return hgad::mean_rows(in[0]); }, {input({R, C}, 65)});
  require_gradcheck(
      [](const auto& in) { return hgad::mean_rows(hgad::square(in[0])) * hgad::sum_rows(in[0]); },
      {input({R, C}, 66)});
}

TEMPLATE_TEST_CASE(
    "logsumexp_rows, log_softmax_rows and softmax_rows match naive long double loops", "[autograd]",
    float, double) {
  // Rows near 1000 overflow e^x in double without the max shift; long double holds e^1000.
  for (double offset : {0.0, 1000.0, -1000.0}) {
    Values v = draw(R * C, 70, -3, 3);
    for (double& e : v) e += offset;
    const auto A = tensor<TestType>({R, C}, v);
    const Values a = held(A);
    Values lse(R), log_softmax(a.size()), softmax(a.size());
    for (Index i = 0; i < R; ++i) {
      long double s = 0;
      for (Index j = 0; j < C; ++j) s += std::exp(static_cast<long double>(a[i * C + j]));
      lse[i] = static_cast<double>(std::log(s));
      for (Index j = 0; j < C; ++j) {
        log_softmax[i * C + j] = static_cast<double>(a[i * C + j] - std::log(s));
        softmax[i * C + j] =
            static_cast<double>(std::exp(static_cast<long double>(a[i * C + j])) / s);
      }
    }
    INFO("offset " << offset);
    const V<TestType> x(A);
    // Relative to 1 + |1000|: float rounding of the shifted sum is scaled by the offset.
    require_values(hgad::logsumexp_rows(x).value(), Shape{R}, lse, 2);
    require_values(hgad::log_softmax_rows(x).value(), Shape{R, C}, log_softmax, 2);
    require_values(hgad::softmax_rows(x).value(), Shape{R, C}, softmax, 2);
  }
}

TEST_CASE("logsumexp_rows, log_softmax_rows and softmax_rows pass gradcheck", "[autograd]") {
  require_gradcheck([](const auto& in) { return hgad::logsumexp_rows(in[0]); },
                    {input({R, C}, 71)});
  require_gradcheck([](const auto& in) { return hgad::logsumexp_rows(in[0]); },
                    {input({R, C}, 72, 995, 1000)});
  require_gradcheck([](const auto& in) { return hgad::log_softmax_rows(in[0]); },
                    {input({R, C}, 73)});
  require_gradcheck([](const auto& in) { return hgad::softmax_rows(in[0]); }, {input({R, C}, 74)});
  // Two uses of one input: the second gradient accumulates into the first.
  require_gradcheck(
      [](const auto& in) { return hgad::softmax_rows(in[0]) * hgad::log_softmax_rows(in[0]); },
      {input({R, C}, 75)});
}

// ---------------------------------------------------------------------------------------------
// Columns, rows and shapes
// ---------------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("concat_cols, slice_cols and split_cols match naive copies", "[autograd]", float,
                   double) {
  const auto A = tensor<TestType>({R, 3}, draw(R * 3, 80)),
             B = tensor<TestType>({R, 10}, draw(R * 10, 81));
  const Values a = held(A), b = held(B);
  Values expected;
  for (Index i = 0; i < R; ++i) {
    for (Index j = 0; j < 3; ++j) expected.push_back(a[i * 3 + j]);
    for (Index j = 0; j < 10; ++j) expected.push_back(b[i * 10 + j]);
  }
  const auto joined = hgad::concat_cols(std::vector<V<TestType>>{V<TestType>(A), V<TestType>(B)});
  require_values(joined.value(), Shape{R, C}, expected, 0);

  Values middle;
  for (Index i = 0; i < R; ++i)
    for (Index j = 2; j < 7; ++j) middle.push_back(expected[i * C + j]);
  require_values(hgad::slice_cols(joined, 2, 7).value(), Shape{R, 5}, middle, 0);

  const auto parts = hgad::split_cols(joined, {3, 0, 10});
  REQUIRE(parts.size() == 3);
  require_values(parts[0].value(), Shape{R, 3}, a, 0);
  REQUIRE(parts[1].shape() == Shape{R, 0});
  require_values(parts[2].value(), Shape{R, 10}, b, 0);
}

TEST_CASE("concat_cols, slice_cols and split_cols pass gradcheck", "[autograd]") {
  require_gradcheck(
      [](const auto& in) {
        return hgad::concat_cols(std::vector<V<double>>{in[0], in[1], in[0]});
      },
      {input({R, 3}, 82), input({R, 10}, 83)});
  require_gradcheck([](const auto& in) { return hgad::slice_cols(in[0], 4, 9); },
                    {input({R, C}, 84)});
  require_gradcheck(
      [](const auto& in) {
        const auto parts = hgad::split_cols(in[0], {5, 8});
        return hgad::concat_cols(std::vector<V<double>>{parts[1] * parts[1], hgad::tanh(parts[0])});
      },
      {input({R, C}, 85)});
  // A constant block in a concatenation gets no gradient and blocks none.
  require_gradcheck(
      [c = input({R, 2}, 86)](const auto& in) {
        return hgad::concat_cols(std::vector<V<double>>{V<double>(c), in[0]});
      },
      {input({R, 4}, 87)});
}

TEMPLATE_TEST_CASE("gather_rows picks rows by index, repeats included", "[autograd]", float,
                   double) {
  const auto A = tensor<TestType>({5, C}, draw(5 * C, 90));
  const Values a = held(A);
  const std::vector<std::int64_t> index{4, 0, 4, 2, 2, 2, 1};
  Values expected;
  for (std::int64_t r : index)
    for (Index j = 0; j < C; ++j) expected.push_back(a[r * C + j]);
  require_values(hgad::gather_rows(V<TestType>(A), index).value(), Shape{7, C}, expected, 0);
}

TEST_CASE("gather_rows passes gradcheck with repeated and missing indices", "[autograd]") {
  require_gradcheck(
      [](const auto& in) {
        return hgad::gather_rows(in[0], {4, 0, 4, 2, 2, 2, 1});
      },
      {input({6, C}, 91)});
  require_gradcheck([](const auto& in) { return hgad::gather_rows(in[0], {}); },
                    {input({3, 2}, 92)});
}

TEMPLATE_TEST_CASE("reshape and detach keep the values", "[autograd]", float, double) {
  const auto A = tensor<TestType>({R, C}, draw(R * C, 95));
  const Values a = held(A);
  const V<TestType> x(A);
  require_values(hgad::reshape(x, {C, R}).value(), Shape{C, R}, a, 0);
  require_values(hgad::reshape(x, {R * C}).value(), Shape{R * C}, a, 0);
  require_values(hgad::detach(x).value(), Shape{R, C}, a, 0);
}

TEST_CASE("reshape passes gradcheck", "[autograd]") {
  require_gradcheck(
      [](const auto& in) {
        return hgad::matmul(hgad::reshape(in[0], {C, R}), in[0]);
      },
      {input({R, C}, 96)});
}

TEST_CASE("A small network passes gradcheck end to end", "[autograd]") {
  // mean_i [ lse_k(tanh(x W1 + b1) W2)_ik - (tanh(x W1 + b1) W2)_{i, label_i} ]: a softmax
  // cross-entropy with labels picked by gather_rows on the transposed logits.
  require_gradcheck(
      [](const auto& in) {
        const auto hidden = hgad::tanh(hgad::linear(in[0], in[1], in[2]));
        const auto logits = hgad::matmul(hidden, in[3]);  // (9, 3)
        const auto picked =
            hgad::gather_rows(hgad::reshape(logits, {27, 1}), {0, 4, 8, 9, 13, 17, 18, 22, 26});
        return hgad::mean(hgad::logsumexp_rows(logits) - hgad::reshape(picked, {9}));
      },
      {input({9, 5}, 97), input({5, 11}, 98), input({11}, 99), input({11, 3}, 100)});
}

}  // namespace ops_test
