#pragma once
/// \file
/// Scoring an HgadModel (docs/algorithm.md §5, §9): the raw per-position scores of an image
/// (its flows, then the prior's log-likelihood and negative entropy), the anomaly maps they
/// make, the constants that normalise them (transductive or calibrated on training images), the
/// decision threshold, and the image scores of a set. HgadModel's scoring members call
/// ModelScoring, which holds no state of its own: a model is scored from several threads at once.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "../detail/check.hpp"
#include "../detail/parallel.hpp"
#include "../flow/sequence_flow.hpp"
#include "../parallel/communicator.hpp"
#include "../prior/scores.hpp"
#include "../tensor.hpp"
#include "anomaly_map.hpp"
#include "config.hpp"

namespace hgad {

template <class Scalar>
class HgadModel;

/// How test images are turned into anomaly maps (docs/algorithm.md §5 and §9.1, §9.2).
enum class ScoreMode {
  transductive,  ///< the paper's normalisation over the whole test set of a class (needs the class)
  calibrated,  ///< constants frozen from training data; an image's score does not depend on others
  label_free,  ///< calibrated, with the class predicted from the inter-class posterior
};

inline const char* to_string(ScoreMode mode) {
  switch (mode) {
    case ScoreMode::transductive:
      return "transductive";
    case ScoreMode::calibrated:
      return "calibrated";
    case ScoreMode::label_free:
      return "label-free";
  }
  return "?";
}

/// "transductive", "calibrated" or "label-free" (also "label_free").
inline ScoreMode parse_score_mode(const std::string& text) {
  if (text == "transductive") return ScoreMode::transductive;
  if (text == "calibrated") return ScoreMode::calibrated;
  if (text == "label-free" || text == "label_free") return ScoreMode::label_free;
  throw Error("unknown scoring mode '" + text +
              "' (expected transductive, calibrated or label-free)");
}

/// Which terms make the anomaly map (docs/algorithm.md §5 step 5 and the "anomaly criterion"
/// ablation of the paper, §9.7): HGAD's product of the likelihood and entropy maps, or either
/// alone. The NF objective has no entropy term; its map is the likelihood map whatever the
/// criterion. Nor has a model of one class (its class posterior is 1 at every position, so the
/// entropy map is 0): its product map is the likelihood map, and the entropy criterion is an error.
/// A model whose classes carry their own covariance (class_covariance = class, docs/algorithm.md
/// §3.1.2) is scored the same way: the product map is its likelihood map. Its class posterior is
/// that of one Gaussian per class in D dimensions, one-hot to working precision nearly everywhere,
/// so its entropy map is 0 almost everywhere and the product would erase the likelihood; the
/// entropy criterion still gives the entropy map alone. With class_covariance = intra the class
/// level keeps the paper's unit components, and so the paper's product.
enum class ScoreCriterion { product, likelihood, entropy };

inline const char* to_string(ScoreCriterion c) {
  return c == ScoreCriterion::product      ? "product"
         : c == ScoreCriterion::likelihood ? "likelihood"
                                           : "entropy";
}

/// "product", "likelihood" or "entropy".
inline ScoreCriterion parse_score_criterion(const std::string& text) {
  if (text == "product") return ScoreCriterion::product;
  if (text == "likelihood") return ScoreCriterion::likelihood;
  if (text == "entropy") return ScoreCriterion::entropy;
  throw Error("unknown score criterion '" + text + "' (expected product, likelihood or entropy)");
}

template <class Scalar>
struct RawScores {
  std::vector<Tensor<Scalar>> log_likelihood;  ///< per level (H_l, W_l): logp_l
  std::vector<Tensor<Scalar>>
      neg_entropy;  ///< per level (H_l, W_l): negH_l; empty for the NF objective
  std::vector<double>
      class_posterior;  ///< (K,) p(y | z) averaged over positions and levels; empty for NF
  std::int64_t predicted_class = -1;  ///< arg-max of class_posterior (-1 for NF)
  std::int64_t scored_class =
      -1;  ///< the class whose intra mixture gave log_likelihood (-1 for NF)
};

/// How well a model describes held-out normal images (HgadModel::held_out): the log-likelihood per
/// dimension of every image's positions under its own class, and how often its class is predicted.
struct HeldOut {
  /// Per level: the mean over an image's positions, then over the images of a class, then over the
  /// classes present (each class counts once, whatever its number of images).
  std::vector<double> log_likelihood;
  double mean_log_likelihood = 0;  ///< the mean of log_likelihood over the levels
  double class_accuracy = 0;       ///< share of images whose predicted class is theirs; NaN for NF
  Index images = 0;
};

/// One scored image: its anomaly map at mask size and the image score (image_score: the map's
/// maximum, or the mean of its highest ModelConfig::image_score_fraction of pixels).
template <class Scalar>
struct ScoredImage {
  Tensor<Scalar> map;  ///< (mask_size, mask_size)
  double score = 0;
  std::int64_t predicted_class = -1;
  std::int64_t scored_class = -1;
};

/// The calibrated-mode constants of one class (or of all classes): the §5.4 normalisation of both
/// map types, frozen from training images.
struct ClassCalibration {
  AnomalyMapConstants log_likelihood;
  AnomalyMapConstants neg_entropy;  ///< unused (empty) for the NF objective
  /// The largest image score of the calibration images under these constants: the scale of a
  /// normal image (heat-map colouring, thresholds).
  double train_score_max = 0;
  /// The decision threshold: the ModelConfig::threshold_quantile quantile of the calibration
  /// images' image scores under these constants; an image scoring above it is anomalous
  /// (is_anomalous). NaN in a model file written before thresholds were stored.
  double threshold = std::numeric_limits<double>::quiet_NaN();
  bool has_threshold() const { return std::isfinite(threshold); }
  /// score > threshold; requires has_threshold().
  bool is_anomalous(double score) const { return score > threshold; }
  /// Per level (H_l · W_l, row-major): the mean raw map of the calibration images, subtracted from
  /// an image's raw maps before the normalisation (ModelConfig::calibration_baseline = position);
  /// empty otherwise, and empty for the negative entropy of the NF objective.
  std::vector<std::vector<double>> log_likelihood_baseline, neg_entropy_baseline;
  /// Per level (H_l · W_l): the standard deviation of the raw map at each position over the
  /// calibration images, floored at 10⁻³ of its mean over the level's positions (1 where the whole
  /// level is constant); the baseline-relative maps are divided by it (calibration_baseline =
  /// position_std). Empty otherwise.
  std::vector<std::vector<double>> log_likelihood_scale, neg_entropy_scale;
  /// (K,) the mean over the calibration images of RawScores::class_posterior: how the model's
  /// inter-class posterior spreads over the classes on these normal images (HgadModel::
  /// class_confusion); empty for the NF objective.
  std::vector<double> class_posterior;
};

/// The q-quantile of `scores` with linear interpolation between order statistics (NumPy's
/// default, Hyndman–Fan type 7): s_(h) + (h - floor h)(s_(h+1) - s_(h)) at h = (n - 1) q over the
/// sorted scores; q = 1 gives the largest.
///   requires: scores non-empty, q in [0, 1].
inline double score_quantile(std::vector<double> scores, double q) {
  check(!scores.empty(), "score_quantile: no scores");
  check(q >= 0 && q <= 1, "score_quantile: q = ", q, " is outside [0, 1]");
  std::sort(scores.begin(), scores.end());
  const double h = double(scores.size() - 1) * q;
  const std::size_t lo = static_cast<std::size_t>(std::floor(h));
  const std::size_t hi = std::min(lo + 1, scores.size() - 1);
  return scores[lo] + (h - double(lo)) * (scores[hi] - scores[lo]);
}

/// The scoring job of HgadModel (model/hgad_model.hpp): each member is the body of the
/// HgadModel member of the same name, given the model it reads.
template <class Scalar>
class ModelScoring {
 public:
  /// The body of HgadModel::raw_scores.
  static RawScores<Scalar> raw_scores(const HgadModel<Scalar>& model,
                                      const std::vector<Tensor<Scalar>>& image,
                                      std::int64_t class_index) {
    const Index n = model.check_features(image, "HgadModel::raw_scores");
    check(n == 1, "HgadModel::raw_scores: expected the features of one image, got ", n);
    const bool hgad = model.config().objective == Objective::hgad;
    check(class_index >= -1 && class_index < model.n_classes(), "HgadModel::raw_scores: class ",
          class_index, " outside [-1, ", model.n_classes(), ")");
    const Index L = model.n_levels(), K = model.n_classes();
    RawScores<Scalar> out;
    std::vector<FlowResult<Scalar>> latents;
    for (Index l = 0; l < L; ++l) {
      const LevelSpec& s = model.config().levels[static_cast<std::size_t>(l)];
      const Tensor<Scalar> x =
          image[static_cast<std::size_t>(l)].reshape({s.height * s.width, s.dim});
      latents.push_back(model.level_forward(l, x));
    }
    if (hgad) {
      out.class_posterior.assign(static_cast<std::size_t>(K), 0.0);
      for (Index l = 0; l < L; ++l) {
        const Tensor<Scalar> post =
            class_posterior(model.prior(l), latents[static_cast<std::size_t>(l)].out);
        const Index rows = post.dim(0);
        for (Index r = 0; r < rows; ++r)
          for (Index y = 0; y < K; ++y)
            out.class_posterior[static_cast<std::size_t>(y)] +=
                double(post(r, y)) / double(rows * L);
      }
      out.predicted_class = static_cast<std::int64_t>(
          std::max_element(out.class_posterior.begin(), out.class_posterior.end()) -
          out.class_posterior.begin());
      out.scored_class = class_index >= 0 ? class_index : out.predicted_class;
    } else {
      out.scored_class = class_index;
    }
    for (Index l = 0; l < L; ++l) {
      const LevelSpec& s = model.config().levels[static_cast<std::size_t>(l)];
      const FlowResult<Scalar>& r = latents[static_cast<std::size_t>(l)];
      Tensor<Scalar> logp =
          hgad ? score_log_likelihood(model.prior(l), r.out, r.log_jac_det, out.scored_class)
               : score_log_likelihood_nf(r.out, r.log_jac_det);
      out.log_likelihood.push_back(logp.reshape({s.height, s.width}));
      if (hgad)
        out.neg_entropy.push_back(
            score_neg_entropy(model.prior(l), r.out).reshape({s.height, s.width}));
    }
    return out;
  }

