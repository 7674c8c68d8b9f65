#pragma once
/// \file
/// The model file of an HgadModel: one hgad::Checkpoint (io/checkpoint.hpp) holding the
/// configuration as text, every level's parameters (flows with their fixed rotations, priors),
/// the calibration (constants, thresholds, class posteriors, per-position baselines), the
/// passes trained and the metadata; a training checkpoint adds every level's optimiser state.
/// Reading checks each entry and names the file and the entry that is wrong. HgadModel's save,
/// load and checkpoint members call ModelFile.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "../detail/check.hpp"
#include "../flow/whitening.hpp"
#include "../io/checkpoint.hpp"
#include "../tensor.hpp"
#include "config.hpp"
#include "scoring.hpp"
#include "training.hpp"

namespace hgad {

template <class Scalar>
class HgadModel;

/// The model-file job of HgadModel (model/hgad_model.hpp).
template <class Scalar>
class ModelFile {
 public:
  /// The checkpoint entry of level l's optimiser state for parameter `name` (a prefix for "").
  static std::string resume_key(Index l, const std::string& name) {
    return "resume.level" + std::to_string(l) + "." + name;
  }

  /// The checkpoint entry of level l's per-position calibration baselines.
  static std::string baseline_key(Index l) {
    return "calibration.position_baseline.level" + std::to_string(l);
  }

  /// The checkpoint entry of level l's per-position calibration scales (position_std).
  static std::string scale_key(Index l) {
    return "calibration.position_scale.level" + std::to_string(l);
  }

  /// The checkpoint entry, after "levelL.", of a level's class factors (docs/algorithm.md §3.1.2).
  static constexpr const char* class_factors_key = "prior.class_factors";

  /// The text of the checkpoint's "format" entry of a model file.
  static constexpr const char* format = "hgad-model 1";

