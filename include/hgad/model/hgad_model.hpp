#pragma once
/// \file
/// HgadModel: one conditional flow and one hierarchical Gaussian-mixture prior per feature level,
/// trained on the cached features of many classes at once (docs/algorithm.md §4) and scored per
/// position (§5).
///
///     hgad::ModelConfig config;
///     config.levels = {{128, 32, 32}, {256, 16, 16}};
///     config.class_names = {"kolektor", "magnetic_tile", "pcb1"};
///     hgad::HgadModel<float> model(config);               // valid, untrained
///     model.fit(train_features, train_labels);            // features: per level (N, H, W, D)
///     model.calibrate(train_features, train_labels);      // constants of the calibrated mode
///     auto raw = model.raw_scores(model.image_view(test_features, i), class_index);
///     model.save("model.hgad");
///     auto again = hgad::HgadModel<float>::load("model.hgad");   // bit-identical scores
///
/// Features are channels-last: level l of a set of N images is a tensor (N, H_l, W_l, D_l), so
/// that the rows of image i, position (r, c) are row i·H·W + r·W + c of its (N·H·W, D) view — the
/// flattening of docs/algorithm.md §1.3.
///
/// Scoring is const, so one trained model may be scored from several threads at once (on the CPU
/// in parallel; on a GPU the flow passes take turns on the device).
///
/// set_device(Device::cuda) trains and scores on a GPU (in a program that registered hgad's
/// CUDA levels, level_device.hpp); the parameters, the model file and the scores are the same
/// whichever device computed them, to float rounding.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "../autograd/var.hpp"
#include "../detail/check.hpp"
#include "../detail/memory.hpp"
#include "../detail/text.hpp"
#include "../flow/all_in_one_options.hpp"
#include "../flow/positional_encoding.hpp"
#include "../flow/sequence_flow.hpp"
#include "../io/checkpoint.hpp"
#include "../loss/fused_loss.hpp"
#include "../loss/loss_terms.hpp"
#include "../nn/adam.hpp"
#include "../nn/lr_schedule.hpp"
#include "../prior/gaussian_mixture_prior.hpp"
#include "../prior/scores.hpp"
#include "../rng.hpp"
#include "../tensor.hpp"
#include "anomaly_map.hpp"
#include "config.hpp"
#include "cpu_level.hpp"
#include "data_init.hpp"
#include "train_step.hpp"

namespace hgad {

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

/// Which terms make the anomaly map (docs/algorithm.md §5 step 5 and the "anomaly criterion" ablation
/// of the paper, §9.7): HGAD's product of the likelihood and entropy maps, or either alone. The NF
/// objective has no entropy term; its map is the likelihood map whatever the criterion. Nor has a
/// model of one class (its class posterior is 1 at every position, so the entropy map is 0): its
/// product map is the likelihood map, and the entropy criterion is an error.
enum class ScoreCriterion { product, likelihood, entropy };

inline const char* to_string(ScoreCriterion c) {
  return c == ScoreCriterion::product ? "product" : c == ScoreCriterion::likelihood ? "likelihood" : "entropy";
}

/// "product", "likelihood" or "entropy".
inline ScoreCriterion parse_score_criterion(const std::string& text) {
  if (text == "product") return ScoreCriterion::product;
  if (text == "likelihood") return ScoreCriterion::likelihood;
  if (text == "entropy") return ScoreCriterion::entropy;
  throw Error("unknown score criterion '" + text + "' (expected product, likelihood or entropy)");
}

/// Where fit() stands after a training step; passed to FitOptions::on_step.
template <class Scalar>
struct FitProgress {
  Index epoch = 0;  ///< pass over the training data, 0-based (meta_epoch · sub_epochs + sub_epoch)
  Index n_epochs = 0;
  Index meta_epoch = 0;
  Index sub_epoch = 0;
  Index step = 0;  ///< batches done so far, over the whole run
  Index n_steps = 0;
  int stage = 1;  ///< 1 or 2 (docs/algorithm.md §3.4)
  double lr = 0;
  std::vector<LossTerms<Scalar>> level_terms;  ///< the loss terms of the last batch, per level
  double images_per_second = 0;
  double elapsed_seconds = 0;
};

template <class Scalar>
class HgadModel;

/// Where a run of fit() stands after a pass, beside the model's own parameters: the passes and
/// steps it completed and every level's optimiser state (Adam::state_dict()). With the model it is
/// what a run needs to continue as if it had never stopped (HgadModel::save_checkpoint,
/// HgadModel::load_checkpoint, FitOptions::resume).
template <class Scalar>
struct TrainingState {
  Index passes_done = 0;  ///< passes over the training data completed by the run
  Index steps_done = 0;   ///< batches completed by the run
  std::vector<std::map<std::string, AdamState<Scalar>>> optimizers;  ///< per level
};

/// Callbacks and resumption of fit(). `on_epoch` runs after every pass and may evaluate the model
/// (it receives it const); the model fit() leaves behind is always the one at the end of training.
/// Every `checkpoint_every` passes, `on_checkpoint` receives the model and the run's state (before
/// on_epoch), for instance to save_checkpoint() them; `resume` continues a run from such a state.
template <class Scalar>
struct FitOptions {
  std::function<void(const FitProgress<Scalar>&)> on_step;
  std::function<void(const HgadModel<Scalar>&, Index epoch)> on_epoch;
  Index checkpoint_every = 0;  ///< passes between two on_checkpoint calls; 0: none
  std::function<void(const HgadModel<Scalar>&, const TrainingState<Scalar>&)> on_checkpoint;
  /// Continue the run that stopped in this state (made by this model's configuration on the same
  /// training data): the passes it completed are not repeated, the shuffles and the learning-rate
  /// schedule go on where they were, and each level's optimiser starts from its saved state.
  const TrainingState<Scalar>* resume = nullptr;
};

/// What fit() did.
template <class Scalar>
struct FitReport {
  Index steps = 0;
  Index epochs = 0;
  double seconds = 0;
  std::vector<LossTerms<Scalar>> final_terms;  ///< per level, last batch
};

/// The raw per-position scores of one image (docs/algorithm.md §5 steps 2–3), before normalisation.
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

/// One scored image: its anomaly map at mask size and the image score, the map's maximum.
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
  /// (K,) the mean over the calibration images of RawScores::class_posterior: how the model's
  /// inter-class posterior spreads over the classes on these normal images (HgadModel::
  /// class_confusion); empty for the NF objective.
  std::vector<double> class_posterior;
};

template <class Scalar>
class HgadModel {
 public:
  /// A valid, untrained model: per level a SequenceFlow of n_blocks AllInOneBlocks (HGAD's
  /// options: clamp, soft permutation) and, for the HGAD objective, a GaussianMixturePrior,
  /// initialised from config.seed in docs/algorithm.md §2.4's order (all flows, then all priors).
  ///   requires: config.validate() passes (it is called here).
  ///   throws: hgad::Error with the estimate when the parameters alone need more memory than the
  ///   machine has available (detail::available_memory_bytes; no check where that is unknown).
  explicit HgadModel(ModelConfig config) : m_config(std::move(config)) {
    m_config.validate(true);
    const double available = detail::available_memory_bytes();
    const double parameter_bytes = parameter_count(m_config) * double(sizeof(Scalar));
    check(available <= 0 || parameter_bytes <= available, "HgadModel: the parameters of this "
          "configuration need ", detail::bytes_text(parameter_bytes), " but the machine has ",
          detail::bytes_text(available), " available (", memory_culprits(m_config), ")");
    Rng rng(m_config.seed);
    for (const LevelSpec& level : m_config.levels)
      m_flows.emplace_back(level.dim, m_config.pos_dim, m_config.n_blocks, flow_options(), rng);
    m_whitening.resize(m_flows.size());  // the identity until fit() (init = whiten)
    if (m_config.objective == Objective::hgad) {
      for (const LevelSpec& level : m_config.levels)
        m_priors.emplace_back(m_config.n_classes(), m_config.n_centers, level.dim, rng);
    }
  }

