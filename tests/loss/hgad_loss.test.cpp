#include <catch2/catch.hpp>

#include <hgad/autograd/gradcheck.hpp>
#include <hgad/detail/parallel.hpp>
#include <hgad/loss/fused_loss.hpp>
#include <hgad/loss/hgad_loss.hpp>

#include "golden.hpp"
#include "loss/compare_paths.hpp"
#include "loss/naive_objective.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace hgad_loss_test {

namespace {

// The test problem: K = 3 classes, M = 4 intra centres, D = 5, N = 9 vectors.
constexpr hgad::Index K = 3, M = 4, D = 5, N = 9;
constexpr double c0 = -0.9189385332046727;  // ln(1/sqrt(2 pi))

struct Problem {
  hgad::Tensor<double> z, ldj, mu, delta, phi_intra, phi_inter;
  std::vector<std::int64_t> labels;
};

/// Random inputs whose latents sit near the centres, so every posterior and responsibility is
/// away from 0 and 1 and the gradients are not trivially small.
Problem make_problem(std::uint64_t seed) {
  hgad::Rng rng(seed);
  Problem p;
  p.mu = hgad::Tensor<double>::randn({K, D}, rng, 0.0, 1.0);
  p.delta = hgad::Tensor<double>::randn({K, M - 1, D}, rng, 0.0, 0.7);
  p.phi_intra = hgad::Tensor<double>::randn({K, M}, rng, 0.0, 0.5);
  p.phi_inter = hgad::Tensor<double>::randn({K}, rng, 0.0, 0.5);
  p.ldj = hgad::Tensor<double>::randn({N}, rng, 0.0, 2.0);
  p.z = hgad::Tensor<double>({N, D});
  for (hgad::Index n = 0; n < N; ++n) {
    const std::int64_t y = n % K;  // every class occurs
    p.labels.push_back(y);
    for (hgad::Index j = 0; j < D; ++j) p.z(n, j) = p.mu(y, j) + 0.8 * rng.normal();
  }
  return p;
}

template <class T>
hgad::Tensor<T> cast(const hgad::Tensor<double>& t) {
  hgad::Tensor<T> out(t.shape());
  for (hgad::Index i = 0; i < t.numel(); ++i) out.data()[i] = T(t.data()[i]);
  return out;
}

template <class T>
hgad::GaussianMixturePrior<T> make_prior(const Problem& p) {
  return hgad::GaussianMixturePrior<T>(cast<T>(p.mu), cast<T>(p.delta), cast<T>(p.phi_intra), cast<T>(p.phi_inter));
}

// ---------------------------------------------------------------------------------------------
// An independent naive implementation of docs/algorithm.md §3.3 with plain loops in double.
// ---------------------------------------------------------------------------------------------

using hgad_test::NaiveTerms;

/// Each row's component log-densities under unit covariances: −|z − m|² / 2.
NaiveTerms naive_terms(const Problem& p, double eps = 0.02) {
  auto row_of = [&p](hgad::Index n) {
    hgad_test::NaiveRow row;
    const std::int64_t label = p.labels[std::size_t(n)];
    for (int y = 0; y < K; ++y) {
      double d = 0;
      for (int j = 0; j < D; ++j) d += (p.z(n, j) - p.mu(y, j)) * (p.z(n, j) - p.mu(y, j));
      row.classes.push_back(-0.5 * d);
    }
    for (int k = 0; k < M; ++k) {
      double e = 0;
      for (int j = 0; j < D; ++j) {
        const double m = p.mu(label, j) + (k == 0 ? 0.0 : p.delta(label, k - 1, j));
        e += (p.z(n, j) - m) * (p.z(n, j) - m);
      }
      row.intra.push_back(-0.5 * e);
    }
    return row;
  };
  return hgad_test::naive_objective(D, p.labels, p.phi_inter, p.phi_intra, p.ldj, row_of, eps);
}

double naive_total(const Problem& p, int stage) { return hgad_test::naive_total(naive_terms(p), stage); }

template <class T>
double tolerance() {
  return std::is_same_v<T, float> ? 2e-5 : 1e-12;
}

bool close(double a, double b, double rel) { return std::isfinite(a) && std::abs(a - b) <= rel * std::max(1.0, std::abs(b)); }

}  // namespace

