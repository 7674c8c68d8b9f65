#pragma once
/// \file
/// gradcheck: compares the gradients backward() computes with central finite differences, in
/// double.
///
///     auto result = hgad::gradcheck(
///         [](const std::vector<hgad::Var<double>>& in) { return hgad::sum(hgad::tanh(in[0] *
///         in[1])); }, {hgad::Tensor<double>::randn({7, 13}, rng), hgad::Tensor<double>::randn({7,
///         13}, rng)});
///     if (!result.ok) std::cerr << result.log;
///
/// A function with a vector output y is checked through L = sum_i w_i y_i with fixed pseudo-random
/// weights w in [-1, 1] (one backward pass checks a random vector-Jacobian product); a one-element
/// output is checked directly (w = 1). For every element x_j of every input,
///     numeric_j = (L(x + eps e_j) - L(x - eps e_j)) / (2 eps)    (error O(eps^2))
/// and the entry passes when |analytic_j - numeric_j| <= atol + rtol |numeric_j| and both are
/// finite.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <iomanip>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "../detail/check.hpp"
#include "../rng.hpp"
#include "../tensor.hpp"
#include "var.hpp"

namespace hgad {

/// Tolerances of gradcheck. The defaults suit smooth functions of O(1) inputs in double: with
/// eps = 1e-6 the central difference has truncation error ~1e-12 and rounding error ~1e-10 |L|.
struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-7;
  double rtol = 1e-5;
  int max_log_entries = 5;
  /// Seed of the projection weights w of a vector output.
  std::uint64_t seed = 0;
};

/// The outcome: `ok`, the largest absolute error |a - n| and relative error |a - n| / max(|n|,
/// atol) over all entries, and a readable report of the worst entries.
struct GradcheckResult {
  bool ok = false;
  double max_abs_error = 0;
  double max_rel_error = 0;
  std::string log;
};

namespace detail {

inline std::string index_string(const Shape& shape, Index flat) {
  std::vector<Index> index(static_cast<std::size_t>(shape.rank()));
  for (int axis = shape.rank() - 1; axis >= 0; --axis) {
    index[static_cast<std::size_t>(axis)] = flat % shape[axis];
    flat /= shape[axis];
  }
  std::string s = "[";
  for (std::size_t i = 0; i < index.size(); ++i) s += (i ? ", " : "") + std::to_string(index[i]);
  return s + "]";
}

}  // namespace detail

/// Checks the gradient of `f` with respect to each of `inputs` (each becomes a parameter Var; the
/// tensors are copied, not modified). requires: f returns a defined Var; inputs are double tensors.
inline GradcheckResult gradcheck(std::function<Var<double>(const std::vector<Var<double>>&)> f,
                                 std::vector<Tensor<double>> inputs,
                                 GradcheckOptions options = {}) {
  check(static_cast<bool>(f), "gradcheck: the function is empty");
  check(options.eps > 0, "gradcheck: eps must be positive, got ", options.eps);
  std::vector<Var<double>> leaves;
  for (const Tensor<double>& input : inputs)
    leaves.push_back(Var<double>::parameter(input.clone()));

  Var<double> out = f(leaves);
  check(out.defined(), "gradcheck: the function returned a null Var");
  const Shape out_shape = out.shape();
  std::vector<double> weights(static_cast<std::size_t>(out.numel()), 1.0);
  if (out.numel() != 1) {
    Rng rng(options.seed);
    for (double& w : weights) w = rng.uniform(-1.0, 1.0);
  }
  const auto projection = [&](const Var<double>& y) {
    check(y.shape() == out_shape, "gradcheck: the function's output shape changed from ",
          out_shape, " to ", y.shape());
    const std::vector<double> values = y.value().to_vector();
    double total = 0;
    for (std::size_t i = 0; i < values.size(); ++i) total += weights[i] * values[i];
    return total;
  };

  if (out.requires_grad()) {
    out.backward(Tensor<double>::from_vector(out_shape, weights).to(out.value().backend_ptr()));
  }

  struct Entry {
    std::size_t input;
    Index element;
    double analytic, numeric, abs_error, rel_error, score;
  };
  std::vector<Entry> entries;
  GradcheckResult result;
  result.ok = true;
  {
    NoGradGuard no_grad;
    for (std::size_t i = 0; i < leaves.size(); ++i) {
      Tensor<double>& x = leaves[i].value();
      const std::vector<double> analytic =
          leaves[i].has_grad() ? leaves[i].grad().to_vector()
                               : std::vector<double>(static_cast<std::size_t>(x.numel()), 0.0);
      std::vector<double> host = x.to_vector();
      for (Index j = 0; j < x.numel(); ++j) {
        const double original = host[static_cast<std::size_t>(j)];
        const auto evaluate = [&](double value) {
          host[static_cast<std::size_t>(j)] = value;
          x.backend().copy_from_host(host.data() + j, x.data() + j, 1);
          return projection(f(leaves));
        };
        const double plus = evaluate(original + options.eps);
        const double minus = evaluate(original - options.eps);
        evaluate(original);
        Entry e{i, j, analytic[static_cast<std::size_t>(j)], (plus - minus) / (2 * options.eps), 0,
                0, 0};
        e.abs_error = std::abs(e.analytic - e.numeric);
        e.rel_error = e.abs_error / std::max(std::abs(e.numeric), options.atol);
        e.score = e.abs_error / (options.atol + options.rtol * std::abs(e.numeric));
        const bool finite = std::isfinite(e.analytic) && std::isfinite(e.numeric);
        if (!finite) e.score = std::numeric_limits<double>::infinity();
        if (!finite || e.score > 1) result.ok = false;
        result.max_abs_error = std::max(result.max_abs_error, finite ? e.abs_error : e.score);
        result.max_rel_error = std::max(result.max_rel_error, finite ? e.rel_error : e.score);
        entries.push_back(e);
      }
    }
  }

  const std::size_t n_failed = static_cast<std::size_t>(std::count_if(
      entries.begin(), entries.end(), [](const Entry& e) { return !(e.score <= 1); }));
  std::ostringstream log;
  log << std::setprecision(6) << "gradcheck: " << leaves.size() << " inputs, " << entries.size()
      << " entries, output " << out_shape.to_string() << ", eps " << options.eps << ", atol "
      << options.atol << ", rtol " << options.rtol << ": " << (result.ok ? "passed" : "FAILED")
      << " (" << n_failed << " entries outside atol + rtol |numeric|); max abs error "
      << result.max_abs_error << ", max rel error " << result.max_rel_error << "\n";
  const std::size_t n_log =
      std::min(entries.size(), static_cast<std::size_t>(std::max(options.max_log_entries, 0)));
  std::partial_sort(entries.begin(), entries.begin() + static_cast<std::ptrdiff_t>(n_log),
                    entries.end(),
                    [](const Entry& a, const Entry& b) { return a.score > b.score; });
  for (std::size_t k = 0; k < n_log; ++k) {
    const Entry& e = entries[k];
    log << "  input " << e.input << " " << leaves[e.input].shape().to_string() << " element "
        << detail::index_string(leaves[e.input].shape(), e.element) << ": analytic " << e.analytic
        << ", numeric " << e.numeric << ", abs error " << e.abs_error << ", rel error "
        << e.rel_error << "\n";
  }
  result.log = log.str();
  return result;
}

}  // namespace hgad