  /// The body of HgadModel::held_out.
  static HeldOut held_out(const HgadModel<Scalar>& model, const std::vector<Tensor<Scalar>>& features,
                          const std::vector<std::int64_t>& labels) {
    const Index N = model.check_features(features, "HgadModel::held_out");
    check(N >= 1 && static_cast<Index>(labels.size()) == N, "HgadModel::held_out: ", labels.size(),
          " labels for ", N, " images (at least one image is needed)");
    const Index K = model.n_classes(), L = model.n_levels();
    for (Index i = 0; i < N; ++i) {
      const std::int64_t y = labels[static_cast<std::size_t>(i)];
      check(y >= 0 && y < K, "HgadModel::held_out: label ", y, " of image ", i, " is outside [0, ", K, ")");
    }
    // Per image: the mean of each level's likelihood map, and its predicted class.
    std::vector<double> image_means(static_cast<std::size_t>(N * L));
    std::vector<std::int64_t> predicted(static_cast<std::size_t>(N));
    detail::parallel_items(
        N,
        [&](Index i) {
          const RawScores<Scalar> raw = raw_scores(model, HgadModel<Scalar>::image_view(features, i),
                                                   labels[static_cast<std::size_t>(i)]);
          for (Index l = 0; l < L; ++l) {
            const Tensor<Scalar>& map = raw.log_likelihood[static_cast<std::size_t>(l)];
            double sum = 0;
            for (Index p = 0; p < map.numel(); ++p) sum += double(map.data()[p]);
            image_means[static_cast<std::size_t>(i * L + l)] = sum / double(map.numel());
          }
          predicted[static_cast<std::size_t>(i)] = raw.predicted_class;
        });
    std::vector<double> sums(static_cast<std::size_t>(K * L), 0.0);
    std::vector<Index> images(static_cast<std::size_t>(K), 0);
    Index correct = 0;
    for (Index i = 0; i < N; ++i) {
      const std::int64_t y = labels[static_cast<std::size_t>(i)];
      for (Index l = 0; l < L; ++l)
        sums[static_cast<std::size_t>(y * L + l)] += image_means[static_cast<std::size_t>(i * L + l)];
      ++images[static_cast<std::size_t>(y)];
      correct += predicted[static_cast<std::size_t>(i)] == y ? 1 : 0;
    }
    HeldOut out;
    out.images = N;
    out.log_likelihood.assign(static_cast<std::size_t>(L), 0.0);
    Index present = 0;
    for (Index y = 0; y < K; ++y) present += images[static_cast<std::size_t>(y)] > 0 ? 1 : 0;
    for (Index y = 0; y < K; ++y)
      for (Index l = 0; l < L; ++l)
        if (images[static_cast<std::size_t>(y)] > 0)
          out.log_likelihood[static_cast<std::size_t>(l)] += sums[static_cast<std::size_t>(y * L + l)] /
                                                              double(images[static_cast<std::size_t>(y)]) /
                                                              double(present);
    for (double v : out.log_likelihood) out.mean_log_likelihood += v / double(L);
    out.class_accuracy = model.config().objective == Objective::hgad
                             ? double(correct) / double(N)
                             : std::numeric_limits<double>::quiet_NaN();
    return out;
  }

