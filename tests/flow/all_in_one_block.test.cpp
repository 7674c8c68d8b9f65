#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "flow_test_util.hpp"
#include "hgad/autograd/gradcheck.hpp"

namespace all_in_one_block_test {

using hgad::AllInOneBlock;
using hgad::AllInOneOptions;
using hgad::Index;
using hgad::Rng;
using hgad::Shape;
using hgad::Tensor;
using hgad::Var;
using namespace hgad::test;

namespace {

template <class Scalar>
Tensor<Scalar> condition_for(const BlockCase& c, Index N, Rng& rng) {
  return c.P > 0 ? Tensor<Scalar>::randn({N, c.P}, rng) : Tensor<Scalar>();
}

template <class Scalar>
Var<Scalar> var_or_null(const Tensor<Scalar>& t, bool requires_grad = false) {
  return t.numel() > 0 ? Var<Scalar>(t, requires_grad) : Var<Scalar>();
}

/// log |det A| of a row-major n x n matrix by Gaussian elimination with partial pivoting.
double log_abs_det(std::vector<double> a, Index n) {
  double result = 0;
  for (Index k = 0; k < n; ++k) {
    Index pivot = k;
    for (Index i = k + 1; i < n; ++i) {
      if (std::abs(a[i * n + k]) > std::abs(a[pivot * n + k])) pivot = i;
    }
    if (pivot != k) {
      for (Index j = 0; j < n; ++j) std::swap(a[k * n + j], a[pivot * n + j]);
    }
    result += std::log(std::abs(a[k * n + k]));
    for (Index i = k + 1; i < n; ++i) {
      const double f = a[i * n + k] / a[k * n + k];
      for (Index j = k; j < n; ++j) a[i * n + j] -= f * a[k * n + j];
    }
  }
  return result;
}

}  // namespace

TEMPLATE_TEST_CASE("AllInOneBlock forward matches a naive loop implementation", "[flow]", float, double) {
  using Scalar = TestType;
  const double tol = std::is_same_v<Scalar, float> ? 2e-5 : 1e-12;
  for (const BlockCase& c : block_cases()) {
    SECTION(c.name) {
      Rng rng(11);
      AllInOneBlock<Scalar> block(c.D, c.P, options_of(c), rng);
      perturb(block, rng);
      const Index N = 23;
      const auto x = Tensor<Scalar>::randn({N, c.D}, rng);
      const auto cond = condition_for<Scalar>(c, N, rng);
      const auto fused = block.forward(x, cond);
      const auto graph = block.forward(Var<Scalar>(x), var_or_null(cond));
      REQUIRE(fused.out.shape() == Shape({N, c.D}));
      REQUIRE(fused.log_jac_det.shape() == Shape({N}));
      REQUIRE(all_finite(fused.out));
      REQUIRE(all_finite(fused.log_jac_det));
      Tensor<double> y({N, c.D}), ld({N});
      for (Index n = 0; n < N; ++n) {
        std::vector<double> v(c.D), cv(c.P);
        for (Index i = 0; i < c.D; ++i) v[i] = x(n, i);
        for (Index i = 0; i < c.P; ++i) cv[i] = cond(n, i);
        double log_det = 0;
        const auto row = naive_block_row(block, v, cv, log_det);
        for (Index i = 0; i < c.D; ++i) y(n, i) = row[i];
        ld(n) = log_det;
      }
      CHECK(rel_diff(fused.out, y) < tol);
      CHECK(rel_diff(fused.log_jac_det, ld) < tol);
      CHECK(rel_diff(graph.out.value(), y) < tol);
      CHECK(rel_diff(graph.log_jac_det.value(), ld) < tol);
    }
  }
}

TEMPLATE_TEST_CASE("AllInOneBlock inverse recovers the input", "[flow]", float, double) {
  using Scalar = TestType;
  const double tol = std::is_same_v<Scalar, float> ? 1e-4 : 1e-10;
  for (const BlockCase& c : block_cases()) {
    SECTION(c.name) {
      Rng rng(12);
      AllInOneBlock<Scalar> block(c.D, c.P, options_of(c), rng);
      perturb(block, rng);
      const Index N = 41;
      const auto x = Tensor<Scalar>::randn({N, c.D}, rng);
      const auto cond = condition_for<Scalar>(c, N, rng);

      const auto fwd = block.forward(x, cond);
      const auto inv = block.inverse(fwd.out, cond);
      REQUIRE(all_finite(inv.out));
      CHECK(rel_diff(inv.out, x) < tol);
      Tensor<Scalar> sum_ld({N});
      for (Index n = 0; n < N; ++n) sum_ld(n) = fwd.log_jac_det(n) + inv.log_jac_det(n);
      CHECK(rel_diff(sum_ld, Tensor<Scalar>::zeros({N})) < tol);

      const auto fwd_g = block.forward(Var<Scalar>(x), var_or_null(cond));
      const auto inv_g = block.inverse(fwd_g.out, var_or_null(cond));
      CHECK(rel_diff(inv_g.out.value(), x) < tol);
      for (Index n = 0; n < N; ++n) {
        CHECK(std::abs(double(fwd_g.log_jac_det.value()(n)) + double(inv_g.log_jac_det.value()(n))) <
              tol * std::max(1.0, std::abs(double(fwd.log_jac_det(n)))));
      }
    }
  }
}

TEST_CASE("AllInOneBlock log_jac_det equals the log-determinant of the numerical Jacobian", "[flow]") {
  for (const BlockCase& c : block_cases()) {
    if (c.D != 6 && c.D != 7) continue;
    SECTION(c.name) {
      Rng rng(13);
      AllInOneBlock<double> block(c.D, c.P, options_of(c), rng);
      perturb(block, rng);
      const Index N = 3, D = c.D;
      const auto x = Tensor<double>::randn({N, D}, rng);
      const auto cond = condition_for<double>(c, N, rng);
      const auto ld = block.forward(x, cond).log_jac_det;
      const double eps = 1e-5;
      for (Index n = 0; n < N; ++n) {
        Tensor<double> row = x.slice(n, n + 1).clone();
        Tensor<double> crow = c.P > 0 ? cond.slice(n, n + 1).clone() : Tensor<double>();
        std::vector<double> jac(static_cast<std::size_t>(D * D));
        for (Index j = 0; j < D; ++j) {
          const double keep = row(0, j);
          row(0, j) = keep + eps;
          const auto plus = block.forward(row, crow).out;
          row(0, j) = keep - eps;
          const auto minus = block.forward(row, crow).out;
          row(0, j) = keep;
          for (Index i = 0; i < D; ++i) jac[i * D + j] = (plus(0, i) - minus(0, i)) / (2 * eps);
        }
        const double expected = log_abs_det(jac, D);
        REQUIRE(std::isfinite(ld(n)));
        CHECK(ld(n) == Approx(expected).margin(1e-7));
      }
    }
  }
}

TEST_CASE("AllInOneBlock gradients pass gradcheck for the input, the condition and every parameter", "[flow]") {
  for (const BlockCase& c : block_cases()) {
    SECTION(c.name) {
      Rng rng(14);
      AllInOneBlock<double> block(c.D, c.P, options_of(c), rng);
      perturb(block, rng);
      const Index N = 4;
      std::vector<Tensor<double>> inputs{Tensor<double>::randn({N, c.D}, rng),
                                         c.P > 0 ? Tensor<double>::randn({N, c.P}, rng) : Tensor<double>({N, 0})};
      for (const auto& p : block.parameters()) inputs.push_back(p.value().clone());
      const auto loss = [&](const std::vector<Var<double>>& in) {
        block.fc1_weight() = in[2];
        block.fc1_bias() = in[3];
        block.fc2_weight() = in[4];
        block.fc2_bias() = in[5];
        block.gamma() = in[6];
        block.offset() = in[7];
        const Var<double> cond = c.P > 0 ? in[1] : Var<double>();
        const auto r = block.forward(in[0], cond);
        return hgad::sum(hgad::square(r.out)) - hgad::sum(r.log_jac_det);
      };
      const hgad::GradcheckResult result = hgad::gradcheck(loss, inputs);
      INFO(result.log);
      CHECK(result.ok);
    }
  }
}

TEMPLATE_TEST_CASE("The fused AllInOneBlock backward equals the autograd gradients", "[flow]", float, double) {
  using Scalar = TestType;
  const double tol = agreement_tolerance<Scalar>();
  for (const BlockCase& c : block_cases()) {
    SECTION(c.name) {
      Rng rng(15);
      AllInOneBlock<Scalar> block(c.D, c.P, options_of(c), rng);
      perturb(block, rng);
      const Index N = 37;
      const auto x = Tensor<Scalar>::randn({N, c.D}, rng);
      const auto cond = condition_for<Scalar>(c, N, rng);
      const auto grad_z = Tensor<Scalar>::randn({N, c.D}, rng);
      const auto grad_ld = Tensor<Scalar>::randn({N}, rng);

      // Autograd: L = Σ grad_z ⊙ z + Σ grad_ld ⊙ log_jac_det, so dL/dz = grad_z, dL/dld = grad_ld.
      Var<Scalar> xv(x, true);
      Var<Scalar> cv = c.P > 0 ? Var<Scalar>(cond, true) : Var<Scalar>();
      const auto r = block.forward(xv, cv);
      auto L = hgad::sum(r.out * Var<Scalar>(grad_z)) + hgad::sum(r.log_jac_det * Var<Scalar>(grad_ld));
      L.backward();
      std::vector<Tensor<Scalar>> expected;
      for (auto& p : block.parameters()) {
        expected.push_back(p.grad().clone());
        p.zero_grad();
      }

      hgad::CouplingCache<Scalar> cache;
      const auto fr = block.forward_train(x, cond, cache);
      CHECK(rel_diff(fr.out, r.out.value()) < tol);
      CHECK(rel_diff(fr.log_jac_det, r.log_jac_det.value()) < tol);
      Tensor<Scalar> grad_cond({N, c.P});
      const auto grad_x = block.backward(cache, grad_z, grad_ld, &grad_cond);
      REQUIRE(all_finite(grad_x));
      CHECK(rel_diff(grad_x, xv.grad()) < tol);
      if (c.P > 0) CHECK(rel_diff(grad_cond, cv.grad()) < tol);
      const auto params = block.parameters();
      const char* names[] = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "gamma", "offset"};
      for (std::size_t i = 0; i < params.size(); ++i) {
        INFO(names[i]);
        REQUIRE(params[i].has_grad());
        REQUIRE(all_finite(params[i].grad()));
        CHECK(rel_diff(params[i].grad(), expected[i]) < tol);
      }

      // A second backward accumulates (+=): the gradients double.
      block.backward(cache, grad_z, grad_ld);
      CHECK(rel_diff(params[0].grad(), [&] {
              Tensor<Scalar> twice = expected[0].clone();
              for (Index i = 0; i < twice.numel(); ++i) twice.data()[i] *= 2;
              return twice;
            }()) < tol);
    }
  }
}

