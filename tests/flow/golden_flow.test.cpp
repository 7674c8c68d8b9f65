#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "flow_test_util.hpp"
#include "golden.hpp"

namespace golden_flow_test {

using hgad::AllInOneOptions;
using hgad::Index;
using hgad::SequenceFlow;
using hgad::Tensor;
using hgad::Var;
using hgad::test::GoldenFile;
using hgad::test::max_rel_error;

namespace {

const char* const golden_files[] = {"hgad_golden_small.json", "hgad_golden_small_head.json"};

/// The flow of a golden file with every parameter and rotation loaded from it.
SequenceFlow<double> load_flow(const GoldenFile& golden) {
  const Index D = golden.config_int("D"), P = golden.config_int("P"), K = golden.config_int("blocks");
  AllInOneOptions options = AllInOneOptions::hgad();
  options.affine_clamping = golden.config_number("alpha");
  options.clamp_variant = hgad::soft_clamp_from_string(golden.config_string("clamp_mode"));
  hgad::Rng rng(0);
  SequenceFlow<double> flow(D, P, K, options, rng);
  for (Index k = 0; k < K; ++k) {
    for (const char* name : {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "gamma", "offset", "rot"}) {
      const std::string full = "block" + std::to_string(k) + "." + name;
      flow.set_parameter(full, golden.tensor("param." + full));
    }
  }
  return flow;
}

Tensor<double> columns(const Tensor<double>& t, Index begin, Index end) {
  Tensor<double> out({t.rows(), end - begin});
  for (Index i = 0; i < t.rows(); ++i) {
    for (Index j = begin; j < end; ++j) out(i, j - begin) = t(i, j);
  }
  return out;
}

double softplus(double x) { return x > 20 ? x : std::log1p(std::exp(x)); }
double sigmoid(double x) { return 1 / (1 + std::exp(-x)); }

/// dL/dz (N, D) and dL/dlogdet (N,) of the golden stage-1 or stage-2 total loss (docs/algorithm.md §3.3,
/// §3.4), by plain loops; also returns the loss so the test can check these formulas against the
/// golden value first.
double naive_loss_gradients(const GoldenFile& golden, const Tensor<double>& z, const Tensor<double>& logdet, int stage,
                            Tensor<double>& grad_z, Tensor<double>& grad_ld) {
  const Index N = z.rows(), D = z.cols(), K = golden.config_int("K"), M = golden.config_int("M");
  const double lambda1 = golden.config_number("lambda1"), lambda2 = golden.config_number("lambda2");
  const double c0 = golden.config_number("c0");
  const auto mu = golden.tensor("param.mu");
  const auto delta = golden.tensor("param.delta");
  const auto phi_inter = golden.tensor("param.phi_inter");
  const auto phi_intra = golden.tensor("param.phi_intra");
  const auto q = golden.tensor("input.q");
  const auto labels = golden.index_tensor("input.labels");
  grad_z = Tensor<double>::zeros({N, D});
  grad_ld = Tensor<double>::zeros({N});
  std::vector<double> log_pi(K);
  {
    double m = -1e300;
    for (Index k = 0; k < K; ++k) m = std::max(m, phi_inter(k));
    double s = 0;
    for (Index k = 0; k < K; ++k) s += std::exp(phi_inter(k) - m);
    for (Index k = 0; k < K; ++k) log_pi[k] = phi_inter(k) - m - std::log(s);
  }
  const auto softmax = [](const std::vector<double>& a) {
    double m = -1e300;
    for (double v : a) m = std::max(m, v);
    double s = 0;
    for (double v : a) s += std::exp(v - m);
    std::vector<double> p(a.size());
    for (std::size_t i = 0; i < a.size(); ++i) p[i] = std::exp(a[i] - m) / s;
    return std::make_pair(p, m + std::log(s));
  };
  double loss = 0;
  for (Index n = 0; n < N; ++n) {
    std::vector<double> d(K);
    for (Index k = 0; k < K; ++k) {
      for (Index j = 0; j < D; ++j) d[k] += (z(n, j) - mu(k, j)) * (z(n, j) - mu(k, j));
    }
    // coef[k]: dL/dz_n = Σ_k coef[k] (z_n − μ_k).
    std::vector<double> coef(K, 0.0);
    // L_g = [−LSE_k(−d/2 + log π) − ld] / D: d/dz = Σ r_k (z − μ_k) / D, r = softmax.
    std::vector<double> a(K);
    for (Index k = 0; k < K; ++k) a[k] = -0.5 * d[k] + log_pi[k];
    const auto [r, lse] = softmax(a);
    loss += lambda1 * (-lse - logdet(n)) / D / N;
    for (Index k = 0; k < K; ++k) coef[k] += lambda1 * r[k] / D / N;
    grad_ld(n) += -lambda1 / D / N;
    // L_mi = Σ_k q_k [log_softmax(−d/2 + lp)_k − lp_k]: dL_mi/dl_k = q_k − p_k Σq, dl_k/dz = −(z − μ_k).
    const auto [p, lse_mi] = softmax(a);
    double q_total = 0;
    for (Index k = 0; k < K; ++k) q_total += q(n, k);
    double l_mi = 0;
    for (Index k = 0; k < K; ++k) {
      l_mi += q(n, k) * (a[k] - lse_mi - log_pi[k]);
      coef[k] += -lambda2 * -(q(n, k) - p[k] * q_total) / N;
    }
    loss += -lambda2 * l_mi / N;
    // L_e = −Σ p̃ log p̃ with p̃ = softmax(−d/2): dH/dm_k = −p̃_k (log p̃_k + H), dm_k/dz = −(z − μ_k).
    std::vector<double> m_e(K);
    for (Index k = 0; k < K; ++k) m_e[k] = -0.5 * d[k];
    const auto [pe, lse_e] = softmax(m_e);
    double H = 0;
    for (Index k = 0; k < K; ++k) H -= pe[k] * (m_e[k] - lse_e);
    loss += H / N;
    for (Index k = 0; k < K; ++k) coef[k] += pe[k] * ((m_e[k] - lse_e) + H) / N;
    for (Index k = 0; k < K; ++k) {
      for (Index j = 0; j < D; ++j) grad_z(n, j) += coef[k] * (z(n, j) - mu(k, j));
    }
    if (stage < 2) continue;
    // Intra-class mixture of class y: centres μ_y and μ_y + δ_{y,k−1}, weights softmax(φ_intra[y]).
    const Index y = labels[n];
    std::vector<double> phi(M), e(M, 0.0), b(M);
    for (Index k = 0; k < M; ++k) phi[k] = phi_intra(y, k);
    const auto [w, lse_w] = softmax(phi);
    std::vector<std::vector<double>> centre(M, std::vector<double>(D));
    for (Index k = 0; k < M; ++k) {
      for (Index j = 0; j < D; ++j) {
        centre[k][j] = mu(y, j) + (k > 0 ? delta(y, k - 1, j) : 0.0);
        e[k] += (z(n, j) - centre[k][j]) * (z(n, j) - centre[k][j]);
      }
      b[k] = -0.5 * e[k] + std::log(w[k]);
    }
    const auto [rho, S] = softmax(b);
    // L_g_intra = (−S − ld)/D; L_z = softplus(−logp/D), logp = D c0 + S + ld.
    const double logp = D * c0 + S + logdet(n);
    const double sz = sigmoid(-logp / D);
    loss += (-S - logdet(n)) / D / N + softplus(-logp / D) / N;
    grad_ld(n) += -1.0 / D / N - sz / D / N;
    for (Index k = 0; k < M; ++k) {
      const double ck = rho[k] / D / N + sz * rho[k] / D / N;
      for (Index j = 0; j < D; ++j) grad_z(n, j) += ck * (z(n, j) - centre[k][j]);
    }
  }
  return loss;
}

}  // namespace

TEST_CASE("The flow reproduces the golden per-block coefficients, outputs and log-dets", "[flow]") {
  for (const char* file : golden_files) {
    SECTION(file) {
      auto golden = hgad::test::open_golden(file);
      if (!golden) return;
      SequenceFlow<double> flow = load_flow(*golden);
      const auto x = golden->tensor("input.x");
      const auto pos = golden->tensor("input.pos");
      const Index n2 = golden->config_int("n2_active");
      Tensor<double> h = x;
      Tensor<double> total = Tensor<double>::zeros({x.rows()});
      for (Index k = 0; k < flow.n_blocks(); ++k) {
        const std::string b = "block" + std::to_string(k) + ".";
        const auto& block = flow.block(k);
        const auto a = block.subnet_output(h, pos);
        CHECK(max_rel_error(a, golden->tensor(b + "a")) < 1e-10);
        CHECK(max_rel_error(block.global_scale(), golden->tensor(b + "g")) < 1e-10);
        // s and t as the fused training forward keeps them.
        hgad::CouplingCache<double> cache;
        Tensor<double> out({x.rows(), x.cols()}), ld({x.rows()});
        block.forward_train_into(h, pos, cache, out, ld, false);
        CHECK(max_rel_error(columns(cache.s_t, 0, n2), golden->tensor(b + "s")) < 1e-10);
        CHECK(max_rel_error(columns(cache.s_t, n2, 2 * n2), columns(golden->tensor(b + "a"), n2, 2 * n2)) < 1e-10);
        CHECK(max_rel_error(out, golden->tensor(b + "out")) < 1e-10);
        CHECK(max_rel_error(ld, golden->tensor(b + "logdet")) < 1e-10);
        const auto graph = block.forward(Var<double>(h), Var<double>(pos));
        CHECK(max_rel_error(graph.out.value(), golden->tensor(b + "out")) < 1e-10);
        CHECK(max_rel_error(graph.log_jac_det.value(), golden->tensor(b + "logdet")) < 1e-10);
        h = out;
      }
      const auto fused = flow.forward(x, pos);
      CHECK(max_rel_error(fused.out, golden->tensor("out.z")) < 1e-10);
      CHECK(max_rel_error(fused.log_jac_det, golden->tensor("out.logdet")) < 1e-10);
      const auto graph = flow.forward(Var<double>(x), Var<double>(pos));
      CHECK(max_rel_error(graph.out.value(), golden->tensor("out.z")) < 1e-10);
      CHECK(max_rel_error(graph.log_jac_det.value(), golden->tensor("out.logdet")) < 1e-10);
      const auto back = flow.inverse(fused.out, pos);
      CHECK(max_rel_error(back.out, x) < 1e-10);
    }
  }
}

TEST_CASE("The fused flow backward reproduces the golden flow gradients of both stages", "[flow]") {
  for (const char* file : golden_files) {
    SECTION(file) {
      auto golden = hgad::test::open_golden(file);
      if (!golden) return;
      SequenceFlow<double> flow = load_flow(*golden);
      const auto x = golden->tensor("input.x");
      const auto pos = golden->tensor("input.pos");
      for (int stage : {1, 2}) {
        INFO("stage " << stage);
        hgad::SequenceFlowCache<double> cache;
        const auto r = flow.forward_train(x, pos, cache);
        Tensor<double> grad_z, grad_ld;
        const double loss = naive_loss_gradients(*golden, r.out, r.log_jac_det, stage, grad_z, grad_ld);
        // The loss formulas of this test against the golden total first.
        REQUIRE(loss == Approx(golden->scalar("stage" + std::to_string(stage) + ".loss")).epsilon(1e-12));
        for (auto& p : flow.parameters()) p.zero_grad();
        flow.backward(cache, grad_z, grad_ld);
        for (const auto& [name, p] : flow.named_parameters()) {
          INFO(name);
          REQUIRE(p.has_grad());
          const auto expected = golden->tensor("stage" + std::to_string(stage) + ".grad." + name);
          CHECK(max_rel_error(p.grad(), expected) < 1e-9);
        }
      }
    }
  }
}

}  // namespace golden_flow_test
