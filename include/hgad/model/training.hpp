#pragma once
/// \file
/// Training an HgadModel (docs/algorithm.md §4): the passes, shuffles and batches, the
/// learning-rate schedule and the two stages around each level's one training step (a
/// LevelDevice: model/cpu_level.hpp on the CPU, level_device.hpp elsewhere), the progress and
/// resumable state of a run, and the memory a training needs. HgadModel::fit calls
/// ModelTraining::fit.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "../detail/check.hpp"
#include "../detail/text.hpp"
#include "../level_device.hpp"
#include "../loss/loss_terms.hpp"
#include "../nn/adam.hpp"
#include "../nn/lr_schedule.hpp"
#include "../parallel/communicator.hpp"
#include "../parallel/data_parallel.hpp"
#include "../rng.hpp"
#include "../tensor.hpp"
#include "config.hpp"
#include "cpu_level.hpp"
#include "scoring.hpp"

namespace hgad {

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
///
/// With a `communicator` of R > 1 ranks the training is data-parallel (parallel/data_parallel.hpp):
/// every rank calls fit() with the same configuration, the same training features and labels (all
/// N images: the shuffle is global) and the same `resume`; every rank draws the same shuffle, takes
/// its contiguous part of each batch of B images (shard_rows: parts of ⌊B/R⌋ or ⌈B/R⌉ images), and
/// the gradients and loss terms of the parts are added, weighted by their share of the rows, before
/// one identical Adam step on every rank. Every rank ends with the same parameters and reports the
/// batch's loss terms; the callbacks run on rank 0 only (ranks 1 .. R-1 see no on_step, on_epoch or
/// on_checkpoint), so rank 0 alone writes progress, checkpoints and files. The levels may be on any
/// device (LevelDevice::set_data_parallel). An error on one rank is passed to the others
/// (Communicator::fail): their fit() throws PeerFailure naming it. No communicator, or one of a
/// single rank, is the plain training.
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
  /// The ranks of a data-parallel training; null: this process alone.
  Communicator* communicator = nullptr;
  /// Held-out images (features per level as fit's, and their labels), kept out of the training:
  /// fit() measures HgadModel::held_out on them before its first pass and after every pass
  /// (FitReport::validation), on every rank alike. Both null: no measurement.
  const std::vector<Tensor<Scalar>>* validation_features = nullptr;
  const std::vector<std::int64_t>* validation_labels = nullptr;
  /// With validation: fit() ends on the parameters of the measurement with the highest held-out
  /// mean log-likelihood (the start included, the first of equals) instead of the last pass's,
  /// and epochs_trained() counts the passes that led to them.
  bool keep_best = false;
};

/// What fit() did.
template <class Scalar>
struct FitReport {
  Index steps = 0;
  Index epochs = 0;
  double seconds = 0;
  std::vector<LossTerms<Scalar>> final_terms;  ///< per level, last batch
  /// With FitOptions::validation: [0] before the first pass of this call, [p] after its pass p.
  std::vector<HeldOut> validation;
  /// With FitOptions::keep_best: the index into `validation` whose parameters the model ends on.
  Index best = -1;
};

/// The number of parameter values of a model of this configuration (flows with their
/// rotations, and the priors), in double so that absurd configurations do not overflow.
inline double parameter_count(const ModelConfig& c) {
  double n = 0;
  for (const LevelSpec& s : c.levels) {
    const double D = double(s.dim), n2 = std::floor(D / 2), n1 = D - n2,
                 in = n1 + double(c.pos_dim);
    const double block = D * D + D + in * 2 * in + 2 * in + 2 * in * 2 * n2 + 2 * n2;
    n += double(c.n_blocks) * block;
    if (c.objective == Objective::hgad) {
      const double K = double(c.class_names.size()), M = double(c.n_centers);
      n += K * D + K * (M - 1) * D + K * M + K;
    }
  }
  return n;
}

/// How many of a map's `positions` a training step uses at position_fraction f (docs/algorithm.md
/// §4.1): round(f · positions), at least one.
inline Index step_positions(Index positions, double fraction) {
  return std::clamp<Index>(Index(std::lround(fraction * double(positions))), 1, positions);
}

