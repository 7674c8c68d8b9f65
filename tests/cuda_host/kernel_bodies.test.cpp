// Host runs of the formula bodies that the CUDA kernels run (detail/element_ops.hpp,
// detail/accumulators.hpp, flow/coupling_element.hpp, prior/prior_row.hpp, nn/adam_element.hpp):
// the arithmetic the GPU executes, checked against the CPU backend, naive loops and finite
// differences.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include <hgad/cpu_backend.hpp>
#include <hgad/detail/accumulators.hpp>
#include <hgad/detail/element_ops.hpp>
#include <hgad/flow/coupling_element.hpp>
#include <hgad/nn/adam_element.hpp>
#include <hgad/prior/prior_row.hpp>
#include <hgad/rng.hpp>

namespace kernel_bodies_test {

namespace {

template <class Scalar>
Scalar tolerance() {
  return std::is_same_v<Scalar, float> ? Scalar(2e-6) : Scalar(1e-13);
}

template <class Scalar>
bool close(Scalar a, Scalar b, Scalar rel) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  if (std::isinf(a) || std::isinf(b)) return a == b;
  return std::abs(a - b) <= rel * std::max<Scalar>(Scalar(1), std::max(std::abs(a), std::abs(b)));
}

template <class Scalar>
std::vector<Scalar> random_vector(hgad::Rng& rng, std::size_t n, double scale = 1.0) {
  std::vector<Scalar> v(n);
  for (auto& x : v) x = Scalar(scale * rng.normal());
  return v;
}

}  // namespace

TEMPLATE_TEST_CASE("CUDA unary and binary bodies match the CPU backend", "[cuda_host]", float,
                   double) {
  using S = TestType;
  hgad::CpuBackend<S> cpu;
  const auto cpu_unary = [&](hgad::UnaryOp op, S x, S param) {
    S y = 0;
    cpu.unary(op, 1, &x, &y, param);
    return y;
  };
  const auto cpu_binary = [&](hgad::BinaryOp op, S a, S b, S param) {
    S y = 0;
    cpu.binary(op, 1, &a, &b, &y, param);
    return y;
  };
  const std::vector<S> xs = {-50, -21, -3.5, -1, -0.25, 0, 1e-3, 0.5, 1, 2.75, 19, 41, 90};
  const hgad::UnaryOp unary_ops[] = {
      hgad::UnaryOp::identity, hgad::UnaryOp::neg,      hgad::UnaryOp::exp,
      hgad::UnaryOp::log,      hgad::UnaryOp::tanh,     hgad::UnaryOp::sigmoid,
      hgad::UnaryOp::softplus, hgad::UnaryOp::relu,     hgad::UnaryOp::square,
      hgad::UnaryOp::scale,    hgad::UnaryOp::add_scalar, hgad::UnaryOp::reciprocal};
  for (auto op : unary_ops) {
    for (S param : {S(1), S(0.5), S(-2)}) {
      if (op == hgad::UnaryOp::softplus && param < 0) continue;
      for (S x : xs) {
        const S ours = hgad::detail::unary_op(op, x, param);
        const S ref = cpu_unary(op, x, param);
        INFO("op " << static_cast<int>(op) << " x " << x << " param " << param);
        CHECK(close(ours, ref, tolerance<S>()));
      }
    }
  }
  const hgad::BinaryOp binary_ops[] = {
      hgad::BinaryOp::add,           hgad::BinaryOp::sub,           hgad::BinaryOp::mul,
      hgad::BinaryOp::div,           hgad::BinaryOp::relu_backward, hgad::BinaryOp::tanh_backward,
      hgad::BinaryOp::sigmoid_backward, hgad::BinaryOp::softplus_backward};
  for (auto op : binary_ops)
    for (S a : xs)
      for (S b : {S(-1.5), S(0.3), S(7)}) {
        const S ours = hgad::detail::binary_op(op, a, b, S(0.5));
        const S ref = cpu_binary(op, a, b, S(0.5));
        INFO("op " << static_cast<int>(op) << " a " << a << " b " << b);
        CHECK(close(ours, ref, tolerance<S>()));
      }
  // Independent values: softplus_beta and its derivative from the definitions.
  for (S x : {S(-3), S(0), S(2), S(30), S(45)}) {
    const double beta = 0.5;
    const double ref = beta * x > 20 ? double(x) : std::log1p(std::exp(beta * x)) / beta;
    CHECK(close<double>(hgad::detail::softplus(x, S(beta)), ref, tolerance<S>()));
    const double dref = beta * x > 20 ? 1.0 : 1.0 / (1.0 + std::exp(-beta * x));
    CHECK(close<double>(hgad::detail::softplus_derivative(x, S(beta)), dref, tolerance<S>()));
  }
}