  const ModelConfig& config() const { return m_config; }
  Index n_levels() const { return m_config.n_levels(); }
  Index n_classes() const { return m_config.n_classes(); }
  const SequenceFlow<Scalar>& flow(Index level) const {
    return m_flows.at(static_cast<std::size_t>(level));
  }
  /// (Mutable access: a GPU's copy of the parameters for scoring is made again on next use.)
  SequenceFlow<Scalar>& flow(Index level) {
    m_scoring.clear();
    return m_flows.at(static_cast<std::size_t>(level));
  }
  /// The prior of a level (HGAD objective only).
  const GaussianMixturePrior<Scalar>& prior(Index level) const {
    check(m_config.objective == Objective::hgad,
          "HgadModel::prior: the NF objective has no mixture prior");
    return m_priors.at(static_cast<std::size_t>(level));
  }
  GaussianMixturePrior<Scalar>& prior(Index level) {
    check(m_config.objective == Objective::hgad,
          "HgadModel::prior: the NF objective has no mixture prior");
    m_scoring.clear();
    return m_priors.at(static_cast<std::size_t>(level));
  }

  /// The fixed whitening in front of level l's flow (docs/algorithm.md §2.5); the identity unless
  /// init = whiten.
  const AffineWhitening<Scalar>& whitening(Index level) const {
    return m_whitening.at(static_cast<std::size_t>(level));
  }

  /// The data-dependent start of config().init = whiten (initialise_level_from_data, per level),
  /// which fit() runs before the first step of an untrained model; callable alone to inspect the
  /// model at step 0. A no-op for init = identity.
  ///   requires: features match the levels; labels (N,) in [0, K), every class present.
  void initialise_from_data(const std::vector<Tensor<Scalar>>& features, const std::vector<std::int64_t>& labels) {
    if (m_config.init != ModelInit::whiten) return;
    check_features(features, "HgadModel::initialise_from_data");
    Rng rng(m_config.seed ^ 0x9E3779B97F4A7C15ULL);  // a stream apart from the parameters' and the shuffles'
    for (Index l = 0; l < n_levels(); ++l)
      m_whitening[static_cast<std::size_t>(l)] = initialise_level_from_data(
          l, features[static_cast<std::size_t>(l)], labels, m_flows[static_cast<std::size_t>(l)], prior_or_null(l),
          m_config.intra_center_init, rng);
    m_scoring.clear();
  }

  /// Passes over the training data fit() has completed on this model (0: untrained).
  Index epochs_trained() const { return m_epochs_trained; }
  bool is_calibrated() const { return !m_calibration.empty(); }
  /// Calibration of class c, or of all classes together for c = n_classes().
  const ClassCalibration& calibration(Index c) const {
    check(is_calibrated(), "HgadModel: the model is not calibrated; call calibrate() after fit()");
    check(c >= 0 && c <= n_classes(), "HgadModel::calibration: class ", c, " out of range [0, ",
          n_classes(), "]");
    return m_calibration[static_cast<std::size_t>(c)];
  }

  /// (K × K) row a: the mean inter-class posterior p(b | z), with π, over the positions of class
  /// a's calibration images (its normal training images). Each row sums to 1. A class the model
  /// tells apart has nearly all of its row on the diagonal; classes whose normal images look
  /// alike share theirs (suggest_class_groups reads this).
  ///   requires: a calibrated model of the HGAD objective (a file saved before this matrix was
  ///   stored holds none: calibrate again).
  std::vector<std::vector<double>> class_confusion() const {
    check(m_config.objective == Objective::hgad,
          "HgadModel::class_confusion: the NF objective has no classes to confuse");
    check(is_calibrated(),
          "HgadModel::class_confusion: the model is not calibrated; call calibrate() after fit()");
    std::vector<std::vector<double>> rows;
    for (Index k = 0; k < n_classes(); ++k) {
      const auto& row = m_calibration[static_cast<std::size_t>(k)].class_posterior;
      check(!row.empty(),
            "HgadModel::class_confusion: the calibration holds no class posterior "
            "(a model saved by an older hgad); calibrate it again");
      rows.push_back(row);
    }
    return rows;
  }

  /// Free-form text saved with the model (for example the backbone weights folder).
  void set_metadata(const std::string& key, const std::string& value) { m_metadata[key] = value; }
  std::string metadata(const std::string& key, const std::string& fallback = "") const {
    const auto it = m_metadata.find(key);
    return it == m_metadata.end() ? fallback : it->second;
  }

  /// Where fit() trains and the flows of the scores run (the CPU unless set). The prior's scores,
  /// the maps and the calibration run on the CPU from the flow's output either way.
  ///   throws: hgad::Error for Device::cuda when the program has no CUDA levels registered
  ///           (level_device.hpp), when no GPU is usable, or when the model uses the NF objective
  ///           (CUDA runs HGAD's).
  void set_device(Device device) {
    if (device == Device::cuda) {
      require_level_device<Scalar>(device);
      check(m_config.objective == Objective::hgad,
            "HgadModel::set_device: the NF baseline objective runs on the CPU only");
    }
    m_device = device;
    m_scoring.clear();
  }
  Device device() const { return m_device; }

  /// Trainable parameter count over all levels (flows and priors).
  Index n_parameters() const {
    Index n = 0;
    for (const auto& f : m_flows)
      for (const auto& p : f.parameters()) n += p.value().numel();
    for (const auto& pr : m_priors)
      for (const auto& p : pr.parameters()) n += p.value().numel();
    return n;
  }

  /// Checks that a set of features matches the model's levels; throws hgad::Error naming the level,
  /// the expected and the found shape. Returns the number of images.
  Index check_features(const std::vector<Tensor<Scalar>>& features, const char* where) const {
    check(static_cast<Index>(features.size()) == n_levels(), where, ": ", features.size(),
          " feature levels for a model of ", n_levels());
    Index n = -1;
    for (Index l = 0; l < n_levels(); ++l) {
      const Tensor<Scalar>& f = features[static_cast<std::size_t>(l)];
      const LevelSpec& s = m_config.levels[static_cast<std::size_t>(l)];
      check(f.rank() == 4 && f.dim(1) == s.height && f.dim(2) == s.width && f.dim(3) == s.dim,
            where, ": level ", l, " features have shape ", f.shape().to_string(),
            ", the model expects (N, ", s.height, ", ", s.width, ", ", s.dim, ") (channels last)");
      check(f.device() == Device::cpu, where, ": level ", l, " features must be CPU tensors");
      if (n < 0) n = f.dim(0);
      check(f.dim(0) == n, where, ": level ", l, " holds ", f.dim(0), " images, level 0 holds ", n);
    }
    return n;
  }

  /// The features of image i of a set, as a one-image set (views, no copy).
  static std::vector<Tensor<Scalar>> image_view(const std::vector<Tensor<Scalar>>& features,
                                                Index i) {
    std::vector<Tensor<Scalar>> out;
    for (const auto& f : features) out.push_back(f.slice(i, i + 1));
    return out;
  }