TEMPLATE_TEST_CASE("Every loss term of the autograd path matches a naive double loop", "[loss]", float, double) {
  const Problem p = make_problem(11);
  const NaiveTerms want = naive_terms(p);
  auto prior = make_prior<TestType>(p);
  const hgad::Var<TestType> z(cast<TestType>(p.z)), ldj(cast<TestType>(p.ldj));
  const double tol = tolerance<TestType>();
  CHECK(close(hgad::loss_g(z, ldj, prior.mu(), prior.phi_inter()).item(), want.g, tol));
  CHECK(close(hgad::loss_mi(z, prior.mu(), prior.phi_inter(), p.labels).item(), want.mi, tol));
  CHECK(close(hgad::loss_e(z, prior.mu()).item(), want.e, tol));
  CHECK(close(hgad::loss_g_intra(z, ldj, prior.mu(), prior.delta(), prior.phi_intra(), p.labels).item(), want.g_intra,
              tol));
  CHECK(close(hgad::loss_z(z, ldj, prior.mu(), prior.delta(), prior.phi_intra(), p.labels).item(), want.z, tol));
  for (int stage : {1, 2}) {
    const auto terms = hgad::objective_loss(prior, z, ldj, p.labels, stage).values();
    CHECK(close(terms.total, naive_total(p, stage), tol * 100));
    CHECK(terms.stage == stage);
  }
}

TEMPLATE_TEST_CASE("Every loss term of the fused path matches a naive double loop", "[loss]", float, double) {
  const Problem p = make_problem(12);
  const NaiveTerms want = naive_terms(p);
  const double tol = tolerance<TestType>();
  for (int stage : {1, 2}) {
    auto prior = make_prior<TestType>(p);
    const auto result = hgad::hgad_loss_fused(prior, cast<TestType>(p.z), cast<TestType>(p.ldj), p.labels, stage);
    CHECK(close(result.terms.l_g, want.g, tol));
    CHECK(close(result.terms.l_mi, want.mi, tol));
    CHECK(close(result.terms.l_e, want.e, tol));
    if (stage == 2) {
      CHECK(close(result.terms.l_g_intra, want.g_intra, tol));
      CHECK(close(result.terms.l_z, want.z, tol));
    } else {
      CHECK(result.terms.l_g_intra == TestType(0));
      CHECK(result.terms.l_z == TestType(0));
    }
    CHECK(close(result.terms.total, naive_total(p, stage), tol * 100));
  }
}

TEST_CASE("Each loss term passes gradcheck with respect to z, log_jac_det, mu, delta and both phi", "[loss]") {
  // Inputs behind a stop-gradient (log pi in L_mi, mu in the intra terms) are passed as constants:
  // their finite differences are not zero, their gradients are by design.
  const Problem p = make_problem(13);
  using V = std::vector<hgad::Var<double>>;
  const auto labels = p.labels;
  const hgad::Var<double> mu_const(p.mu), phi_inter_const(p.phi_inter);
  struct Term {
    const char* name;
    std::function<hgad::Var<double>(const V&)> f;
    std::vector<hgad::Tensor<double>> inputs;
  };
  const std::vector<Term> terms{
      {"L_g", [](const V& in) { return hgad::loss_g(in[0], in[1], in[2], in[3]); }, {p.z, p.ldj, p.mu, p.phi_inter}},
      {"L_mi", [&](const V& in) { return hgad::loss_mi(in[0], in[1], phi_inter_const, labels); }, {p.z, p.mu}},
      {"L_e", [](const V& in) { return hgad::loss_e(in[0], in[1]); }, {p.z, p.mu}},
      {"L_g_intra", [&](const V& in) { return hgad::loss_g_intra(in[0], in[1], mu_const, in[2], in[3], labels); },
       {p.z, p.ldj, p.delta, p.phi_intra}},
      {"L_z", [&](const V& in) { return hgad::loss_z(in[0], in[1], mu_const, in[2], in[3], labels); },
       {p.z, p.ldj, p.delta, p.phi_intra}},
      {"L_nf", [](const V& in) { return hgad::loss_nf(in[0], in[1]); }, {p.z, p.ldj}},
  };
  for (const auto& term : terms) {
    INFO(term.name);
    const auto result = hgad::gradcheck(term.f, term.inputs);
    INFO(result.log);
    CHECK(result.ok);
  }
}

TEST_CASE("The stop-gradients of the objective hold: mu gets nothing from the intra terms, L_mi's log pi is "
          "detached", "[loss]") {
  const Problem p = make_problem(14);
  auto prior = make_prior<double>(p);
  const hgad::Var<double> z(p.z), ldj(p.ldj);
  hgad::loss_g_intra(z, ldj, prior.mu(), prior.delta(), prior.phi_intra(), p.labels).backward();
  hgad::loss_z(z, ldj, prior.mu(), prior.delta(), prior.phi_intra(), p.labels).backward();
  CHECK_FALSE(prior.mu().has_grad());
  CHECK(prior.delta().has_grad());
  hgad::loss_mi(z, prior.mu(), prior.phi_inter(), p.labels).backward();
  CHECK_FALSE(prior.phi_inter().has_grad());
  CHECK(prior.mu().has_grad());
}

