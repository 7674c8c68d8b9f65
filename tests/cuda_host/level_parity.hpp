#pragma once
// The parity check of a level engine (HostLevel on the CPU, CudaLevel on the GPU) against the
// fused CPU path: forward, scores, and three training steps (stages 1, 2, 2) with the loss terms,
// the gradients and the parameters compared after each step. Shared by tests/cuda_host (HostLevel,
// every CI run) and tests/cuda (CudaLevel, on a device).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <set>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include <hgad/flow/positional_encoding.hpp>
#include <hgad/flow/sequence_flow.hpp>
#include <hgad/model/train_step.hpp>
#include <hgad/prior/gaussian_mixture_prior.hpp>
#include <hgad/prior/scores.hpp>
#include <hgad/rng.hpp>
#include <hgad/tensor.hpp>

namespace hgad_test {

/// A level and its batch: N = B h w rows, the positional encoding of an h x w map repeated over
/// B images (docs/algorithm.md §1.3-1.4).
struct LevelParityConfig {
  hgad::Index D = 200, P = 256, n_blocks = 12, K = 15, M = 10;
  hgad::Index B = 2, h = 8, w = 8;
  bool condition_table = true;  ///< give the level the (h w, P) table instead of the (N, P) rows
  hgad::SoftClamp clamp = hgad::SoftClamp::pinned;
  double lr = 2e-4;
  std::uint64_t seed = 0;
  /// Start every step of the CPU path from the engine's parameters and Adam state (float: a
  /// float trajectory can cross a ReLU kink, a hidden unit of one row switching on or off, after
  /// which the two paths' gradients differ by far more than their rounding). Without it the three
  /// steps are two independent trajectories (double).
  bool resync = false;

  hgad::Index N() const { return B * h * w; }
  std::string describe() const {
    std::ostringstream out;
    out << "D " << D << " P " << P << " blocks " << n_blocks << " K " << K << " M " << M << " N " << N()
        << (condition_table ? " (condition table)" : " (condition rows)")
        << (clamp == hgad::SoftClamp::pinned ? " pinned" : " head") << (resync ? ", resynchronised" : "");
    return out.str();
  }
};

/// ||a - b||_2 / ||b||_2, and whether every element is finite.
template <class Scalar>
double norm_relative_error(const std::vector<Scalar>& a, const std::vector<Scalar>& b, bool* finite) {
  double diff = 0, ref = 0;
  *finite = a.size() == b.size();
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    if (!std::isfinite(double(a[i])) || !std::isfinite(double(b[i]))) *finite = false;
    diff += (double(a[i]) - double(b[i])) * (double(a[i]) - double(b[i]));
    ref += double(b[i]) * double(b[i]);
  }
  return std::sqrt(diff) / std::max(std::sqrt(ref), 1e-300);
}

/// norm_relative_error after setting aside the `n_excuse` rows (of `row` elements) with the largest
/// error, which are returned in *excused.
template <class Scalar>
double norm_relative_error_excusing(const std::vector<Scalar>& a, const std::vector<Scalar>& b, std::size_t row,
                                    int n_excuse, std::set<std::size_t>* excused, bool* finite) {
  excused->clear();
  if (n_excuse > 0 && a.size() == b.size() && row > 0) {
    std::vector<std::pair<double, std::size_t>> row_error(a.size() / row);
    for (std::size_t r = 0; r < row_error.size(); ++r) {
      double e2 = 0;
      for (std::size_t k = r * row; k < (r + 1) * row; ++k) e2 += (double(a[k]) - double(b[k])) * (double(a[k]) - double(b[k]));
      row_error[r] = {e2, r};
    }
    std::sort(row_error.rbegin(), row_error.rend());
    for (std::size_t r = 0; r < row_error.size() && r < std::size_t(n_excuse); ++r) excused->insert(row_error[r].second);
  }
  std::vector<Scalar> a_kept, b_kept;
  for (std::size_t k = 0; k < std::min(a.size(), b.size()); ++k) {
    if (excused->count(k / row) != 0) continue;
    a_kept.push_back(a[k]);
    b_kept.push_back(b[k]);
  }
  double ref = 0;
  for (Scalar v : b) ref += double(v) * double(v);
  bool kept_finite = false;
  const double err = norm_relative_error(a_kept, b_kept, &kept_finite);
  double kept_ref = 0;
  for (Scalar v : b_kept) kept_ref += double(v) * double(v);
  *finite = kept_finite && a.size() == b.size();
  for (std::size_t k = 0; k < std::min(a.size(), b.size()); ++k)
    if (!std::isfinite(double(a[k]))) *finite = false;
  // Relative to the norm of the whole tensor.
  return err * std::sqrt(kept_ref) / std::max(std::sqrt(ref), 1e-300);
}