TEMPLATE_TEST_CASE("CUDA row accumulators in warp order match the CPU backend's reductions",
                   "[cuda_host]", float, double) {
  using S = TestType;
  using Cpu = hgad::CpuBackend<S>;
  hgad::Rng rng(7);
  for (std::int64_t n : {1, 2, 5, 31, 32, 33, 200, 713, 4099}) {
    auto x = random_vector<S>(rng, static_cast<std::size_t>(n), 6.0);
    for (int lanes : {32, 8, 1}) {
      INFO("n " << n << " lanes " << lanes);
      const S sum =
          hgad::detail::lane_tree_reduce<hgad::detail::SumAccumulator<S>>(x.data(), n, lanes)
              .result();
      const S max =
          hgad::detail::lane_tree_reduce<hgad::detail::MaxAccumulator<S>>(x.data(), n, lanes)
              .result();
      const S lse =
          hgad::detail::lane_tree_reduce<hgad::detail::LogSumExpAccumulator<S>>(x.data(), n, lanes)
              .result();
      REQUIRE(std::isfinite(sum));
      REQUIRE(std::isfinite(lse));
      // The sum's rounding depends on the order; bound it by the magnitude of the terms.
      S abs_sum = 0;
      for (S v : x) abs_sum += std::abs(v);
      CHECK(std::abs(sum - Cpu::reduce(hgad::Reduce::sum, n, x.data())) <=
            S(4) * std::numeric_limits<S>::epsilon() * abs_sum);
      CHECK(max == Cpu::reduce(hgad::Reduce::max, n, x.data()));
      CHECK(close(lse, Cpu::reduce(hgad::Reduce::logsumexp, n, x.data()), S(4) * tolerance<S>()));
    }
  }
  const S inf = std::numeric_limits<S>::infinity();
  const S nan = std::numeric_limits<S>::quiet_NaN();
  std::vector<S> all_minus_inf(40, -inf);
  CHECK(hgad::detail::lane_tree_reduce<hgad::detail::LogSumExpAccumulator<S>>(all_minus_inf.data(),
                                                                              40)
            .result() == -inf);
  CHECK(hgad::detail::lane_tree_reduce<hgad::detail::MaxAccumulator<S>>(all_minus_inf.data(), 40)
            .result() == -inf);
  std::vector<S> some_minus_inf = {-inf, S(1), -inf, S(2)};
  CHECK(close(hgad::detail::lane_tree_reduce<hgad::detail::LogSumExpAccumulator<S>>(
                  some_minus_inf.data(), 4)
                  .result(),
              S(2 + std::log1p(std::exp(-1.0))), tolerance<S>()));
  std::vector<S> with_nan = {S(1), nan, S(3), S(-2)};
  for (int lanes : {32, 2, 1}) {
    CHECK(std::isnan(
        hgad::detail::lane_tree_reduce<hgad::detail::MaxAccumulator<S>>(with_nan.data(), 4, lanes)
            .result()));
    CHECK(std::isnan(hgad::detail::lane_tree_reduce<hgad::detail::LogSumExpAccumulator<S>>(
                         with_nan.data(), 4, lanes)
                         .result()));
    CHECK(std::isnan(
        hgad::detail::lane_tree_reduce<hgad::detail::SumAccumulator<S>>(with_nan.data(), 4, lanes)
            .result()));
  }
  CHECK(hgad::detail::hd_isfinite(S(3)));
  CHECK_FALSE(hgad::detail::hd_isfinite(inf));
  CHECK_FALSE(hgad::detail::hd_isfinite(-inf));
  CHECK_FALSE(hgad::detail::hd_isfinite(nan));
}