TEMPLATE_TEST_CASE("The fused objective equals the autograd objective in values and every gradient", "[loss]", float,
                   double) {
  const Problem p = make_problem(15);
  const double tol = std::is_same_v<TestType, float> ? 2e-4 : 1e-11;
  for (int stage : {1, 2}) {
    INFO("stage " << stage);
    auto reference = make_prior<TestType>(p);
    auto fused = make_prior<TestType>(p);
    auto z = hgad::Var<TestType>::parameter(cast<TestType>(p.z));
    auto ldj = hgad::Var<TestType>::parameter(cast<TestType>(p.ldj));
    auto vars = hgad::objective_loss(reference, z, ldj, p.labels, stage);
    vars.total.backward();
    const auto want = vars.values();
    const auto got = hgad::hgad_loss_fused(fused, z.value(), ldj.value(), p.labels, stage);
    CHECK(close(got.terms.l_g, want.l_g, tol));
    CHECK(close(got.terms.l_mi, want.l_mi, tol));
    CHECK(close(got.terms.l_e, want.l_e, tol));
    CHECK(close(got.terms.l_g_intra, want.l_g_intra, tol));
    CHECK(close(got.terms.l_z, want.l_z, tol));
    CHECK(close(got.terms.total, want.total, tol));
    hgad_test::check_fused_gradients(got, z, ldj, fused, reference, stage, tol);
    if (stage == 1) {
      CHECK_FALSE(reference.delta().has_grad());
      CHECK_FALSE(reference.phi_intra().has_grad());
    }
  }
}

TEST_CASE("The fused gradient with respect to z and log_jac_det matches finite differences of the naive loss",
          "[loss]") {
  Problem p = make_problem(16);
  for (int stage : {1, 2}) {
    auto prior = make_prior<double>(p);
    const auto result = hgad::hgad_loss_fused(prior, p.z, p.ldj, p.labels, stage);
    const double h = 1e-6;
    for (hgad::Index i = 0; i < N * D; i += 4) {
      const double x = p.z.data()[i];
      p.z.data()[i] = x + h;
      const double plus = naive_total(p, stage);
      p.z.data()[i] = x - h;
      const double minus = naive_total(p, stage);
      p.z.data()[i] = x;
      CHECK(std::abs(result.grad_z.data()[i] - (plus - minus) / (2 * h)) < 1e-6);
    }
    for (hgad::Index n = 0; n < N; ++n) {
      const double x = p.ldj(n);
      p.ldj(n) = x + h;
      const double plus = naive_total(p, stage);
      p.ldj(n) = x - h;
      const double minus = naive_total(p, stage);
      p.ldj(n) = x;
      CHECK(std::abs(result.grad_log_jac_det(n) - (plus - minus) / (2 * h)) < 1e-8);
    }
  }
}

TEST_CASE("The fused objective accumulates into existing gradients", "[loss]") {
  const Problem p = make_problem(17);
  auto prior = make_prior<double>(p);
  hgad::hgad_loss_fused(prior, p.z, p.ldj, p.labels, 2);
  const auto once = prior.delta().grad().clone();
  const auto mu_once = prior.mu().grad().clone();
  hgad::hgad_loss_fused(prior, p.z, p.ldj, p.labels, 2);
  for (hgad::Index i = 0; i < once.numel(); ++i) CHECK(prior.delta().grad().data()[i] == Approx(2 * once.data()[i]));
  for (hgad::Index i = 0; i < mu_once.numel(); ++i) CHECK(prior.mu().grad().data()[i] == Approx(2 * mu_once.data()[i]));
}

TEST_CASE("The fused objective does not depend on the thread count", "[loss]") {
  hgad::Rng rng(5);
  const hgad::Index n_rows = 3000, dim = 24, n_classes = 4;
  hgad::GaussianMixturePrior<float> a(n_classes, 6, dim, rng);
  hgad::GaussianMixturePrior<float> b(a.mu().value().clone(), a.delta().value().clone(),
                                      a.phi_intra().value().clone(), a.phi_inter().value().clone());
  auto z = hgad::Tensor<float>::randn({n_rows, dim}, rng);
  auto ldj = hgad::Tensor<float>::randn({n_rows}, rng);
  std::vector<std::int64_t> labels;
  for (hgad::Index n = 0; n < n_rows; ++n) labels.push_back(std::int64_t(rng.uniform_int(n_classes)));
  hgad_test::check_thread_independent(a, b, z, ldj, labels);
}