  /// The maps that the anomaly map multiplies under `criterion`, {likelihood, entropy}, for raw
  /// scores with or without an entropy map (see ScoreCriterion).
  static std::array<bool, 2> map_terms(const HgadModel<Scalar>& model, bool has_entropy,
                                       ScoreCriterion criterion) {
    const bool class_level_covariance = model.config().class_covariance == ClassCovariance::class_;
    const bool entropy = has_entropy && model.n_classes() > 1 &&
                         (criterion == ScoreCriterion::entropy ||
                          (criterion == ScoreCriterion::product && !class_level_covariance));
    const bool likelihood = !entropy || criterion != ScoreCriterion::entropy;
    return {likelihood, entropy};
  }

  /// The body of HgadModel::thresholds_hold.
  static bool thresholds_hold(const HgadModel<Scalar>& model, ScoreCriterion criterion) {
    const bool has_entropy = model.config().objective == Objective::hgad;
    return map_terms(model, has_entropy, criterion) ==
           map_terms(model, has_entropy, ScoreCriterion::product);
  }

  /// The body of HgadModel::anomaly_map: the map the image score is read off, then blurred again
  /// by ModelConfig::pixel_map_sigma when that is not 0.
  static ScoredImage<Scalar> anomaly_map(const HgadModel<Scalar>& model,
                                         const RawScores<Scalar>& raw,
                                         const ClassCalibration& constants,
                                         ScoreCriterion criterion) {
    ScoredImage<Scalar> out = scored_map(model, raw, constants, criterion);
    const double sigma = model.config().pixel_map_sigma;
    if (sigma > 0) out.map = gaussian_filter(out.map, sigma, map_options(model).truncate);
    return out;
  }

