#include <catch2/catch.hpp>

#include <hgad/nn/adam.hpp>
#include <hgad/nn/lr_schedule.hpp>

#include <cmath>
#include <vector>

namespace adam_test {

namespace {

/// torch.optim.Adam 1.13's update of one element, written out in double.
struct NaiveAdam {
  double m = 0, v = 0;
  int t = 0;
  void step(double& p, double g, double lr, double b1, double b2, double eps, double wd) {
    g += wd * p;
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    ++t;
    const double step_size = lr / (1 - std::pow(b1, t));
    p -= step_size * m / (std::sqrt(v) / std::sqrt(1 - std::pow(b2, t)) + eps);
  }
};

}  // namespace

TEMPLATE_TEST_CASE("Adam follows torch 1.13's update with coupled weight decay per group", "[nn]", float, double) {
  hgad::Rng rng(1);
  auto a = hgad::Var<TestType>::parameter(hgad::Tensor<TestType>::randn({4, 3}, rng));
  auto b = hgad::Var<TestType>::parameter(hgad::Tensor<TestType>::randn({5}, rng));
  hgad::Adam<TestType> adam;
  adam.add_param_group({a}, {1e-2, 0.95, 0.99, 1e-8, 1e-1}, {"a"});
  adam.add_param_group({b}, {3e-3, 0.9, 0.999, 1e-6, 0.0});
  std::vector<double> pa(a.value().data(), a.value().data() + 12), pb(b.value().data(), b.value().data() + 5);
  std::vector<NaiveAdam> sa(12), sb(5);
  for (int step = 0; step < 5; ++step) {
    adam.zero_grad();
    CHECK_FALSE(a.has_grad());
    auto& ga = a.ensure_grad();
    auto& gb = b.ensure_grad();
    for (hgad::Index i = 0; i < 12; ++i) ga.data()[i] = TestType(rng.normal());
    for (hgad::Index i = 0; i < 5; ++i) gb.data()[i] = TestType(rng.normal());
    for (int i = 0; i < 12; ++i) sa[i].step(pa[i], double(ga.data()[i]), 1e-2, 0.95, 0.99, 1e-8, 1e-1);
    for (int i = 0; i < 5; ++i) sb[i].step(pb[i], double(gb.data()[i]), 3e-3, 0.9, 0.999, 1e-6, 0.0);
    adam.step();
  }
  const double tol = std::is_same_v<TestType, float> ? 1e-5 : 1e-14;
  for (int i = 0; i < 12; ++i) CHECK(std::abs(double(a.value().data()[i]) - pa[i]) < tol);
  for (int i = 0; i < 5; ++i) CHECK(std::abs(double(b.value().data()[i]) - pb[i]) < tol);
  CHECK(adam.param_group(0).state[0].step == 5);
  CHECK(adam.param_group(1).names[0] == "group1.param0");
}

TEST_CASE("Adam skips a parameter without a gradient: no moments, no step count, no weight decay", "[nn]") {
  hgad::Rng rng(2);
  auto a = hgad::Var<double>::parameter(hgad::Tensor<double>::randn({3}, rng));
  auto b = hgad::Var<double>::parameter(hgad::Tensor<double>::randn({3}, rng));
  hgad::Adam<double> adam;
  adam.add_param_group({a, b}, {1e-3, 0.95, 0.99, 1e-8, 1e-4});
  const auto b0 = b.value().to_vector();
  for (int step = 0; step < 2; ++step) {
    adam.zero_grad();
    a.ensure_grad().fill(0.5);
    adam.step();
  }
  CHECK(b.value().to_vector() == b0);
  CHECK(adam.param_group(0).state[0].step == 2);
  CHECK(adam.param_group(0).state[1].step == 0);
  // b's first update (t = 1) moves every element by lr (|m / sqrt(v)| = 1 at t = 1, eps aside).
  adam.zero_grad();
  a.ensure_grad().fill(0.5);
  b.ensure_grad().fill(-2.0);
  adam.step();
  CHECK(adam.param_group(0).state[1].step == 1);
  CHECK(adam.param_group(0).state[0].step == 3);
  for (int i = 0; i < 3; ++i) CHECK(b.value().data()[i] - b0[std::size_t(i)] == Approx(1e-3).epsilon(1e-4));
}

TEST_CASE("Adam's zero_grad resets to none and set_lr overwrites every group", "[nn]") {
  auto a = hgad::Var<float>::parameter(hgad::Tensor<float>::ones({2}));
  auto b = hgad::Var<float>::parameter(hgad::Tensor<float>::ones({2}));
  hgad::Adam<float> adam;
  adam.add_param_group({a}, {1e-3});
  adam.add_param_group({b}, {3e-3});
  a.ensure_grad();
  b.ensure_grad();
  adam.zero_grad();
  CHECK_FALSE(a.has_grad());
  CHECK_FALSE(b.has_grad());
  adam.set_lr(2e-4);
  CHECK(adam.param_group(0).options.lr == 2e-4);
  CHECK(adam.param_group(1).options.lr == 2e-4);
  CHECK_THROWS_AS(adam.add_param_group({hgad::Var<float>(hgad::Tensor<float>::ones({2}))}, {}), hgad::Error);
  CHECK_THROWS_AS(adam.add_param_group({a}, {1e-3, 1.0}), hgad::Error);
}

TEST_CASE("The learning-rate schedule has the exact values of docs/algorithm.md 4", "[nn]") {
  const hgad::LrSchedule schedule;
  CHECK(schedule.eta_min() == Approx(2e-7).epsilon(1e-12));
  CHECK(schedule.cosine_lr(0) == Approx(2e-4).epsilon(1e-12));
  CHECK(schedule.cosine_lr(2) == Approx(1.96861e-4).epsilon(1e-5));
  CHECK(schedule.cosine_lr(12) == Approx(1.06373e-4).epsilon(1e-5));
  CHECK(schedule.cosine_lr(24) == Approx(9.877e-7).epsilon(1e-3));
  CHECK(std::abs(schedule.cosine_lr(2) - 1.9686146e-4) < 1e-11);
  // Warm-up: from lr / 10 at the first iteration, linear, to the cosine value of e = 2.
  const std::int64_t T = 100;
  CHECK(schedule.lr_at(0, 0, T) == Approx(2e-5).epsilon(1e-12));
  CHECK(schedule.lr_at(1, 0, T) == Approx(2e-5 + 0.5 * (schedule.cosine_lr(2) - 2e-5)).epsilon(1e-12));
  CHECK(schedule.lr_at(1, T - 1, T) == Approx(2e-5 + (2.0 * T - 1) / (2.0 * T) * (schedule.cosine_lr(2) - 2e-5)));
  CHECK(std::abs(schedule.lr_at(1, T, T) - 1.9686146e-4) < 1e-11);  // the warm-up end value
  CHECK(schedule.lr_at(2, 5, T) == schedule.cosine_lr(2));
  CHECK(schedule.lr_at(12, 0, T) == schedule.cosine_lr(12));
  hgad::LrSchedule no_warm_up;
  no_warm_up.warm_up = false;
  CHECK(no_warm_up.lr_at(0, 7, T) == no_warm_up.cosine_lr(0));
  CHECK_THROWS_AS(schedule.lr_at(-1, 0, T), hgad::Error);
  CHECK_THROWS_AS(schedule.lr_at(0, 0, 0), hgad::Error);
}

}  // namespace adam_test