TEST_CASE("The fused backward without a log-det gradient treats it as zero", "[flow]") {
  Rng rng(16);
  AllInOneBlock<double> block(7, 3, AllInOneOptions::hgad(), rng);
  perturb(block, rng);
  const auto x = Tensor<double>::randn({9, 7}, rng);
  const auto cond = Tensor<double>::randn({9, 3}, rng);
  const auto grad_z = Tensor<double>::randn({9, 7}, rng);
  hgad::CouplingCache<double> cache;
  block.forward_train(x, cond, cache);
  const auto a = block.backward(cache, grad_z, Tensor<double>());
  const auto b = block.backward(cache, grad_z, Tensor<double>::zeros({9}));
  CHECK(rel_diff(a, b) == 0);
}

TEST_CASE("random_rotation is orthogonal with determinant +1", "[flow]") {
  for (Index D : {1, 2, 7, 64, 200}) {
    Rng rng(static_cast<std::uint64_t>(D));
    const auto R = hgad::random_rotation<double>(D, rng);
    const std::vector<double> r = R.to_vector();
    double worst = 0;
    for (Index i = 0; i < D; ++i) {
      for (Index j = 0; j < D; ++j) {
        double dot = 0;
        for (Index k = 0; k < D; ++k) dot += r[k * D + i] * r[k * D + j];
        worst = std::max(worst, std::abs(dot - (i == j ? 1.0 : 0.0)));
      }
    }
    INFO("D = " << D);
    CHECK(worst < 1e-10);
    const double log_det = log_abs_det(R.to_vector(), D);
    CHECK(std::abs(log_det) < 1e-10);
    // The sign: det of a product of elementary eliminations, from the naive LU above on a copy.
    std::vector<double> a = R.to_vector();
    int sign = 1;
    for (Index k = 0; k < D; ++k) {
      Index pivot = k;
      for (Index i = k + 1; i < D; ++i) {
        if (std::abs(a[i * D + k]) > std::abs(a[pivot * D + k])) pivot = i;
      }
      if (pivot != k) {
        for (Index j = 0; j < D; ++j) std::swap(a[k * D + j], a[pivot * D + j]);
        sign = -sign;
      }
      if (a[k * D + k] < 0) sign = -sign;
      for (Index i = k + 1; i < D; ++i) {
        const double f = a[i * D + k] / a[k * D + k];
        for (Index j = k; j < D; ++j) a[i * D + j] -= f * a[k * D + j];
      }
    }
    CHECK(sign == 1);
  }
}

