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
/// The class holds what a model is: per level a flow and, for the HGAD objective, a prior; the
/// calibration, the metadata and the device. Its three jobs live in their own headers, each a
/// class whose members are the bodies of HgadModel's: training in model/training.hpp
/// (ModelTraining: fit, the run's state and memory), scoring in model/scoring.hpp (ModelScoring:
/// raw scores, maps, calibration, thresholds) and the model file in model/model_file.hpp
/// (ModelFile: save, load, checkpoints).
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


#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "../detail/check.hpp"
#include "../detail/memory.hpp"
#include "../detail/text.hpp"
#include "../flow/all_in_one_options.hpp"
#include "../flow/positional_encoding.hpp"
#include "../flow/sequence_flow.hpp"
#include "../io/checkpoint.hpp"
#include "../level_device.hpp"
#include "../prior/gaussian_mixture_prior.hpp"
#include "../rng.hpp"
#include "../tensor.hpp"
#include "config.hpp"
#include "cpu_level.hpp"
#include "model_file.hpp"
#include "scoring.hpp"
#include "training.hpp"
#include "data_init.hpp"

namespace hgad {

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
    for (const LevelSpec& level : m_config.levels)
      m_encodings.push_back(
          m_config.pos_dim == 0
              ? Tensor<Scalar>()
              : positional_encoding_2d<Scalar>(m_config.pos_dim, level.height, level.width));
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
          m_config.intra_center_init, rng, m_config.class_covariance, m_config.whiten_mean);
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

  /// Whether the calibration's image-score scale (ClassCalibration::threshold, train_score_max),
  /// computed from product-criterion scores, holds for scores under `criterion`: whether its
  /// anomaly map is the product's (always for the NF objective, a model of one class and
  /// class_covariance = class with the likelihood criterion; see ScoreCriterion).
  bool thresholds_hold(ScoreCriterion criterion) const {
    return ModelScoring<Scalar>::thresholds_hold(*this, criterion);
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
            where, ": level ", l, " features have shape ", f.shape(),
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
    return ModelTraining<Scalar>::fit(*this, features, labels, options);
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
    return ModelScoring<Scalar>::raw_scores(*this, image, class_index);
  }

  /// Held-out normal images (features per level (N, H, W, D), labels (N,)): their mean
  /// log-likelihood per dimension under their own class, per level (the raw_scores logp maps
  /// averaged over positions, then images of a class, then classes), and the share of them whose
  /// class is predicted (HeldOut). fit() measures it with FitOptions::validation.
  HeldOut held_out(const std::vector<Tensor<Scalar>>& features,
                   const std::vector<std::int64_t>& labels) const {
    return ModelScoring<Scalar>::held_out(*this, features, labels);
  }

  /// The anomaly map of one image from its raw scores and normalisation constants (docs/algorithm.md §5
  /// steps 4–6, calibrated_anomaly_map): per map type A = blur(sum_max − Σ_l up(exp(x_l −
  /// level_max_l))), clipped at 0 — a no-op with the image's own transductive constants, and with
  /// frozen constants it keeps the product of two negative maps of a very normal image from turning
  /// positive. The HGAD map is A_logp ⊙ A_ent (or one of them, by `criterion`), the NF map A_logp
  /// alone; the score is the map's maximum (or the mean of its highest pixels, image_score). The
  /// map returned is then blurred again by ModelConfig::pixel_map_sigma (when not 0), after the
  /// score is read. With per-position baselines in `constants`, each raw map is first taken
  /// relative to them (ModelConfig::calibration_baseline).
  ScoredImage<Scalar> anomaly_map(const RawScores<Scalar>& raw, const ClassCalibration& constants,
                                  ScoreCriterion criterion = ScoreCriterion::product) const {
    return ModelScoring<Scalar>::anomaly_map(*this, raw, constants, criterion);
  }

  /// The normalisation constants of a set of images' raw scores (anomaly_map_constants over all
  /// images of the set: the transductive statistics of docs/algorithm.md §5 step 4).
  ClassCalibration fit_constants(const std::vector<RawScores<Scalar>>& raws) const {
    return ModelScoring<Scalar>::fit_constants(*this, raws);
  }

  /// Scores one image on its own (calibrated or label-free mode): the same result whether the
  /// image is scored alone or among others.
  ///   requires: is_calibrated(); class_index in [0, K) for calibrated, ignored (-1) for
  ///   label-free.
  ScoredImage<Scalar> score(const std::vector<Tensor<Scalar>>& image, std::int64_t class_index,
                            ScoreMode mode,
                            ScoreCriterion criterion = ScoreCriterion::product) const {
    return ModelScoring<Scalar>::score(*this, image, class_index, mode, criterion);
  }

  /// Scores every image of a set (features: per level (N, H, W, D)). Transductive: the constants
  /// come from this very set and `classes` gives each image's class (the paper's protocol runs it
  /// once per class); calibrated: each image alone with its class's frozen constants; label-free:
  /// each image alone with its predicted class (`classes` is ignored and may be empty). The
  /// images are shared over the threads, whole (detail::parallel_items), and scored as score()
  /// scores them one by one; on_image(i) is called for i = 0, 1, ... in order, one call at a time
  /// (possibly from another thread), once image i and those before it are scored.
  std::vector<ScoredImage<Scalar>> score_set(
      const std::vector<Tensor<Scalar>>& features, const std::vector<std::int64_t>& classes,
      ScoreMode mode, const std::function<void(Index)>& on_image = {},
      ScoreCriterion criterion = ScoreCriterion::product) const {
    return ModelScoring<Scalar>::score_set(*this, features, classes, mode, on_image, criterion);
  }

  /// Computes and stores the calibrated-mode constants from training (normal) images: for each
  /// class the per-position baselines (when configured) and the constants of fit_constants over
  /// its training images (at most config.calibration_images of them, spread evenly over the
  /// class's images in order, 0 meaning all: ModelScoring::calibration_sample), and over the union
  /// of those images for the class-agnostic entry K (used by the NF objective in label-free mode).
  /// The images are shared over the threads, whole; on_image(done, n) counts this process's
  /// images, in order, one call at a time (possibly from another thread). With a `communicator` of
  /// R ranks (every rank calling with the same model and data), each rank scores its part of the
  /// images and every rank stores the calibration of one process, bit for bit.
  void calibrate(const std::vector<Tensor<Scalar>>& features,
                 const std::vector<std::int64_t>& labels,
                 const std::function<void(Index, Index)>& on_image = {},
                 Communicator* communicator = nullptr) {
    m_calibration = ModelScoring<Scalar>::calibrate(*this, features, labels, on_image, communicator);
  }

  /// Changes the settings that enter the scoring alone (scoring_config_keys: the map's scale,
  /// level weights, blur, image score, calibration baseline and images, threshold quantile) to
  /// those of `config`, and drops the calibration, which depends on them: calibrate() again before
  /// scoring in calibrated or label-free mode. The flows, priors and whitening are kept.
  ///   throws: hgad::Error when `config` is invalid for this model or differs from config() in
  ///   another key (naming it).
  void change_scoring(const ModelConfig& config) {
    const std::string other = first_training_difference(m_config, config);
    check(other.empty(), "HgadModel::change_scoring: '", other,
          "' enters the start or the training; only the scoring settings of a trained model "
          "can change");
    config.validate(true);
    m_config = config;
    m_calibration.clear();
  }

  /// Writes config, every parameter (flows with their fixed rotations, priors), the calibration
  /// constants and the metadata as one hgad::Checkpoint, atomically.
  void save(const std::string& path) const { to_checkpoint().save(path); }

  /// Writes the model with the state of a run of fit() (FitOptions::on_checkpoint) as one file,
  /// atomically: load_checkpoint reads both back, and fit() with FitOptions::resume continues the
  /// run. A checkpoint is also a model file (load() reads it and ignores the state).
  void save_checkpoint(const std::string& path, const TrainingState<Scalar>& state) const {
    ModelFile<Scalar>::save_checkpoint(*this, path, state);
  }

  /// The model and the training state of a file written by save_checkpoint.
  ///   throws: hgad::Error naming the file when it holds no training state or a malformed one.
  static std::pair<HgadModel, TrainingState<Scalar>> load_checkpoint(const std::string& path) {
    return ModelFile<Scalar>::load_checkpoint(path);
  }

  /// The model as one hgad::Checkpoint (model_file.hpp), what save() writes.
  Checkpoint to_checkpoint() const { return ModelFile<Scalar>::to_checkpoint(*this); }

  /// Loads a model saved by save(). Every problem is an hgad::Error saying which: the container's
  /// own checks (missing file, wrong magic, newer version, truncation, CRC), a file that is not an
  /// hgad model, an invalid config, a missing parameter or one of the wrong shape.
  static HgadModel load(const std::string& path) {
    return from_checkpoint(Checkpoint::load(path), path);
  }

  /// The model a Checkpoint holds (what load() reads); `name` names it in the errors.
  static HgadModel from_checkpoint(const Checkpoint& ckpt, const std::string& name) {
    return ModelFile<Scalar>::from_checkpoint(ckpt, name);
  }

 private:
  friend class ModelTraining<Scalar>;
  friend class ModelScoring<Scalar>;
  friend class ModelFile<Scalar>;

  AllInOneOptions flow_options() const {
    AllInOneOptions o = AllInOneOptions::hgad();
    o.affine_clamping = m_config.clamp;
    o.clamp_variant = m_config.clamp_variant;
    return o;
  }

  Index level_positions(Index l) const {
    const LevelSpec& s = m_config.levels[static_cast<std::size_t>(l)];
    return s.height * s.width;
  }

  /// The positional encoding of level l, (H·W, P), rows in the feature map's row-major order;
  /// empty for P = 0. Made once, with the model: every image of a level has the same one.
  const Tensor<Scalar>& level_encoding(Index l) const {
    return m_encodings[static_cast<std::size_t>(l)];
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
    if (m_device == Device::cpu) return flow(l).forward(x, projected_encoding(l));
    std::lock_guard<std::mutex> lock(m_scoring.mutex);
    if (m_scoring.levels.empty()) {
      auto& self = const_cast<HgadModel&>(*this);  // the devices only read the parameters here
      for (Index k = 0; k < n_levels(); ++k)
        m_scoring.levels.push_back(make_level_device(m_device, self.m_flows[static_cast<std::size_t>(k)],
                                                     self.prior_or_null(k), level_training(m_config)));
    }
    return m_scoring.levels[static_cast<std::size_t>(l)]->forward(x, level_encoding(l));
  }

  /// Level l's positional encoding with each block's share of the first layer computed once
  /// (SequenceFlow::project_condition), made on first use for all levels.
  const typename SequenceFlow<Scalar>::ProjectedCondition& projected_encoding(Index l) const {
    std::lock_guard<std::mutex> lock(m_scoring.mutex);
    if (m_scoring.encodings.empty()) {
      for (Index k = 0; k < n_levels(); ++k) m_scoring.encodings.push_back(flow(k).project_condition(level_encoding(k)));
    }
    return m_scoring.encodings[static_cast<std::size_t>(l)];
  }

  /// What the scores make once from the parameters and keep: the level devices that run the flows
  /// off the CPU, and on the CPU the projected positional encodings. Made on first use, under the
  /// mutex, and dropped whenever the parameters may change, which no scoring overlaps; the
  /// projections are only read once made, so a score uses them after releasing the mutex. A copy
  /// or move of the model starts without.
  struct ScoringCache {
    std::vector<std::unique_ptr<LevelDevice<Scalar>>> levels;
    std::vector<typename SequenceFlow<Scalar>::ProjectedCondition> encodings;
    std::mutex mutex;
    ScoringCache() = default;
    ScoringCache(const ScoringCache&) {}
    ScoringCache& operator=(const ScoringCache&) {
      clear();
      return *this;
    }
    void clear() {
      levels.clear();
      encodings.clear();
    }
  };

  ModelConfig m_config;
  std::vector<SequenceFlow<Scalar>> m_flows;
  std::vector<GaussianMixturePrior<Scalar>> m_priors;
  std::vector<AffineWhitening<Scalar>> m_whitening;  // per level; the identity unless init = whiten
  std::vector<Tensor<Scalar>> m_encodings;            // per level, (H·W, P); empty for P = 0
  std::vector<ClassCalibration> m_calibration;  // K + 1 entries once calibrated
  std::map<std::string, std::string> m_metadata;
  Index m_epochs_trained = 0;
  Device m_device = Device::cpu;
  mutable ScoringCache m_scoring;
};

}  // namespace hgad