  /// The body of HgadModel::to_checkpoint.
  static Checkpoint to_checkpoint(const HgadModel<Scalar>& model) {
    Checkpoint ckpt;
    ckpt.set_text("format", format);
    ckpt.set_text("config", model.m_config.to_text());
    ckpt.set_int64("training.epochs", {static_cast<std::int64_t>(model.m_epochs_trained)});
    for (const auto& [key, value] : model.m_metadata) ckpt.set_text("meta." + key, value);
    for (Index l = 0; l < model.n_levels(); ++l) {
      const std::string prefix = "level" + std::to_string(l) + ".";
      const SequenceFlow<Scalar>& f = model.flow(l);
      for (const auto& [name, var] : f.named_parameters())
        ckpt.set_tensor(prefix + "flow." + name, var.value());
      for (Index k = 0; k < f.n_blocks(); ++k)
        ckpt.set_tensor(prefix + "flow.block" + std::to_string(k) + ".rot", f.block(k).rotation());
      if (!model.whitening(l).is_identity()) {
        ckpt.set_tensor(prefix + "whitening.mean", model.whitening(l).mean());
        ckpt.set_tensor(prefix + "whitening.matrix", model.whitening(l).matrix());
      }
      if (model.m_config.objective == Objective::hgad) {
        const auto& pr = model.prior(l);
        const auto names = GaussianMixturePrior<Scalar>::parameter_names();
        const auto params = pr.parameters();
        for (std::size_t i = 0; i < names.size(); ++i)
          ckpt.set_tensor(prefix + "prior." + names[i], params[i].value());
        if (pr.has_class_factors()) ckpt.set_tensor(prefix + class_factors_key, pr.class_factors());
      }
    }
    if (model.is_calibrated()) {
      const Index K = model.n_classes(), L = model.n_levels();
      Tensor<double> level_max({2, K + 1, L}), sum_max({2, K + 1}), train_score_max({K + 1}),
          threshold({K + 1});
      for (Index k = 0; k <= K; ++k) {
        const ClassCalibration& cal = model.m_calibration[static_cast<std::size_t>(k)];
        train_score_max(k) = cal.train_score_max;
        threshold(k) = cal.threshold;
        const AnomalyMapConstants* parts[2] = {&cal.log_likelihood, &cal.neg_entropy};
        for (Index t = 0; t < 2; ++t) {
          const bool present = !parts[t]->level_max.empty();
          for (Index l = 0; l < L; ++l)
            level_max(t, k, l) = present ? parts[t]->level_max[static_cast<std::size_t>(l)]
                                         : std::numeric_limits<double>::quiet_NaN();
          sum_max(t, k) = present ? parts[t]->sum_max : std::numeric_limits<double>::quiet_NaN();
        }
      }
      ckpt.set_tensor("calibration.level_max", level_max);
      ckpt.set_tensor("calibration.sum_max", sum_max);
      ckpt.set_tensor("calibration.train_score_max", train_score_max);
      if (std::all_of(model.m_calibration.begin(), model.m_calibration.end(),
                      [](const ClassCalibration& c) { return c.has_threshold(); }))
        ckpt.set_tensor("calibration.threshold", threshold);
      const bool have_posterior = std::all_of(
          model.m_calibration.begin(), model.m_calibration.end(),
          [&](const ClassCalibration& c) { return Index(c.class_posterior.size()) == K; });
      if (model.m_config.objective == Objective::hgad && have_posterior) {
        Tensor<double> posterior({K + 1, K});
        for (Index k = 0; k <= K; ++k)
          for (Index y = 0; y < K; ++y)
            posterior(k, y) = model.m_calibration[static_cast<std::size_t>(k)]
                                  .class_posterior[static_cast<std::size_t>(y)];
        ckpt.set_tensor("calibration.class_posterior", posterior);
      }
      if (model.m_config.calibration_baseline != CalibrationBaseline::none) {
        // Per level (2, K + 1, H W): likelihood and negative-entropy baselines (and with
        // position_std their scales), NaN where absent.
        const bool scaled =
            model.m_config.calibration_baseline == CalibrationBaseline::position_std;
        for (Index l = 0; l < L; ++l) {
          const LevelSpec& s = model.m_config.levels[static_cast<std::size_t>(l)];
          const Index hw = s.height * s.width;
          for (const bool scale : {false, true}) {
            if (scale && !scaled) continue;
            Tensor<double> values({2, K + 1, hw});
            for (Index k = 0; k <= K; ++k) {
              const ClassCalibration& cal = model.m_calibration[static_cast<std::size_t>(k)];
              const std::vector<std::vector<double>>* parts[2] = {
                  scale ? &cal.log_likelihood_scale : &cal.log_likelihood_baseline,
                  scale ? &cal.neg_entropy_scale : &cal.neg_entropy_baseline};
              for (Index t = 0; t < 2; ++t)
                for (Index j = 0; j < hw; ++j)
                  values(t, k, j) =
                      parts[t]->empty()
                          ? std::numeric_limits<double>::quiet_NaN()
                          : (*parts[t])[static_cast<std::size_t>(l)][static_cast<std::size_t>(j)];
            }
            ckpt.set_tensor(scale ? scale_key(l) : baseline_key(l), values);
          }
        }
      }
    }
    return ckpt;
  }