  /// The body of HgadModel::fit_constants.
  static ClassCalibration fit_constants(const HgadModel<Scalar>& model,
                                        const std::vector<RawScores<Scalar>>& raws) {
    check(!raws.empty(), "HgadModel::fit_constants: no images");
    ClassCalibration k;
    k.log_likelihood =
        anomaly_map_constants(stacked_levels(model, raws, false), map_options(model));
    if (!raws.front().neg_entropy.empty())
      k.neg_entropy = anomaly_map_constants(stacked_levels(model, raws, true), map_options(model));
    return k;
  }

  /// The body of HgadModel::score.
  static ScoredImage<Scalar> score(const HgadModel<Scalar>& model,
                                   const std::vector<Tensor<Scalar>>& image,
                                   std::int64_t class_index, ScoreMode mode,
                                   ScoreCriterion criterion) {
    check(mode != ScoreMode::transductive,
          "HgadModel::score: the transductive mode scores a whole test set; use "
          "score_set");
    check(model.is_calibrated(),
          "HgadModel::score: the model is not calibrated; call calibrate() after fit()");
    if (mode == ScoreMode::calibrated)
      check(class_index >= 0 && class_index < model.n_classes(),
            "HgadModel::score: calibrated mode needs a class in [0, ", model.n_classes(), "), got ",
            class_index);
    const bool label_free = mode == ScoreMode::label_free;
    const RawScores<Scalar> raw = raw_scores(model, image, label_free ? -1 : class_index);
    const Index k = raw.scored_class >= 0 ? raw.scored_class : model.n_classes();
    return anomaly_map(model, raw, model.calibration(k), criterion);
  }

