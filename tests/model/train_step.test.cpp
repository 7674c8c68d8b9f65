#include <catch2/catch.hpp>

#include <hgad/model/train_step.hpp>
#include <hgad/prior/scores.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "golden.hpp"

namespace train_step_test {

namespace {

const char* const golden_files[] = {"hgad_golden_small.json", "hgad_golden_small_head.json"};

/// A level built from a golden file: every flow parameter and rotation, and the prior, loaded.
struct GoldenLevel {
  hgad::SequenceFlow<double> flow;
  hgad::GaussianMixturePrior<double> prior;
};

GoldenLevel load_level(const hgad::test::GoldenFile& golden) {
  hgad::AllInOneOptions options = hgad::AllInOneOptions::hgad();
  options.affine_clamping = golden.config_number("alpha");
  options.clamp_variant = hgad::soft_clamp_from_string(golden.config_string("clamp_mode"));
  hgad::Rng rng(0);
  GoldenLevel level{hgad::SequenceFlow<double>(golden.config_int("D"), golden.config_int("P"),
                                               golden.config_int("blocks"), options, rng),
                    hgad::GaussianMixturePrior<double>(golden.tensor("param.mu"), golden.tensor("param.delta"),
                                                       golden.tensor("param.phi_intra"),
                                                       golden.tensor("param.phi_inter"))};
  for (const auto& name : golden.tensor_names()) {
    if (name.rfind("param.block", 0) == 0) level.flow.set_parameter(name.substr(6), golden.tensor(name));
  }
  return level;
}

hgad::LossOptions golden_loss_options(const hgad::test::GoldenFile& golden) {
  hgad::LossOptions o;
  o.lambda1 = golden.config_number("lambda1");
  o.lambda2 = golden.config_number("lambda2");
  o.label_smoothing = golden.config_number("label_smoothing");
  return o;
}

double rel(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-300); }

/// Every parameter of the level against "<prefix><name>" of the golden file, by the README's
/// relative error.
void check_all_parameters(const GoldenLevel& level, const hgad::test::GoldenFile& golden, const std::string& prefix,
                          bool gradients, double tol) {
  for (const auto& [name, var] : hgad::detail::level_parameters(level.flow, level.prior)) {
    const std::string key = prefix + name.substr(name.find('.') + 1);
    INFO(key);
    if (gradients) {
      REQUIRE(var.has_grad());
      CHECK(hgad::test::max_rel_error(var.grad(), golden.tensor(key)) < tol);
    } else {
      CHECK(hgad::test::max_rel_error(var.value(), golden.tensor(key)) < tol);
    }
  }
}

}  // namespace

TEST_CASE("Golden: loss terms and every gradient, flow included, match in both stages on both paths", "[model]") {
  for (const char* file : golden_files) {
    INFO(file);
    auto golden = hgad::test::open_golden(file);
    if (!golden) return;
    const auto x = golden->tensor("input.x");
    const auto pos = golden->tensor("input.pos");
    const auto labels = golden->index_tensor("input.labels");
    const auto options = golden_loss_options(*golden);
    for (int stage : {1, 2}) {
      const std::string name = "stage" + std::to_string(stage);
      for (bool fused : {true, false}) {
        INFO(name << (fused ? " fused" : " autograd"));
        GoldenLevel level = load_level(*golden);
        hgad::SequenceFlowCache<double> cache;
        const auto terms =
            fused ? hgad::compute_gradients(level.flow, level.prior, x, pos, labels, stage, options, {}, cache)
                  : hgad::compute_gradients_reference(level.flow, level.prior, x, pos, labels, stage, options, {});
        CHECK(rel(terms.l_g, golden->scalar(name + ".L_g")) < 1e-10);
        CHECK(rel(terms.l_mi, golden->scalar(name + ".L_mi")) < 1e-10);
        CHECK(rel(terms.l_e, golden->scalar(name + ".L_e")) < 1e-10);
        CHECK(rel(terms.total, golden->scalar(name + ".loss")) < 1e-10);
        if (stage == 2) {
          CHECK(rel(terms.l_g_intra, golden->scalar(name + ".L_g_intra")) < 1e-10);
          CHECK(rel(terms.l_z, golden->scalar(name + ".L_z")) < 1e-10);
          check_all_parameters(level, *golden, name + ".grad.", true, 1e-9);
        } else {
          CHECK_FALSE(level.prior.delta().has_grad());
          CHECK_FALSE(level.prior.phi_intra().has_grad());
          for (const auto& [pname, var] : level.flow.named_parameters()) {
            INFO(pname);
            REQUIRE(var.has_grad());
            CHECK(hgad::test::max_rel_error(var.grad(), golden->tensor(name + ".grad." + pname)) < 1e-9);
          }
          CHECK(hgad::test::max_rel_error(level.prior.mu().grad(), golden->tensor(name + ".grad.mu")) < 1e-9);
          CHECK(hgad::test::max_rel_error(level.prior.phi_inter().grad(), golden->tensor(name + ".grad.phi_inter")) <
                1e-9);
        }
      }
    }
  }
}