  /// The body of HgadModel::from_checkpoint.
  static HgadModel<Scalar> from_checkpoint(const Checkpoint& ckpt, const std::string& name) {
    check(ckpt.has("format") && ckpt.has("config"), "'", name,
          "' is an hgad checkpoint but not a model (no ", ckpt.has("format") ? "config" : "format",
          " entry)");
    check(ckpt.text("format") == format, "'", name, "' holds '", ckpt.text("format"),
          "', expected '", format, "'");
    // The text is read over the defaults but for init: a file without the key was written before
    // it existed, when every model had the paper's start.
    ModelConfig config;
    try {
      ModelConfig before_init_key;
      before_init_key.init = ModelInit::identity;
      config = ModelConfig::from_text(ckpt.text("config"), name, before_init_key);
      config.validate(true);
    } catch (const Error& e) {
      throw Error("'" + name + "' has an invalid model configuration: " + e.what());
    }
    // The whitening is set at the start of training: a trained model of init = whiten holds it.
    const bool whitened = ckpt.has("level0.whitening.mean");
    const bool trained = ckpt.has("training.epochs") && !ckpt.int64("training.epochs").empty() &&
                         ckpt.int64("training.epochs")[0] > 0;
    check(!whitened || config.init == ModelInit::whiten, "'", name,
          "' holds a whitening but its configuration has init = identity");
    check(whitened || config.init == ModelInit::identity || !trained, "'", name,
          "' is a trained model of init = whiten but lacks 'level0.whitening.mean'");
    // Building the model allocates its parameters before any is read: refuse a configuration that
    // needs far more parameter values than the file holds, so a small corrupt file cannot demand
    // a huge model. (Within the slack of 2^20 values the per-parameter checks below name the
    // missing or misshapen entry.)
    const double needed = parameter_count(config);
    check(needed <= double(ckpt.tensor_elements()) + double(1 << 20), "'", name,
          "': its configuration needs ", needed, " parameter values but the file holds only ",
          ckpt.tensor_elements());
    HgadModel<Scalar> model(config);
    auto fetch = [&](const std::string& key, const Shape& shape) {
      check(ckpt.has(key), "'", name, "' lacks the parameter '", key, "'");
      Tensor<Scalar> t = ckpt.tensor<Scalar>(key);
      check(t.shape() == shape, "'", name, "': parameter '", key, "' has shape ",
            t.shape(), ", expected ", shape);
      return t;
    };
    for (Index l = 0; l < model.n_levels(); ++l) {
      const std::string prefix = "level" + std::to_string(l) + ".";
      SequenceFlow<Scalar>& f = model.flow(l);
      for (const auto& [pname, var] : f.named_parameters())
        f.set_parameter(pname, fetch(prefix + "flow." + pname, var.value().shape()));
      for (Index k = 0; k < f.n_blocks(); ++k) {
        const std::string key = prefix + "flow.block" + std::to_string(k) + ".rot";
        f.block(k).set_rotation(fetch(key, f.block(k).rotation().shape()));
      }
      if (whitened) {
        const Index D = f.dim();
        const LevelSpec& s = config.levels[static_cast<std::size_t>(l)];
        const Shape mean_shape =
            config.whiten_mean == WhitenMean::position ? Shape({s.height * s.width, D}) : Shape({D});
        try {
          model.m_whitening[static_cast<std::size_t>(l)] =
              AffineWhitening<Scalar>(fetch(prefix + "whitening.mean", mean_shape),
                                      fetch(prefix + "whitening.matrix", Shape({D, D})));
        } catch (const Error& e) {
          throw Error("'" + name + "': level " + std::to_string(l) + ": " + e.what());
        }
      }
      if (config.objective == Objective::hgad) {
        auto& pr = model.prior(l);
        const auto names = GaussianMixturePrior<Scalar>::parameter_names();
        auto params = pr.parameters();
        for (std::size_t i = 0; i < names.size(); ++i) {
          const Tensor<Scalar> value =
              fetch(prefix + "prior." + names[i], params[i].value().shape());
          std::copy(value.data(), value.data() + value.numel(), params[i].value().data());
        }
        // The class covariances (§3.1.2) are set at the start of training: a trained model of
        // class_covariance = class or intra holds them, an untrained one need not.
        const Index D = pr.dim(), K = pr.n_classes();
        if (ckpt.has(prefix + class_factors_key)) {
          check(has_class_covariance(config.class_covariance), "'", name, "' holds '", prefix,
                class_factors_key, "' but its class_covariance is unit");
          try {
            pr.set_class_factors(fetch(prefix + class_factors_key, Shape({K, D, D})),
                                 config.class_covariance == ClassCovariance::class_);
          } catch (const Error& e) {
            throw Error("'" + name + "': level " + std::to_string(l) + ": " + e.what());
          }
        } else {
          check(!has_class_covariance(config.class_covariance) || !trained, "'", name,
                "' is a trained model of class_covariance = ",
                detail::name_of(class_covariance_names, config.class_covariance), " but lacks '",
                prefix, class_factors_key, "'");
        }
      }
    }
    if (ckpt.has("training.epochs")) {
      const auto epochs = ckpt.int64("training.epochs");
      check(epochs.size() == 1 && epochs[0] >= 0, "'", name, "': malformed training.epochs entry");
      model.m_epochs_trained = static_cast<Index>(epochs[0]);
    }
    const std::string meta = "meta.";
    for (const std::string& key : ckpt.names())
      if (key.compare(0, meta.size(), meta) == 0)
        model.m_metadata[key.substr(meta.size())] = ckpt.text(key);
    if (ckpt.has("calibration.level_max")) {
      const Index K = model.n_classes(), L = model.n_levels();
      const Tensor<double> level_max = ckpt.tensor<double>("calibration.level_max");
      check(ckpt.has("calibration.sum_max"), "'", name, "' lacks the entry 'calibration.sum_max'");
      const Tensor<double> sum_max = ckpt.tensor<double>("calibration.sum_max");
      check(ckpt.has("calibration.train_score_max"), "'", name,
            "' lacks the entry 'calibration.train_score_max'");
      const Tensor<double> train_score_max = ckpt.tensor<double>("calibration.train_score_max");
      check(train_score_max.shape() == Shape({K + 1}), "'", name,
            "': calibration.train_score_max has shape ", train_score_max.shape(),
            ", expected (", K + 1, ")");
      check(level_max.shape() == Shape({2, K + 1, L}) && sum_max.shape() == Shape({2, K + 1}), "'",
            name, "': calibration constants of shape ", level_max.shape(), " and ",
            sum_max.shape(), ", expected (2, ", K + 1, ", ", L, ") and (2, ", K + 1,
            ")");
      model.m_calibration.resize(static_cast<std::size_t>(K + 1));
      for (Index k = 0; k <= K; ++k) {
        ClassCalibration& cal = model.m_calibration[static_cast<std::size_t>(k)];
        cal.train_score_max = train_score_max(k);
        AnomalyMapConstants* parts[2] = {&cal.log_likelihood, &cal.neg_entropy};
        for (Index t = 0; t < 2; ++t) {
          if (std::isnan(sum_max(t, k))) continue;
          parts[t]->sum_max = sum_max(t, k);
          for (Index l = 0; l < L; ++l) parts[t]->level_max.push_back(level_max(t, k, l));
        }
      }
      if (ckpt.has("calibration.threshold")) {  // absent in files of older versions: NaN
        const Tensor<double> threshold = ckpt.tensor<double>("calibration.threshold");
        check(threshold.shape() == Shape({K + 1}), "'", name, "': calibration.threshold has shape ",
              threshold.shape(), ", expected (", K + 1, ")");
        for (Index k = 0; k <= K; ++k) {
          check(std::isfinite(threshold(k)), "'", name,
                "': calibration.threshold holds a non-finite value at ", k);
          model.m_calibration[static_cast<std::size_t>(k)].threshold = threshold(k);
        }
      }
      if (ckpt.has("calibration.class_posterior")) {  // absent in files of older versions
        const Tensor<double> posterior = ckpt.tensor<double>("calibration.class_posterior");
        check(posterior.shape() == Shape({K + 1, K}), "'", name,
              "': calibration.class_posterior has shape ", posterior.shape(),
              ", expected (", K + 1, ", ", K, ")");
        for (Index k = 0; k <= K; ++k)
          for (Index y = 0; y < K; ++y) {
            check(std::isfinite(posterior(k, y)), "'", name,
                  "': calibration.class_posterior holds a non-finite value at (", k, ", ", y, ")");
            model.m_calibration[static_cast<std::size_t>(k)].class_posterior.push_back(
                posterior(k, y));
          }
      }
      if (config.calibration_baseline != CalibrationBaseline::none) {
        const bool scaled = config.calibration_baseline == CalibrationBaseline::position_std;
        for (Index l = 0; l < L; ++l) {
          const LevelSpec& s = config.levels[static_cast<std::size_t>(l)];
          const Index hw = s.height * s.width;
          for (const bool scale : {false, true}) {
            if (scale && !scaled) continue;
            const std::string key = scale ? scale_key(l) : baseline_key(l);
            check(ckpt.has(key), "'", name, "' lacks the entry '", key,
                  "' its configuration (calibration_baseline = ",
                  detail::name_of(calibration_baseline_names, config.calibration_baseline),
                  ") needs");
            const Tensor<double> stored = ckpt.tensor<double>(key);
            check(stored.shape() == Shape({2, K + 1, hw}), "'", name, "': ", key, " has shape ",
                  stored.shape(), ", expected (2, ", K + 1, ", ", hw, ")");
            for (Index k = 0; k <= K; ++k) {
              ClassCalibration& cal = model.m_calibration[static_cast<std::size_t>(k)];
              std::vector<std::vector<double>>* parts[2] = {
                  scale ? &cal.log_likelihood_scale : &cal.log_likelihood_baseline,
                  scale ? &cal.neg_entropy_scale : &cal.neg_entropy_baseline};
              for (Index t = 0; t < 2; ++t) {
                if (std::isnan(sum_max(t, k))) continue;
                std::vector<double> values(static_cast<std::size_t>(hw));
                for (Index j = 0; j < hw; ++j) {
                  values[static_cast<std::size_t>(j)] = stored(t, k, j);
                  check(std::isfinite(values[static_cast<std::size_t>(j)]) &&
                            (!scale || values[static_cast<std::size_t>(j)] > 0),
                        "'", name, "': ", key, " holds ", values[static_cast<std::size_t>(j)],
                        " at (", t, ", ", k, ", ", j, ")", scale ? ", not a positive scale" : "");
                }
                parts[t]->push_back(std::move(values));
              }
            }
          }
        }
      }
    }
    return model;
  }

