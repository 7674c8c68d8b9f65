#include <catch2/catch.hpp>

#include <hgad/loss/fused_loss.hpp>
#include <hgad/loss/hgad_loss.hpp>

#include <algorithm>
#include <cmath>
#include <string>

#include "golden.hpp"

namespace golden_loss_test {

namespace {

hgad::GaussianMixturePrior<double> golden_prior(const hgad::test::GoldenFile& golden) {
  return hgad::GaussianMixturePrior<double>(golden.tensor("param.mu"), golden.tensor("param.delta"),
                                            golden.tensor("param.phi_intra"), golden.tensor("param.phi_inter"));
}

void check_terms(const hgad::LossTerms<double>& got, const hgad::test::GoldenFile& golden, const std::string& stage) {
  const auto rel = [](double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-300); };
  CHECK(rel(got.l_g, golden.scalar(stage + ".L_g")) < 1e-10);
  CHECK(rel(got.l_mi, golden.scalar(stage + ".L_mi")) < 1e-10);
  CHECK(rel(got.l_e, golden.scalar(stage + ".L_e")) < 1e-10);
  CHECK(rel(got.total, golden.scalar(stage + ".loss")) < 1e-10);
  if (stage == "stage2") {
    CHECK(rel(got.l_g_intra, golden.scalar(stage + ".L_g_intra")) < 1e-10);
    CHECK(rel(got.l_z, golden.scalar(stage + ".L_z")) < 1e-10);
  }
}

void check_prior_grads(const hgad::GaussianMixturePrior<double>& prior, const hgad::test::GoldenFile& golden,
                       const std::string& stage) {
  const auto names = hgad::GaussianMixturePrior<double>::parameter_names();
  const auto params = prior.parameters();
  const auto without = golden.string_list(stage + ".params_without_grad");
  for (std::size_t i = 0; i < names.size(); ++i) {
    INFO(stage << " grad " << names[i]);
    const bool expect_none = std::find(without.begin(), without.end(), names[i]) != without.end();
    CHECK(params[i].has_grad() == !expect_none);
    if (!expect_none && params[i].has_grad()) {
      CHECK(hgad::test::max_rel_error(params[i].grad(), golden.tensor(stage + ".grad." + names[i])) < 1e-9);
    }
  }
}

}  // namespace

TEST_CASE("Golden: every loss term, the total and the prior's gradients match in both stages and paths", "[loss]") {
  for (const char* file : {"hgad_golden_small.json", "hgad_golden_small_head.json"}) {
    INFO(file);
    auto golden = hgad::test::open_golden(file);
    if (!golden) return;
    const auto z = golden->tensor("out.z");
    const auto ldj = golden->tensor("out.logdet");
    const auto labels = golden->index_tensor("input.labels");
    hgad::LossOptions options;
    options.lambda1 = golden->config_number("lambda1");
    options.lambda2 = golden->config_number("lambda2");
    options.label_smoothing = golden->config_number("label_smoothing");
    for (int stage : {1, 2}) {
      const std::string name = "stage" + std::to_string(stage);
      INFO(name);
      {
        auto prior = golden_prior(*golden);
        auto vars = hgad::objective_loss(prior, hgad::Var<double>(z), hgad::Var<double>(ldj), labels, stage, options);
        vars.total.backward();
        check_terms(vars.values(), *golden, name);
        check_prior_grads(prior, *golden, name);
      }
      {
        auto prior = golden_prior(*golden);
        const auto fused = hgad::objective_loss_fused(prior, z, ldj, labels, stage, options);
        check_terms(fused.terms, *golden, name);
        check_prior_grads(prior, *golden, name);
      }
    }
  }
}

}  // namespace golden_loss_test