/// What training a model of `c` on `n_images` images holds in memory, in bytes (training_memory).
struct TrainingMemory {
  double parameters = 0;   ///< 4 copies of parameter_count: value, gradient, Adam's moments
  double activations = 0;  ///< the largest level's training step on one batch
  double features = 0;     ///< the backbone features of the training images, every level
  double total() const { return parameters + activations + features; }
};

/// The memory estimate of training `c`: 4 copies (value, gradient, two Adam moments) of every
/// parameter_count value, the fixed rotations and biases included (a slight overcount); per level
/// with N = batch_size · n rows (n = H W, or step_positions of them with position_fraction < 1)
/// the step keeps n_blocks N (H_s + 2 n2 + D) for the backward and N
/// (H_s + 6 D + 2 K + K M + 8) of scratch (H_s = 2 (n1 + P) the subnet's hidden width;
/// cuda/level_engine.hpp), plus 2 K N D with class covariances (the class-space rows and their
/// gradients, prior/class_space.hpp), the largest level counted, as levels train one after
/// another; and n_images H W D per level of features. A lower bound: the autograd reference and
/// the backbone hold more.
template <class Scalar>
TrainingMemory training_memory(const ModelConfig& c, Index n_images = 0) {
  TrainingMemory m;
  const double bytes = double(sizeof(Scalar));
  m.parameters = 4 * parameter_count(c) * bytes;
  const double K = double(c.class_names.size()), M = double(c.n_centers);
  for (Index l = 0; l < c.n_levels(); ++l) {
    const LevelSpec& s = c.levels[static_cast<std::size_t>(l)];
    const double D = double(s.dim), n2 = std::floor(D / 2), n1 = D - n2;
    const double hidden = 2 * (n1 + double(c.pos_dim));
    const double N = double(c.batch_size) *
                     double(step_positions(s.height * s.width, c.level_position_fraction(l)));
    const double class_space = has_class_covariance(c.class_covariance) ? 2 * K * N * D : 0;
    const double step = double(c.n_blocks) * N * (hidden + 2 * n2 + D) +
                        N * (hidden + 6 * D + 2 * K + K * M + 8) + class_space;
    m.activations = std::max(m.activations, step * bytes);
    m.features += double(n_images) * double(s.height) * double(s.width) * D * bytes;
  }
  return m;
}

/// The configuration's values that size the memory, for the messages that refuse it:
/// "n_blocks = 12, pos_dim = 256, batch_size = 8, n_centers = 10, levels = 128x32x32".
inline std::string memory_culprits(const ModelConfig& c) {
  std::vector<std::string> levels;
  for (const LevelSpec& s : c.levels)
    levels.push_back(std::to_string(s.dim) + "x" + std::to_string(s.height) + "x" +
                     std::to_string(s.width));
  return "n_blocks = " + std::to_string(c.n_blocks) + ", pos_dim = " + std::to_string(c.pos_dim) +
         ", batch_size = " + std::to_string(c.batch_size) +
         ", n_centers = " + std::to_string(c.n_centers) + ", levels = " + detail::join(levels);
}