/// Element-wise agreement of two arrays: |a - b| <= rel (|b| + floor max|b|) for every element.
template <class Scalar>
bool elementwise_close(const std::vector<Scalar>& a, const std::vector<Scalar>& b, double rel, double floor,
                       std::string* message) {
  double max_ref = 0;
  for (Scalar v : b) max_ref = std::max(max_ref, std::abs(double(v)));
  std::size_t bad = 0, worst = 0;
  double worst_ratio = 0;
  bool finite = a.size() == b.size();
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    if (!std::isfinite(double(a[i])) || !std::isfinite(double(b[i]))) {
      finite = false;
      continue;
    }
    const double ratio = std::abs(double(a[i]) - double(b[i])) / (rel * (std::abs(double(b[i])) + floor * max_ref) + 1e-300);
    if (ratio > 1) ++bad;
    if (ratio > worst_ratio) {
      worst_ratio = ratio;
      worst = i;
    }
  }
  std::ostringstream out;
  out << bad << " of " << a.size() << " outside rel " << rel << (finite ? "" : ", NON-FINITE values")
      << "; worst [" << worst << "] " << (a.empty() ? 0.0 : double(a[worst])) << " vs "
      << (b.empty() ? 0.0 : double(b[worst])) << " (error/tolerance " << worst_ratio << ")";
  *message = out.str();
  return finite && bad == 0;
}

/// The parameters (or gradients) of a level by name, in the order of make_hgad_adam's names.
template <class Scalar>
std::vector<std::pair<std::string, std::vector<Scalar>>> level_tensors(const hgad::SequenceFlow<Scalar>& flow,
                                                                     const hgad::GaussianMixturePrior<Scalar>& prior,
                                                                     bool gradients, bool stage2_grads) {
  std::vector<std::pair<std::string, std::vector<Scalar>>> out;
  const auto add = [&](const std::string& name, const hgad::Var<Scalar>& v) {
    if (gradients && !v.has_grad()) return;
    out.emplace_back(name, gradients ? v.grad().to_vector() : v.value().to_vector());
  };
  for (const auto& [name, var] : flow.named_parameters()) add("flow." + name, var);
  add("prior.mu", prior.mu());
  add("prior.phi_inter", prior.phi_inter());
  if (!gradients || stage2_grads) {
    add("prior.delta", prior.delta());
    add("prior.phi_intra", prior.phi_intra());
  }
  return out;
}