TEMPLATE_TEST_CASE("CUDA softmax row bodies match the CPU backend's softmax and its backward",
                   "[cuda_host]", float, double) {
  using S = TestType;
  hgad::CpuBackend<S> cpu;
  hgad::Rng rng(11);
  for (int cols : {1, 3, 15, 40, 257}) {
    const int rows = 5;
    auto x = random_vector<S>(rng, static_cast<std::size_t>(rows * cols), 4.0);
    auto gy = random_vector<S>(rng, static_cast<std::size_t>(rows * cols));
    for (bool log : {false, true}) {
      INFO("cols " << cols << " log " << log);
      std::vector<S> y_ref(x.size()), gx_ref(x.size()), y(x.size()), gx(x.size());
      cpu.softmax_rows(rows, cols, x.data(), y_ref.data(), log);
      cpu.softmax_rows_backward(rows, cols, y_ref.data(), gy.data(), gx_ref.data(), log, false);
      for (int r = 0; r < rows; ++r) {
        const S* xr = x.data() + r * cols;
        const S lse =
            hgad::detail::lane_tree_reduce<hgad::detail::LogSumExpAccumulator<S>>(xr, cols)
                .result();
        for (int j = 0; j < cols; ++j)
          y[r * cols + j] = hgad::detail::softmax_element(xr[j], lse, log);
        S row = 0;
        for (int j = 0; j < cols; ++j)
          row += hgad::detail::softmax_backward_row_term(y[r * cols + j], gy[r * cols + j], log);
        for (int j = 0; j < cols; ++j)
          gx[r * cols + j] =
              hgad::detail::softmax_backward_element(y[r * cols + j], gy[r * cols + j], row, log);
      }
      for (std::size_t i = 0; i < x.size(); ++i) {
        REQUIRE(std::isfinite(y[i]));
        REQUIRE(std::isfinite(gx[i]));
        CHECK(close(y[i], y_ref[i], S(8) * tolerance<S>()));
        CHECK(close(gx[i], gx_ref[i], S(8) * tolerance<S>()));
      }
    }
  }
}

TEST_CASE("CUDA entropy and log-softmax row bodies match naive loops and finite differences",
          "[cuda_host]") {
  hgad::Rng rng(3);
  for (int n : {1, 2, 15, 40}) {
    auto x = random_vector<double>(rng, static_cast<std::size_t>(n), 3.0);
    // class_entropy_row: the entropy of softmax(-d / 2), here of softmax(x) with d = -2 x.
    const auto naive_entropy = [](const std::vector<double>& v) {
      double m = v[0];
      for (double a : v) m = std::max(m, a);
      double z = 0;
      for (double a : v) z += std::exp(a - m);
      double h = 0;
      for (double a : v) {
        const double p = std::exp(a - m) / z;
        h -= p * std::log(p);
      }
      return h;
    };
    std::vector<double> d(static_cast<std::size_t>(n));
    for (int j = 0; j < n; ++j) d[j] = -2.0 * x[j];
    double lse = 0;
    const double h = hgad::class_entropy_row(n, d.data(), &lse);
    REQUIRE(std::isfinite(h));
    CHECK(h == Approx(naive_entropy(x)).margin(1e-13));
    CHECK(lse == Approx(hgad::detail::logsumexp(x.data(), n)).margin(1e-13));
    // log_softmax_row_backward: L = sum_j g_j log_softmax(phi)_j.
    auto g = random_vector<double>(rng, static_cast<std::size_t>(n));
    std::vector<double> gphi(static_cast<std::size_t>(n));
    hgad::detail::log_softmax_row_backward(x.data(), n, g.data(), gphi.data());
    const auto loss = [&](const std::vector<double>& phi) {
      double m = phi[0];
      for (double a : phi) m = std::max(m, a);
      double z = 0;
      for (double a : phi) z += std::exp(a - m);
      double l = 0;
      for (int j = 0; j < n; ++j) l += g[j] * (phi[j] - m - std::log(z));
      return l;
    };
    for (int j = 0; j < n; ++j) {
      auto xp = x, xm = x;
      xp[j] += 1e-6;
      xm[j] -= 1e-6;
      CHECK(gphi[j] == Approx((loss(xp) - loss(xm)) / 2e-6).margin(1e-8));
    }
    std::vector<double> gacc(static_cast<std::size_t>(n), 1.5);
    hgad::detail::log_softmax_row_backward(x.data(), n, g.data(), gacc.data(), true);
    for (int j = 0; j < n; ++j) CHECK(gacc[j] == Approx(1.5 + gphi[j]).margin(1e-14));
  }
}