  /// The body of HgadModel::save_checkpoint.
  static void save_checkpoint(const HgadModel<Scalar>& model, const std::string& path,
                              const TrainingState<Scalar>& state) {
    check(static_cast<Index>(state.optimizers.size()) == model.n_levels(),
          "HgadModel::save_checkpoint: a state of ", state.optimizers.size(),
          " levels for a model of ", model.n_levels());
    Checkpoint ckpt = to_checkpoint(model);
    ckpt.set_int64("resume.passes_done", {static_cast<std::int64_t>(state.passes_done)});
    ckpt.set_int64("resume.steps_done", {static_cast<std::int64_t>(state.steps_done)});
    for (Index l = 0; l < model.n_levels(); ++l) {
      for (const auto& [name, adam] : state.optimizers[static_cast<std::size_t>(l)]) {
        const std::string key = resume_key(l, name);
        ckpt.set_int64(key + ".step", std::vector<std::int64_t>(1, adam.step));
        if (adam.step == 0) continue;
        ckpt.set_tensor(key + ".exp_avg", adam.exp_avg);
        ckpt.set_tensor(key + ".exp_avg_sq", adam.exp_avg_sq);
      }
    }
    ckpt.save(path);
  }

  /// The body of HgadModel::load_checkpoint.
  static std::pair<HgadModel<Scalar>, TrainingState<Scalar>> load_checkpoint(
      const std::string& path) {
    const Checkpoint ckpt = Checkpoint::load(path);
    HgadModel<Scalar> model = from_checkpoint(ckpt, path);
    check(ckpt.has("resume.passes_done") && ckpt.has("resume.steps_done"), "'", path,
          "' holds a model but no training state to resume (checkpoints are written by hgad train "
          "--checkpoint-every, or HgadModel::save_checkpoint)");
    TrainingState<Scalar> state;
    const auto single = [&](const std::string& key) {
      const std::vector<std::int64_t> v = ckpt.int64(key);
      check(v.size() == 1 && v[0] >= 0, "'", path, "': malformed entry '", key, "'");
      return static_cast<Index>(v[0]);
    };
    state.passes_done = single("resume.passes_done");
    state.steps_done = single("resume.steps_done");
    state.optimizers.resize(static_cast<std::size_t>(model.n_levels()));
    const std::string step_suffix = ".step";
    for (Index l = 0; l < model.n_levels(); ++l) {
      const std::string prefix = resume_key(l, "");
      for (const std::string& key : ckpt.names()) {
        if (key.compare(0, prefix.size(), prefix) != 0 ||
            key.size() < prefix.size() + step_suffix.size() ||
            key.compare(key.size() - step_suffix.size(), step_suffix.size(), step_suffix) != 0)
          continue;
        const std::string name =
            key.substr(prefix.size(), key.size() - prefix.size() - step_suffix.size());
        AdamState<Scalar> adam;
        adam.step = single(key);
        if (adam.step > 0) {
          const std::string base = resume_key(l, name);
          check(ckpt.has(base + ".exp_avg") && ckpt.has(base + ".exp_avg_sq"), "'", path,
                "' lacks the optimiser moments of ", name, " at level ", l);
          adam.exp_avg = ckpt.tensor<Scalar>(base + ".exp_avg");
          adam.exp_avg_sq = ckpt.tensor<Scalar>(base + ".exp_avg_sq");
        }
        state.optimizers[static_cast<std::size_t>(l)][name] = std::move(adam);
      }
    }
    return {std::move(model), std::move(state)};
  }
};

}  // namespace hgad
