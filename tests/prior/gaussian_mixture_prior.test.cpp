#include <catch2/catch.hpp>

#include <hgad/prior/gaussian_mixture_prior.hpp>
#include <hgad/prior/scores.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "golden.hpp"

namespace gaussian_mixture_prior_test {

TEST_CASE("The class-centre initialisation reproduces the table of docs/algorithm.md 3.1 at D = 200", "[prior]") {
  struct Row {
    hgad::Index K;
    double init_scale;
    hgad::Index blocks;
    double norm2;
  };
  // dataset: MVTec, BTAD, MVTec3D, VisA, Union (docs/algorithm.md §3.1).
  const std::vector<Row> table{{15, 0.980581, 13, 12.5},
                               {3, 0.433555, 66, 12.406},
                               {10, 0.790569, 20, 12.5},
                               {12, 0.870388, 16, 12.121},
                               {40, 1.581139, 5, 12.5}};
  const hgad::Index D = 200;
  for (const Row& row : table) {
    INFO("K = " << row.K);
    CHECK(hgad::class_center_init_scale(row.K, D) == Approx(row.init_scale).epsilon(1e-6));
    const auto mu = hgad::class_center_init<double>(row.K, D);
    REQUIRE(mu.shape() == hgad::Shape{row.K, D});
    for (hgad::Index y = 0; y < row.K; ++y) {
      double norm2 = 0;
      hgad::Index nonzero = 0;
      for (hgad::Index j = 0; j < D; ++j) {
        norm2 += mu(y, j) * mu(y, j);
        nonzero += mu(y, j) != 0.0;
        // Identity blocks: column j belongs to class j mod K inside the first blocks*K columns.
        const bool on = j < row.blocks * row.K && j % row.K == y;
        if (on) {
          CHECK(std::abs(mu(y, j) - row.init_scale) < 1e-6);
        } else {
          CHECK(mu(y, j) == 0.0);
        }
      }
      CHECK(nonzero == row.blocks);
      CHECK(norm2 == Approx(row.norm2).epsilon(1e-4));
      for (hgad::Index other = 0; other < y; ++other) {
        double dot = 0;
        for (hgad::Index j = 0; j < D; ++j) dot += mu(y, j) * mu(other, j);
        CHECK(dot == 0.0);
      }
    }
  }
  CHECK(hgad::class_center_init_scale(15, 200) == Approx(0.9805807).epsilon(1e-7));
}

TEST_CASE("The prior's initialisation: identity-block centres, N(0,1) deltas from the Rng, zero logits", "[prior]") {
  hgad::Rng rng(3), same(3);
  hgad::GaussianMixturePrior<double> prior(5, 10, 64, rng);
  CHECK(prior.n_classes() == 5);
  CHECK(prior.n_centers() == 10);
  CHECK(prior.dim() == 64);
  CHECK(prior.mu().value().to_vector() == hgad::class_center_init<double>(5, 64).to_vector());
  REQUIRE(prior.delta().shape() == hgad::Shape{5, 9, 64});
  CHECK(prior.delta().value().to_vector() == hgad::Tensor<double>::randn({5, 9, 64}, same).to_vector());
  const auto delta = prior.delta().value().to_vector();
  double mean = 0, var = 0;
  for (double v : delta) mean += v / double(delta.size());
  for (double v : delta) var += (v - mean) * (v - mean) / double(delta.size());
  CHECK(std::abs(mean) < 0.1);
  CHECK(std::abs(var - 1.0) < 0.1);
  CHECK(prior.phi_intra().shape() == hgad::Shape{5, 10});
  CHECK(prior.phi_inter().shape() == hgad::Shape{5});
  for (double v : prior.phi_intra().value().to_vector()) CHECK(v == 0.0);
  for (double v : prior.phi_inter().value().to_vector()) CHECK(v == 0.0);
  for (const auto& p : prior.parameters()) {
    CHECK(p.requires_grad());
    CHECK_FALSE(p.has_grad());
  }
  CHECK(hgad::GaussianMixturePrior<double>::parameter_names() ==
        std::vector<std::string>{"mu", "delta", "phi_intra", "phi_inter"});
  // Uniform weights: log pi = -ln K, log w = -ln M.
  for (double v : prior.log_pi_values().to_vector()) CHECK(v == Approx(-std::log(5.0)));
  for (double v : prior.log_w_values().to_vector()) CHECK(v == Approx(-std::log(10.0)));
}

TEST_CASE("The intra-class centres are mu_y and mu_y + delta_{y,k}", "[prior]") {
  hgad::Rng rng(4);
  hgad::GaussianMixturePrior<float> prior(3, 4, 7, rng);
  prior.mu().value() = hgad::Tensor<float>::randn({3, 7}, rng);
  const auto centers = prior.intra_center_values();
  REQUIRE(centers.shape() == hgad::Shape{3, 4, 7});
  for (hgad::Index y = 0; y < 3; ++y) {
    for (hgad::Index j = 0; j < 7; ++j) {
      CHECK(centers(y, 0, j) == prior.mu().value()(y, j));
      for (hgad::Index k = 1; k < 4; ++k) {
        CHECK(centers(y, k, j) == prior.mu().value()(y, j) + prior.delta().value()(y, k - 1, j));
      }
    }
  }
}

TEST_CASE("The prior rejects inconsistent shapes and impossible sizes", "[prior]") {
  hgad::Rng rng(0);
  CHECK_THROWS_WITH(hgad::class_center_init_scale(401, 200), Catch::Contains("K = 401"));
  CHECK_THROWS_AS(hgad::GaussianMixturePrior<float>(3, 0, 8, rng), hgad::Error);
  CHECK_THROWS_WITH(hgad::GaussianMixturePrior<float>(hgad::Tensor<float>({3, 8}), hgad::Tensor<float>({3, 2, 7}),
                                                      hgad::Tensor<float>({3, 3}), hgad::Tensor<float>({3})),
                    Catch::Contains("delta") && Catch::Contains("(3, 2, 7)"));
  CHECK_THROWS_WITH(hgad::GaussianMixturePrior<float>(hgad::Tensor<float>({3, 8}), hgad::Tensor<float>({3, 2, 8}),
                                                      hgad::Tensor<float>({3, 3}), hgad::Tensor<float>({4})),
                    Catch::Contains("phi_inter"));
}

TEMPLATE_TEST_CASE("The test-time scores match naive loops", "[prior]", float, double) {
  hgad::Rng rng(9);
  const hgad::Index K = 3, M = 4, D = 5, N = 9;
  hgad::GaussianMixturePrior<TestType> prior(hgad::Tensor<TestType>::randn({K, D}, rng),
                                             hgad::Tensor<TestType>::randn({K, M - 1, D}, rng),
                                             hgad::Tensor<TestType>::randn({K, M}, rng),
                                             hgad::Tensor<TestType>::randn({K}, rng));
  const auto z = hgad::Tensor<TestType>::randn({N, D}, rng, 0, 1.5);
  const auto ldj = hgad::Tensor<TestType>::randn({N}, rng);
  std::vector<std::int64_t> classes;
  for (hgad::Index n = 0; n < N; ++n) classes.push_back(std::int64_t((n * 7) % K));
  const auto& mu = prior.mu().value();
  const auto& delta = prior.delta().value();
  const auto& phi_intra = prior.phi_intra().value();
  const auto& phi_inter = prior.phi_inter().value();
  const double c0 = -0.9189385332046727;
  const double tol = std::is_same_v<TestType, float> ? 1e-5 : 1e-13;

  const auto logp = hgad::score_log_likelihood(prior, z, ldj, classes);
  const auto logp0 = hgad::score_log_likelihood(prior, z, ldj, std::int64_t(0));
  const auto neg_h = hgad::score_neg_entropy(prior, z);
  const auto posterior = hgad::class_posterior(prior, z);
  const auto logp_nf = hgad::score_log_likelihood_nf(z, ldj);
  double pi_norm = 0;
  for (hgad::Index y = 0; y < K; ++y) pi_norm += std::exp(double(phi_inter(y)));
  for (hgad::Index n = 0; n < N; ++n) {
    for (int which = 0; which < 2; ++which) {
      const hgad::Index c = which == 0 ? classes[std::size_t(n)] : 0;
      double w_norm = 0;
      for (hgad::Index k = 0; k < M; ++k) w_norm += std::exp(double(phi_intra(c, k)));
      double mixture = 0;
      for (hgad::Index k = 0; k < M; ++k) {
        double e = 0;
        for (hgad::Index j = 0; j < D; ++j) {
          const double m = double(mu(c, j)) + (k == 0 ? 0.0 : double(delta(c, k - 1, j)));
          e += (double(z(n, j)) - m) * (double(z(n, j)) - m);
        }
        mixture += std::exp(double(phi_intra(c, k))) / w_norm * std::exp(-0.5 * e);
      }
      const double want = (D * c0 + std::log(mixture) + double(ldj(n))) / D;
      CHECK(std::abs(double((which == 0 ? logp : logp0)(n)) - want) < tol * std::max(1.0, std::abs(want)));
    }
    std::vector<double> d(K);
    double norm = 0, norm_pi = 0;
    for (hgad::Index y = 0; y < K; ++y) {
      d[y] = 0;
      for (hgad::Index j = 0; j < D; ++j) d[y] += (double(z(n, j)) - double(mu(y, j))) * (double(z(n, j)) - double(mu(y, j)));
      norm += std::exp(-0.5 * d[y]);
      norm_pi += std::exp(double(phi_inter(y))) / pi_norm * std::exp(-0.5 * d[y]);
    }
    double want_neg_h = 0;
    for (hgad::Index y = 0; y < K; ++y) {
      const double p = std::exp(-0.5 * d[y]) / norm;
      want_neg_h += p * std::log(p);
      const double post = std::exp(double(phi_inter(y))) / pi_norm * std::exp(-0.5 * d[y]) / norm_pi;
      CHECK(std::abs(double(posterior(n, y)) - post) < tol);
    }
    CHECK(std::abs(double(neg_h(n)) - want_neg_h) < tol);
    CHECK(std::isfinite(double(neg_h(n))));
    double sq = 0;
    for (hgad::Index j = 0; j < D; ++j) sq += double(z(n, j)) * double(z(n, j));
    const double want_nf = (D * c0 - 0.5 * sq + double(ldj(n))) / D;
    CHECK(std::abs(double(logp_nf(n)) - want_nf) < tol * std::max(1.0, std::abs(want_nf)));
  }
}

TEST_CASE("Golden: the prior's distances, the scores and init match the PyTorch reference", "[prior]") {
  for (const char* file : {"hgad_golden_small.json", "hgad_golden_small_head.json"}) {
    INFO(file);
    auto golden = hgad::test::open_golden(file);
    if (!golden) return;
    hgad::GaussianMixturePrior<double> prior(golden->tensor("param.mu"), golden->tensor("param.delta"),
                                             golden->tensor("param.phi_intra"), golden->tensor("param.phi_inter"));
    const auto z = golden->tensor("out.z");
    const auto ldj = golden->tensor("out.logdet");
    const auto labels = golden->index_tensor("input.labels");
    CHECK(hgad::test::max_rel_error(hgad::class_center_init<double>(golden->config_int("K"), golden->config_int("D")),
                                    golden->tensor("init.mu")) < 1e-15);
    const hgad::Var<double> zv(z);
    CHECK(hgad::test::max_rel_error(hgad::inter_class_sqdist(zv, prior.mu()).value(), golden->tensor("out.dist_inter")) <
          1e-12);
    CHECK(hgad::test::max_rel_error(hgad::intra_class_sqdist(zv, prior.mu(), prior.delta(), labels).value(),
                                    golden->tensor("out.dist_intra")) < 1e-12);
    CHECK(hgad::test::max_rel_error(hgad::score_log_likelihood(prior, z, ldj, labels), golden->tensor("score.logp_gt")) <
          1e-10);
    CHECK(hgad::test::max_rel_error(hgad::score_log_likelihood(prior, z, ldj, std::int64_t(0)),
                                    golden->tensor("score.logp_cls0")) < 1e-10);
    CHECK(hgad::test::max_rel_error(hgad::score_neg_entropy(prior, z), golden->tensor("score.negH")) < 1e-10);
  }
}

}  // namespace gaussian_mixture_prior_test