TEST_CASE("CUDA coupling bodies match docs/algorithm.md 2.2 and their derivatives", "[cuda_host]") {
  using hgad::SoftClamp;
  const double alpha = 1.9;  // affine_clamping (docs/algorithm.md §2.1)
  hgad::Rng rng(5);
  for (SoftClamp mode : {SoftClamp::pinned, SoftClamp::head}) {
    for (int trial = 0; trial < 20; ++trial) {
      const double x2 = rng.normal(), r_s = 4 * rng.normal(), b_s = rng.normal(),
                   r_t = 3 * rng.normal(), b_t = rng.normal();
      const auto forward = [&](double x2_, double r_s_, double r_t_, double* s_out) {
        const double a = 0.1 * (r_s_ + b_s);
        const double s = mode == SoftClamp::pinned ? alpha * std::tanh(a) : alpha * std::tanh(a / alpha);
        *s_out = s;
        return x2_ * std::exp(s) + 0.1 * (r_t_ + b_t);
      };
      double s_ref = 0;
      const double s = hgad::coupling_log_scale(r_s + b_s, alpha, mode);
      const double t = hgad::coupling_shift<double>(r_t + b_t);
      const double v2 = hgad::coupling_active_output(x2, std::exp(s), t);
      const double v2_ref = forward(x2, r_s, r_t, &s_ref);
      REQUIRE(std::isfinite(v2));
      CHECK(s == Approx(s_ref).margin(1e-14));
      CHECK(t == Approx(0.1 * (r_t + b_t)).margin(1e-14));
      CHECK(v2 == Approx(v2_ref).margin(1e-13));
      // L = gu v2' + g_ld s: the backward gives dL/dx2, dL/dr_s, dL/dr_t.
      const double gu = rng.normal(), g_ld = rng.normal();
      double gx2 = 0, ga_s = 0, ga_t = 0;
      hgad::coupling_active_backward(x2, s, std::exp(s), gu, g_ld, alpha, mode, gx2, ga_s, ga_t);
      const auto loss = [&](double x2_, double r_s_, double r_t_) {
        double s_ = 0;
        const double v = forward(x2_, r_s_, r_t_, &s_);
        return gu * v + g_ld * s_;
      };
      const double h = 1e-6;
      CHECK(gx2 == Approx((loss(x2 + h, r_s, r_t) - loss(x2 - h, r_s, r_t)) / (2 * h)).margin(1e-7));
      CHECK(ga_s == Approx((loss(x2, r_s + h, r_t) - loss(x2, r_s - h, r_t)) / (2 * h)).margin(1e-7));
      CHECK(ga_t == Approx((loss(x2, r_s, r_t + h) - loss(x2, r_s, r_t - h)) / (2 * h)).margin(1e-7));
    }
  }
  // The global affine: g(gamma0) = 1 at gamma0 = 2 ln(e^5 - 1) (docs/algorithm.md §2.2 step 7).
  using hgad::GlobalAffineType;
  const double gamma0 = 2.0 * std::log(std::exp(5.0) - 1.0);
  CHECK(hgad::detail::global_affine_scale(gamma0, GlobalAffineType::softplus) ==
        Approx(1.0).margin(1e-14));
  CHECK(hgad::detail::global_affine_scale(9.986478501f, GlobalAffineType::softplus) ==
        Approx(1.0f).margin(1e-6));
  for (auto type : {GlobalAffineType::softplus, GlobalAffineType::sigmoid, GlobalAffineType::exp}) {
    for (double gamma : {-3.0, 0.0, 2.5, 9.98, 45.0}) {
      if (type == GlobalAffineType::exp && gamma > 10) continue;
      INFO("type " << static_cast<int>(type) << " gamma " << gamma);
      // FrEIA's three activations, PyTorch's softplus linear above beta x = 20.
      const double softplus = 0.5 * gamma > 20 ? gamma : std::log1p(std::exp(0.5 * gamma)) / 0.5;
      const double ref = type == GlobalAffineType::softplus ? 0.1 * softplus
                         : type == GlobalAffineType::sigmoid
                             ? 10.0 / (1.0 + std::exp(-(gamma - 2.0)))
                             : std::exp(gamma);
      CHECK(hgad::detail::global_affine_scale(gamma, type) == Approx(ref).epsilon(1e-14));
      const double h = 1e-6;
      const double fd = (hgad::detail::global_affine_scale(gamma + h, type) -
                         hgad::detail::global_affine_scale(gamma - h, type)) /
                        (2 * h);
      CHECK(hgad::detail::global_affine_scale_derivative(gamma, type) ==
            Approx(fd).epsilon(1e-6).margin(1e-8));
    }
  }
}