TEST_CASE("Golden: three Adam steps (stage 1, 1, 2) give the recorded losses and parameters on both paths",
          "[model]") {
  for (const char* file : golden_files) {
    INFO(file);
    auto golden = hgad::test::open_golden(file);
    if (!golden) return;
    const auto x = golden->tensor("input.x");
    const auto pos = golden->tensor("input.pos");
    const auto labels = golden->index_tensor("input.labels");
    const auto options = golden_loss_options(*golden);
    hgad::HgadAdamOptions adam_options;
    adam_options.beta1 = golden->config_list("betas").at(0);
    adam_options.beta2 = golden->config_list("betas").at(1);
    adam_options.eps = golden->config_number("eps");
    adam_options.flow_weight_decay = golden->config_number("wd_flow");
    for (bool fused : {true, false}) {
      INFO((fused ? "fused" : "autograd"));
      GoldenLevel level = load_level(*golden);
      auto adam = hgad::make_hgad_adam(level.flow, level.prior, adam_options);
      hgad::SequenceFlowCache<double> cache;
      const auto& sequence = golden->train_sequence();
      REQUIRE(sequence.size() == golden->train_losses().size());
      for (std::size_t k = 0; k < sequence.size(); ++k) {
        INFO("step " << k);
        const int stage = int(sequence[k].at("stage"));
        adam.set_lr(sequence[k].at("lr"));
        const hgad::TrainStepContext context{0, std::int64_t(k)};
        const auto terms =
            fused ? hgad::train_step(level.flow, level.prior, adam, x, pos, labels, stage, options, context, cache)
                  : hgad::train_step_reference(level.flow, level.prior, adam, x, pos, labels, stage, options, context);
        const auto& want = golden->train_losses()[k];
        CHECK(rel(terms.l_g, want.at("L_g")) < 1e-10);
        CHECK(rel(terms.l_mi, want.at("L_mi")) < 1e-10);
        CHECK(rel(terms.l_e, want.at("L_e")) < 1e-10);
        CHECK(rel(terms.total, want.at("loss")) < 1e-10);
        if (stage == 2) {
          CHECK(rel(terms.l_g_intra, want.at("L_g_intra")) < 1e-10);
          CHECK(rel(terms.l_z, want.at("L_z")) < 1e-10);
        }
      }
      // delta and phi_intra had their first update at step 3 (t = 1); the rest are at t = 3.
      CHECK(adam.param_group(1).state[1].step == 1);
      CHECK(adam.param_group(2).state[0].step == 1);
      CHECK(adam.param_group(1).state[0].step == 3);
      for (const auto& [name, var] : hgad::detail::level_parameters(level.flow, level.prior)) {
        const std::string key = "train.after." + name.substr(name.find('.') + 1);
        INFO(key);
        const auto want = golden->tensor(key).to_vector();
        const auto got = var.value().to_vector();
        double diff = 0;
        for (std::size_t i = 0; i < want.size(); ++i) diff = std::max(diff, std::abs(got[i] - want[i]));
        CHECK(diff < 1e-12);
        CHECK(std::isfinite(diff));
      }
    }
  }
}

