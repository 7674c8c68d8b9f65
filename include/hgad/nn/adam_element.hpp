#pragma once
/// \file
/// One element of Adam, torch 1.13's single-tensor formula with coupled (L2) weight decay
/// (docs/algorithm.md §4): the body that Adam::step (nn/adam.hpp) runs over a CPU tensor and the CUDA
/// level engine's Adam kernel runs over the device's parameters.

#include <cmath>
#include <cstdint>

#include "../detail/host_device.hpp"

namespace hgad {

/// The constants of one Adam step t (1-based) of one parameter group, in the precision of the
/// parameters.
template <class Scalar>
struct AdamStepConstants {
  Scalar beta1, beta2;
  Scalar one_minus_beta1, one_minus_beta2;  ///< 1 - beta, formed in double as torch does in Python
  Scalar eps, weight_decay;
  bool decay;                    ///< weight_decay != 0
  Scalar step_size;              ///< lr / (1 - beta1^t)
  Scalar bias_correction2_sqrt;  ///< sqrt(1 - beta2^t)
};

/// The constants of step t; the bias corrections are computed in double, as torch does on the host.
template <class Scalar>
AdamStepConstants<Scalar> adam_step_constants(double lr, double beta1, double beta2, double eps,
                                              double weight_decay, std::int64_t step) {
  const double t = static_cast<double>(step);
  AdamStepConstants<Scalar> c;
  c.beta1 = static_cast<Scalar>(beta1);
  c.beta2 = static_cast<Scalar>(beta2);
  c.one_minus_beta1 = static_cast<Scalar>(1.0 - beta1);
  c.one_minus_beta2 = static_cast<Scalar>(1.0 - beta2);
  c.eps = static_cast<Scalar>(eps);
  c.weight_decay = static_cast<Scalar>(weight_decay);
  c.decay = weight_decay != 0.0;
  c.step_size = static_cast<Scalar>(lr / (1.0 - std::pow(beta1, t)));
  c.bias_correction2_sqrt = static_cast<Scalar>(std::sqrt(1.0 - std::pow(beta2, t)));
  return c;
}

/// One element of Adam (torch 1.13 `_single_tensor_adam`, amsgrad off):
///   g <- g + wd theta;  m <- beta1 m + (1 - beta1) g;  v <- beta2 v + (1 - beta2) g^2;
///   theta <- theta - (lr / (1 - beta1^t)) m / (sqrt(v) / sqrt(1 - beta2^t) + eps).
template <class Scalar>
HGAD_HOST_DEVICE void adam_element(const AdamStepConstants<Scalar>& c, Scalar grad, Scalar* param,
                                   Scalar* exp_avg, Scalar* exp_avg_sq) {
  const Scalar g = c.decay ? grad + c.weight_decay * *param : grad;
  const Scalar m = *exp_avg * c.beta1 + g * c.one_minus_beta1;
  const Scalar v = *exp_avg_sq * c.beta2 + g * g * c.one_minus_beta2;
  *exp_avg = m;
  *exp_avg_sq = v;
  *param -= c.step_size * (m / (detail::hd_sqrt(v) / c.bias_correction2_sqrt + c.eps));
}

}  // namespace hgad