namespace {

/// The per-row prior losses of docs/algorithm.md §3.3 written out directly (double).
struct NaivePriorRow {
  int K, M, label;
  double D, lambda1 = 1, lambda2 = 100, eps = 0.02;
  bool stage2 = true;
  static double lse(const std::vector<double>& v) {
    double m = -INFINITY;
    for (double a : v) m = std::max(m, a);
    double s = 0;
    for (double a : v) s += std::exp(a - m);
    return m + std::log(s);
  }
  /// terms[0..4] and the weighted total; log_pi_sg is the stop-gradient copy used by L_mi.
  double operator()(const std::vector<double>& d, const std::vector<double>& e,
                    const std::vector<double>& log_pi, const std::vector<double>& log_pi_sg,
                    const std::vector<double>& log_w, double ld, double* terms) const {
    std::vector<double> a(K), b(K), c(K);
    for (int y = 0; y < K; ++y) {
      a[y] = -0.5 * d[y] + log_pi[y];
      b[y] = -0.5 * d[y] + log_pi_sg[y];
      c[y] = -0.5 * d[y];
    }
    const double l_g = (-lse(a) - ld) / D;
    const double lb = lse(b), lc = lse(c);
    double l_mi = 0, l_e = 0;
    for (int y = 0; y < K; ++y) {
      const double q = (y == label ? 1.0 - eps : 0.0) + eps / K;
      l_mi += q * ((b[y] - lb) - log_pi_sg[y]);
      const double p = std::exp(c[y] - lc);
      l_e -= p * std::log(p);
    }
    double total = lambda1 * l_g - lambda2 * l_mi + l_e;
    terms[0] = l_g;
    terms[1] = l_mi;
    terms[2] = l_e;
    terms[3] = terms[4] = 0;
    if (stage2) {
      std::vector<double> ee(M);
      for (int k = 0; k < M; ++k) ee[k] = -0.5 * e[k] + log_w[k];
      const double s = lse(ee);
      terms[3] = (-s - ld) / D;
      const double logp = D * -0.9189385332046727 + s + ld;
      terms[4] = -std::log(1.0 / (1.0 + std::exp(-logp / D)));  // -log sigmoid(logp / D)
      total += terms[3] + terms[4];
    }
    return total;
  }
};

}  // namespace