TEST_CASE("A hard-permutation block permutes channels and detects its permutation matrix", "[flow]") {
  Rng rng(17);
  AllInOneBlock<double> block(9, 2, AllInOneOptions(), rng);
  const auto& p = block.permutation();
  REQUIRE(p.size() == 9u);
  std::vector<Index> sorted(p.begin(), p.end());
  std::sort(sorted.begin(), sorted.end());
  for (Index i = 0; i < 9; ++i) CHECK(sorted[i] == i);
  for (Index i = 0; i < 9; ++i) {
    for (Index j = 0; j < 9; ++j) CHECK(block.rotation()(i, j) == (p[i] == j ? 1.0 : 0.0));
  }
  AllInOneBlock<double> soft(9, 2, AllInOneOptions::hgad(), rng);
  CHECK(soft.permutation().empty());
  soft.set_rotation(block.rotation());
  CHECK(soft.permutation() == block.permutation());
}

TEST_CASE("AllInOneBlock initialisation follows FrEIA and PyTorch's nn.Linear", "[flow]") {
  for (auto type : {hgad::GlobalAffineType::softplus, hgad::GlobalAffineType::sigmoid, hgad::GlobalAffineType::exp}) {
    for (double init : {1.0, 0.5, 2.0}) {
      Rng rng(18);
      AllInOneOptions o = AllInOneOptions::hgad();
      o.global_affine_type = type;
      o.global_affine_init = init;
      AllInOneBlock<double> block(10, 4, o, rng);
      const auto g = block.global_scale();
      for (Index j = 0; j < 10; ++j) CHECK(g(j) == Approx(init).epsilon(1e-14));
      for (Index j = 0; j < 10; ++j) CHECK(block.offset().value()(j) == 0.0);
    }
  }
  // HGAD's γ0 = 2 ln(e^5 − 1) (docs/algorithm.md §2.2 step 7).
  Rng rng(19);
  AllInOneBlock<double> block(200, 256, AllInOneOptions::hgad(), rng);
  CHECK(block.gamma().value()(0) == Approx(9.986478501).epsilon(1e-9));
  CHECK(block.fc1_weight().value().shape() == Shape({712, 356}));
  CHECK(block.fc2_weight().value().shape() == Shape({200, 712}));
  Index n_params = 0;
  for (const auto& p : block.parameters()) n_params += p.numel();
  CHECK(n_params == 397184);  // docs/algorithm.md §2.2
  const double bound1 = 1 / std::sqrt(356.0), bound2 = 1 / std::sqrt(712.0);
  double max1 = 0, max2 = 0, sum1 = 0;
  const auto& w1 = block.fc1_weight().value();
  for (Index i = 0; i < w1.numel(); ++i) {
    max1 = std::max(max1, std::abs(w1.data()[i]));
    sum1 += w1.data()[i] * w1.data()[i];
  }
  const auto& w2 = block.fc2_weight().value();
  for (Index i = 0; i < w2.numel(); ++i) max2 = std::max(max2, std::abs(w2.data()[i]));
  CHECK(max1 <= bound1);
  CHECK(max1 > 0.99 * bound1);
  CHECK(max2 <= bound2);
  // Var of U(±b) is b²/3.
  CHECK(sum1 / double(w1.numel()) == Approx(bound1 * bound1 / 3).epsilon(0.01));
}

