#pragma once
/// \file
/// Helpers of the flow tests: an independent naive-loop AllInOne block, parameter perturbation and
/// tensor comparisons.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "hgad/flow.hpp"

namespace hgad::test {

/// The block configurations the round-trip and agreement tests sweep.
struct BlockCase {
  const char* name;
  Index D;
  Index P;
  SoftClamp clamp;
  bool soft;
  GlobalAffineType affine;
};

inline std::vector<BlockCase> block_cases() {
  return {{"conditional, pinned, rotation, softplus", 7, 3, SoftClamp::pinned, true, GlobalAffineType::softplus},
          {"conditional, head, rotation, softplus", 8, 4, SoftClamp::head, true, GlobalAffineType::softplus},
          {"conditional, pinned, permutation, sigmoid", 9, 5, SoftClamp::pinned, false, GlobalAffineType::sigmoid},
          {"unconditional, head, permutation, exp", 6, 0, SoftClamp::head, false, GlobalAffineType::exp},
          {"unconditional, pinned, rotation, softplus", 5, 0, SoftClamp::pinned, true, GlobalAffineType::softplus}};
}

inline AllInOneOptions options_of(const BlockCase& c) {
  AllInOneOptions o;
  o.affine_clamping = 1.9;
  o.clamp_variant = c.clamp;
  o.permute_soft = c.soft;
  o.global_affine_type = c.affine;
  return o;
}

/// Moves every parameter away from its initial value so that no gradient is trivial: the weights
/// are scaled up (larger s and t), γ and b get random offsets.
template <class Scalar>
void perturb(AllInOneBlock<Scalar>& block, Rng& rng, double weight_scale = 3.0) {
  for (auto& [name, p] : block.named_parameters()) {
    Tensor<Scalar>& v = p.value();
    for (Index i = 0; i < v.numel(); ++i) {
      if (name == "gamma") {
        v.data()[i] += static_cast<Scalar>(0.5 * rng.normal());
      } else if (name == "offset") {
        v.data()[i] = static_cast<Scalar>(0.3 * rng.normal());
      } else {
        v.data()[i] = static_cast<Scalar>(weight_scale * v.data()[i]);
      }
    }
  }
}

template <class Scalar>
void perturb(SequenceFlow<Scalar>& flow, Rng& rng, double weight_scale = 3.0) {
  for (Index k = 0; k < flow.n_blocks(); ++k) perturb(flow.block(k), rng, weight_scale);
}

/// One row of an AllInOne block by plain loops in double, written from docs/algorithm.md §2.2
/// independently of the library's kernels. Returns y (D values) and sets log_det.
template <class Scalar>
std::vector<double> naive_block_row(const AllInOneBlock<Scalar>& block, const std::vector<double>& v,
                                    const std::vector<double>& c, double& log_det) {
  const Index D = block.dim(), P = block.cond_dim();
  const Index n2 = D / 2, n1 = D - n2, in = n1 + P, H = 2 * in;
  const auto w1 = block.fc1_weight().value().to_vector();
  const auto b1 = block.fc1_bias().value().to_vector();
  const auto w2 = block.fc2_weight().value().to_vector();
  const auto b2 = block.fc2_bias().value().to_vector();
  const auto gamma = block.gamma().value().to_vector();
  const auto off = block.offset().value().to_vector();
  const auto rot = block.rotation().to_vector();
  const double alpha = block.options().affine_clamping;
  std::vector<double> input(static_cast<std::size_t>(in));
  for (Index i = 0; i < n1; ++i) input[i] = v[i];
  for (Index i = 0; i < P; ++i) input[n1 + i] = c[i];
  std::vector<double> h(static_cast<std::size_t>(H));
  for (Index o = 0; o < H; ++o) {
    double acc = b1[o];
    for (Index i = 0; i < in; ++i) acc += double(w1[o * in + i]) * input[i];
    h[o] = acc > 0 ? acc : 0;
  }
  std::vector<double> a(static_cast<std::size_t>(2 * n2));
  for (Index o = 0; o < 2 * n2; ++o) {
    double acc = b2[o];
    for (Index i = 0; i < H; ++i) acc += double(w2[o * H + i]) * h[i];
    a[o] = 0.1 * acc;
  }
  std::vector<double> u(static_cast<std::size_t>(D));
  log_det = 0;
  for (Index i = 0; i < n1; ++i) u[i] = v[i];
  for (Index j = 0; j < n2; ++j) {
    const double s = block.options().clamp_variant == SoftClamp::pinned ? alpha * std::tanh(a[j])
                                                                          : alpha * std::tanh(a[j] / alpha);
    u[n1 + j] = v[n1 + j] * std::exp(s) + a[n2 + j];
    log_det += s;
  }
  for (Index i = 0; i < D; ++i) {
    double g = 0;
    const double gm = gamma[i];
    switch (block.options().global_affine_type) {
      case GlobalAffineType::softplus: g = 0.1 * (0.5 * gm > 20 ? gm : 2.0 * std::log1p(std::exp(0.5 * gm))); break;
      case GlobalAffineType::sigmoid: g = 10.0 / (1.0 + std::exp(-(gm - 2.0))); break;
      case GlobalAffineType::exp: g = std::exp(gm); break;
    }
    u[i] = g * u[i] + off[i];
    log_det += std::log(g);
  }
  std::vector<double> y(static_cast<std::size_t>(D), 0.0);
  for (Index i = 0; i < D; ++i) {
    for (Index j = 0; j < D; ++j) y[i] += double(rot[i * D + j]) * u[j];
  }
  return y;
}

/// max |a − b| / max(max |b|, 1): the comparison of two tensors; NaN anywhere gives NaN.
template <class A, class B>
double rel_diff(const Tensor<A>& a, const Tensor<B>& b) {
  REQUIRE(a.numel() == b.numel());
  const auto va = a.to_vector();
  const auto vb = b.to_vector();
  double diff = 0, scale = 1;
  for (std::size_t i = 0; i < va.size(); ++i) {
    const double d = std::abs(double(va[i]) - double(vb[i]));
    if (!(d <= diff)) diff = d;
    scale = std::max(scale, std::abs(double(vb[i])));
  }
  return diff / scale;
}

template <class Scalar>
bool all_finite(const Tensor<Scalar>& t) {
  const auto v = t.to_vector();
  return std::all_of(v.begin(), v.end(), [](Scalar x) { return std::isfinite(x); });
}

/// Tolerance for comparisons of two computations of the same quantity in Scalar precision.
template <class Scalar>
double agreement_tolerance() {
  return std::is_same_v<Scalar, float> ? 1e-4 : 1e-12;
}

}  // namespace hgad::test