/// Runs the parity check. `make_level(flow, prior, options)` returns the engine under test (it copies
/// the parameters). With rel = 1e-4 (float) or 1e-9 (double): forward z, log-det and scores
/// element-wise within rel; at each step the loss terms within rel; the gradients within rel in
/// norm per tensor (float after the first step: 1e-2, see below); the parameters within rel in norm
/// per tensor, their updates within 1e-2 (float) or 1e-6 (double) in norm, every element within
/// 4 lr t of the CPU's.
template <class Scalar, class MakeLevel>
void check_level_parity(const LevelParityConfig& c, MakeLevel make_level) {
  using hgad::Index;
  using Tensor = hgad::Tensor<Scalar>;
  const bool is_float = std::is_same_v<Scalar, float>;
  const double rel = is_float ? 1e-4 : 1e-9;
  INFO(c.describe());

  hgad::AllInOneOptions options = hgad::AllInOneOptions::hgad();
  options.clamp_variant = c.clamp;
  const auto make_model = [&]() {
    hgad::Rng rng(c.seed);
    hgad::SequenceFlow<Scalar> flow(c.D, c.P, c.n_blocks, options, rng);
    hgad::GaussianMixturePrior<Scalar> prior(c.K, c.M, c.D, rng);
    return std::make_pair(std::move(flow), std::move(prior));
  };
  auto [flow, prior] = make_model();
  auto [flow_out, prior_out] = make_model();  // receives the engine's parameters and gradients

  const Index N = c.N(), Nc = c.h * c.w;
  hgad::Rng data_rng(c.seed + 1000);
  const Tensor x = Tensor::randn({N, c.D}, data_rng);
  const Tensor table = hgad::positional_encoding_2d<Scalar>(c.P, c.h, c.w);  // (Nc, P)
  Tensor cond_rows({N, c.P});
  for (Index n = 0; n < N; ++n)
    for (Index j = 0; j < c.P; ++j) cond_rows(n, j) = table(n % Nc, j);
  std::vector<std::int64_t> labels(static_cast<std::size_t>(N));
  for (Index n = 0; n < N; ++n) labels[static_cast<std::size_t>(n)] = (n / Nc) % c.K;
  const Tensor& cond_level = c.condition_table ? table : cond_rows;

  hgad::cuda::LevelOptions level_options;
  level_options.adam.lr = c.lr;
  auto level = make_level(flow, prior, level_options);

  // Forward and scores before training.
  {
    const hgad::FlowResult<Scalar> ref = flow.forward(x, cond_rows);
    const hgad::FlowResult<Scalar> got = level.forward(x, cond_level);
    std::string message;
    const bool z_ok = elementwise_close(got.out.to_vector(), ref.out.to_vector(), rel, 1e-2, &message);
    INFO("forward z: " << message);
    CHECK(z_ok);
    const bool ld_ok =
        elementwise_close(got.log_jac_det.to_vector(), ref.log_jac_det.to_vector(), rel, 1e-2, &message);
    INFO("forward log_jac_det: " << message);
    CHECK(ld_ok);
    const auto scores = level.score(x, cond_level, labels);
    const Tensor ref_log_p = hgad::score_log_likelihood(prior, ref.out, ref.log_jac_det, labels);
    const Tensor ref_neg_h = hgad::score_neg_entropy(prior, ref.out);
    const bool lp_ok = elementwise_close(scores.log_p.to_vector(), ref_log_p.to_vector(), rel, 1e-2, &message);
    INFO("score log_p: " << message);
    CHECK(lp_ok);
    // neg_entropy lies in [-ln K, 0]; errors are measured against its largest magnitude.
    const bool nh_ok = elementwise_close(scores.neg_entropy.to_vector(), ref_neg_h.to_vector(), rel,
                                         1.0, &message);
    INFO("score neg_entropy: " << message);
    CHECK(nh_ok);
  }

  hgad::HgadAdamOptions adam_options;
  adam_options.lr = c.lr;
  hgad::Adam<Scalar> adam = hgad::make_hgad_adam(flow, prior, adam_options);
  hgad::SequenceFlowCache<Scalar> cache;
  const int stages[3] = {1, 2, 2};
  for (int step = 0; step < 3; ++step) {
    const int stage = stages[step];
    INFO("step " << step + 1 << " (stage " << stage << ")");
    if (c.resync && step > 0) {
      level.copy_parameters_to(flow, prior);
      level.copy_optimizer_state_to(adam);
    }
    adam.zero_grad();
    const hgad::LossTerms<Scalar> want =
        hgad::compute_gradients(flow, prior, x, cond_rows, labels, stage, {}, {0, step}, cache);
    const hgad::LossTerms<Scalar> got = level.compute_gradients(x, cond_level, labels, stage);

    const auto want_terms = want.named(), got_terms = got.named();
    REQUIRE(want_terms.size() == got_terms.size());
    for (std::size_t t = 0; t < want_terms.size(); ++t) {
      const double g = double(got_terms[t].second), w = double(want_terms[t].second);
      INFO("loss " << want_terms[t].first << ": " << g << " vs " << w);
      REQUIRE(std::isfinite(g));
      CHECK(std::abs(g - w) <= rel * std::abs(w) + (is_float ? 1e-6 : 1e-12));
    }

    // Gradients, per tensor in norm, within rel (double) or 5e-4 (float). In float the prior's
    // responsibilities softmax(-e/2 + log w) inherit the rounding of squared distances e of a few
    // hundred (about 1e-4 in the exponent), and the first layer of a subnet (fc1) may be excused up
    // to 4 hidden units (rows of fc1.weight, elements of fc1.bias) per step: where a hidden unit's
    // pre-activation in one row lies within rounding of 0, the two paths can take opposite sides of
    // its ReLU, and that unit's gradient then differs by that row's whole contribution.
    for (auto& v : flow_out.parameters()) v.zero_grad();
    for (auto& v : prior_out.parameters()) v.zero_grad();
    level.copy_gradients_to(flow_out, prior_out);
    const auto grads_want = level_tensors(flow, prior, true, stage == 2);
    const auto grads_got = level_tensors(flow_out, prior_out, true, stage == 2);
    REQUIRE(grads_want.size() == grads_got.size());
    double worst_grad = 0;
    std::map<std::string, std::set<std::size_t>> excused;  // tensor name -> excused hidden units
    for (std::size_t i = 0; i < grads_want.size(); ++i) {
      const std::string& name = grads_want[i].first;
      const bool fc1 = name.find(".fc1.") != std::string::npos;
      const std::size_t row = name.find(".fc1.weight") != std::string::npos ? std::size_t(c.D - c.D / 2 + c.P) : 1;
      bool finite = false;
      std::set<std::size_t>& units = excused[name];
      const double err = norm_relative_error_excusing(grads_got[i].second, grads_want[i].second, row,
                                                      is_float && fc1 ? 4 : 0, &units, &finite);
      worst_grad = std::max(worst_grad, err);
      INFO("gradient " << name << ": norm-relative error " << err << " (" << units.size()
                       << " hidden units excused)");
      CHECK(finite);
      CHECK(err <= (is_float ? 5e-4 : rel));
    }

    hgad::detail::check_finite_gradients(flow, prior, {0, step}, "parity");
    adam.step();
    level.apply_adam(stage);

    // Parameters, element-wise: within rel |p| + 0.05 lr t of the CPU's (t: steps since the
    // last resync), except the excused hidden units and at most max(3, 1e-4 n) elements of a tensor
    // (none in double), which must stay within 4 lr t: Adam divides each gradient element by its own
    // magnitude, so an element whose gradient is at the rounding level can step the other way.
    level.copy_parameters_to(flow_out, prior_out);
    const auto params_want = level_tensors(flow, prior, false, true);
    const auto params_got = level_tensors(flow_out, prior_out, false, true);
    REQUIRE(params_want.size() == params_got.size());
    const double lr_t = c.lr * (c.resync ? 1 : step + 1);
    double worst_param = 0;
    std::size_t total_outside = 0;
    for (std::size_t i = 0; i < params_want.size(); ++i) {
      const auto& a = params_got[i].second;
      const auto& b = params_want[i].second;
      std::size_t outside = 0, far = 0, non_finite = 0;
      double worst = 0;
      const std::string& name = params_want[i].first;
      const std::size_t row = name.find(".fc1.weight") != std::string::npos ? std::size_t(c.D - c.D / 2 + c.P) : 1;
      const std::set<std::size_t>& units = excused[name];
      for (std::size_t e = 0; e < a.size(); ++e) {
        const double diff = std::abs(double(a[e]) - double(b[e]));
        if (!std::isfinite(double(a[e])) || !std::isfinite(double(b[e]))) ++non_finite;
        if (diff > rel * std::abs(double(b[e])) + (is_float ? 0.05 : 1e-6) * lr_t && units.count(e / row) == 0)
          ++outside;
        if (diff > 4 * lr_t + rel * std::abs(double(b[e]))) ++far;
        worst = std::max(worst, diff);
      }
      const double allowed = is_float ? std::max(3.0, 1e-4 * double(a.size())) : 0.0;
      worst_param = std::max(worst_param, worst / lr_t);
      total_outside += outside;
      INFO("parameter " << params_want[i].first << ": " << outside << " of " << a.size()
                        << " elements outside the tolerance, " << far << " beyond 4 lr t; worst |difference| "
                        << worst / lr_t << " lr t");
      CHECK(non_finite == 0);
      CHECK(double(outside) <= allowed);
      CHECK(far == 0);
    }
    if (std::getenv("HGAD_PARITY_VERBOSE") != nullptr)
      WARN(c.describe() << " step " << step + 1 << ": worst gradient error " << worst_grad
                        << ", parameters outside the tolerance " << total_outside
                        << ", worst parameter difference " << worst_param << " lr t");
  }
}

}  // namespace hgad_test
