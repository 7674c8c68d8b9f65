#pragma once
/// \file
/// The options of the AllInOne coupling block, named as FrEIA names them, and the global-affine
/// activation they select (the soft clamp's body is in coupling_element.hpp).

#include <cmath>
#include <string>

#include "../detail/check.hpp"
#include "../detail/host_device.hpp"
#include "../detail/scalar_math.hpp"
#include "../detail/text.hpp"

namespace hgad {

/// Which soft clamp turns the scaled subnet output a (already multiplied by 0.1) into the log-scale s
/// of the affine coupling (docs/algorithm.md §2.2 step 4 and §2.3).
enum class SoftClamp {
  pinned,  ///< s = α·tanh(a): FrEIA 4e0c6ab, the commit HGAD pins (slope 0.1·α in the raw output)
  head,    ///< s = α·tanh(a/α): FrEIA >= ae74fd4 (2023-08, "fixed soft clamping", slope 0.1)
};

/// FrEIA's `global_affine_type`: the activation g = f(γ) of the learned per-channel global scale.
enum class GlobalAffineType {
  softplus,  ///< "SOFTPLUS": g = 0.1·softplus_{β=0.5}(γ) (HGAD)
  sigmoid,   ///< "SIGMOID":  g = 10·sigmoid(γ − 2)
  exp,       ///< "EXP":      g = exp(γ)
};

/// Parses FrEIA's spelling "SOFTPLUS", "SIGMOID" or "EXP".
inline GlobalAffineType global_affine_type_from_string(const std::string& name) {
  if (name == "SOFTPLUS") return GlobalAffineType::softplus;
  if (name == "SIGMOID") return GlobalAffineType::sigmoid;
  if (name == "EXP") return GlobalAffineType::exp;
  throw Error("global_affine_type_from_string: unknown global_affine_type \"" + name +
              "\"; expected SOFTPLUS, SIGMOID or EXP");
}

/// The spelling of each soft clamp in text: a config's `clamp_variant` key, the golden files'
/// `clamp_mode`.
inline constexpr detail::NamedValue<SoftClamp> soft_clamp_names[] = {{"pinned", SoftClamp::pinned},
                                                                     {"head", SoftClamp::head}};

/// Parses "pinned" or "head".
inline SoftClamp soft_clamp_from_string(const std::string& name) {
  SoftClamp variant{};
  if (detail::value_named(soft_clamp_names, name, variant)) return variant;
  throw Error("soft_clamp_from_string: unknown clamp variant \"" + name + "\"; expected " +
              detail::alternatives(soft_clamp_names));
}

/// Options of AllInOneBlock with FrEIA's names and FrEIA's defaults (4e0c6ab). HGAD sets
/// affine_clamping = 1.9 and permute_soft = true (docs/algorithm.md §2.1); `AllInOneOptions::hgad()`
/// returns exactly that. FrEIA's gin_block, learned_householder_permutation and
/// reverse_permutation keep their defaults (off) in HGAD and are not provided.
struct AllInOneOptions {
  /// α of the soft clamp; s lies in (−α, α). FrEIA default 2.0; HGAD's `clamp_alpha` is 1.9.
  double affine_clamping = 2.0;
  /// The clamp formula: the pinned FrEIA commit by default (docs/algorithm.md §2.3 recommendation).
  SoftClamp clamp_variant = SoftClamp::pinned;
  /// The global scale g at initialisation (FrEIA default 1.0): γ is set so that f(γ) equals it.
  double global_affine_init = 1.0;
  /// The activation of the global scale (FrEIA default "SOFTPLUS").
  GlobalAffineType global_affine_type = GlobalAffineType::softplus;
  /// true: a Haar-random rotation in SO(D); false: a random index permutation (FrEIA default).
  bool permute_soft = false;

  /// The configuration HGAD creates every block with (docs/algorithm.md §2.1).
  static AllInOneOptions hgad() {
    AllInOneOptions o;
    o.affine_clamping = 1.9;  // HGAD's clamp_alpha default
    o.permute_soft = true;
    return o;
  }
};

namespace detail {

/// The global scale g = f(γ) of FrEIA's AllInOneBlock (docs/algorithm.md §2.2 step 7): the one fast
/// body, used by the fused CPU coupling and the CUDA level kernels; AllInOneBlock::global_scale_var
/// is its autograd reference.
template <class Scalar>
HGAD_HOST_DEVICE Scalar global_affine_scale(Scalar gamma, GlobalAffineType type) {
  switch (type) {
    // 0.1 factor and β = 0.5 of FrEIA's SOFTPLUS global affine.
    case GlobalAffineType::softplus: return Scalar(0.1) * softplus(gamma, Scalar(0.5));
    // 10·sigmoid(γ − 2): FrEIA's SIGMOID global affine (range (0, 10)).
    case GlobalAffineType::sigmoid: return Scalar(10) * sigmoid(gamma - Scalar(2));
    case GlobalAffineType::exp: return hd_exp(gamma);
  }
  return gamma;
}

/// dg/dγ of global_affine_scale:
/// softplus: d/dγ [0.1 softplus_{0.5}(γ)] = 0.1 sigmoid(0.5 γ) (0.1 in the linear region 0.5 γ > 20);
/// sigmoid:  d/dγ [10 σ(γ − 2)] = 10 σ(γ − 2)(1 − σ(γ − 2));
/// exp:      d/dγ [e^γ] = e^γ.
template <class Scalar>
HGAD_HOST_DEVICE Scalar global_affine_scale_derivative(Scalar gamma, GlobalAffineType type) {
  switch (type) {
    case GlobalAffineType::softplus: return Scalar(0.1) * softplus_derivative(gamma, Scalar(0.5));
    case GlobalAffineType::sigmoid: {
      const Scalar sg = sigmoid(gamma - Scalar(2));
      return Scalar(10) * sg * (Scalar(1) - sg);
    }
    case GlobalAffineType::exp: return hd_exp(gamma);
  }
  return Scalar(0);
}

/// The γ with f(γ) = init, as FrEIA initialises it:
/// softplus: γ = 2 ln(e^{0.5·10·init} − 1) (HGAD: 2 ln(e⁵ − 1) ≈ 9.986478501);
/// sigmoid:  γ = 2 − ln(10/init − 1);  exp: γ = ln(init).
inline double global_affine_initial_gamma(double init, GlobalAffineType type) {
  switch (type) {
    case GlobalAffineType::softplus:
      check(init > 0, "AllInOneOptions: global_affine_init = ", init, " must be > 0 for SOFTPLUS");
      return 2.0 * std::log(std::expm1(5.0 * init));
    case GlobalAffineType::sigmoid:
      check(init > 0 && init < 10, "AllInOneOptions: global_affine_init = ", init,
            " must lie in (0, 10) for SIGMOID");
      return 2.0 - std::log(10.0 / init - 1.0);
    case GlobalAffineType::exp:
      check(init > 0, "AllInOneOptions: global_affine_init = ", init, " must be > 0 for EXP");
      return std::log(init);
  }
  return 0.0;
}

}  // namespace detail
}  // namespace hgad
