// Classes that carry their own covariance (docs/algorithm.md §3.1.2): every term of the objective
// and every score against a naive double loop that forms the class log-densities from the
// covariances Σ_y themselves (Eigen's LLT of Σ_y, not the factors A_y the library holds), the
// fused path against the autograd reference in every gradient, gradcheck of each term, and the
// fused gradients against finite differences of the naive loss. Each for both scopes of the
// factors: every component (class_covariance = class) and the intra-class components only
// (class_covariance = intra), where the naive class level is the paper's −|z − μ_y|² / 2.
#include <catch2/catch.hpp>

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include <hgad/autograd/gradcheck.hpp>
#include <hgad/detail/parallel.hpp>
#include <hgad/loss/fused_loss.hpp>
#include <hgad/loss/hgad_loss.hpp>
#include <hgad/prior/scores.hpp>

#include "golden.hpp"
#include "loss/compare_paths.hpp"
#include "loss/naive_objective.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <type_traits>
#include <vector>

namespace class_covariance_test {

namespace {

using hgad::Index;

constexpr Index K = 3, M = 3, D = 4, N = 9;
using hgad_test::naive_c0;

struct Problem {
  hgad::Tensor<double> z, ldj, mu, delta, phi_intra, phi_inter;
  std::vector<std::int64_t> labels;
  std::vector<Eigen::MatrixXd> sigma;  // Σ_y (D, D)
  hgad::Tensor<double> factors;        // A_y = L_y⁻¹, L_y Lᵀ_y = Σ_y, (K, D, D)
  bool class_level = true;             // whether the class level carries Σ_y too
};

/// Random centres and logits, a random well-conditioned covariance per class, and latents drawn
/// near the centres with that covariance.
Problem make_problem(std::uint64_t seed, bool class_level = true) {
  hgad::Rng rng(seed);
  Problem p;
  p.class_level = class_level;
  p.mu = hgad::Tensor<double>::randn({K, D}, rng, 0.0, 1.0);
  p.delta = hgad::Tensor<double>::randn({K, M - 1, D}, rng, 0.0, 0.6);
  p.phi_intra = hgad::Tensor<double>::randn({K, M}, rng, 0.0, 0.5);
  p.phi_inter = hgad::Tensor<double>::randn({K}, rng, 0.0, 0.5);
  p.ldj = hgad::Tensor<double>::randn({N}, rng, 0.0, 2.0);
  p.factors = hgad::Tensor<double>({K, D, D});
  std::vector<Eigen::MatrixXd> root;
  for (Index y = 0; y < K; ++y) {
    Eigen::MatrixXd B(D, D);
    for (Index i = 0; i < D; ++i)
      for (Index j = 0; j < D; ++j) B(i, j) = 0.5 * rng.normal() + (i == j ? 0.6 + 0.3 * double(y) : 0.0);
    const Eigen::MatrixXd sigma = B * B.transpose() + 0.2 * Eigen::MatrixXd::Identity(D, D);
    p.sigma.push_back(sigma);
    const Eigen::LLT<Eigen::MatrixXd> llt(sigma);
    root.push_back(llt.matrixL());
    const Eigen::MatrixXd L = llt.matrixL();
    const Eigen::MatrixXd A = L.triangularView<Eigen::Lower>().solve(Eigen::MatrixXd::Identity(D, D));
    for (Index i = 0; i < D; ++i)
      for (Index j = 0; j <= i; ++j) p.factors(y, i, j) = A(i, j);
  }
  p.z = hgad::Tensor<double>({N, D});
  for (Index n = 0; n < N; ++n) {
    const std::int64_t y = n % K;
    p.labels.push_back(y);
    Eigen::VectorXd g(D);
    for (Index j = 0; j < D; ++j) g(j) = 0.8 * rng.normal();
    const Eigen::VectorXd v = root[static_cast<std::size_t>(y)] * g;
    for (Index j = 0; j < D; ++j) p.z(n, j) = p.mu(y, j) + v(j);
  }
  return p;
}

template <class T>
hgad::Tensor<T> cast(const hgad::Tensor<double>& t) {
  hgad::Tensor<T> out(t.shape());
  for (Index i = 0; i < t.numel(); ++i) out.data()[i] = T(t.data()[i]);
  return out;
}

template <class T>
hgad::GaussianMixturePrior<T> make_prior(const Problem& p) {
  hgad::GaussianMixturePrior<T> prior(cast<T>(p.mu), cast<T>(p.delta), cast<T>(p.phi_intra),
                                      cast<T>(p.phi_inter));
  prior.set_class_factors(cast<T>(p.factors), p.class_level);
  return prior;
}

/// log N(x; m, Σ_y) − D c0 = −(x − m)ᵀ Σ_y⁻¹ (x − m) / 2 − ln det Σ_y / 2, by the LLT of Σ_y.
double class_log_density(const Problem& p, Index y, const Eigen::VectorXd& x, const Eigen::VectorXd& m) {
  const Eigen::LLT<Eigen::MatrixXd> llt(p.sigma[static_cast<std::size_t>(y)]);
  const Eigen::VectorXd diff = x - m;
  const double maha = diff.dot(llt.solve(diff));
  const double log_det = 2 * Eigen::MatrixXd(llt.matrixL()).diagonal().array().log().sum();
  return -0.5 * maha - 0.5 * log_det;
}

Eigen::VectorXd vector_of(const hgad::Tensor<double>& t, Index n) {
  Eigen::VectorXd v(t.dim(1));
  for (Index j = 0; j < t.dim(1); ++j) v(j) = t(n, j);
  return v;
}

Eigen::VectorXd intra_center(const Problem& p, Index y, Index k) {
  Eigen::VectorXd m = vector_of(p.mu, y);
  if (k > 0)
    for (Index j = 0; j < D; ++j) m(j) += p.delta(y, k - 1, j);
  return m;
}

/// Row n's component log-densities under the class covariances (naive_objective.hpp).
hgad_test::NaiveRow naive_row(const Problem& p, Index n) {
  hgad_test::NaiveRow out;
  const Index label = p.labels[static_cast<std::size_t>(n)];
  const Eigen::VectorXd x = vector_of(p.z, n);
  for (Index y = 0; y < K; ++y)
    out.classes.push_back(p.class_level ? class_log_density(p, y, x, vector_of(p.mu, y))
                                        : -0.5 * (x - vector_of(p.mu, y)).squaredNorm());
  for (Index k = 0; k < M; ++k)
    out.intra.push_back(class_log_density(p, label, x, intra_center(p, label, k)));
  return out;
}

hgad_test::NaiveTerms naive_terms(const Problem& p) {
  return hgad_test::naive_objective(D, p.labels, p.phi_inter, p.phi_intra, p.ldj,
                                    [&p](Index n) { return naive_row(p, n); }, 0.02);
}

double naive_total(const Problem& p, int stage) { return hgad_test::naive_total(naive_terms(p), stage); }

template <class T>
double tolerance() {
  return std::is_same<T, float>::value ? 5e-5 : 1e-12;
}

bool close(double a, double b, double rel) {
  return std::isfinite(a) && std::abs(a - b) <= rel * std::max(1.0, std::abs(b));
}

}  // namespace

TEMPLATE_TEST_CASE("With class covariances every term of both paths matches a naive loop over the "
                   "covariances",
                   "[loss]", float, double) {
  for (const bool class_level : {true, false}) {
    INFO("class level " << class_level);
    const Problem p = make_problem(31, class_level);
    const hgad_test::NaiveTerms want = naive_terms(p);
    const double tol = tolerance<TestType>();
    for (int stage : {1, 2}) {
      INFO("stage " << stage);
      auto prior = make_prior<TestType>(p);
      const hgad::Var<TestType> z(cast<TestType>(p.z)), ldj(cast<TestType>(p.ldj));
      const auto ref = hgad::objective_loss(prior, z, ldj, p.labels, stage).values();
      const auto fused =
          hgad::hgad_loss_fused(prior, z.value(), ldj.value(), p.labels, stage).terms;
      for (const auto& got : {ref, fused}) {
        CHECK(close(got.l_g, want.g, tol));
        CHECK(close(got.l_mi, want.mi, tol));
        CHECK(close(got.l_e, want.e, tol));
        if (stage == 2) {
          CHECK(close(got.l_g_intra, want.g_intra, tol));
          CHECK(close(got.l_z, want.z, tol));
        }
        CHECK(close(got.total, naive_total(p, stage), tol * 100));
      }
    }
  }
}

TEMPLATE_TEST_CASE("With class covariances the fused objective equals the autograd objective in "
                   "every gradient",
                   "[loss]", float, double) {
  for (const bool class_level : {true, false}) {
    const Problem p = make_problem(32, class_level);
    const double tol = std::is_same<TestType, float>::value ? 5e-4 : 1e-11;
    for (int stage : {1, 2}) {
      INFO("class level " << class_level << ", stage " << stage);
      auto reference = make_prior<TestType>(p);
      auto fused = make_prior<TestType>(p);
      auto z = hgad::Var<TestType>::parameter(cast<TestType>(p.z));
      auto ldj = hgad::Var<TestType>::parameter(cast<TestType>(p.ldj));
      auto vars = hgad::objective_loss(reference, z, ldj, p.labels, stage);
      vars.total.backward();
      const auto got = hgad::hgad_loss_fused(fused, z.value(), ldj.value(), p.labels, stage);
      CHECK(close(got.terms.total, vars.values().total, tol));
      hgad_test::check_fused_gradients(got, z, ldj, fused, reference, stage, tol);
    }
  }
}

TEST_CASE("With class covariances each loss term passes gradcheck", "[loss]") {
  const Problem p = make_problem(33);
  using V = std::vector<hgad::Var<double>>;
  const auto labels = p.labels;
  const hgad::Tensor<double> A = p.factors;
  const hgad::Var<double> mu_const(p.mu), phi_inter_const(p.phi_inter);
  struct Term {
    const char* name;
    std::function<hgad::Var<double>(const V&)> f;
    std::vector<hgad::Tensor<double>> inputs;
  };
  const std::vector<Term> terms{
      {"L_g", [&](const V& in) { return hgad::loss_g(in[0], in[1], in[2], in[3], A); },
       {p.z, p.ldj, p.mu, p.phi_inter}},
      {"L_mi", [&](const V& in) { return hgad::loss_mi(in[0], in[1], phi_inter_const, labels, 0.02, A); },
       {p.z, p.mu}},
      {"L_e", [&](const V& in) { return hgad::loss_e(in[0], in[1], A); }, {p.z, p.mu}},
      {"L_g_intra",
       [&](const V& in) { return hgad::loss_g_intra(in[0], in[1], mu_const, in[2], in[3], labels, A); },
       {p.z, p.ldj, p.delta, p.phi_intra}},
      {"L_z", [&](const V& in) { return hgad::loss_z(in[0], in[1], mu_const, in[2], in[3], labels, A); },
       {p.z, p.ldj, p.delta, p.phi_intra}},
  };
  for (const auto& term : terms) {
    INFO(term.name);
    const auto result = hgad::gradcheck(term.f, term.inputs);
    INFO(result.log);
    CHECK(result.ok);
  }
}

TEST_CASE("With class covariances the fused gradients match finite differences of the naive loss",
          "[loss]") {
  for (const bool class_level : {true, false}) {
    Problem p = make_problem(34, class_level);
    const double h = 1e-6;
    for (int stage : {1, 2}) {
      INFO("class level " << class_level << ", stage " << stage);
      auto prior = make_prior<double>(p);
      const auto result = hgad::hgad_loss_fused(prior, p.z, p.ldj, p.labels, stage);
      auto check_against = [&](hgad::Tensor<double>& input, const hgad::Tensor<double>& grad) {
        for (Index i = 0; i < input.numel(); ++i) {
          const double x = input.data()[i];
          input.data()[i] = x + h;
          const double plus = naive_total(p, stage);
          input.data()[i] = x - h;
          const double minus = naive_total(p, stage);
          input.data()[i] = x;
          CHECK(std::abs(grad.data()[i] - (plus - minus) / (2 * h)) <
                2e-6 * std::max(1.0, std::abs(grad.data()[i])));
        }
      };
      check_against(p.z, result.grad_z);
      check_against(p.ldj, result.grad_log_jac_det);
      // mu sits behind a stop-gradient in the intra terms and log pi in L_mi, so the naive loss's
      // differences match the gradient of mu in stage 1 only and never that of phi_inter (the
      // fused-against-autograd case covers both).
      if (stage == 1) check_against(p.mu, prior.mu().grad());
      if (stage == 2) {
        check_against(p.delta, prior.delta().grad());
        check_against(p.phi_intra, prior.phi_intra().grad());
      }
    }
  }
}

TEST_CASE("With class covariances the fused objective does not depend on the thread count", "[loss]") {
  for (const bool class_level : {true, false}) {
    INFO("class level " << class_level);
    const Problem p = make_problem(35, class_level);
    const Index rows = 2000;
    hgad::Rng rng(6);
    hgad::Tensor<float> z = hgad::Tensor<float>::randn({rows, D}, rng);
    hgad::Tensor<float> ldj = hgad::Tensor<float>::randn({rows}, rng);
    std::vector<std::int64_t> labels;
    for (Index n = 0; n < rows; ++n) labels.push_back(std::int64_t(rng.uniform_int(K)));
    auto a = make_prior<float>(p);
    auto b = make_prior<float>(p);
    hgad_test::check_thread_independent(a, b, z, ldj, labels);
  }
}

TEMPLATE_TEST_CASE("With class covariances the scores and the class posterior match naive loops",
                   "[prior]", float, double) {
  for (const bool class_level : {true, false}) {
    INFO("class level " << class_level);
    const Problem p = make_problem(36, class_level);
    const auto prior = make_prior<TestType>(p);
    const auto z = cast<TestType>(p.z);
    const auto ldj = cast<TestType>(p.ldj);
    const auto log_p = hgad::score_log_likelihood(prior, z, ldj, p.labels);
    const auto neg_h = hgad::score_neg_entropy(prior, z);
    const auto posterior = hgad::class_posterior(prior, z);
    const double tol = tolerance<TestType>() * 10;
    std::vector<double> phi(K);
    for (Index y = 0; y < K; ++y) phi[static_cast<std::size_t>(y)] = p.phi_inter(y);
    const std::vector<double> log_pi = hgad_test::naive_log_softmax(phi);
    for (Index n = 0; n < N; ++n) {
      const hgad_test::NaiveRow r = naive_row(p, n);
      const double S =
          hgad_test::naive_intra_log_mixture(r, p.phi_intra, p.labels[static_cast<std::size_t>(n)]);
      CHECK(close(log_p(n), (D * naive_c0 + S + p.ldj(n)) / D, tol));
      std::vector<double> a(static_cast<std::size_t>(K));
      for (std::size_t y = 0; y < a.size(); ++y) a[y] = r.classes[y] + log_pi[y];
      const std::vector<double> log_pt = hgad_test::naive_log_softmax(r.classes);
      const std::vector<double> log_post = hgad_test::naive_log_softmax(a);
      double want_neg_h = 0;
      for (double v : log_pt) want_neg_h += std::exp(v) * v;
      CHECK(close(neg_h(n), want_neg_h, tol));
      for (Index y = 0; y < K; ++y)
        CHECK(close(posterior(n, y), std::exp(log_post[static_cast<std::size_t>(y)]), tol));
    }
  }
}

TEST_CASE("Unit class factors give the paper's prior", "[prior]") {
  const Problem p = make_problem(37);
  hgad::GaussianMixturePrior<double> plain(p.mu, p.delta, p.phi_intra, p.phi_inter);
  hgad::Tensor<double> eye({K, D, D});
  for (Index y = 0; y < K; ++y)
    for (Index j = 0; j < D; ++j) eye(y, j, j) = 1.0;
  hgad::GaussianMixturePrior<double> with_eye(p.mu.clone(), p.delta.clone(), p.phi_intra.clone(),
                                              p.phi_inter.clone());
  with_eye.set_class_factors(eye);
  REQUIRE(with_eye.has_class_factors());
  REQUIRE_FALSE(plain.has_class_factors());
  const auto a = hgad::hgad_loss_fused(plain, p.z, p.ldj, p.labels, 2);
  const auto b = hgad::hgad_loss_fused(with_eye, p.z, p.ldj, p.labels, 2);
  CHECK(close(a.terms.total, b.terms.total, 1e-14));
  CHECK(hgad::test::max_rel_error(a.grad_z, b.grad_z) < 1e-13);
  CHECK(hgad::test::max_rel_error(plain.mu().grad(), with_eye.mu().grad()) < 1e-13);
  CHECK(hgad::test::max_rel_error(plain.delta().grad(), with_eye.delta().grad()) < 1e-13);
  CHECK(hgad::test::max_rel_error(hgad::score_neg_entropy(plain, p.z), hgad::score_neg_entropy(with_eye, p.z)) <
        1e-13);
}

TEST_CASE("set_class_factors refuses factors that are not a valid covariance factor, naming the entry",
          "[prior]") {
  const Problem p = make_problem(38);
  hgad::GaussianMixturePrior<double> prior(p.mu, p.delta, p.phi_intra, p.phi_inter);
  auto message = [&](hgad::Tensor<double> a) {
    try {
      prior.set_class_factors(std::move(a));
    } catch (const hgad::Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  CHECK_THAT(message(hgad::Tensor<double>({K, D, D + 1})), Catch::Contains("(K, D, D) = (3, 4, 4)"));
  hgad::Tensor<double> upper = p.factors.clone();
  upper(1, 0, 2) = 0.5;
  CHECK_THAT(message(upper), Catch::Contains("class 1 must be lower triangular"));
  hgad::Tensor<double> negative = p.factors.clone();
  negative(2, 3, 3) = -1.0;
  CHECK_THAT(message(negative), Catch::Contains("class 2 must be positive"));
  hgad::Tensor<double> nan = p.factors.clone();
  nan(0, 2, 1) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THAT(message(nan), Catch::Contains("class 0 holds nan"));
  CHECK_FALSE(prior.has_class_factors());  // nothing was half set
  prior.set_class_factors(p.factors);
  CHECK(prior.has_class_factors());
  CHECK(prior.class_level_factors());
  // A refused call keeps the factors, their log-determinants and their scope as they were.
  const double log_det = prior.class_log_det(2);
  CHECK_THAT(message(negative), Catch::Contains("class 2 must be positive"));
  CHECK(prior.class_factors().to_vector() == p.factors.to_vector());
  CHECK(prior.class_log_det(2) == log_det);
  CHECK(prior.class_level_factors());
  prior.set_class_factors(p.factors, false);
  CHECK(prior.has_class_factors());
  CHECK_FALSE(prior.class_level_factors());
  CHECK(prior.inter_factors().numel() == 0);
  prior.set_class_factors(hgad::Tensor<double>());
  CHECK_FALSE(prior.has_class_factors());
  CHECK_FALSE(prior.class_level_factors());
}

}  // namespace class_covariance_test
