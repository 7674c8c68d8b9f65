#include <catch2/catch.hpp>

#include <hgad/tensor.hpp>

#include <cmath>

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