  /// The body of HgadModel::score_set.
  static std::vector<ScoredImage<Scalar>> score_set(const HgadModel<Scalar>& model,
                                                    const std::vector<Tensor<Scalar>>& features,
                                                    const std::vector<std::int64_t>& classes,
                                                    ScoreMode mode,
                                                    const std::function<void(Index)>& on_image,
                                                    ScoreCriterion criterion) {
    const Index N = model.check_features(features, "HgadModel::score_set");
    if (mode != ScoreMode::label_free)
      check(static_cast<Index>(classes.size()) == N, "HgadModel::score_set: ", classes.size(),
            " classes for ", N, " images");
    std::vector<ScoredImage<Scalar>> out(static_cast<std::size_t>(N));
    const auto progress = [&](Index i) {
      if (on_image) on_image(i);
    };
    if (mode == ScoreMode::transductive) {
      std::vector<RawScores<Scalar>> raws(static_cast<std::size_t>(N));
      detail::parallel_items(
          N,
          [&](Index i) {
            raws[static_cast<std::size_t>(i)] = raw_scores(
                model, HgadModel<Scalar>::image_view(features, i), classes[static_cast<std::size_t>(i)]);
          },
          progress);
      const ClassCalibration constants = fit_constants(model, raws);
      detail::parallel_items(
          N,
          [&](Index i) {
            out[static_cast<std::size_t>(i)] =
                anomaly_map(model, raws[static_cast<std::size_t>(i)], constants, criterion);
          });
      return out;
    }
    detail::parallel_items(
        N,
        [&](Index i) {
          out[static_cast<std::size_t>(i)] =
              score(model, HgadModel<Scalar>::image_view(features, i),
                    mode == ScoreMode::label_free ? -1 : classes[static_cast<std::size_t>(i)], mode,
                    criterion);
        },
        progress);
    return out;
  }

  /// The calibration images of one class, from its n images `all` (in the data set's order):
  /// m = config.calibration_count(n) of them spread evenly over them (the j-th is
  /// all[floor(j n / m)]), so that every folder of a class group and every part of a sorted folder
  /// is represented; all of them when m = n.
  static std::vector<Index> calibration_sample(const ModelConfig& config,
                                               const std::vector<Index>& all) {
    const Index n = static_cast<Index>(all.size());
    const Index m = config.calibration_count(n);
    std::vector<Index> out;
    for (Index j = 0; j < m; ++j) out.push_back(all[static_cast<std::size_t>(j * n / m)]);
    return out;
  }

  /// The images HgadModel::calibrate scores among images with these labels (classes of
  /// `config`): per class, calibration_sample of the class's images in order.
  static std::vector<std::vector<Index>> calibration_sets(const ModelConfig& config,
                                                          const std::vector<std::int64_t>& labels) {
    const Index K = config.n_classes();
    std::vector<std::vector<Index>> sets(static_cast<std::size_t>(K));
    for (std::size_t i = 0; i < labels.size(); ++i) {
      const std::int64_t y = labels[i];
      check(y >= 0 && y < K, "HgadModel::calibrate: label ", y, " of image ", i, " is outside [0, ",
            K, ")");
      sets[static_cast<std::size_t>(y)].push_back(static_cast<Index>(i));
    }
    for (auto& list : sets) list = calibration_sample(config, list);
    return sets;
  }

  /// The calibration HgadModel::calibrate stores: K per-class entries and the entry K of all
  /// classes. With a communicator of R > 1 ranks, each rank scores its contiguous part
  /// (shard_rows) of the calibration images and the ranks exchange the raw scores, so every rank
  /// ends with the calibration of one process, bit for bit.
  static std::vector<ClassCalibration> calibrate(
      const HgadModel<Scalar>& model, const std::vector<Tensor<Scalar>>& features,
      const std::vector<std::int64_t>& labels, const std::function<void(Index, Index)>& on_image,
      Communicator* comm) {
    const Index N = model.check_features(features, "HgadModel::calibrate");
    check(static_cast<Index>(labels.size()) == N, "HgadModel::calibrate: ", labels.size(),
          " labels for ", N, " images");
    const Index K = model.n_classes();
    const std::vector<std::vector<Index>> chosen = calibration_sets(model.config(), labels);
    // The calibration images class by class: (class, image).
    std::vector<std::pair<Index, Index>> order;
    for (Index y = 0; y < K; ++y) {
      const auto& list = chosen[static_cast<std::size_t>(y)];
      check(!list.empty(), "HgadModel::calibrate: class '",
            model.config().class_names[static_cast<std::size_t>(y)], "' has no training images");
      for (Index i : list) order.emplace_back(y, i);
    }
    const Index total = static_cast<Index>(order.size());
    const int R = comm != nullptr ? comm->size() : 1;
    const RowRange mine = shard_rows(total, R, comm != nullptr ? comm->rank() : 0);
    std::vector<RawScores<Scalar>> raws(static_cast<std::size_t>(total));
    try {
      detail::parallel_items(
          mine.size(),
          [&](Index j) {
            const auto [y, i] = order[static_cast<std::size_t>(mine.begin + j)];
            raws[static_cast<std::size_t>(mine.begin + j)] =
                raw_scores(model, HgadModel<Scalar>::image_view(features, i), y);
          },
          [&](Index j) {
            if (on_image) on_image(j + 1, mine.size());
          });
      if (R > 1) share_raw_scores(model, *comm, raws);
    } catch (const std::exception& e) {
      if (R > 1) comm->fail(e.what());  // the other ranks' exchange throws instead of waiting
      throw;
    }

    std::vector<ClassCalibration> result(static_cast<std::size_t>(K + 1));
    auto first = raws.begin();
    for (Index y = 0; y < K; ++y) {
      const auto last =
          first + static_cast<std::ptrdiff_t>(chosen[static_cast<std::size_t>(y)].size());
      result[static_cast<std::size_t>(y)] =
          calibration_from(model, std::vector<RawScores<Scalar>>(first, last));
      first = last;
    }
    result[static_cast<std::size_t>(K)] = calibration_from(model, raws);
    return result;
  }