TEMPLATE_TEST_CASE("The fused training step equals the autograd step over several steps", "[model]", float, double) {
  hgad::Rng rng(21);
  const hgad::Index D = 10, P = 4, N = 40, K = 3;
  hgad::SequenceFlow<TestType> flow_a(D, P, 3, hgad::AllInOneOptions::hgad(), rng);
  hgad::GaussianMixturePrior<TestType> prior_a(K, 4, D, rng);
  hgad::Rng same(21);
  hgad::SequenceFlow<TestType> flow_b(D, P, 3, hgad::AllInOneOptions::hgad(), same);
  hgad::GaussianMixturePrior<TestType> prior_b(K, 4, D, same);
  const auto x = hgad::Tensor<TestType>::randn({N, D}, rng);
  const auto pos = hgad::Tensor<TestType>::randn({N, P}, rng);
  std::vector<std::int64_t> labels;
  for (hgad::Index n = 0; n < N; ++n) labels.push_back(std::int64_t(n % K));
  auto adam_a = hgad::make_hgad_adam(flow_a, prior_a, {1e-3});
  auto adam_b = hgad::make_hgad_adam(flow_b, prior_b, {1e-3});
  hgad::SequenceFlowCache<TestType> cache;
  const double tol = std::is_same_v<TestType, float> ? 1e-4 : 1e-11;
  for (int step = 0; step < 4; ++step) {
    const int stage = step < 2 ? 1 : 2;
    const auto a = hgad::train_step(flow_a, prior_a, adam_a, x, pos, labels, stage, {}, {0, step}, cache);
    const auto b = hgad::train_step_reference(flow_b, prior_b, adam_b, x, pos, labels, stage, {}, {0, step});
    CHECK(rel(a.total, b.total) < tol);
    CHECK(std::isfinite(double(a.total)));
  }
  const auto pa = hgad::detail::level_parameters(flow_a, prior_a);
  const auto pb = hgad::detail::level_parameters(flow_b, prior_b);
  for (std::size_t i = 0; i < pa.size(); ++i) {
    INFO(pa[i].first);
    // Adam turns gradient noise into steps of about lr where a gradient is near 0: compare absolutely.
    const auto va = pa[i].second.value().to_vector(), vb = pb[i].second.value().to_vector();
    double diff = 0;
    for (std::size_t j = 0; j < va.size(); ++j) diff = std::max(diff, std::abs(double(va[j]) - double(vb[j])));
    CHECK(diff < (std::is_same_v<TestType, float> ? 5e-3 : 1e-10));
  }
}

TEST_CASE("A positional encoding shared by the maps of a batch trains as its tiled copy", "[model]") {
  hgad::Rng rng(23);
  const hgad::Index D = 10, P = 4, M = 10, N = 4 * M, K = 3;
  hgad::SequenceFlow<double> flow_a(D, P, 2, hgad::AllInOneOptions::hgad(), rng);
  hgad::GaussianMixturePrior<double> prior_a(K, 4, D, rng);
  hgad::Rng same(23);
  hgad::SequenceFlow<double> flow_b(D, P, 2, hgad::AllInOneOptions::hgad(), same);
  hgad::GaussianMixturePrior<double> prior_b(K, 4, D, same);
  const auto x = hgad::Tensor<double>::randn({N, D}, rng);
  const auto shared = hgad::Tensor<double>::randn({M, P}, rng);
  hgad::Tensor<double> tiled({N, P});
  for (hgad::Index n = 0; n < N; ++n)
    for (hgad::Index p = 0; p < P; ++p) tiled(n, p) = shared(n % M, p);
  std::vector<std::int64_t> labels;
  for (hgad::Index n = 0; n < N; ++n) labels.push_back(std::int64_t(n / M % K));
  auto adam_a = hgad::make_hgad_adam(flow_a, prior_a, {1e-3});
  auto adam_b = hgad::make_hgad_adam(flow_b, prior_b, {1e-3});
  for (int step = 0; step < 3; ++step) {
    const auto a = hgad::train_step(flow_a, prior_a, adam_a, x, shared, labels, 2, {}, {0, step});
    const auto b = hgad::train_step(flow_b, prior_b, adam_b, x, tiled, labels, 2, {}, {0, step});
    CHECK(rel(a.total, b.total) < 1e-12);
  }
  CHECK(hgad::test::max_rel_error(flow_a.block(1).fc1_weight().value(), flow_b.block(1).fc1_weight().value()) < 1e-10);
  CHECK(hgad::test::max_rel_error(prior_a.mu().value(), prior_b.mu().value()) < 1e-10);
  const auto bad = hgad::Tensor<double>::randn({7, P}, rng);  // 40 rows cannot share 7
  CHECK_THROWS_WITH(hgad::train_step(flow_a, prior_a, adam_a, x, bad, labels, 2, {}, {0, 3}),
                    Catch::Contains("N a multiple of M") && Catch::Contains("(7, 4)"));
}