  /// Trains on the features of every class at once (docs/algorithm.md §4): meta_epochs × sub_epochs
  /// passes; each pass shuffles the images (seeded) and cuts them into batches of batch_size
  /// images, dropping the incomplete last batch (DataLoader drop_last; one batch of all images
  /// when there are fewer than batch_size). For each batch and each level separately: the flow
  /// maps all B·H·W vectors with their positional encodings, the objective of the current stage
  /// (stage 1 while meta_epoch < stage1_meta_epochs) gives the loss, and that level's Adam takes
  /// one step — so L optimiser steps per batch, each touching one level's parameters only (the
  /// "None" gradient semantics). Adam groups: the flow with coupled weight decay, μ and δ, and the
  /// mixture logits φ; all share the schedule's learning rate (linear warm-up per iteration over
  /// warmup_meta_epochs, then cosine per meta-epoch). A second fit() continues training from the
  /// current parameters with fresh optimiser state.
  ///   requires: features match the levels (check_features); labels (N,) in [0, K).
  ///   throws: NonFiniteError naming the term, the level and the step when a loss or gradient is
  ///           not finite; the parameters are then those after the last good step.
  FitReport<Scalar> fit(const std::vector<Tensor<Scalar>>& features,
                        const std::vector<std::int64_t>& labels,
                        const FitOptions<Scalar>& options = {}) {
    const Index N = check_features(features, "HgadModel::fit");
    check(N >= 1, "HgadModel::fit: no training images");
    check(static_cast<Index>(labels.size()) == N, "HgadModel::fit: ", labels.size(), " labels for ",
          N, " images");
    for (std::size_t i = 0; i < labels.size(); ++i)
      check(labels[i] >= 0 && labels[i] < n_classes(), "HgadModel::fit: label ", labels[i],
            " of image ", i, " is outside [0, ", n_classes(), ")");

    const ModelConfig& c = m_config;
    const Index L = n_levels();
    const Index B = std::min<Index>(c.batch_size, N);
    const Index iterations = N / B;  // drop_last
    const Index n_epochs = c.total_epochs();
    const Index n_steps = n_epochs * iterations;

    LrSchedule schedule;
    schedule.lr = c.lr;
    schedule.meta_epochs = static_cast<int>(c.meta_epochs);
    schedule.warm_up_meta_epochs = static_cast<int>(c.warmup_meta_epochs);
    schedule.decay_rate = c.lr_decay_rate;
    schedule.warm_up = c.warmup_meta_epochs > 0;

    const TrainingState<Scalar>* resume = options.resume;
    if (resume != nullptr) {
      check(resume->passes_done >= 0 && resume->passes_done <= n_epochs &&
                resume->steps_done == resume->passes_done * iterations &&
                static_cast<Index>(resume->optimizers.size()) == L,
            "HgadModel::fit: the training state to resume (", resume->passes_done, " passes, ", resume->steps_done,
            " steps, ", resume->optimizers.size(), " levels) does not belong to a run of this configuration on these ",
            N, " images (", iterations, " steps per pass, ", n_epochs, " passes, ", L, " levels)");
    }
    check(options.checkpoint_every >= 0, "HgadModel::fit: checkpoint_every must be >= 0, got ",
          options.checkpoint_every);
    if (resume == nullptr && m_epochs_trained == 0 && m_whitening.front().is_identity())
      initialise_from_data(features, labels);
    const LevelTraining training = level_training();
    const LossOptions& loss_options = training.loss;
    // One level device per level for the whole run (its optimiser state and activations); the
    // parameters it trains come back into the model however fit() ends.
    m_scoring.clear();
    std::vector<std::unique_ptr<LevelDevice<Scalar>>> devices;
    for (Index l = 0; l < L; ++l) {
      LevelTraining level = training;  // the whitening's log-determinant joins the flow's (§2.5)
      level.loss.log_jac_det_offset = m_whitening[static_cast<std::size_t>(l)].log_jac_det();
      devices.push_back(make_level_device(m_device, m_flows[static_cast<std::size_t>(l)], prior_or_null(l), level));
      if (resume != nullptr) devices.back()->set_optimizer_state(resume->optimizers[static_cast<std::size_t>(l)]);
    }
    m_calibration.clear();  // constants of earlier parameters no longer apply

    // Per level: the positional encoding of one image, (H·W, P), shared by the B images of a batch
    // (the flow projects it through W1c once per position rather than once per vector).
    std::vector<Tensor<Scalar>> conditions;
    for (Index l = 0; l < L; ++l) conditions.push_back(level_encoding(l));

    // The shuffling stream is separate from the initialisation stream, derived from the seed.
    Rng shuffle_rng(c.seed ^ 0x5DEECE66DULL);
    std::vector<Index> order(static_cast<std::size_t>(N));
    std::vector<Tensor<Scalar>> batch(static_cast<std::size_t>(L));
    std::vector<std::vector<std::int64_t>> batch_labels(static_cast<std::size_t>(L));

    FitReport<Scalar> report;
    report.final_terms.resize(static_cast<std::size_t>(L));
    const auto start = std::chrono::steady_clock::now();
    Index step = 0;
    // A device other than the CPU trains copies of the parameters: they come back into the model
    // before on_epoch or on_checkpoint sees it and however fit() ends (after a NonFiniteError: the
    // last good step).
    const auto copy_back = [&devices] {
      for (auto& d : devices) d->copy_parameters_back();
    };
    const auto shuffle = [&] {
      std::iota(order.begin(), order.end(), Index(0));
      for (Index i = N - 1; i > 0; --i)
        std::swap(order[static_cast<std::size_t>(i)],
                  order[static_cast<std::size_t>(shuffle_rng.uniform_int(static_cast<std::uint64_t>(i + 1)))]);
    };
    // A resumed run replays the shuffles of the passes it completed, so the stream continues.
    const Index first_pass = resume != nullptr ? resume->passes_done : 0;
    for (Index pass = 0; pass < first_pass; ++pass) shuffle();
    if (resume != nullptr) step = resume->steps_done;
    const Index first_step = step;
    try {
      for (Index meta = first_pass / c.sub_epochs; meta < c.meta_epochs; ++meta) {
        const int stage =
            c.objective == Objective::nf ? 2 : training_stage(static_cast<int>(meta), loss_options);
        for (Index sub = meta == first_pass / c.sub_epochs ? first_pass % c.sub_epochs : 0; sub < c.sub_epochs;
             ++sub) {
          shuffle();
          for (Index it = 0; it < iterations; ++it) {
            const double lr = schedule.lr_at(static_cast<int>(meta), sub * iterations + it,
                                             c.sub_epochs * iterations);
            for (Index l = 0; l < L; ++l) {
              const auto li = static_cast<std::size_t>(l);
              gather_batch(features[li], order, it * B, B, batch[li]);
              if (!m_whitening[li].is_identity()) batch[li] = m_whitening[li].forward(batch[li]);
              batch_labels[li].resize(static_cast<std::size_t>(batch[li].rows()));
              const Index hw = level_positions(l);
              for (Index b = 0; b < B; ++b)
                std::fill_n(
                    batch_labels[li].begin() + b * hw, hw,
                    labels[static_cast<std::size_t>(order[static_cast<std::size_t>(it * B + b)])]);
              report.final_terms[li] = devices[li]->train_step(
                  batch[li], conditions[li], batch_labels[li], stage, lr,
                  TrainStepContext{l, static_cast<std::int64_t>(step)});
            }
            ++step;
            if (options.on_step) {
              FitProgress<Scalar> p;
              p.epoch = meta * c.sub_epochs + sub;
              p.n_epochs = n_epochs;
              p.meta_epoch = meta;
              p.sub_epoch = sub;
              p.step = step;
              p.n_steps = n_steps;
              p.stage = stage;
              p.lr = lr;
              p.level_terms = report.final_terms;
              p.elapsed_seconds =
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
              p.images_per_second =
                  p.elapsed_seconds > 0 ? double((step - first_step) * B) / p.elapsed_seconds : 0.0;
              options.on_step(p);
            }
          }
          ++m_epochs_trained;
          const Index passes = meta * c.sub_epochs + sub + 1;
          if (options.checkpoint_every > 0 && options.on_checkpoint && passes % options.checkpoint_every == 0) {
            copy_back();
            TrainingState<Scalar> state;
            state.passes_done = passes;
            state.steps_done = step;
            for (const auto& d : devices) state.optimizers.push_back(d->optimizer_state());
            options.on_checkpoint(*this, state);
          }
          if (options.on_epoch) {
            copy_back();
            options.on_epoch(*this, meta * c.sub_epochs + sub);
            m_scoring.clear();
          }
        }
      }
    } catch (...) {
      try {
        copy_back();
      } catch (...) {  // the first error is the one to report
      }
      m_scoring.clear();
      throw;
    }
    copy_back();
    m_scoring.clear();
    report.steps = step;
    report.epochs = n_epochs;
    report.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return report;
  }