 private:
  /// The §5.5 map of one image under `criterion` and its §5.6 image score (the score is read off
  /// this map, before any pixel_map_sigma blur).
  static ScoredImage<Scalar> scored_map(const HgadModel<Scalar>& model,
                                        const RawScores<Scalar>& raw,
                                        const ClassCalibration& constants,
                                        ScoreCriterion criterion) {
    ScoredImage<Scalar> out;
    const AnomalyMapOptions options = map_options(model);
    check(!(model.n_classes() == 1 && criterion == ScoreCriterion::entropy &&
            !raw.neg_entropy.empty()),
          "HgadModel::anomaly_map: a model of one class has no class entropy to score; use the "
          "likelihood (or product) criterion");
    const auto [likelihood, entropy] = map_terms(model, !raw.neg_entropy.empty(), criterion);
    out.map = Tensor<Scalar>::full({options.height, options.width}, Scalar(1));
    Scalar* a = out.map.data();
    const Index n = out.map.numel();
    if (likelihood) {
      const Tensor<Scalar> lik =
          calibrated_anomaly_map(one_image_levels(relative_to_baseline(
                                     raw.log_likelihood, constants.log_likelihood_baseline,
                                     constants.log_likelihood_scale)),
                                 constants.log_likelihood, options);
      for (Index i = 0; i < n; ++i) a[i] = std::max(lik.data()[i], Scalar(0));
    }
    if (entropy) {
      const Tensor<Scalar> ent = calibrated_anomaly_map(
          one_image_levels(relative_to_baseline(raw.neg_entropy, constants.neg_entropy_baseline,
                                                constants.neg_entropy_scale)),
          constants.neg_entropy, options);
      for (Index i = 0; i < n; ++i) a[i] *= std::max(ent.data()[i], Scalar(0));
    }
    out.score = image_score(a, n, model.config().image_score_fraction);
    out.predicted_class = raw.predicted_class;
    out.scored_class = raw.scored_class;
    return out;
  }

  /// Every rank's part of `raws` (shard_rows of raws.size() over the ranks; the others' entries
  /// empty on entry) copied to every rank: per image its maps, class posterior and classes as one
  /// row of doubles (float maps convert exactly), through Communicator::all_gather_rows.
  static void share_raw_scores(const HgadModel<Scalar>& model, Communicator& comm,
                               std::vector<RawScores<Scalar>>& raws) {
    const bool hgad = model.config().objective == Objective::hgad;
    const Index L = model.n_levels(), K = hgad ? model.n_classes() : 0;
    Index positions = 0;
    for (const LevelSpec& s : model.config().levels) positions += s.height * s.width;
    const Index row = positions * (hgad ? 2 : 1) + K + 2;
    const Index n = static_cast<Index>(raws.size());
    std::vector<double> rows(static_cast<std::size_t>(n * row));
    const RowRange mine = shard_rows(n, comm.size(), comm.rank());
    for (Index j = mine.begin; j < mine.end; ++j) {
      const RawScores<Scalar>& r = raws[static_cast<std::size_t>(j)];
      double* at = rows.data() + j * row;
      for (const auto* maps : {&r.log_likelihood, &r.neg_entropy})
        for (const Tensor<Scalar>& m : *maps) at = std::copy(m.data(), m.data() + m.numel(), at);
      at = std::copy(r.class_posterior.begin(), r.class_posterior.end(), at);
      *at++ = double(r.predicted_class);
      *at++ = double(r.scored_class);
    }
    comm.all_gather_rows(rows.data(), n, row);
    const double* at = nullptr;
    const auto unpack_maps = [&](std::vector<Tensor<Scalar>>& maps) {  // one map per level
      for (Index l = 0; l < L; ++l) {
        const LevelSpec& s = model.config().levels[static_cast<std::size_t>(l)];
        Tensor<Scalar> m = Tensor<Scalar>::empty({s.height, s.width});
        for (Index p = 0; p < m.numel(); ++p) m.data()[p] = static_cast<Scalar>(*at++);
        maps.push_back(std::move(m));
      }
    };
    for (Index j = 0; j < n; ++j) {
      if (j >= mine.begin && j < mine.end) continue;
      RawScores<Scalar>& r = raws[static_cast<std::size_t>(j)];
      at = rows.data() + j * row;
      unpack_maps(r.log_likelihood);
      if (hgad) unpack_maps(r.neg_entropy);
      r.class_posterior.assign(at, at + K);
      at += K;
      r.predicted_class = static_cast<std::int64_t>(*at++);
      r.scored_class = static_cast<std::int64_t>(*at++);
    }
  }

