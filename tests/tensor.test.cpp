#include <catch2/catch.hpp>

#include <hgad/tensor.hpp>

#include <cmath>

namespace tensor_test {

TEMPLATE_TEST_CASE("Tensor stores row-major elements and reports its shape", "[tensor]", float, double) {
  hgad::Tensor<TestType> t({2, 3, 4});
  REQUIRE(t.rank() == 3);
  REQUIRE(t.numel() == 24);
  REQUIRE(t.rows() == 2);
  REQUIRE(t.cols() == 12);
  REQUIRE(t.stride(0) == 12);
  REQUIRE(t.stride(1) == 4);
  REQUIRE(t.stride(2) == 1);
  for (hgad::Index i = 0; i < 24; ++i) t.data()[i] = TestType(i);
  REQUIRE(t(1, 2, 3) == TestType(23));
  REQUIRE(t(1, 0, 1) == TestType(13));
  REQUIRE(reinterpret_cast<std::uintptr_t>(t.data()) % hgad::tensor_alignment == 0);
}

TEMPLATE_TEST_CASE("Tensor reshape and slice are views that share storage", "[tensor]", float, double) {
  hgad::Rng rng(3);
  auto t = hgad::Tensor<TestType>::randn({5, 4}, rng);
  auto flat = t.reshape({20});
  auto rows = t.slice(1, 3);
  REQUIRE(flat.shares_storage(t));
  REQUIRE(rows.shape() == hgad::Shape{2, 4});
  rows(1, 2) = TestType(42);
  REQUIRE(t(2, 2) == TestType(42));
  REQUIRE(flat(10) == TestType(42));
  auto copy = t.clone();
  copy(0, 0) = TestType(-1);
  REQUIRE(t(0, 0) != TestType(-1));
}

TEST_CASE("Tensor errors name the operation and the shapes", "[tensor]") {
  hgad::Tensor<float> t({3, 4});
  REQUIRE_THROWS_WITH(t(3, 0), Catch::Contains("index 3") && Catch::Contains("(3, 4)"));
  REQUIRE_THROWS_WITH(t(0), Catch::Contains("1 indices") && Catch::Contains("(3, 4)"));
  REQUIRE_THROWS_WITH(t.reshape({5, 3}), Catch::Contains("reshape") && Catch::Contains("(5, 3)"));
  REQUIRE_THROWS_WITH(t.slice(2, 5), Catch::Contains("slice") && Catch::Contains("(3, 4)"));
  REQUIRE_THROWS_AS(hgad::Tensor<float>({1, 2, 3, 4, 5}), std::invalid_argument);
  REQUIRE_THROWS_AS(hgad::Tensor<float>::from_vector({2, 2}, {1.f, 2.f}), hgad::Error);
}

TEST_CASE("Rng draws are reproducible for a seed and look standard normal", "[tensor]") {
  hgad::Rng a(7), b(7), c(8);
  auto x = hgad::Tensor<double>::randn({10000}, a);
  auto y = hgad::Tensor<double>::randn({10000}, b);
  auto z = hgad::Tensor<double>::randn({10000}, c);
  REQUIRE(x.to_vector() == y.to_vector());
  REQUIRE(x.to_vector() != z.to_vector());
  const double mean = x.as_vector().mean();
  const double var = (x.as_vector().array() - mean).square().mean();
  REQUIRE(std::abs(mean) < 0.03);
  REQUIRE(std::abs(var - 1.0) < 0.05);
}

TEMPLATE_TEST_CASE("Tensor as_matrix feeds Eigen GEMM", "[tensor]", float, double) {
  hgad::Rng rng(1);
  auto a = hgad::Tensor<TestType>::randn({7, 13}, rng);
  auto b = hgad::Tensor<TestType>::randn({13, 5}, rng);
  hgad::Tensor<TestType> c({7, 5});
  c.as_matrix().noalias() = a.as_matrix() * b.as_matrix();
  for (int i = 0; i < 7; ++i)
    for (int j = 0; j < 5; ++j) {
      double ref = 0;
      for (int k = 0; k < 13; ++k) ref += double(a(i, k)) * double(b(k, j));
      REQUIRE(std::isfinite(double(c(i, j))));
      REQUIRE(double(c(i, j)) == Approx(ref).epsilon(1e-5).margin(1e-5));
    }
}

TEMPLATE_TEST_CASE("Tensor factories fill the values they name", "[tensor]", float, double) {
  auto e = hgad::Tensor<TestType>::empty({3, 5});
  REQUIRE(e.shape() == hgad::Shape{3, 5});
  REQUIRE(reinterpret_cast<std::uintptr_t>(e.data()) % hgad::tensor_alignment == 0);
  for (TestType v : hgad::Tensor<TestType>::zeros({2, 3}).to_vector()) REQUIRE(v == TestType(0));
  for (TestType v : hgad::Tensor<TestType>({4}).to_vector()) REQUIRE(v == TestType(0));
  for (TestType v : hgad::Tensor<TestType>::ones({2, 3}).to_vector()) REQUIRE(v == TestType(1));
  for (TestType v : hgad::Tensor<TestType>::full({7}, TestType(2.5)).to_vector()) REQUIRE(v == TestType(2.5));
  e.fill(TestType(-3));
  for (TestType v : e.to_vector()) REQUIRE(v == TestType(-3));
  e.set_zero();
  for (TestType v : e.to_vector()) REQUIRE(v == TestType(0));

  hgad::Rng a(11), b(11);
  auto u = hgad::Tensor<TestType>::uniform({1000}, a, TestType(-2), TestType(3));
  REQUIRE(u.to_vector() == hgad::Tensor<TestType>::uniform({1000}, b, TestType(-2), TestType(3)).to_vector());
  for (TestType v : u.to_vector()) {
    REQUIRE(v >= TestType(-2));
    REQUIRE(v <= TestType(3));
  }
  hgad::Rng c(12);
  auto n = hgad::Tensor<TestType>::randn({20000}, c, TestType(5), TestType(0.5));
  const double mean = double(n.as_vector().mean());
  REQUIRE(std::abs(mean - 5.0) < 0.02);
}

TEMPLATE_TEST_CASE("Tensor copies values in and out and reads single elements", "[tensor]", float, double) {
  const std::vector<TestType> values{1, 2, 3, 4, 5, 6};
  auto t = hgad::Tensor<TestType>::from_vector({2, 3}, values);
  REQUIRE(t.to_vector() == values);
  REQUIRE(t.dim(0) == 2);
  REQUIRE(t.dim(1) == 3);
  REQUIRE(t.as_vector()(4) == TestType(5));
  REQUIRE(t.as_matrix()(1, 0) == TestType(4));
  REQUIRE(t.reshape({6}).as_matrix().rows() == 6);
  REQUIRE(t.reshape({6}).as_matrix().cols() == 1);

  hgad::Tensor<TestType> scalar(hgad::Shape{});
  REQUIRE(scalar.rank() == 0);
  REQUIRE(scalar.numel() == 1);
  REQUIRE(scalar.rows() == 1);
  REQUIRE(scalar.cols() == 1);
  REQUIRE(scalar.shape().to_string() == "()");
  scalar() = TestType(9);
  REQUIRE(scalar.item() == TestType(9));
  REQUIRE(t.slice(1, 2).reshape({3}).slice(2, 3).item() == TestType(6));
  REQUIRE_THROWS_WITH(t.item(), Catch::Contains("item") && Catch::Contains("(2, 3)"));
  REQUIRE_THROWS_WITH(t.stride(2), Catch::Contains("stride") && Catch::Contains("(2, 3)"));
  REQUIRE_THROWS_WITH(t.dim(-1), Catch::Contains("axis -1"));
  REQUIRE_THROWS_WITH(scalar.slice(0, 0), Catch::Contains("slice"));
  REQUIRE_THROWS_WITH(hgad::Tensor<TestType>({-1}), Catch::Contains("negative"));
}

TEMPLATE_TEST_CASE("Tensor to and cpu copy only across backends, and clone always copies", "[tensor]", float, double) {
  auto t = hgad::Tensor<TestType>::from_vector({3}, {1, 2, 3});
  REQUIRE(t.device() == hgad::Device::cpu);
  REQUIRE(t.cpu().shares_storage(t));
  REQUIRE(t.to(hgad::cpu_backend<TestType>()).shares_storage(t));
  // A second CPU backend instance counts as another device: the copy is deep.
  hgad::BackendPtr<TestType> other = std::make_shared<hgad::CpuBackend<TestType>>();
  auto moved = t.to(other);
  REQUIRE_FALSE(moved.shares_storage(t));
  REQUIRE(moved.to_vector() == t.to_vector());
  REQUIRE(moved.backend_ptr() == other);
  auto back = moved.to(hgad::cpu_backend<TestType>());
  REQUIRE(back.to_vector() == t.to_vector());
  REQUIRE_FALSE(t.clone().shares_storage(t));
  REQUIRE(t.slice(1, 3).clone().to_vector() == std::vector<TestType>{2, 3});
}

}  // namespace tensor_test