TEST_CASE("AllInOneBlock rejects inputs of the wrong shape with a clear error", "[flow]") {
  Rng rng(20);
  AllInOneBlock<double> block(6, 4, AllInOneOptions::hgad(), rng);
  const auto x = Tensor<double>::randn({5, 6}, rng);
  CHECK_THROWS_AS(block.forward(x, Tensor<double>::randn({5, 3}, rng)), hgad::Error);
  CHECK_THROWS_AS(block.forward(x, Tensor<double>::randn({4, 4}, rng)), hgad::Error);
  CHECK_THROWS_AS(block.forward(Tensor<double>::randn({5, 7}, rng), Tensor<double>::randn({5, 4}, rng)), hgad::Error);
  CHECK_THROWS_AS(block.forward(x), hgad::Error);
  CHECK_THROWS_AS(block.forward(Var<double>(x)), hgad::Error);
  AllInOneBlock<double> unconditional(6, 0, AllInOneOptions::hgad(), rng);
  CHECK_THROWS_AS(unconditional.forward(x, Tensor<double>::randn({5, 4}, rng)), hgad::Error);
  CHECK_NOTHROW(unconditional.forward(x, Tensor<double>({5, 0})));
  CHECK_THROWS_AS(AllInOneBlock<double>(1, 0, AllInOneOptions(), rng), hgad::Error);
  CHECK_THROWS_AS(block.set_parameter("fc1.weight", Tensor<double>::zeros({3, 3})), hgad::Error);
  CHECK_THROWS_AS(block.set_parameter("nope", Tensor<double>::zeros({3})), hgad::Error);
  CHECK_THROWS_AS(block.set_rotation(Tensor<double>::zeros({5, 5})), hgad::Error);
  hgad::CouplingCache<double> empty;
  CHECK_THROWS_AS(block.backward(empty, x, Tensor<double>()), hgad::Error);
  CHECK_THROWS_AS(hgad::global_affine_type_from_string("TANH"), hgad::Error);
  CHECK(hgad::global_affine_type_from_string("SOFTPLUS") == hgad::GlobalAffineType::softplus);
  AllInOneOptions bad;
  bad.global_affine_type = hgad::GlobalAffineType::sigmoid;
  bad.global_affine_init = 12;
  CHECK_THROWS_AS(AllInOneBlock<double>(6, 0, bad, rng), hgad::Error);
}

TEST_CASE("set_parameter copies into the existing parameter storage", "[flow]") {
  Rng rng(21);
  AllInOneBlock<double> block(6, 2, AllInOneOptions::hgad(), rng);
  Var<double> handle = block.fc2_bias();
  const auto value = Tensor<double>::randn({6}, rng);
  block.set_parameter("fc2.bias", value);
  CHECK(rel_diff(handle.value(), value) == 0);
  CHECK(handle.value().shares_storage(block.fc2_bias().value()));
}

}  // namespace all_in_one_block_test
