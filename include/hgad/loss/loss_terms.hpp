#pragma once
/// \file
/// What the training objective is made of: the switch between HGAD and the single-Gaussian NF
/// baseline, the weights and the two-stage schedule of docs/algorithm.md §3.4, and the record of every
/// loss term.

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "../backend.hpp"
#include "../detail/check.hpp"
#include "../detail/text.hpp"

namespace hgad {

/// Which latent prior and loss a level trains with.
enum class Objective {
  hgad,  ///< the hierarchical Gaussian mixture and its five terms (docs/algorithm.md §3)
  nf,    ///< the unified NF baseline: one N(0, I) prior and CFlow's loss -log sigmoid(logp / D)
};

/// The spelling of each objective in text: a config's `objective` key, the CLI's --objective.
inline constexpr detail::NamedValue<Objective> objective_names[] = {{"hgad", Objective::hgad},
                                                                    {"nf", Objective::nf}};

inline std::string to_string(Objective objective) {
  return detail::name_of(objective_names, objective);
}

/// Weights and schedule of the objective (docs/algorithm.md §3.4, §11).
struct LossOptions {
  Objective objective = Objective::hgad;
  double lambda1 = 1.0;            ///< weight of L_g (`lambda1`, §3.4)
  double lambda2 = 100.0;          ///< weight of -L_mi (`lambda2`, §3.4)
  double label_smoothing = 0.02;   ///< epsilon of the smoothed one-hot q (`label_smoothing`, §3.2)
  int stage1_meta_epochs = 2;      ///< meta-epochs trained with the stage-1 loss (§3.4, §9.8)
  /// The log-determinant of a fixed layer in front of the flow (the whitening of §2.5), added to
  /// every row's log_jac_det before any term is formed; 0 for the paper's model.
  double log_jac_det_offset = 0.0;
};

/// The stage of a meta-epoch: 1 while meta_epoch < stage1_meta_epochs, 2 afterwards (§3.4).
inline int training_stage(int meta_epoch, const LossOptions& options = {}) {
  check(meta_epoch >= 0, "training_stage: meta_epoch must be >= 0, got ", meta_epoch);
  return meta_epoch < options.stage1_meta_epochs ? 1 : 2;
}

namespace detail {

inline void check_stage(int stage, const char* where) {
  check(stage == 1 || stage == 2, where, ": stage must be 1 or 2, got ", stage);
}

}  // namespace detail

/// The value of every term of one evaluation of the objective, each a mean over the N vectors.
///
/// HGAD (docs/algorithm.md §3.4):
///   stage 1: total = lambda1 L_g - lambda2 L_mi + L_e
///   stage 2: total = lambda1 L_g - lambda2 L_mi + L_e + L_g_intra + L_z
/// Terms a stage does not use are 0. For Objective::nf only l_z (CFlow's loss) is set and
/// total = l_z.
template <class Scalar>
struct LossTerms {
  Scalar l_g = 0;        ///< L_g, inter-class mixture NLL per dimension (Eq. 6)
  Scalar l_mi = 0;       ///< L_mi, label-smoothed class log-posterior (Eq. 8), maximised
  Scalar l_e = 0;        ///< L_e, entropy of the inter-class posterior without pi (Eq. 9)
  Scalar l_g_intra = 0;  ///< L_g_intra, intra-class mixture NLL per dimension (§3.3.4)
  Scalar l_z = 0;        ///< L_z = softplus(-logp / D) (§3.3.5)
  Scalar total = 0;      ///< the weighted sum that is minimised
  int stage = 1;
  Objective objective = Objective::hgad;

  /// (name, value) of every term the objective and stage use, then "total".
  std::vector<std::pair<std::string, Scalar>> named() const {
    if (objective == Objective::nf) return {{"L_z", l_z}, {"total", total}};
    std::vector<std::pair<std::string, Scalar>> out{{"L_g", l_g}, {"L_mi", l_mi}, {"L_e", l_e}};
    if (stage == 2) {
      out.emplace_back("L_g_intra", l_g_intra);
      out.emplace_back("L_z", l_z);
    }
    out.emplace_back("total", total);
    return out;
  }
};

/// Where a training step is, for the messages of NonFiniteError.
struct TrainStepContext {
  Index level = 0;         ///< the feature level (scale) being trained
  std::int64_t step = 0;   ///< the optimiser step count of the run
};

namespace detail {

/// Throws NonFiniteError naming the first loss term that is NaN or infinite, the level and the step.
template <class Scalar>
void check_finite_terms(const LossTerms<Scalar>& terms, const TrainStepContext& context, const char* where) {
  for (const auto& [name, value] : terms.named()) {
    if (!std::isfinite(double(value))) {
      throw NonFiniteError(concat(where, ": loss term ", name, " is ", double(value), " at level ", context.level,
                                  ", step ", context.step, "; the parameters were left unchanged"));
    }
  }
}

}  // namespace detail

}  // namespace hgad