TEST_CASE("CUDA prior row body matches the docs/algorithm.md 3.3 losses and their finite differences",
          "[cuda_host]") {
  hgad::Rng rng(13);
  for (bool stage2 : {false, true}) {
    for (int trial = 0; trial < 6; ++trial) {
      const int K = trial % 2 ? 15 : 3, M = trial < 3 ? 10 : 4, D = 200;
      const int label = trial % K;
      NaivePriorRow naive{K, M, label, double(D)};
      naive.stage2 = stage2;
      std::vector<double> d(K), e(M), log_pi(K), log_w(M);
      for (auto& v : d) v = 180 + 40 * rng.uniform(0, 1);
      for (auto& v : e) v = 150 + 60 * rng.uniform(0, 1);
      std::vector<double> phi = random_vector<double>(rng, K), psi = random_vector<double>(rng, M);
      const double lp = NaivePriorRow::lse(phi), lw = NaivePriorRow::lse(psi);
      for (int y = 0; y < K; ++y) log_pi[y] = phi[y] - lp;
      for (int k = 0; k < M; ++k) log_w[k] = psi[k] - lw;
      const double ld = 30 * rng.normal();

      auto config = hgad::PriorRowConfig<double>::make(K, M, D, 1.0, 100.0, 0.02, stage2);
      config.row_weight = 0.25;
      double terms[5], grad_ld = 0;
      std::vector<double> grad_d(K), grad_e(M, -7.0), grad_log_pi(K), grad_log_w(M, -7.0);
      hgad::prior_row(config, d.data(), e.data(), log_pi.data(), log_w.data(), label, ld, terms,
                      grad_d.data(), grad_e.data(), grad_log_pi.data(), grad_log_w.data(),
                      &grad_ld);
      double terms_ref[5];
      naive(d, e, log_pi, log_pi, log_w, ld, terms_ref);
      for (int i = 0; i < 5; ++i) {
        INFO("term " << i << " stage2 " << stage2);
        REQUIRE(std::isfinite(terms[i]));
        CHECK(terms[i] == Approx(terms_ref[i]).epsilon(1e-12).margin(1e-12));
      }
      const double h = 1e-5, w = config.row_weight;
      double scratch[5];
      const auto fd = [&](auto perturb) {
        auto dp = d, dm = d, ep = e, em = e, pp = log_pi, pm = log_pi, wp = log_w, wm = log_w;
        double ldp = ld, ldm = ld;
        perturb(dp, ep, pp, wp, ldp, h);
        perturb(dm, em, pm, wm, ldm, -h);
        return w * (naive(dp, ep, pp, log_pi, wp, ldp, scratch) -
                    naive(dm, em, pm, log_pi, wm, ldm, scratch)) / (2 * h);
      };
      for (int y = 0; y < K; ++y) {
        INFO("class " << y);
        CHECK(grad_d[y] == Approx(fd([y](auto& dd, auto&, auto&, auto&, double&, double s) {
                             dd[y] += s;
                           })).margin(1e-7));
        CHECK(grad_log_pi[y] == Approx(fd([y](auto&, auto&, auto& pp, auto&, double&, double s) {
                                  pp[y] += s;
                                })).margin(1e-7));
      }
      if (stage2) {
        for (int k = 0; k < M; ++k) {
          INFO("centre " << k);
          CHECK(grad_e[k] == Approx(fd([k](auto&, auto& ee, auto&, auto&, double&, double s) {
                               ee[k] += s;
                             })).margin(1e-7));
          CHECK(grad_log_w[k] == Approx(fd([k](auto&, auto&, auto&, auto& ww, double&, double s) {
                                   ww[k] += s;
                                 })).margin(1e-7));
        }
      } else {
        CHECK(grad_e[0] == -7.0);
        CHECK(grad_log_w[0] == -7.0);
      }
      CHECK(grad_ld == Approx(fd([](auto&, auto&, auto&, auto&, double& l, double s) {
                         l += s;
                       })).margin(1e-7));
    }
  }
}