  static std::vector<double> image_scores(const HgadModel<Scalar>& model,
                                          const std::vector<RawScores<Scalar>>& raws,
                                          const ClassCalibration& constants) {
    std::vector<double> scores(raws.size());
    detail::parallel_items(
        static_cast<Index>(raws.size()),
        [&](Index i) {
          scores[static_cast<std::size_t>(i)] =
              scored_map(model, raws[static_cast<std::size_t>(i)], constants,
                         ScoreCriterion::product)
                  .score;
        });
    return scores;
  }

  /// The calibration of one set of normal images: the per-position baselines (when configured),
  /// the §5 constants of the maps relative to them, and the largest image score of the set.
  static ClassCalibration calibration_from(const HgadModel<Scalar>& model,
                                           const std::vector<RawScores<Scalar>>& raws) {
    ClassCalibration k;
    const CalibrationBaseline baseline = model.config().calibration_baseline;
    if (baseline != CalibrationBaseline::none) {
      const bool scaled = baseline == CalibrationBaseline::position_std;
      position_statistics(model, raws, false, k.log_likelihood_baseline,
                          scaled ? &k.log_likelihood_scale : nullptr);
      if (!raws.front().neg_entropy.empty())
        position_statistics(model, raws, true, k.neg_entropy_baseline,
                            scaled ? &k.neg_entropy_scale : nullptr);
    }
    std::vector<RawScores<Scalar>> relative;  // the raw maps when there are no baselines
    for (const auto& raw : raws) {
      RawScores<Scalar> r;
      r.log_likelihood = relative_to_baseline(raw.log_likelihood, k.log_likelihood_baseline,
                                              k.log_likelihood_scale);
      r.neg_entropy =
          relative_to_baseline(raw.neg_entropy, k.neg_entropy_baseline, k.neg_entropy_scale);
      relative.push_back(std::move(r));
    }
    const ClassCalibration fitted = fit_constants(model, relative);
    k.log_likelihood = fitted.log_likelihood;
    k.neg_entropy = fitted.neg_entropy;
    const std::vector<double> scores = image_scores(model, raws, k);
    k.train_score_max = std::max(0.0, *std::max_element(scores.begin(), scores.end()));
    k.threshold = score_quantile(scores, model.config().threshold_quantile);
    if (!raws.front().class_posterior.empty()) {
      k.class_posterior.assign(raws.front().class_posterior.size(), 0.0);
      for (const auto& raw : raws)
        for (std::size_t y = 0; y < k.class_posterior.size(); ++y)
          k.class_posterior[y] += raw.class_posterior[y] / double(raws.size());
    }
    return k;
  }