TEST_CASE("The NF objective trains the flow only, the same on both paths", "[model]") {
  hgad::Rng rng(24);
  const hgad::Index D = 8, P = 4, N = 30;
  hgad::SequenceFlow<double> flow_a(D, P, 2, hgad::AllInOneOptions::hgad(), rng);
  hgad::GaussianMixturePrior<double> prior_a(3, 4, D, rng);
  hgad::Rng same(24);
  hgad::SequenceFlow<double> flow_b(D, P, 2, hgad::AllInOneOptions::hgad(), same);
  hgad::GaussianMixturePrior<double> prior_b(3, 4, D, same);
  const auto x = hgad::Tensor<double>::randn({N, D}, rng);
  const auto pos = hgad::Tensor<double>::randn({N, P}, rng);
  const std::vector<std::int64_t> labels(N, 2);
  hgad::LossOptions options;
  options.objective = hgad::Objective::nf;
  auto adam_a = hgad::make_hgad_adam(flow_a, prior_a, {1e-3});
  auto adam_b = hgad::make_hgad_adam(flow_b, prior_b, {1e-3});
  const auto mu0 = prior_a.mu().value().to_vector();
  for (int step = 0; step < 3; ++step) {
    const auto a = hgad::train_step(flow_a, prior_a, adam_a, x, pos, labels, 2, options, {0, step});
    const auto b = hgad::train_step_reference(flow_b, prior_b, adam_b, x, pos, labels, 2, options, {0, step});
    CHECK(a.objective == hgad::Objective::nf);
    CHECK(rel(a.total, b.total) < 1e-12);
    CHECK(a.total == a.l_z);
  }
  for (const auto& p : prior_a.parameters()) CHECK_FALSE(p.has_grad());
  CHECK(prior_a.mu().value().to_vector() == mu0);
  CHECK(hgad::test::max_rel_error(flow_a.block(1).fc2_weight().value(), flow_b.block(1).fc2_weight().value()) < 1e-10);
  CHECK(adam_a.n_groups() == 3);
  CHECK(adam_a.param_group(0).options.weight_decay == 1e-4);
  CHECK(adam_a.param_group(1).options.weight_decay == 0.0);
  CHECK(adam_a.param_group(1).names == std::vector<std::string>{"prior.mu", "prior.delta"});
}

TEMPLATE_TEST_CASE("A NaN feature stops the step with NonFiniteError and leaves every parameter unchanged", "[model]",
                   float, double) {
  hgad::Rng rng(22);
  const hgad::Index D = 6, P = 4, N = 12;
  hgad::SequenceFlow<TestType> flow(D, P, 2, hgad::AllInOneOptions::hgad(), rng);
  hgad::GaussianMixturePrior<TestType> prior(2, 3, D, rng);
  auto x = hgad::Tensor<TestType>::randn({N, D}, rng);
  const auto pos = hgad::Tensor<TestType>::randn({N, P}, rng);
  const std::vector<std::int64_t> labels(N, 1);
  auto adam = hgad::make_hgad_adam(flow, prior);
  hgad::SequenceFlowCache<TestType> cache;
  hgad::train_step(flow, prior, adam, x, pos, labels, 2, {}, {1, 0}, cache);  // one good step first
  const auto params = hgad::detail::level_parameters(flow, prior);
  std::vector<std::vector<TestType>> before;
  for (const auto& [name, var] : params) before.push_back(var.value().to_vector());
  const auto adam_steps = adam.param_group(0).state[0].step;
  x(5, 2) = std::numeric_limits<TestType>::quiet_NaN();
  for (bool fused : {true, false}) {
    INFO((fused ? "fused" : "autograd"));
    try {
      if (fused) {
        hgad::train_step(flow, prior, adam, x, pos, labels, 2, {}, {1, 17}, cache);
      } else {
        hgad::train_step_reference(flow, prior, adam, x, pos, labels, 2, {}, {1, 17});
      }
      FAIL("no NonFiniteError");
    } catch (const hgad::NonFiniteError& e) {
      const std::string message = e.what();
      INFO(message);
      CHECK(message.find("L_g") != std::string::npos);
      CHECK(message.find("level 1") != std::string::npos);
      CHECK(message.find("step 17") != std::string::npos);
    }
    for (std::size_t i = 0; i < params.size(); ++i) {
      INFO(params[i].first);
      CHECK(params[i].second.value().to_vector() == before[i]);
    }
    CHECK(adam.param_group(0).state[0].step == adam_steps);
  }
}

TEST_CASE("The gradient check names the first non-finite parameter with the level and the step", "[model]") {
  hgad::Rng rng(23);
  hgad::SequenceFlow<double> flow(6, 2, 2, hgad::AllInOneOptions::hgad(), rng);
  hgad::GaussianMixturePrior<double> prior(2, 3, 6, rng);
  CHECK_NOTHROW(hgad::detail::check_finite_gradients(flow, prior, {2, 5}, "train_step"));
  flow.block(1).gamma().ensure_grad()(3) = std::numeric_limits<double>::infinity();
  prior.delta().ensure_grad()(0, 1, 2) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH(hgad::detail::check_finite_gradients(flow, prior, {2, 5}, "train_step"),
                    Catch::Contains("flow.block1.gamma") && Catch::Contains("level 2") && Catch::Contains("step 5"));
  flow.block(1).gamma().zero_grad();
  CHECK_THROWS_AS(hgad::detail::check_finite_gradients(flow, prior, {2, 5}, "train_step"), hgad::NonFiniteError);
  CHECK_THROWS_WITH(hgad::detail::check_finite_gradients(flow, prior, {2, 5}, "train_step"),
                    Catch::Contains("prior.delta"));
}