TEST_CASE("CUDA score row body matches docs/algorithm.md 5", "[cuda_host]") {
  hgad::Rng rng(17);
  const int K = 15, M = 10, D = 200;
  std::vector<double> d(K), e(M), log_w(M);
  for (auto& v : d) v = 150 + 80 * rng.uniform(0, 1);
  for (auto& v : e) v = 150 + 80 * rng.uniform(0, 1);
  std::vector<double> psi = random_vector<double>(rng, M);
  const double lw = NaivePriorRow::lse(psi);
  for (int k = 0; k < M; ++k) log_w[k] = psi[k] - lw;
  const double ld = -12.5;
  double log_p = 0, neg_h = 0;
  hgad::score_row(K, M, double(D), d.data(), e.data(), log_w.data(), ld, &log_p, &neg_h);
  double mix = 0;
  for (int k = 0; k < M; ++k) mix += std::exp(log_w[k] - 0.5 * e[k] + 75.0);
  const double log_p_ref = (D * -0.9189385332046727 + std::log(mix) - 75.0 + ld) / D;
  double z = 0;
  for (int y = 0; y < K; ++y) z += std::exp(-0.5 * d[y] + 75.0);
  double neg_h_ref = 0;
  for (int y = 0; y < K; ++y) {
    const double p = std::exp(-0.5 * d[y] + 75.0) / z;
    neg_h_ref += p * std::log(p);
  }
  REQUIRE(std::isfinite(log_p));
  REQUIRE(std::isfinite(neg_h));
  CHECK(log_p == Approx(log_p_ref).epsilon(1e-12));
  CHECK(neg_h == Approx(neg_h_ref).margin(1e-12));
}

TEMPLATE_TEST_CASE("CUDA Adam body follows torch 1.13's update with coupled weight decay",
                   "[cuda_host]", float, double) {
  using S = TestType;
  hgad::Rng rng(19);
  const double lr = 2e-4, beta1 = 0.95, beta2 = 0.99, eps = 1e-8;  // docs/algorithm.md §4
  for (double wd : {0.0, 1e-4}) {
    double p_ref = 0.3, m_ref = 0, v_ref = 0;
    S p = S(p_ref), m = 0, v = 0;
    for (long t = 1; t <= 5; ++t) {
      const double g = rng.normal();
      // torch.optim.Adam (1.13), written out.
      const double gg = g + wd * p_ref;
      m_ref = beta1 * m_ref + (1 - beta1) * gg;
      v_ref = beta2 * v_ref + (1 - beta2) * gg * gg;
      const double bc1 = 1 - std::pow(beta1, t), bc2 = 1 - std::pow(beta2, t);
      p_ref -= lr / bc1 * m_ref / (std::sqrt(v_ref) / std::sqrt(bc2) + eps);
      const auto c = hgad::adam_step_constants<S>(lr, beta1, beta2, eps, wd, t);
      hgad::adam_element(c, S(g), &p, &m, &v);
      REQUIRE(std::isfinite(p));
      CHECK(double(p) == Approx(p_ref).epsilon(std::is_same_v<S, float> ? 1e-6 : 1e-14));
      CHECK(double(m) == Approx(m_ref).epsilon(std::is_same_v<S, float> ? 1e-5 : 1e-13));
      CHECK(double(v) == Approx(v_ref).epsilon(std::is_same_v<S, float> ? 1e-5 : 1e-13));
    }
  }
}

}  // namespace kernel_bodies_test