TEMPLATE_TEST_CASE("The NF objective matches CFlow's loss in both paths and leaves the prior alone", "[loss]", float,
                   double) {
  const Problem p = make_problem(18);
  double want = 0;
  for (int n = 0; n < N; ++n) {
    double sq = 0;
    for (int j = 0; j < D; ++j) sq += p.z(n, j) * p.z(n, j);
    const double logp = D * c0 - 0.5 * sq + p.ldj(n);
    want += std::log1p(std::exp(-logp / D)) / N;
  }
  hgad::LossOptions options;
  options.objective = hgad::Objective::nf;
  auto prior = make_prior<TestType>(p);
  auto z = hgad::Var<TestType>::parameter(cast<TestType>(p.z));
  auto ldj = hgad::Var<TestType>::parameter(cast<TestType>(p.ldj));
  auto vars = hgad::objective_loss(prior, z, ldj, p.labels, 2, options);
  vars.total.backward();
  const auto fused = hgad::objective_loss_fused(prior, z.value(), ldj.value(), p.labels, 2, options);
  const double tol = tolerance<TestType>();
  CHECK(close(vars.values().total, want, tol));
  CHECK(close(fused.terms.total, want, tol));
  CHECK(fused.terms.l_z == fused.terms.total);
  CHECK(hgad::test::max_rel_error(fused.grad_z, z.grad()) < tol * 10);
  CHECK(hgad::test::max_rel_error(fused.grad_log_jac_det, ldj.grad()) < tol * 10);
  for (const auto& param : prior.parameters()) CHECK_FALSE(param.has_grad());
}

TEST_CASE("The schedule switches to stage 2 after stage1_meta_epochs", "[loss]") {
  hgad::LossOptions options;
  CHECK(options.lambda1 == 1.0);
  CHECK(options.lambda2 == 100.0);
  CHECK(options.label_smoothing == 0.02);
  CHECK(hgad::training_stage(0, options) == 1);
  CHECK(hgad::training_stage(1, options) == 1);
  CHECK(hgad::training_stage(2, options) == 2);
  CHECK(hgad::training_stage(24, options) == 2);
  options.stage1_meta_epochs = 0;
  CHECK(hgad::training_stage(0, options) == 2);
}

TEST_CASE("The objectives reject bad shapes, labels and stages with clear messages", "[loss]") {
  const Problem p = make_problem(19);
  auto prior = make_prior<double>(p);
  std::vector<std::int64_t> bad = p.labels;
  bad[2] = K;
  CHECK_THROWS_WITH(hgad::hgad_loss_fused(prior, p.z, p.ldj, bad, 2), Catch::Contains("label 3"));
  CHECK_THROWS_WITH(hgad::hgad_loss_fused(prior, p.z, p.ldj, p.labels, 3), Catch::Contains("stage"));
  CHECK_THROWS_WITH(hgad::hgad_loss_fused(prior, p.z, hgad::Tensor<double>({N + 1}), p.labels, 1),
                    Catch::Contains("log_jac_det"));
  CHECK_THROWS_AS(hgad::objective_loss(prior, hgad::Var<double>(hgad::Tensor<double>({N, D + 1})),
                                       hgad::Var<double>(p.ldj), p.labels, 1),
                  hgad::Error);
}

TEMPLATE_TEST_CASE("Far centres whose responsibilities underflow give the same values and gradients on both paths",
                   "[loss]", float, double) {
  Problem p = make_problem(20);
  // Two of the three deltas of every class, and class 2's centre, far away: e - e_min ~ 10^4.
  for (hgad::Index y = 0; y < K; ++y) {
    for (hgad::Index k = 1; k < M - 1; ++k) {
      for (hgad::Index j = 0; j < D; ++j) p.delta(y, k, j) *= 60.0;
    }
  }
  for (hgad::Index j = 0; j < D; ++j) p.mu(2, j) += 50.0;
  auto reference = make_prior<TestType>(p);
  auto fused = make_prior<TestType>(p);
  auto z = hgad::Var<TestType>::parameter(cast<TestType>(p.z));
  auto ldj = hgad::Var<TestType>::parameter(cast<TestType>(p.ldj));
  auto vars = hgad::objective_loss(reference, z, ldj, p.labels, 2);
  vars.total.backward();
  const auto got = hgad::hgad_loss_fused(fused, z.value(), ldj.value(), p.labels, 2);
  const double tol = std::is_same_v<TestType, float> ? 2e-4 : 1e-11;
  CHECK(close(got.terms.total, vars.values().total, tol));
  CHECK(hgad::test::max_rel_error(got.grad_z, z.grad()) < tol);
  CHECK(hgad::test::max_rel_error(fused.mu().grad(), reference.mu().grad()) < tol);
  CHECK(hgad::test::max_rel_error(fused.delta().grad(), reference.delta().grad()) < tol);
  CHECK(hgad::test::max_rel_error(fused.phi_intra().grad(), reference.phi_intra().grad()) < tol);
  for (TestType v : got.grad_z.to_vector()) REQUIRE(std::isfinite(double(v)));
}

}  // namespace hgad_loss_test