  /// The raw scores of one image (features: a one-image set, see image_view): per level the flow
  /// maps every position (docs/algorithm.md §5.1); logp_l is the per-dimension log-likelihood under the
  /// intra-class mixture of `class_index` (§5.2), or under N(0, I) for the NF objective; negH_l the
  /// negative entropy of the inter-class posterior without π (§5.3). The class posterior with π
  /// (§9.1) is averaged over all positions of all levels and its arg-max is predicted_class; with
  /// class_index = -1 that predicted class is the one scored (label-free, §9.1).
  ///   requires: class_index in [-1, K); -1 needs the HGAD objective.
  RawScores<Scalar> raw_scores(const std::vector<Tensor<Scalar>>& image,
                               std::int64_t class_index) const {
    const Index n = check_features(image, "HgadModel::raw_scores");
    check(n == 1, "HgadModel::raw_scores: expected the features of one image, got ", n);
    const bool hgad = m_config.objective == Objective::hgad;
    check(class_index >= -1 && class_index < n_classes(), "HgadModel::raw_scores: class ",
          class_index, " outside [-1, ", n_classes(), ")");
    const Index L = n_levels(), K = n_classes();
    RawScores<Scalar> out;
    std::vector<FlowResult<Scalar>> latents;
    for (Index l = 0; l < L; ++l) {
      const LevelSpec& s = m_config.levels[static_cast<std::size_t>(l)];
      const Tensor<Scalar> x =
          image[static_cast<std::size_t>(l)].reshape({s.height * s.width, s.dim});
      latents.push_back(level_forward(l, x));
    }
    if (hgad) {
      out.class_posterior.assign(static_cast<std::size_t>(K), 0.0);
      for (Index l = 0; l < L; ++l) {
        const Tensor<Scalar> post =
            class_posterior(prior(l), latents[static_cast<std::size_t>(l)].out);
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
      const LevelSpec& s = m_config.levels[static_cast<std::size_t>(l)];
      const FlowResult<Scalar>& r = latents[static_cast<std::size_t>(l)];
      Tensor<Scalar> logp =
          hgad ? score_log_likelihood(prior(l), r.out, r.log_jac_det, out.scored_class)
               : score_log_likelihood_nf(r.out, r.log_jac_det);
      out.log_likelihood.push_back(logp.reshape({s.height, s.width}));
      if (hgad)
        out.neg_entropy.push_back(score_neg_entropy(prior(l), r.out).reshape({s.height, s.width}));
    }
    return out;
  }

  /// The anomaly map of one image from its raw scores and normalisation constants (docs/algorithm.md §5
  /// steps 4–6, calibrated_anomaly_map): per map type A = blur(sum_max − Σ_l up(exp(x_l −
  /// level_max_l))), clipped at 0 — a no-op with the image's own transductive constants, and with
  /// frozen constants it keeps the product of two negative maps of a very normal image from turning
  /// positive. The HGAD map is A_logp ⊙ A_ent (or one of them, by `criterion`), the NF map A_logp
  /// alone; the score is the map's maximum.
  /// With per-position baselines in `constants`, each raw map is first taken relative to them
  /// (ModelConfig::calibration_baseline).
  ScoredImage<Scalar> anomaly_map(const RawScores<Scalar>& raw, const ClassCalibration& constants,
                                  ScoreCriterion criterion = ScoreCriterion::product) const {
    ScoredImage<Scalar> out;
    const AnomalyMapOptions options = map_options();
    const bool one_class = n_classes() == 1;
    check(!(one_class && criterion == ScoreCriterion::entropy && !raw.neg_entropy.empty()),
          "HgadModel::anomaly_map: a model of one class has no class entropy to score; use the likelihood "
          "(or product) criterion");
    const bool entropy = !raw.neg_entropy.empty() && !one_class && criterion != ScoreCriterion::likelihood;
    const bool likelihood = !entropy || criterion != ScoreCriterion::entropy;
    out.map = Tensor<Scalar>::full({options.height, options.width}, Scalar(1));
    Scalar* a = out.map.data();
    const Index n = out.map.numel();
    if (likelihood) {
      const Tensor<Scalar> lik = calibrated_anomaly_map(
          one_image_levels(relative_to_baseline(raw.log_likelihood, constants.log_likelihood_baseline)),
          constants.log_likelihood, options);
      for (Index i = 0; i < n; ++i) a[i] = std::max(lik.data()[i], Scalar(0));
    }
    if (entropy) {
      const Tensor<Scalar> ent = calibrated_anomaly_map(
          one_image_levels(relative_to_baseline(raw.neg_entropy, constants.neg_entropy_baseline)),
          constants.neg_entropy, options);
      for (Index i = 0; i < n; ++i) a[i] *= std::max(ent.data()[i], Scalar(0));
    }
    out.score = double(*std::max_element(a, a + n));
    out.predicted_class = raw.predicted_class;
    out.scored_class = raw.scored_class;
    return out;
  }

  /// The normalisation constants of a set of images' raw scores (anomaly_map_constants over all
  /// images of the set: the transductive statistics of docs/algorithm.md §5 step 4).
  ClassCalibration fit_constants(const std::vector<RawScores<Scalar>>& raws) const {
    check(!raws.empty(), "HgadModel::fit_constants: no images");
    ClassCalibration k;
    k.log_likelihood = anomaly_map_constants(stacked_levels(raws, false), map_options());
    if (!raws.front().neg_entropy.empty())
      k.neg_entropy = anomaly_map_constants(stacked_levels(raws, true), map_options());
    return k;
  }

  /// Scores one image on its own (calibrated or label-free mode): the same result whether the
  /// image is scored alone or among others.
  ///   requires: is_calibrated(); class_index in [0, K) for calibrated, ignored (-1) for
  ///   label-free.
  ScoredImage<Scalar> score(const std::vector<Tensor<Scalar>>& image, std::int64_t class_index,
                            ScoreMode mode,
                            ScoreCriterion criterion = ScoreCriterion::product) const {
    check(mode != ScoreMode::transductive,
          "HgadModel::score: the transductive mode scores a whole test set; use "
          "score_set");
    check(is_calibrated(),
          "HgadModel::score: the model is not calibrated; call calibrate() after fit()");
    if (mode == ScoreMode::calibrated)
      check(class_index >= 0 && class_index < n_classes(),
            "HgadModel::score: calibrated mode needs a class in [0, ", n_classes(), "), got ",
            class_index);
    const bool label_free = mode == ScoreMode::label_free;
    const RawScores<Scalar> raw = raw_scores(image, label_free ? -1 : class_index);
    const Index k = raw.scored_class >= 0 ? raw.scored_class : n_classes();
    return anomaly_map(raw, calibration(k), criterion);
  }

  /// Scores every image of a set (features: per level (N, H, W, D)). Transductive: the constants
  /// come from this very set and `classes` gives each image's class (the paper's protocol runs it
  /// once per class); calibrated: each image alone with its class's frozen constants; label-free:
  /// each image alone with its predicted class (`classes` is ignored and may be empty).
  std::vector<ScoredImage<Scalar>> score_set(
      const std::vector<Tensor<Scalar>>& features, const std::vector<std::int64_t>& classes,
      ScoreMode mode, const std::function<void(Index)>& on_image = {},
      ScoreCriterion criterion = ScoreCriterion::product) const {
    const Index N = check_features(features, "HgadModel::score_set");
    if (mode != ScoreMode::label_free)
      check(static_cast<Index>(classes.size()) == N, "HgadModel::score_set: ", classes.size(),
            " classes for ", N, " images");
    std::vector<ScoredImage<Scalar>> out;
    if (mode == ScoreMode::transductive) {
      std::vector<RawScores<Scalar>> raws;
      for (Index i = 0; i < N; ++i) {
        raws.push_back(raw_scores(image_view(features, i), classes[static_cast<std::size_t>(i)]));
        if (on_image) on_image(i);
      }
      const ClassCalibration constants = fit_constants(raws);
      for (const auto& raw : raws) out.push_back(anomaly_map(raw, constants, criterion));
      return out;
    }
    for (Index i = 0; i < N; ++i) {
      out.push_back(score(image_view(features, i),
                          mode == ScoreMode::label_free ? -1 : classes[static_cast<std::size_t>(i)],
                          mode, criterion));
      if (on_image) on_image(i);
    }
    return out;
  }

  /// Computes and stores the calibrated-mode constants from training (normal) images: for each
  /// class the per-position baselines (when configured) and the constants of fit_constants over its training images (at most
  /// config.calibration_images of them, the first in order, 0 meaning all), and over the union of
  /// those images for the class-agnostic entry K (used by the NF objective in label-free mode).
  void calibrate(const std::vector<Tensor<Scalar>>& features,
                 const std::vector<std::int64_t>& labels,
                 const std::function<void(Index, Index)>& on_image = {}) {
    const Index N = check_features(features, "HgadModel::calibrate");
    check(static_cast<Index>(labels.size()) == N, "HgadModel::calibrate: ", labels.size(),
          " labels for ", N, " images");
    const Index K = n_classes();
    std::vector<std::vector<Index>> chosen(static_cast<std::size_t>(K));
    for (Index i = 0; i < N; ++i) {
      const std::int64_t y = labels[static_cast<std::size_t>(i)];
      check(y >= 0 && y < K, "HgadModel::calibrate: label ", y, " of image ", i, " is outside [0, ",
            K, ")");
      auto& list = chosen[static_cast<std::size_t>(y)];
      if (m_config.calibration_images == 0 ||
          static_cast<Index>(list.size()) < m_config.calibration_images)
        list.push_back(i);
    }
    Index total = 0, done = 0;
    for (const auto& list : chosen) total += static_cast<Index>(list.size());
    std::vector<ClassCalibration> result(static_cast<std::size_t>(K + 1));
    std::vector<RawScores<Scalar>> all;
    for (Index y = 0; y < K; ++y) {
      const auto& list = chosen[static_cast<std::size_t>(y)];
      check(!list.empty(), "HgadModel::calibrate: class '",
            m_config.class_names[static_cast<std::size_t>(y)], "' has no training images");
      std::vector<RawScores<Scalar>> raws;
      for (Index i : list) {
        raws.push_back(raw_scores(image_view(features, i), y));
        if (on_image) on_image(++done, total);
      }
      result[static_cast<std::size_t>(y)] = calibration_from(raws);
      for (auto& r : raws) all.push_back(std::move(r));
    }
    result[static_cast<std::size_t>(K)] = calibration_from(all);
    m_calibration = std::move(result);
  }

  /// Writes config, every parameter (flows with their fixed rotations, priors), the calibration
  /// constants and the metadata as one hgad::Checkpoint, atomically.
  void save(const std::string& path) const { to_checkpoint().save(path); }

  /// Writes the model with the state of a run of fit() (FitOptions::on_checkpoint) as one file,
  /// atomically: load_checkpoint reads both back, and fit() with FitOptions::resume continues the
  /// run. A checkpoint is also a model file (load() reads it and ignores the state).
  void save_checkpoint(const std::string& path, const TrainingState<Scalar>& state) const {
    check(static_cast<Index>(state.optimizers.size()) == n_levels(), "HgadModel::save_checkpoint: a state of ",
          state.optimizers.size(), " levels for a model of ", n_levels());
    Checkpoint ckpt = to_checkpoint();
    ckpt.set_int64("resume.passes_done", {static_cast<std::int64_t>(state.passes_done)});
    ckpt.set_int64("resume.steps_done", {static_cast<std::int64_t>(state.steps_done)});
    for (Index l = 0; l < n_levels(); ++l) {
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

  /// The model and the training state of a file written by save_checkpoint.
  ///   throws: hgad::Error naming the file when it holds no training state or a malformed one.
  static std::pair<HgadModel, TrainingState<Scalar>> load_checkpoint(const std::string& path) {
    const Checkpoint ckpt = Checkpoint::load(path);
    HgadModel model = from_checkpoint(ckpt, path);
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
        if (key.compare(0, prefix.size(), prefix) != 0 || key.size() < prefix.size() + step_suffix.size() ||
            key.compare(key.size() - step_suffix.size(), step_suffix.size(), step_suffix) != 0)
          continue;
        const std::string name = key.substr(prefix.size(), key.size() - prefix.size() - step_suffix.size());
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

  Checkpoint to_checkpoint() const {
    Checkpoint ckpt;
    ckpt.set_text("format", model_format);
    ckpt.set_text("config", m_config.to_text());
    ckpt.set_int64("training.epochs", {static_cast<std::int64_t>(m_epochs_trained)});
    for (const auto& [key, value] : m_metadata) ckpt.set_text("meta." + key, value);
    for (Index l = 0; l < n_levels(); ++l) {
      const std::string prefix = "level" + std::to_string(l) + ".";
      const SequenceFlow<Scalar>& f = flow(l);
      for (const auto& [name, var] : f.named_parameters())
        ckpt.set_tensor(prefix + "flow." + name, var.value());
      for (Index k = 0; k < f.n_blocks(); ++k)
        ckpt.set_tensor(prefix + "flow.block" + std::to_string(k) + ".rot", f.block(k).rotation());
      if (!whitening(l).is_identity()) {
        ckpt.set_tensor(prefix + "whitening.mean", whitening(l).mean());
        ckpt.set_tensor(prefix + "whitening.matrix", whitening(l).matrix());
      }
      if (m_config.objective == Objective::hgad) {
        const auto& pr = prior(l);
        const auto names = GaussianMixturePrior<Scalar>::parameter_names();
        const auto params = pr.parameters();
        for (std::size_t i = 0; i < names.size(); ++i)
          ckpt.set_tensor(prefix + "prior." + names[i], params[i].value());
      }
    }
    if (is_calibrated()) {
      const Index K = n_classes(), L = n_levels();
      Tensor<double> level_max({2, K + 1, L}), sum_max({2, K + 1}), train_score_max({K + 1}),
          threshold({K + 1});
      for (Index k = 0; k <= K; ++k) {
        const ClassCalibration& cal = m_calibration[static_cast<std::size_t>(k)];
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
      if (std::all_of(m_calibration.begin(), m_calibration.end(),
                      [](const ClassCalibration& c) { return c.has_threshold(); }))
        ckpt.set_tensor("calibration.threshold", threshold);
      const bool have_posterior = std::all_of(
          m_calibration.begin(), m_calibration.end(),
          [&](const ClassCalibration& c) { return Index(c.class_posterior.size()) == K; });
      if (m_config.objective == Objective::hgad && have_posterior) {
        Tensor<double> posterior({K + 1, K});
        for (Index k = 0; k <= K; ++k)
          for (Index y = 0; y < K; ++y)
            posterior(k, y) = m_calibration[static_cast<std::size_t>(k)]
                                  .class_posterior[static_cast<std::size_t>(y)];
        ckpt.set_tensor("calibration.class_posterior", posterior);
      }
      if (m_config.calibration_baseline == CalibrationBaseline::position) {
        // Per level (2, K + 1, H W): likelihood and negative-entropy baselines, NaN where absent.
        for (Index l = 0; l < L; ++l) {
          const LevelSpec& s = m_config.levels[static_cast<std::size_t>(l)];
          const Index hw = s.height * s.width;
          Tensor<double> baseline({2, K + 1, hw});
          for (Index k = 0; k <= K; ++k) {
            const ClassCalibration& cal = m_calibration[static_cast<std::size_t>(k)];
            const std::vector<std::vector<double>>* parts[2] = {&cal.log_likelihood_baseline,
                                                                &cal.neg_entropy_baseline};
            for (Index t = 0; t < 2; ++t)
              for (Index j = 0; j < hw; ++j)
                baseline(t, k, j) = parts[t]->empty() ? std::numeric_limits<double>::quiet_NaN()
                                                      : (*parts[t])[static_cast<std::size_t>(l)][static_cast<std::size_t>(j)];
          }
          ckpt.set_tensor(baseline_key(l), baseline);
        }
      }
    }
    return ckpt;
  }

  /// Loads a model saved by save(). Every problem is an hgad::Error saying which: the container's
  /// own checks (missing file, wrong magic, newer version, truncation, CRC), a file that is not an
  /// hgad model, an invalid config, a missing parameter or one of the wrong shape.
  static HgadModel load(const std::string& path) {
    return from_checkpoint(Checkpoint::load(path), path);
  }

  static HgadModel from_checkpoint(const Checkpoint& ckpt, const std::string& name) {
    check(ckpt.has("format") && ckpt.has("config"), "'", name,
          "' is an hgad checkpoint but not a model (no ", ckpt.has("format") ? "config" : "format",
          " entry)");
    check(ckpt.text("format") == model_format, "'", name, "' holds '", ckpt.text("format"),
          "', expected '", model_format, "'");
    ModelConfig config;
    try {
      config = ModelConfig::from_text(ckpt.text("config"), name);
      config.validate(true);
    } catch (const Error& e) {
      throw Error("'" + name + "' has an invalid model configuration: " + e.what());
    }
    // A trained model without whitening entries was trained without it (files of older versions
    // hold no init key, which reads as the default).
    const bool whitened = ckpt.has("level0.whitening.mean");
    if (!whitened && ckpt.has("training.epochs") && !ckpt.int64("training.epochs").empty() &&
        ckpt.int64("training.epochs")[0] > 0)
      config.init = ModelInit::identity;
    // Building the model allocates its parameters before any is read: refuse a configuration that
    // needs far more parameter values than the file holds, so a small corrupt file cannot demand
    // a huge model. (Within the slack of 2^20 values the per-parameter checks below name the
    // missing or misshapen entry.)
    const double needed = parameter_count(config);
    check(needed <= double(ckpt.tensor_elements()) + double(1 << 20), "'", name,
          "': its configuration needs ", needed, " parameter values but the file holds only ",
          ckpt.tensor_elements());
    HgadModel model(config);
    auto fetch = [&](const std::string& key, const Shape& shape) {
      check(ckpt.has(key), "'", name, "' lacks the parameter '", key, "'");
      Tensor<Scalar> t = ckpt.tensor<Scalar>(key);
      check(t.shape() == shape, "'", name, "': parameter '", key, "' has shape ",
            t.shape().to_string(), ", expected ", shape.to_string());
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
        try {
          model.m_whitening[static_cast<std::size_t>(l)] =
              AffineWhitening<Scalar>(fetch(prefix + "whitening.mean", Shape({D})),
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
            "': calibration.train_score_max has shape ", train_score_max.shape().to_string(),
            ", expected (", K + 1, ")");
      check(level_max.shape() == Shape({2, K + 1, L}) && sum_max.shape() == Shape({2, K + 1}), "'",
            name, "': calibration constants of shape ", level_max.shape().to_string(), " and ",
            sum_max.shape().to_string(), ", expected (2, ", K + 1, ", ", L, ") and (2, ", K + 1,
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
        check(threshold.shape() == Shape({K + 1}), "'", name,
              "': calibration.threshold has shape ", threshold.shape().to_string(),
              ", expected (", K + 1, ")");
        for (Index k = 0; k <= K; ++k) {
          check(std::isfinite(threshold(k)), "'", name,
                "': calibration.threshold holds a non-finite value at ", k);
          model.m_calibration[static_cast<std::size_t>(k)].threshold = threshold(k);
        }
      }
      if (ckpt.has("calibration.class_posterior")) {  // absent in files of older versions
        const Tensor<double> posterior = ckpt.tensor<double>("calibration.class_posterior");
        check(posterior.shape() == Shape({K + 1, K}), "'", name,
              "': calibration.class_posterior has shape ", posterior.shape().to_string(),
              ", expected (", K + 1, ", ", K, ")");
        for (Index k = 0; k <= K; ++k)
          for (Index y = 0; y < K; ++y) {
            check(std::isfinite(posterior(k, y)), "'", name,
                  "': calibration.class_posterior holds a non-finite value at (", k, ", ", y, ")");
            model.m_calibration[static_cast<std::size_t>(k)].class_posterior.push_back(
                posterior(k, y));
          }
      }
      if (config.calibration_baseline == CalibrationBaseline::position) {
        for (Index l = 0; l < L; ++l) {
          const LevelSpec& s = config.levels[static_cast<std::size_t>(l)];
          const Index hw = s.height * s.width;
          const std::string key = baseline_key(l);
          check(ckpt.has(key), "'", name, "' lacks the entry '", key,
                "' its configuration (calibration_baseline = position) needs");
          const Tensor<double> baseline = ckpt.tensor<double>(key);
          check(baseline.shape() == Shape({2, K + 1, hw}), "'", name, "': ", key, " has shape ",
                baseline.shape().to_string(), ", expected (2, ", K + 1, ", ", hw, ")");
          for (Index k = 0; k <= K; ++k) {
            ClassCalibration& cal = model.m_calibration[static_cast<std::size_t>(k)];
            std::vector<std::vector<double>>* parts[2] = {&cal.log_likelihood_baseline, &cal.neg_entropy_baseline};
            for (Index t = 0; t < 2; ++t) {
              if (std::isnan(sum_max(t, k))) continue;
              std::vector<double> values(static_cast<std::size_t>(hw));
              for (Index j = 0; j < hw; ++j) {
                values[static_cast<std::size_t>(j)] = baseline(t, k, j);
                check(std::isfinite(values[static_cast<std::size_t>(j)]), "'", name, "': ", key,
                      " holds a non-finite value at (", t, ", ", k, ", ", j, ")");
              }
              parts[t]->push_back(std::move(values));
            }
          }
        }
      }
    }
    return model;
  }

  /// What training a model of `c` on `n_images` images holds in memory, in bytes of Scalar.
  struct MemoryEstimate {
    double parameters = 0;   ///< 4 copies of parameter_count: value, gradient, Adam's moments
    double activations = 0;  ///< the largest level's training step on one batch
    double features = 0;     ///< the backbone features of the training images, every level
    double total() const { return parameters + activations + features; }
  };

  /// The memory estimate of training `c`: 4 copies (value, gradient, two Adam moments) of every
  /// parameter_count value, the fixed rotations and biases included (a slight overcount); per level with N = batch_size H W rows the step keeps n_blocks N (H_s + 2 n2 + D)
  /// for the backward and N (H_s + 6 D + 2 K + K M + 8) of scratch (H_s = 2 (n1 + P) the subnet's
  /// hidden width; cuda/level_engine.hpp), the largest level counted, as levels train one after
  /// another; and n_images H W D per level of features. A lower bound: the autograd reference and
  /// the backbone hold more.
  static MemoryEstimate training_memory(const ModelConfig& c, Index n_images = 0) {
    MemoryEstimate m;
    const double bytes = double(sizeof(Scalar));
    m.parameters = 4 * parameter_count(c) * bytes;
    const double K = double(c.class_names.size()), M = double(c.n_centers);
    for (const LevelSpec& s : c.levels) {
      const double D = double(s.dim), n2 = std::floor(D / 2), n1 = D - n2;
      const double hidden = 2 * (n1 + double(c.pos_dim));
      const double N = double(c.batch_size) * double(s.height) * double(s.width);
      const double step = double(c.n_blocks) * N * (hidden + 2 * n2 + D) +
                          N * (hidden + 6 * D + 2 * K + K * M + 8);
      m.activations = std::max(m.activations, step * bytes);
      m.features += double(n_images) * double(s.height) * double(s.width) * D * bytes;
    }
    return m;
  }

  /// The configuration's values that size the memory, for the messages that refuse it:
  /// "n_blocks = 12, pos_dim = 256, batch_size = 8, n_centers = 10, levels = 128x32x32".
  static std::string memory_culprits(const ModelConfig& c) {
    std::vector<std::string> levels;
    for (const LevelSpec& s : c.levels)
      levels.push_back(std::to_string(s.dim) + "x" + std::to_string(s.height) + "x" +
                       std::to_string(s.width));
    return "n_blocks = " + std::to_string(c.n_blocks) + ", pos_dim = " + std::to_string(c.pos_dim) +
           ", batch_size = " + std::to_string(c.batch_size) + ", n_centers = " +
           std::to_string(c.n_centers) + ", levels = " + detail::join(levels);
  }

  /// The q-quantile of `scores` with linear interpolation between order statistics (NumPy's
  /// default, Hyndman–Fan type 7): s_(h) + (h - floor h)(s_(h+1) - s_(h)) at h = (n - 1) q over the
  /// sorted scores; q = 1 gives the largest.
  ///   requires: scores non-empty, q in [0, 1].
  static double score_quantile(std::vector<double> scores, double q) {
    check(!scores.empty(), "HgadModel::score_quantile: no scores");
    check(q >= 0 && q <= 1, "HgadModel::score_quantile: q = ", q, " is outside [0, 1]");
    std::sort(scores.begin(), scores.end());
    const double h = double(scores.size() - 1) * q;
    const std::size_t lo = static_cast<std::size_t>(std::floor(h));
    const std::size_t hi = std::min(lo + 1, scores.size() - 1);
    return scores[lo] + (h - double(lo)) * (scores[hi] - scores[lo]);
  }

  /// The checkpoint entry of level l's optimiser state for parameter `name` (a prefix for "").
  static std::string resume_key(Index l, const std::string& name) {
    return "resume.level" + std::to_string(l) + "." + name;
  }

  /// The checkpoint entry of level l's per-position calibration baselines.
  static std::string baseline_key(Index l) {
    return "calibration.position_baseline.level" + std::to_string(l);
  }

  /// The text of the checkpoint's "format" entry of a model file.
  static constexpr const char* model_format = "hgad-model 1";

 private:
  AllInOneOptions flow_options() const {
    AllInOneOptions o = AllInOneOptions::hgad();
    o.affine_clamping = m_config.clamp;
    o.clamp_variant = m_config.clamp_variant;
    return o;
  }

  std::vector<double> image_scores(const std::vector<RawScores<Scalar>>& raws,
                                   const ClassCalibration& constants) const {
    std::vector<double> scores;
    for (const auto& raw : raws) scores.push_back(anomaly_map(raw, constants).score);
    return scores;
  }

  /// The calibration of one set of normal images: the per-position baselines (when configured),
  /// the §5 constants of the maps relative to them, and the largest image score of the set.
  ClassCalibration calibration_from(const std::vector<RawScores<Scalar>>& raws) const {
    ClassCalibration k;
    if (m_config.calibration_baseline == CalibrationBaseline::position) {
      k.log_likelihood_baseline = position_means(raws, false);
      if (!raws.front().neg_entropy.empty()) k.neg_entropy_baseline = position_means(raws, true);
    }
    std::vector<RawScores<Scalar>> relative;  // the raw maps when there are no baselines
    for (const auto& raw : raws) {
      RawScores<Scalar> r;
      r.log_likelihood = relative_to_baseline(raw.log_likelihood, k.log_likelihood_baseline);
      r.neg_entropy = relative_to_baseline(raw.neg_entropy, k.neg_entropy_baseline);
      relative.push_back(std::move(r));
    }
    const ClassCalibration fitted = fit_constants(relative);
    k.log_likelihood = fitted.log_likelihood;
    k.neg_entropy = fitted.neg_entropy;
    const std::vector<double> scores = image_scores(raws, k);
    k.train_score_max = std::max(0.0, *std::max_element(scores.begin(), scores.end()));
    k.threshold = score_quantile(scores, m_config.threshold_quantile);
    if (!raws.front().class_posterior.empty()) {
      k.class_posterior.assign(raws.front().class_posterior.size(), 0.0);
      for (const auto& raw : raws)
        for (std::size_t y = 0; y < k.class_posterior.size(); ++y)
          k.class_posterior[y] += raw.class_posterior[y] / double(raws.size());
    }
    return k;
  }

  /// Per level, the mean over `raws` of each position of the likelihood (or negative-entropy) map.
  std::vector<std::vector<double>> position_means(const std::vector<RawScores<Scalar>>& raws, bool entropy) const {
    std::vector<std::vector<double>> means;
    for (Index l = 0; l < n_levels(); ++l) {
      const LevelSpec& s = m_config.levels[static_cast<std::size_t>(l)];
      std::vector<double> sum(static_cast<std::size_t>(s.height * s.width), 0.0);
      for (const auto& raw : raws) {
        const Tensor<Scalar>& m = (entropy ? raw.neg_entropy : raw.log_likelihood)[static_cast<std::size_t>(l)];
        for (std::size_t j = 0; j < sum.size(); ++j) sum[j] += double(m.data()[j]);
      }
      for (double& v : sum) v /= double(raws.size());
      means.push_back(std::move(sum));
    }
    return means;
  }

  /// maps − baseline, position by position (new tensors); the maps themselves when `baseline` is
  /// empty.
  static std::vector<Tensor<Scalar>> relative_to_baseline(const std::vector<Tensor<Scalar>>& maps,
                                                          const std::vector<std::vector<double>>& baseline) {
    if (baseline.empty()) return maps;
    check(baseline.size() == maps.size(), "HgadModel: ", baseline.size(), " baseline levels for ", maps.size(),
          " maps");
    std::vector<Tensor<Scalar>> out;
    for (std::size_t l = 0; l < maps.size(); ++l) {
      const Tensor<Scalar>& m = maps[l];
      const std::vector<double>& b = baseline[l];
      check(static_cast<Index>(b.size()) == m.numel(), "HgadModel: a baseline of ", b.size(),
            " positions for a map of shape ", m.shape().to_string());
      Tensor<Scalar> r = Tensor<Scalar>::empty(m.shape());
      for (Index j = 0; j < m.numel(); ++j)
        r.data()[j] = static_cast<Scalar>(double(m.data()[j]) - b[static_cast<std::size_t>(j)]);
      out.push_back(std::move(r));
    }
    return out;
  }

  AnomalyMapOptions map_options() const {
    AnomalyMapOptions o;
    o.height = o.width = m_config.features.mask_size;
    return o;
  }

  /// Per level (1, H, W) views of one image's maps.
  static std::vector<Tensor<Scalar>> one_image_levels(const std::vector<Tensor<Scalar>>& maps) {
    std::vector<Tensor<Scalar>> out;
    for (const auto& m : maps) out.push_back(m.reshape({1, m.dim(0), m.dim(1)}));
    return out;
  }

  /// Per level (N, H, W): the likelihood (or negative-entropy) maps of a set of images, stacked.
  std::vector<Tensor<Scalar>> stacked_levels(const std::vector<RawScores<Scalar>>& raws,
                                             bool entropy) const {
    std::vector<Tensor<Scalar>> out;
    const Index N = static_cast<Index>(raws.size());
    for (Index l = 0; l < n_levels(); ++l) {
      const LevelSpec& s = m_config.levels[static_cast<std::size_t>(l)];
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
  /// rotations, and the priors), in double so that absurd configurations do not overflow.
  static double parameter_count(const ModelConfig& c) {
    double n = 0;
    for (const LevelSpec& s : c.levels) {
      const double D = double(s.dim), n2 = std::floor(D / 2), n1 = D - n2, in = n1 + double(c.pos_dim);
      const double block = D * D + D + in * 2 * in + 2 * in + 2 * in * 2 * n2 + 2 * n2;
      n += double(c.n_blocks) * block;
      if (c.objective == Objective::hgad) {
        const double K = double(c.class_names.size()), M = double(c.n_centers);
        n += K * D + K * (M - 1) * D + K * M + K;
      }
    }
    return n;
  }

  Index level_positions(Index l) const {
    const LevelSpec& s = m_config.levels[static_cast<std::size_t>(l)];
    return s.height * s.width;
  }

  /// The positional encoding of level l, (H·W, P), rows in the feature map's row-major order;
  /// empty for P = 0.
  Tensor<Scalar> level_encoding(Index l) const {
    if (m_config.pos_dim == 0) return Tensor<Scalar>();
    const LevelSpec& s = m_config.levels[static_cast<std::size_t>(l)];
    return positional_encoding_2d<Scalar>(m_config.pos_dim, s.height, s.width);
  }

  /// Rows of images order[first .. first + B) of one level, (B·H·W, D).
  static void gather_batch(const Tensor<Scalar>& level, const std::vector<Index>& order,
                           Index first, Index B, Tensor<Scalar>& out) {
    const Index per_image = level.numel() / level.dim(0);
    const Index D = level.dim(3);
    if (out.shape() != Shape({B * per_image / D, D}))
      out = Tensor<Scalar>::empty({B * per_image / D, D});
    for (Index b = 0; b < B; ++b) {
      const Scalar* src = level.data() + order[static_cast<std::size_t>(first + b)] * per_image;
      std::copy(src, src + per_image, out.data() + b * per_image);
    }
  }

  /// The objective and optimiser settings of every level, from the configuration.
  LevelTraining level_training() const {
    const ModelConfig& c = m_config;
    LevelTraining t;
    t.loss.objective = c.objective;
    t.loss.lambda1 = c.lambda1;
    t.loss.lambda2 = c.lambda2;
    t.loss.label_smoothing = c.label_smoothing;
    t.loss.stage1_meta_epochs = static_cast<int>(c.stage1_meta_epochs);
    t.adam.lr = c.lr;
    t.adam.beta1 = c.beta1;
    t.adam.beta2 = c.beta2;
    t.adam.eps = c.adam_eps;
    t.adam.flow_weight_decay = c.weight_decay;
    return t;
  }

  GaussianMixturePrior<Scalar>* prior_or_null(Index l) {
    return m_config.objective == Objective::hgad ? &m_priors[static_cast<std::size_t>(l)] : nullptr;
  }

  /// Level l's flow on the image positions x (H·W, D): z and log|det J| on the CPU, computed on
  /// the model's device.
  FlowResult<Scalar> level_forward(Index l, const Tensor<Scalar>& x) const {
    const AffineWhitening<Scalar>& w = whitening(l);  // §2.5: x' = W (x − μ), log|det W| joins the flow's
    FlowResult<Scalar> r = level_flow_forward(l, w.forward(x));
    w.add_log_jac_det(r.log_jac_det);
    return r;
  }

  FlowResult<Scalar> level_flow_forward(Index l, const Tensor<Scalar>& x) const {
    if (m_device == Device::cpu) return flow(l).forward(x, level_encoding(l));
    std::lock_guard<std::mutex> lock(m_scoring.mutex);
    if (m_scoring.levels.empty()) {
      auto& self = const_cast<HgadModel&>(*this);  // the devices only read the parameters here
      for (Index k = 0; k < n_levels(); ++k)
        m_scoring.levels.push_back(make_level_device(m_device, self.m_flows[static_cast<std::size_t>(k)],
                                                     self.prior_or_null(k), level_training()));
    }
    return m_scoring.levels[static_cast<std::size_t>(l)]->forward(x, level_encoding(l));
  }

  /// The level devices that run the flows of the scores off the CPU, made on first use and
  /// dropped whenever the parameters may change. A copy or move of the model starts without.
  struct ScoringDevices {
    std::vector<std::unique_ptr<LevelDevice<Scalar>>> levels;
    std::mutex mutex;
    ScoringDevices() = default;
    ScoringDevices(const ScoringDevices&) {}
    ScoringDevices& operator=(const ScoringDevices&) {
      clear();
      return *this;
    }
    void clear() { levels.clear(); }
  };

  ModelConfig m_config;
  std::vector<SequenceFlow<Scalar>> m_flows;
  std::vector<GaussianMixturePrior<Scalar>> m_priors;
  std::vector<AffineWhitening<Scalar>> m_whitening;  // per level; the identity unless init = whiten
  std::vector<ClassCalibration> m_calibration;  // K + 1 entries once calibrated
  std::map<std::string, std::string> m_metadata;
  Index m_epochs_trained = 0;
  Device m_device = Device::cpu;
  mutable ScoringDevices m_scoring;
};

}  // namespace hgad