TEST_CASE("End to end: three Gaussian clusters are classified by the posterior and an unseen cluster scores lower",
          "[model]") {
  const auto start = std::chrono::steady_clock::now();
  hgad::Rng rng(2024);
  const hgad::Index D = 8, P = 0, K = 3, per_class = 40;
  // Cluster centres 4 e_k (k = 0, 1, 2) for the classes and 4 e_3 for the unseen cluster, sd 0.5.
  const auto sample = [&](hgad::Index cluster, hgad::Index n, hgad::Tensor<double>& out, hgad::Index row0) {
    for (hgad::Index i = 0; i < n; ++i) {
      for (hgad::Index j = 0; j < D; ++j) out(row0 + i, j) = (j == cluster ? 4.0 : 0.0) + 0.5 * rng.normal();
    }
  };
  hgad::SequenceFlow<double> flow(D, P, 4, hgad::AllInOneOptions::hgad(), rng);
  hgad::GaussianMixturePrior<double> prior(K, 4, D, rng);
  auto adam = hgad::make_hgad_adam(flow, prior, {1e-2});
  hgad::SequenceFlowCache<double> cache;
  hgad::Tensor<double> x({K * per_class, D});
  std::vector<std::int64_t> labels;
  for (hgad::Index y = 0; y < K; ++y) labels.insert(labels.end(), std::size_t(per_class), y);
  const int n_steps = 600;
  for (int step = 0; step < n_steps; ++step) {
    for (hgad::Index y = 0; y < K; ++y) sample(y, per_class, x, y * per_class);
    const int stage = step < n_steps / 3 ? 1 : 2;
    const auto terms = hgad::train_step(flow, prior, adam, x, hgad::Tensor<double>(), labels, stage, {}, {0, step},
                                        cache);
    REQUIRE(std::isfinite(terms.total));
  }
  // Held-out points of the three classes and of the unseen cluster.
  const hgad::Index n_test = 100;
  hgad::Tensor<double> normal({K * n_test, D}), anomal({n_test, D});
  std::vector<std::int64_t> test_labels;
  for (hgad::Index y = 0; y < K; ++y) {
    sample(y, n_test, normal, y * n_test);
    test_labels.insert(test_labels.end(), std::size_t(n_test), y);
  }
  sample(3, n_test, anomal, 0);
  const auto zn = flow.forward(normal);
  const auto za = flow.forward(anomal);
  const auto posterior = hgad::class_posterior(prior, zn.out);
  int correct = 0;
  for (hgad::Index n = 0; n < K * n_test; ++n) {
    hgad::Index best = 0;
    for (hgad::Index y = 1; y < K; ++y) best = posterior(n, y) > posterior(n, best) ? y : best;
    correct += best == test_labels[std::size_t(n)];
  }
  const double accuracy = double(correct) / double(K * n_test);
  INFO("accuracy " << accuracy);
  CHECK(accuracy >= 0.95);
  // Anomaly score: the best per-class log-likelihood; normal points must score higher.
  const auto best_logp = [&](const hgad::FlowResult<double>& r) {
    std::vector<double> best(std::size_t(r.out.rows()), -std::numeric_limits<double>::infinity());
    for (hgad::Index y = 0; y < K; ++y) {
      const auto logp = hgad::score_log_likelihood(prior, r.out, r.log_jac_det, std::int64_t(y));
      for (hgad::Index n = 0; n < r.out.rows(); ++n) best[std::size_t(n)] = std::max(best[std::size_t(n)], logp(n));
    }
    return best;
  };
  const auto normal_scores = best_logp(zn), anomal_scores = best_logp(za);
  // AUROC of "anomalous" by lower log-likelihood, by counting pairs (ties count one half).
  double pairs = 0;
  for (double a : anomal_scores) {
    for (double s : normal_scores) pairs += a < s ? 1.0 : (a == s ? 0.5 : 0.0);
  }
  const double auroc = pairs / double(anomal_scores.size() * normal_scores.size());
  INFO("AUROC " << auroc);
  CHECK(auroc >= 0.95);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  INFO("seconds " << seconds);
#ifndef HGAD_SANITIZED
  CHECK(seconds < 10.0);
#endif
}

}  // namespace train_step_test