/// The objective and optimiser settings of every level of a model of configuration `c`.
inline LevelTraining level_training(const ModelConfig& c) {
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

/// The seed of a random stream of training step `step` on level `level` (the positions it draws,
/// the noise it adds), apart from the model's other streams by `salt`: a function of (seed, step,
/// level) alone, so a resumed run, or every rank of a data-parallel one, draws the same.
inline std::uint64_t step_stream_seed(std::uint64_t salt, std::uint64_t seed, std::int64_t step,
                                      Index level) {
  return seed ^ salt ^ (std::uint64_t(step) * 0x9E3779B97F4A7C15ULL) ^ (std::uint64_t(level) << 56);
}

/// The positions of a level's map that training step `step` uses when the level's share of
/// positions (ModelConfig::level_position_fraction) is f < 1 (docs/algorithm.md §4.1):
/// round(f · positions) of them (at least one), distinct, in increasing order. They are drawn from
/// a stream of their own, seeded by (seed, step, level) alone, so the shuffles do not move with f,
/// and a resumed run, or every rank of a data-parallel one, draws the same positions for a step.
///   requires: positions >= 1, f in (0, 1].
inline std::vector<Index> training_positions(std::uint64_t seed, std::int64_t step, Index level,
                                             Index positions, double fraction) {
  check(positions >= 1 && fraction > 0 && fraction <= 1, "training_positions: ", positions,
        " positions and a fraction ", fraction, " (expected at least 1 and (0, 1])");
  const Index count = step_positions(positions, fraction);
  Rng rng(step_stream_seed(0xC2B2AE3D27D4EB4FULL, seed, step, level));
  std::vector<Index> all(static_cast<std::size_t>(positions));
  std::iota(all.begin(), all.end(), Index(0));
  for (Index i = 0; i < count; ++i) {  // the first `count` of a Fisher-Yates shuffle
    const Index j = i + Index(rng.uniform_int(std::uint64_t(positions - i)));
    std::swap(all[static_cast<std::size_t>(i)], all[static_cast<std::size_t>(j)]);
  }
  all.resize(static_cast<std::size_t>(count));
  std::sort(all.begin(), all.end());
  return all;
}

/// The noise of a training step on the flow's input (ModelConfig::feature_noise,
/// docs/algorithm.md §4.2): adds σ · g to every element of `batch`, g drawn from N(0, 1). The
/// batch holds `rows_per_image` rows of each of its images in turn, the first of them at place
/// `first_image` of the step's batch. Each image draws from a stream of its own, seeded by (seed,
/// step, level, place), so the noise does not depend on the threads, and a data-parallel rank
/// holding images first_image, first_image + 1, ... of a batch adds to them what one process
/// would. σ = 0 leaves the batch as it is.
///   requires: σ >= 0 and finite; batch (n · rows_per_image, D), rows_per_image >= 1.
template <class Scalar>
void add_training_noise(Tensor<Scalar>& batch, double sigma, std::uint64_t seed, std::int64_t step,
                        Index level, Index first_image, Index rows_per_image) {
  check(std::isfinite(sigma) && sigma >= 0,
        "add_training_noise: sigma must be finite and >= 0, got ", sigma);
  check(batch.rank() == 2 && rows_per_image >= 1 && batch.dim(0) % rows_per_image == 0,
        "add_training_noise: a batch of shape ", batch.shape().to_string(),
        " is not whole images of ", rows_per_image, " rows");
  if (sigma == 0) return;
  const Index per_image = rows_per_image * batch.dim(1);
  const Index images = batch.dim(0) / rows_per_image;
  Scalar* const x = batch.data();
  const std::uint64_t step_seed = step_stream_seed(0x94D049BB133111EBULL, seed, step, level);
  detail::parallel_for(images, images * per_image * 16, [&](Index b) {
    Rng rng(step_seed ^ (std::uint64_t(first_image + b) << 40));
    Scalar* const row = x + b * per_image;
    for (Index i = 0; i < per_image; ++i) row[i] += static_cast<Scalar>(sigma * rng.normal());
  });
}

/// The training job of HgadModel (model/hgad_model.hpp).
template <class Scalar>
class ModelTraining {
 public:
  /// The body of HgadModel::fit. In a data-parallel training a rank whose fit() fails tells the
  /// others (Communicator::fail) before it throws.
  static FitReport<Scalar> fit(HgadModel<Scalar>& model,
                               const std::vector<Tensor<Scalar>>& features,
                               const std::vector<std::int64_t>& labels,
                               const FitOptions<Scalar>& options) {
    Communicator* const comm = options.communicator;
    if (comm == nullptr || comm->size() == 1) return run(model, features, labels, options);
    try {
      return run(model, features, labels, options);
    } catch (const std::exception& e) {
      comm->fail(e.what());
      throw;
    } catch (...) {
      comm->fail("an exception that is not a std::exception (from a callback?)");
      throw;
    }
  }

 private:
  static FitReport<Scalar> run(HgadModel<Scalar>& model,
                               const std::vector<Tensor<Scalar>>& features,
                               const std::vector<std::int64_t>& labels,
                               const FitOptions<Scalar>& options) {
    const Index N = model.check_features(features, "HgadModel::fit");
    check(N >= 1, "HgadModel::fit: no training images");
    check(static_cast<Index>(labels.size()) == N, "HgadModel::fit: ", labels.size(), " labels for ",
          N, " images");
    for (std::size_t i = 0; i < labels.size(); ++i)
      check(labels[i] >= 0 && labels[i] < model.n_classes(), "HgadModel::fit: label ", labels[i],
            " of image ", i, " is outside [0, ", model.n_classes(), ")");

    const ModelConfig& c = model.m_config;
    const Index L = model.n_levels();
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
            "HgadModel::fit: the training state to resume (", resume->passes_done, " passes, ",
            resume->steps_done, " steps, ", resume->optimizers.size(),
            " levels) does not belong to a run of this configuration on these ", N, " images (",
            iterations, " steps per pass, ", n_epochs, " passes, ", L, " levels)");
    }
    check(options.checkpoint_every >= 0, "HgadModel::fit: checkpoint_every must be >= 0, got ",
          options.checkpoint_every);
    const bool validating = options.validation_features != nullptr;
    check(validating == (options.validation_labels != nullptr),
          "HgadModel::fit: validation needs both the features and the labels of the held-out images");
    check(validating || !options.keep_best, "HgadModel::fit: keep_best needs validation images");
    if (validating) {
      const Index held = model.check_features(*options.validation_features, "HgadModel::fit (validation)");
      check(held >= 1 && static_cast<Index>(options.validation_labels->size()) == held,
            "HgadModel::fit: ", options.validation_labels->size(), " validation labels for ", held,
            " validation images (at least one image is needed)");
    }
    // init = whiten: an untrained model starts as the Gaussian of its training features (§2.5).
    if (resume == nullptr && model.m_epochs_trained == 0 && model.m_whitening.front().is_identity())
      model.initialise_from_data(features, labels);
    // Data-parallel: this rank's images of every batch; the ranks must agree on the run first.
    Communicator* const comm = options.communicator;
    const int n_ranks = comm != nullptr ? comm->size() : 1;
    const bool writer = comm == nullptr || comm->rank() == 0;  // the rank whose callbacks run
    const RowRange part = shard_rows(B, n_ranks, comm != nullptr ? comm->rank() : 0);
    if (n_ranks > 1) {
      check(B >= n_ranks, "HgadModel::fit: a batch of ", B, " images cannot be split over ",
            n_ranks, " ranks (batch_size must be at least the number of ranks)");
      require_same_on_every_rank(*comm, std::int64_t(N), "the number of training images");
      require_same_on_every_rank(*comm, std::int64_t(B), "the batch size");
      require_same_on_every_rank(*comm, c.seed, "the seed");
      require_same_on_every_rank(*comm, std::int64_t(n_epochs), "the number of passes");
      require_same_on_every_rank(*comm, std::int64_t(resume != nullptr ? resume->passes_done : 0),
                                 "the passes already done (FitOptions::resume)");
      require_same_on_every_rank(*comm, data_checksum(features, labels),
                                 "the training data (a checksum of the features and labels)");
      for (Index l = 0; l < L; ++l) {
        broadcast_parameters(*comm, model.m_flows[static_cast<std::size_t>(l)].parameters());
        if (model.prior_or_null(l) != nullptr)
          broadcast_parameters(*comm, model.prior_or_null(l)->parameters());
      }
    }
    const LevelTraining training = level_training(model.m_config);
    const LossOptions& loss_options = training.loss;
    // One level device per level for the whole run (its optimiser state and activations); the
    // parameters it trains come back into the model however fit() ends.
    model.m_scoring.clear();
    std::vector<std::unique_ptr<LevelDevice<Scalar>>> devices;
    for (Index l = 0; l < L; ++l) {
      LevelTraining level = training;  // the whitening's log-determinant joins the flow's (§2.5)
      level.loss.log_jac_det_offset = model.m_whitening[static_cast<std::size_t>(l)].log_jac_det();
      devices.push_back(make_level_device(model.m_device,
                                          model.m_flows[static_cast<std::size_t>(l)],
                                          model.prior_or_null(l), level));
      if (resume != nullptr)
        devices.back()->set_optimizer_state(resume->optimizers[static_cast<std::size_t>(l)]);
      if (n_ranks > 1) devices.back()->set_data_parallel(*comm, double(part.size()) / double(B));
    }
    model.m_calibration.clear();  // constants of earlier parameters no longer apply

    // Per level: the positional encoding of one image, (H·W, P), shared by the B images of a batch
    // (the flow projects it through W1c once per position rather than once per vector).
    std::vector<Tensor<Scalar>> conditions;
    for (Index l = 0; l < L; ++l) conditions.push_back(model.level_encoding(l));

    // The shuffling stream is separate from the initialisation stream, derived from the seed.
    Rng shuffle_rng(c.seed ^ 0x5DEECE66DULL);
    std::vector<Index> order(static_cast<std::size_t>(N));
    std::vector<Tensor<Scalar>> batch(static_cast<std::size_t>(L));
    std::vector<std::vector<std::int64_t>> batch_labels(static_cast<std::size_t>(L));
    std::vector<Index> rows;        // with position_fraction < 1: the rows a step gathered,
    Tensor<Scalar> step_condition;  // and their positional encodings

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
    // Validation: the held-out images measured on the model's current parameters; with keep_best
    // the values of the best measurement so far are kept (every rank measures alike, so every
    // rank keeps the same).
    const auto parameters = [&model, L] {
      std::vector<Var<Scalar>> all;
      for (Index l = 0; l < L; ++l) {
        for (const Var<Scalar>& p : model.m_flows[static_cast<std::size_t>(l)].parameters()) all.push_back(p);
        if (model.prior_or_null(l) != nullptr)
          for (const Var<Scalar>& p : model.prior_or_null(l)->parameters()) all.push_back(p);
      }
      return all;
    };
    std::vector<Tensor<Scalar>> best_values;
    Index best_epochs = model.m_epochs_trained;
    const auto measure = [&] {
      copy_back();
      report.validation.push_back(model.held_out(*options.validation_features, *options.validation_labels));
      model.m_scoring.clear();
      const Index at = static_cast<Index>(report.validation.size()) - 1;
      if (options.keep_best &&
          (report.best < 0 || report.validation.back().mean_log_likelihood >
                                  report.validation[static_cast<std::size_t>(report.best)].mean_log_likelihood)) {
        report.best = at;
        best_epochs = model.m_epochs_trained;
        best_values.clear();
        for (const Var<Scalar>& p : parameters()) best_values.push_back(p.value().clone());
      }
    };
    if (validating) measure();
    const auto shuffle = [&] {
      std::iota(order.begin(), order.end(), Index(0));
      for (Index i = N - 1; i > 0; --i)
        std::swap(order[static_cast<std::size_t>(i)],
                  order[static_cast<std::size_t>(
                      shuffle_rng.uniform_int(static_cast<std::uint64_t>(i + 1)))]);
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
        for (Index sub = meta == first_pass / c.sub_epochs ? first_pass % c.sub_epochs : 0;
             sub < c.sub_epochs; ++sub) {
          shuffle();
          for (Index it = 0; it < iterations; ++it) {
            const double lr = schedule.lr_at(static_cast<int>(meta), sub * iterations + it,
                                             c.sub_epochs * iterations);
            for (Index l = 0; l < L; ++l) {
              const auto li = static_cast<std::size_t>(l);
              const Index first = it * B + part.begin;
              const Index hw = model.level_positions(l);
              const Tensor<Scalar>* condition = &conditions[li];
              const double fraction = c.level_position_fraction(l);
              if (fraction < 1) {  // §4.1: the step's positions alone
                const std::vector<Index> at =
                    training_positions(c.seed, static_cast<std::int64_t>(step), l, hw, fraction);
                gather_positions(features[li], order, first, part.size(), at, batch[li], rows);
                batch[li] = model.m_whitening[li].forward_rows(batch[li], rows);
                gather_rows(conditions[li], at, step_condition);
                condition = &step_condition;
                fill_labels(labels, order, first, part.size(), Index(at.size()), batch_labels[li]);
              } else {
                gather_batch(features[li], order, first, part.size(), batch[li]);
                if (!model.m_whitening[li].is_identity())
                  batch[li] = model.m_whitening[li].forward(batch[li]);
                fill_labels(labels, order, first, part.size(), hw, batch_labels[li]);
              }
              // §4.2: after the whitening, before the flow (nothing when feature_noise = 0)
              add_training_noise(batch[li], c.feature_noise, c.seed,
                                 static_cast<std::int64_t>(step), l, part.begin,
                                 batch[li].dim(0) / part.size());
              report.final_terms[li] =
                  devices[li]->train_step(batch[li], *condition, batch_labels[li], stage, lr,
                                          TrainStepContext{l, static_cast<std::int64_t>(step)});
            }
            ++step;
            if (writer && options.on_step) {
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
          ++model.m_epochs_trained;
          const Index passes = meta * c.sub_epochs + sub + 1;
          if (writer && options.checkpoint_every > 0 && options.on_checkpoint &&
              passes % options.checkpoint_every == 0) {
            copy_back();
            TrainingState<Scalar> state;
            state.passes_done = passes;
            state.steps_done = step;
            for (const auto& d : devices) state.optimizers.push_back(d->optimizer_state());
            options.on_checkpoint(model, state);
          }
          if (writer && options.on_epoch) {
            copy_back();
            options.on_epoch(model, meta * c.sub_epochs + sub);
            model.m_scoring.clear();
          }
          if (validating) measure();
        }
      }
    } catch (...) {
      try {
        copy_back();
      } catch (...) {  // the first error is the one to report
      }
      model.m_scoring.clear();
      throw;
    }
    copy_back();
    model.m_scoring.clear();
    if (options.keep_best && report.best + 1 < static_cast<Index>(report.validation.size())) {
      std::vector<Var<Scalar>> current = parameters();  // handles: writes reach the parameters
      for (std::size_t i = 0; i < current.size(); ++i) {
        Tensor<Scalar>& value = current[i].value();
        std::copy(best_values[i].data(), best_values[i].data() + value.numel(), value.data());
      }
      model.m_epochs_trained = best_epochs;
    }
    report.steps = step;
    report.epochs = n_epochs;
    report.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return report;
  }

  /// A checksum of the training data, for the ranks of a data-parallel training to compare: the
  /// sum of every feature value and of every label times its position, in double, in order.
  static double data_checksum(const std::vector<Tensor<Scalar>>& features,
                              const std::vector<std::int64_t>& labels) {
    double sum = 0;
    for (const Tensor<Scalar>& f : features)
      for (Index i = 0; i < f.numel(); ++i) sum += double(f.data()[i]);
    for (std::size_t i = 0; i < labels.size(); ++i) sum += double(labels[i]) * double(i + 1);
    return sum;
  }

  /// Each of images order[first .. first + B) repeats its label `per_image` times, (B·per_image,).
  static void fill_labels(const std::vector<std::int64_t>& labels, const std::vector<Index>& order,
                          Index first, Index B, Index per_image, std::vector<std::int64_t>& out) {
    out.resize(static_cast<std::size_t>(B * per_image));
    for (Index b = 0; b < B; ++b)
      std::fill_n(out.begin() + b * per_image, per_image,
                  labels[static_cast<std::size_t>(order[static_cast<std::size_t>(first + b)])]);
  }

  /// Positions `at` of images order[first .. first + B) of one level, image-major, (B·|at|, D);
  /// `rows` gets each row's index in the whole batch's rows (b·H·W + position).
  static void gather_positions(const Tensor<Scalar>& level, const std::vector<Index>& order,
                               Index first, Index B, const std::vector<Index>& at,
                               Tensor<Scalar>& out, std::vector<Index>& rows) {
    const Index D = level.dim(3), hw = level.dim(1) * level.dim(2);
    const Index n = static_cast<Index>(at.size());
    if (out.shape() != Shape({B * n, D})) out = Tensor<Scalar>::empty({B * n, D});
    rows.resize(static_cast<std::size_t>(B * n));
    for (Index b = 0; b < B; ++b) {
      const Index image = order[static_cast<std::size_t>(first + b)];
      level.backend().gather_rows(at.data(), n, D, level.data() + image * hw * D,
                                  out.data() + b * n * D);
      for (Index i = 0; i < n; ++i)
        rows[static_cast<std::size_t>(b * n + i)] = b * hw + at[static_cast<std::size_t>(i)];
    }
  }

  /// Rows `at` of a (rows, P) table, (|at|, P); an empty table (no positional encoding) stays
  /// empty.
  static void gather_rows(const Tensor<Scalar>& table, const std::vector<Index>& at,
                          Tensor<Scalar>& out) {
    if (table.numel() == 0) {
      out = table;
      return;
    }
    const Index P = table.cols(), n = static_cast<Index>(at.size());
    if (out.shape() != Shape({n, P})) out = Tensor<Scalar>::empty({n, P});
    table.backend().gather_rows(at.data(), n, P, table.data(), out.data());
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
};

}  // namespace hgad