  /// Per level, the mean over `raws` of each position of the likelihood (or negative-entropy) map
  /// into `means`; with `scales`, its standard deviation there (over the images, divided by their
  /// number), floored at 10⁻³ of the level's mean standard deviation, or 1 where that mean is 0.
  static void position_statistics(const HgadModel<Scalar>& model,
                                  const std::vector<RawScores<Scalar>>& raws, bool entropy,
                                  std::vector<std::vector<double>>& means,
                                  std::vector<std::vector<double>>* scales) {
    means.clear();
    if (scales) scales->clear();
    const double n = double(raws.size());
    for (Index l = 0; l < model.n_levels(); ++l) {
      const LevelSpec& s = model.config().levels[static_cast<std::size_t>(l)];
      const std::size_t positions = static_cast<std::size_t>(s.height * s.width);
      const auto map_of = [&](const RawScores<Scalar>& raw) {
        return (entropy ? raw.neg_entropy : raw.log_likelihood)[static_cast<std::size_t>(l)].data();
      };
      std::vector<double> mean(positions, 0.0);
      for (const auto& raw : raws) {
        const Scalar* x = map_of(raw);
        for (std::size_t j = 0; j < positions; ++j) mean[j] += double(x[j]);
      }
      for (double& v : mean) v /= n;
      if (scales) {
        std::vector<double> deviation(positions, 0.0);
        for (const auto& raw : raws) {
          const Scalar* x = map_of(raw);
          for (std::size_t j = 0; j < positions; ++j) {
            const double d = double(x[j]) - mean[j];
            deviation[j] += d * d;
          }
        }
        double level_mean = 0;
        for (double& v : deviation) {
          v = std::sqrt(v / n);
          level_mean += v / double(positions);
        }
        for (double& v : deviation) v = level_mean > 0 ? std::max(v, 1e-3 * level_mean) : 1.0;
        scales->push_back(std::move(deviation));
      }
      means.push_back(std::move(mean));
    }
  }

  /// (maps − baseline) / scale, position by position (new tensors); without a scale, maps −
  /// baseline; the maps themselves when `baseline` is empty.
  static std::vector<Tensor<Scalar>> relative_to_baseline(
      const std::vector<Tensor<Scalar>>& maps, const std::vector<std::vector<double>>& baseline,
      const std::vector<std::vector<double>>& scale) {
    if (baseline.empty()) return maps;
    check(baseline.size() == maps.size() && (scale.empty() || scale.size() == maps.size()),
          "HgadModel: ", baseline.size(), " baseline and ", scale.size(), " scale levels for ",
          maps.size(), " maps");
    std::vector<Tensor<Scalar>> out;
    for (std::size_t l = 0; l < maps.size(); ++l) {
      const Tensor<Scalar>& m = maps[l];
      const std::vector<double>& b = baseline[l];
      check(static_cast<Index>(b.size()) == m.numel() &&
                (scale.empty() || static_cast<Index>(scale[l].size()) == m.numel()),
            "HgadModel: a baseline of ", b.size(), " positions for a map of shape ",
            m.shape());
      Tensor<Scalar> r = Tensor<Scalar>::empty(m.shape());
      for (Index j = 0; j < m.numel(); ++j) {
        const double relative = double(m.data()[j]) - b[static_cast<std::size_t>(j)];
        r.data()[j] = static_cast<Scalar>(
            scale.empty() ? relative : relative / scale[l][static_cast<std::size_t>(j)]);
      }
      out.push_back(std::move(r));
    }
    return out;
  }

  static AnomalyMapOptions map_options(const HgadModel<Scalar>& model) {
    AnomalyMapOptions o;
    o.height = o.width = model.config().features.mask_size;
    o.log_scale = model.config().map_scale == MapScale::log;
    o.sigma = model.config().map_sigma;
    o.level_weights = model.config().level_weights;
    return o;
  }

  /// Per level (1, H, W) views of one image's maps.
  static std::vector<Tensor<Scalar>> one_image_levels(const std::vector<Tensor<Scalar>>& maps) {
    std::vector<Tensor<Scalar>> out;
    for (const auto& m : maps) out.push_back(m.reshape({1, m.dim(0), m.dim(1)}));
    return out;
  }

  /// Per level (N, H, W): the likelihood (or negative-entropy) maps of a set of images, stacked.
  static std::vector<Tensor<Scalar>> stacked_levels(const HgadModel<Scalar>& model,
                                                    const std::vector<RawScores<Scalar>>& raws,
                                                    bool entropy) {
    std::vector<Tensor<Scalar>> out;
    const Index N = static_cast<Index>(raws.size());
    for (Index l = 0; l < model.n_levels(); ++l) {
      const LevelSpec& s = model.config().levels[static_cast<std::size_t>(l)];
      Tensor<Scalar> stack = Tensor<Scalar>::empty({N, s.height, s.width});
      for (Index i = 0; i < N; ++i) {
        const auto& maps = entropy ? raws[static_cast<std::size_t>(i)].neg_entropy
                                   : raws[static_cast<std::size_t>(i)].log_likelihood;
        const Tensor<Scalar>& m = maps[static_cast<std::size_t>(l)];
        std::copy(m.data(), m.data() + m.numel(), stack.data() + i * m.numel());
      }
      out.push_back(stack);
    }
    return out;
  }

  /// The number of parameter values of a model of this configuration (flows with their
};

}  // namespace hgad
