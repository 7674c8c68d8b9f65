#include <catch2/catch.hpp>

#include <hgad/autograd.hpp>

#include <algorithm>
#include <cmath>
#include <thread>
#include <type_traits>
#include <vector>

namespace graph_test {

namespace {

template <class T>
using V = hgad::Var<T>;
template <class T>
using Tn = hgad::Tensor<T>;

/// Requires every element of `t` to be finite and within 1e-5 (relative) of `expected`.
template <class T>
void require_all(const Tn<T>& t, const std::vector<double>& expected) {
  const std::vector<T> v = t.to_vector();
  REQUIRE(v.size() == expected.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    INFO("element " << i);
    REQUIRE(std::isfinite(double(v[i])));
    REQUIRE(double(v[i]) == Approx(expected[i]).epsilon(1e-5).margin(1e-6));
  }
}

std::vector<double> scaled(const std::vector<double>& v, double s) {
  std::vector<double> out(v);
  for (double& e : out) e *= s;
  return out;
}

const std::vector<double> w_values{0.5, -1.25, 2.0, 0.75, -0.5, 1.5};

}  // namespace

TEMPLATE_TEST_CASE("backward accumulates into leaf gradients until zero_grad", "[autograd]", float,
                   double) {
  auto w =
      V<TestType>::parameter(Tn<TestType>::from_vector({2, 3}, {0.5, -1.25, 2.0, 0.75, -0.5, 1.5}));
  REQUIRE(w.requires_grad());
  REQUIRE(w.is_leaf());
  REQUIRE_FALSE(w.has_grad());
  REQUIRE_THROWS_WITH(w.grad(), Catch::Contains("no gradient yet") && Catch::Contains("(2, 3)"));

  // L = sum w^2, dL/dw = 2 w.
  auto loss = hgad::sum(hgad::square(w));
  loss.backward();
  require_all(w.grad(), scaled(w_values, 2));
  // The same graph again: the gradient adds up.
  loss.backward();
  require_all(w.grad(), scaled(w_values, 4));
  // A new graph: it adds up too.
  hgad::sum(w * TestType(3)).backward();
  std::vector<double> expected = scaled(w_values, 4);
  for (double& e : expected) e += 3;
  require_all(w.grad(), expected);

  w.zero_grad();
  REQUIRE_FALSE(w.has_grad());
  loss.backward();
  require_all(w.grad(), scaled(w_values, 2));
}

TEMPLATE_TEST_CASE("ensure_grad gives a zero gradient that backward adds to", "[autograd]", float,
                   double) {
  auto w =
      V<TestType>::parameter(Tn<TestType>::from_vector({2, 3}, {0.5, -1.25, 2.0, 0.75, -0.5, 1.5}));
  Tn<TestType>& g = w.ensure_grad();
  REQUIRE(w.has_grad());
  REQUIRE(g.shape() == hgad::Shape{2, 3});
  require_all(g, std::vector<double>(6, 0.0));
  g.fill(TestType(1));
  hgad::sum(w).backward();
  require_all(w.grad(), std::vector<double>(6, 2.0));

  V<TestType> data(Tn<TestType>::ones({2}));
  REQUIRE_THROWS_WITH(data.ensure_grad(), Catch::Contains("does not require a gradient"));
}

TEMPLATE_TEST_CASE("Gradients of two leaves that received the same buffer stay independent",
                   "[autograd]", float, double) {
  auto a = V<TestType>::parameter(Tn<TestType>::zeros({3}));
  auto b = V<TestType>::parameter(Tn<TestType>::zeros({3}));
  auto y = a + b;
  y.backward(Tn<TestType>::full({3}, TestType(2)));
  a.grad().fill(TestType(7));
  require_all(b.grad(), {2, 2, 2});
  // The seed tensor is the caller's: later accumulation must not write into it.
  Tn<TestType> seed = Tn<TestType>::full({3}, TestType(1));
  auto z = hgad::reshape(a, {3});
  a.zero_grad();
  z.backward(seed);
  z.backward(seed);
  require_all(seed, {1, 1, 1});
  require_all(a.grad(), {2, 2, 2});
}

TEMPLATE_TEST_CASE("A Var used twice receives the sum of both gradients", "[autograd]", float,
                   double) {
  auto x = V<TestType>::parameter(Tn<TestType>::from_vector({3}, {1, 2, 3}));
  // y = x + x + x x: dy/dx = 2 + 2 x.
  auto y = hgad::sum(x + x + x * x);
  y.backward();
  require_all(x.grad(), {4, 6, 8});
  // Diamond: u = exp(x); L = sum(u u + u): dL/dx = (2 u + 1) u.
  x.zero_grad();
  auto u = hgad::exp(x);
  hgad::sum(u * u + u).backward();
  std::vector<double> expected;
  for (double v : {1.0, 2.0, 3.0}) expected.push_back((2 * std::exp(v) + 1) * std::exp(v));
  require_all(x.grad(), expected);
}

TEMPLATE_TEST_CASE("NoGradGuard builds no graph and nests", "[autograd]", float, double) {
  auto w = V<TestType>::parameter(Tn<TestType>::ones({2, 2}));
  REQUIRE(hgad::grad_enabled());
  {
    hgad::NoGradGuard outer;
    REQUIRE_FALSE(hgad::grad_enabled());
    auto y = hgad::sum(w * w);
    REQUIRE_FALSE(y.requires_grad());
    REQUIRE(y.item() == TestType(4));
    REQUIRE_THROWS_WITH(y.backward(), Catch::Contains("does not require a gradient"));
    {
      hgad::NoGradGuard inner;
      REQUIRE_FALSE(hgad::grad_enabled());
    }
    REQUIRE_FALSE(hgad::grad_enabled());
    // The flag is per thread: another thread records as usual.
    bool other_thread_records = false;
    std::thread([&] {
      other_thread_records = hgad::grad_enabled() && (w * w).requires_grad();
    }).join();
    REQUIRE(other_thread_records);
  }
  REQUIRE(hgad::grad_enabled());
  REQUIRE(hgad::sum(w * w).requires_grad());
  REQUIRE_FALSE(w.has_grad());
}

TEMPLATE_TEST_CASE("detach stops the gradient and shares the value", "[autograd]", float, double) {
  auto x = V<TestType>::parameter(Tn<TestType>::from_vector({3}, {1, 2, 3}));
  auto d = hgad::detach(x);
  REQUIRE_FALSE(d.requires_grad());
  REQUIRE(d.value().shares_storage(x.value()));
  // L = sum(x * detach(x)): dL/dx = detach(x), not 2 x.
  hgad::sum(x * d).backward();
  require_all(x.grad(), {1, 2, 3});
  // Ops on Vars that require no gradient build no graph.
  REQUIRE_FALSE(hgad::sum(d * d).requires_grad());
}

TEST_CASE("Gradients flow only to inputs that require them", "[autograd]") {
  V<double> x(Tn<double>::ones({4, 3}));
  auto w = V<double>::parameter(Tn<double>::ones({3, 2}));
  auto y = hgad::matmul(x, w);
  REQUIRE(y.requires_grad());
  REQUIRE_FALSE(y.is_leaf());
  hgad::sum(y).backward();
  REQUIRE_FALSE(x.has_grad());
  require_all(w.grad(), std::vector<double>(6, 4.0));
  // Intermediate gradients are released once used; leaves keep theirs.
  REQUIRE_FALSE(y.has_grad());
}

TEMPLATE_TEST_CASE("backward runs through a chain of 10,000 ops without recursion", "[autograd]",
                   float, double) {
  const int n_ops = 10000;
  auto x = V<TestType>::parameter(Tn<TestType>::from_vector({2}, {1, -1}));
  V<TestType> y = x;
  // Alternating scale and shift: y = 1.0001^5000 x + const, so dy/dx = 1.0001^5000 (about e^0.5).
  const TestType factor = TestType(1.0001);
  for (int i = 0; i < n_ops; ++i) y = i % 2 == 0 ? y * factor : y + TestType(0.001);
  hgad::sum(y).backward();
  const double slope = std::pow(double(factor), n_ops / 2);
  const std::vector<TestType> g = x.grad().to_vector();
  for (TestType e : g) {
    REQUIRE(std::isfinite(double(e)));
    // 5,000 roundings of float products drift by up to ~1e-4 relative.
    REQUIRE(double(e) == Approx(slope).epsilon(std::is_same_v<TestType, float> ? 1e-3 : 1e-10));
  }
  // Dropping the last handle releases the whole chain, also without recursion.
  y = V<TestType>();
  REQUIRE_FALSE(y.defined());
}

TEST_CASE("A graph of 200,000 nodes is destroyed without recursion", "[autograd]") {
#ifdef HGAD_SANITIZED
  const int n_ops = 50000;
#else
  const int n_ops = 200000;
#endif
  auto x = V<float>::parameter(Tn<float>::ones({1}));
  V<float> y = x;
  for (int i = 0; i < n_ops; ++i) y = hgad::neg(y);
  REQUIRE(y.item() == 1.0f);
  y.backward();
  REQUIRE(x.grad().item() == 1.0f);
}

TEST_CASE("backward checks its seed and its root", "[autograd]") {
  auto w = V<double>::parameter(Tn<double>::ones({2, 3}));
  auto y = w * 2.0;
  REQUIRE_THROWS_WITH(y.backward(), Catch::Contains("one-element") && Catch::Contains("(2, 3)"));
  REQUIRE_THROWS_WITH(y.backward(Tn<double>::ones({3, 2})),
                      Catch::Contains("(3, 2)") && Catch::Contains("(2, 3)"));
  y.backward(Tn<double>::ones({2, 3}));
  require_all(w.grad(), std::vector<double>(6, 2.0));
  // A leaf as the root receives the seed itself.
  auto s = V<double>::parameter(Tn<double>::full({}, 3.0));
  s.backward();
  REQUIRE(s.grad().item() == 1.0);
  V<double> null;
  REQUIRE_THROWS_WITH(null.value(), Catch::Contains("null"));
  REQUIRE_THROWS_WITH(hgad::exp(null), Catch::Contains("exp") && Catch::Contains("null"));
}

TEST_CASE("Op errors name the op and both shapes", "[autograd]") {
  V<float> a(Tn<float>::ones({7, 13})), b(Tn<float>::ones({5, 3}));
  REQUIRE_THROWS_AS(hgad::matmul(a, b), hgad::Error);
  REQUIRE_THROWS_WITH(hgad::matmul(a, b), Catch::Contains("matmul") && Catch::Contains("(7, 13)") &&
                                              Catch::Contains("(5, 3)"));
  REQUIRE_THROWS_WITH(hgad::matmul(a, V<float>(Tn<float>::ones({13}))), Catch::Contains("rank-2"));
  REQUIRE_THROWS_WITH(hgad::matmul(a, a, hgad::Transpose::no, hgad::Transpose::no),
                      Catch::Contains("(7, 13)") && Catch::Contains("inner"));
  REQUIRE_THROWS_WITH(
      a + b, Catch::Contains("add") && Catch::Contains("(7, 13)") && Catch::Contains("(5, 3)"));
  REQUIRE_THROWS_WITH(a - V<float>(Tn<float>::ones({7})),
                      Catch::Contains("sub") && Catch::Contains("(7)"));
  REQUIRE_THROWS_WITH(a * V<float>(Tn<float>::ones({13, 7})),
                      Catch::Contains("mul") && Catch::Contains("(13, 7)"));
  REQUIRE_THROWS_WITH(a / V<float>(Tn<float>::ones({1, 7})),
                      Catch::Contains("div") && Catch::Contains("(1, 7)"));
  // sub and div do not broadcast their first operand.
  REQUIRE_THROWS_WITH(V<float>(Tn<float>::ones({13})) - a,
                      Catch::Contains("sub") && Catch::Contains("(13)"));
  REQUIRE_THROWS_WITH(
      hgad::concat_cols(std::vector<V<float>>{a, b}),
      Catch::Contains("concat_cols") && Catch::Contains("(7, 13)") && Catch::Contains("(5, 3)"));
  REQUIRE_THROWS_WITH(hgad::concat_cols(std::vector<V<float>>{}), Catch::Contains("concat_cols"));
  REQUIRE_THROWS_WITH(hgad::slice_cols(a, 3, 14),
                      Catch::Contains("slice_cols") && Catch::Contains("(7, 13)"));
  REQUIRE_THROWS_WITH(hgad::split_cols(a, {3, 4}),
                      Catch::Contains("split_cols") && Catch::Contains("(7, 13)"));
  REQUIRE_THROWS_WITH(hgad::gather_rows(a, {0, 7}), Catch::Contains("gather_rows") &&
                                                        Catch::Contains("index 7") &&
                                                        Catch::Contains("(7, 13)"));
  REQUIRE_THROWS_WITH(hgad::reshape(a, {5, 5}),
                      Catch::Contains("reshape") && Catch::Contains("(5, 5)"));
  REQUIRE_THROWS_WITH(hgad::sum_rows(V<float>(Tn<float>::ones({4}))),
                      Catch::Contains("sum_rows") && Catch::Contains("(4)"));
  REQUIRE_THROWS_WITH(hgad::softplus(a, 0.0f),
                      Catch::Contains("softplus") && Catch::Contains("beta"));
  REQUIRE_THROWS_WITH(
      hgad::linear(a, V<float>(Tn<float>::ones({13, 2})), V<float>(Tn<float>::ones({3}))),
      Catch::Contains("linear") && Catch::Contains("(3)"));
}

TEST_CASE("gradcheck reports a wrong gradient with the worst entries", "[autograd]") {
  hgad::Rng rng(5);
  // x * detach(x) differentiates as x, while the finite difference sees 2 x.
  const auto result =
      hgad::gradcheck([](const auto& in) { return in[0] * hgad::detach(in[0]); },
                      {hgad::Tensor<double>::randn({3, 4}, rng)}, {1e-6, 1e-7, 1e-5, 3});
  REQUIRE_FALSE(result.ok);
  REQUIRE(std::isfinite(result.max_abs_error));
  REQUIRE(result.max_abs_error > 0.1);
  INFO(result.log);
  REQUIRE_THAT(result.log,
               Catch::Contains("FAILED") && Catch::Contains("input 0 (3, 4) element ["));
  // Three entries are logged, one line each, after the summary line.
  REQUIRE(std::count(result.log.begin(), result.log.end(), '\n') == 4);

  const auto good = hgad::gradcheck(
      [](const auto& in) { return hgad::sum(hgad::exp(in[0]) * in[1]); },
      {hgad::Tensor<double>::randn({3, 4}, rng), hgad::Tensor<double>::randn({4}, rng)});
  INFO(good.log);
  REQUIRE(good.ok);
  REQUIRE(good.max_abs_error < 1e-7);
  REQUIRE_THAT(good.log, Catch::Contains("passed"));
  // An input the function ignores has a zero gradient on both sides.
  REQUIRE(hgad::gradcheck(
              [](const auto& in) { return in[0] * 2.0; },
              {hgad::Tensor<double>::randn({2}, rng), hgad::Tensor<double>::randn({2}, rng)})
              .ok);
}

}  // namespace graph_test
