#pragma once
/// \file
/// ModelConfig: every setting of an HGAD model (docs/algorithm.md §11), with its text form.
///
/// The text form is one `key = value` per line; `#` starts a comment, blank lines are ignored and
/// lists are comma-separated. It is what `hgad info` prints, what a checkpoint stores, and what a
/// user passes to `hgad train --config FILE` (keys left out keep their defaults):
///
///     # hgad model configuration
///     objective = hgad
///     levels = 128x32x32, 256x16x16          # dim x height x width, one flow per level
///     classes = kolektor, magnetic_tile, pcb1
///     pos_dim = 128
///     n_blocks = 4
///     lr = 0.0002
///
///     hgad::ModelConfig config = hgad::ModelConfig::from_text(text, "my.cfg");
///     config.validate();                      // throws hgad::Error naming the key and the value
///     std::string again = config.to_text();   // parses back to an equal config
///
/// Every key is one row of one table, detail::for_each_config_key: its name, the field it sets and
/// the values it allows. validate, to_text and from_text all walk that table.
///
/// Defaults are HGAD's (docs/algorithm.md §2–§4): 12 blocks, clamp 1.9 with the pinned FrEIA soft clamp,
/// M = 10 intra-class centres, λ1 = 1, λ2 = 100, label smoothing 0.02, 25 meta-epochs of 8
/// sub-epochs, 2 warm-up and 2 stage-1 meta-epochs, lr 2e-4, Adam betas (0.95, 0.99), coupled
/// weight decay 1e-4 on the flows, batch size 8, seed 0, P = 256. The start is not the paper's:
/// init = whiten (docs/algorithm.md §2.5; docs/results.md §2.5 says why); init = identity is.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <ostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "../detail/check.hpp"
#include "../detail/text.hpp"
#include "../flow/all_in_one_options.hpp"
#include "../loss/loss_terms.hpp"
#include "../prior/center_init.hpp"
#include "../tensor.hpp"

namespace hgad {

/// One feature level: the feature dimension D and the spatial size of its map.
struct LevelSpec {
  Index dim = 0;
  Index height = 0;
  Index width = 0;
  friend bool operator==(const LevelSpec& a, const LevelSpec& b) {
    return a.dim == b.dim && a.height == b.height && a.width == b.width;
  }
  friend bool operator!=(const LevelSpec& a, const LevelSpec& b) { return !(a == b); }
};

/// The preprocessing and backbone settings that turn an image into the model's feature levels, so
/// that `predict` reproduces exactly what `train` saw.
struct FeatureSettings {
  std::string backbone = "resnet18";  ///< architecture name; "none" for precomputed features
  /// CFlow's scheme: several stages of one image, one level each (pyramid_levels = 0); HGAD's
  /// scheme: one stage (layers[0]) on an image pyramid of pyramid_levels resolutions, each half the
  /// previous (docs/algorithm.md §1.2). In the first, a layer named "<stage>@scale<s>" is the
  /// stage of the image at 1 / 2^s of its size (e.g. layer1, layer2, layer3, layer3@scale1).
  std::vector<std::string> layers = {"layer2", "layer3"};
  Index pyramid_levels = 0;
  /// Each feature vector replaced by the mean of its neighbourhood x neighbourhood window on its
  /// level's map (docs/algorithm.md §1.2.1); 1: the backbone's features as they are.
  Index neighbourhood = 1;
  Index image_size = 256;  ///< network input side (docs/algorithm.md §1.1 uses 1024)
  /// How an image reaches image_size: "stretch" resizes both sides (aspect ignored,
  /// industrial-mini's BASELINES.md protocol); "shorter_side_crop" resizes the shorter side and
  /// centre-crops (torchvision Resize(int) + CenterCrop, HGAD's protocol, docs/algorithm.md §1.1).
  std::string resize_mode = "stretch";
  Index mask_size = 256;  ///< side of ground-truth masks and anomaly maps (docs/algorithm.md §1.1)

  friend bool operator==(const FeatureSettings& a, const FeatureSettings& b) {
    return a.backbone == b.backbone && a.layers == b.layers &&
           a.pyramid_levels == b.pyramid_levels && a.neighbourhood == b.neighbourhood &&
           a.image_size == b.image_size && a.resize_mode == b.resize_mode &&
           a.mask_size == b.mask_size;
  }
  friend bool operator!=(const FeatureSettings& a, const FeatureSettings& b) { return !(a == b); }
};

/// The values FeatureSettings::resize_mode may take.
inline constexpr const char* resize_mode_names[] = {"stretch", "shorter_side_crop"};

/// What the calibrated maps are measured against (ModelConfig::calibration_baseline).
enum class CalibrationBaseline {
  none,      ///< the raw maps, normalised as docs/algorithm.md §5 step 4 with frozen constants
  position,  ///< each raw map minus its per-position mean over the calibration images first
  /// each raw map minus its per-position mean, divided by its per-position standard deviation
  /// over the calibration images
  position_std,
};

/// The spelling of each calibration baseline in text (a config's `calibration_baseline` key).
inline constexpr detail::NamedValue<CalibrationBaseline> calibration_baseline_names[] = {
    {"none", CalibrationBaseline::none},
    {"position", CalibrationBaseline::position},
    {"position_std", CalibrationBaseline::position_std}};

/// How each level's map enters the §5.4 sum of the anomaly maps (ModelConfig::map_scale).
enum class MapScale {
  exp,  ///< the paper's: exp(X_l - max X_l), a likelihood relative to the largest
  log,  ///< X_l - max X_l: a log-likelihood, which does not underflow to 0 far below the largest
};

/// The spelling of each map scale in text (a config's `map_scale` key).
inline constexpr detail::NamedValue<MapScale> map_scale_names[] = {{"exp", MapScale::exp},
                                                                   {"log", MapScale::log}};

/// The largest σ of the anomaly maps' blurs (ModelConfig::map_sigma, pixel_map_sigma), in pixels.
/// The kernel has 8σ + 1 taps, and σ = 1000 already blurs a 4096-pixel map to nearly its mean, so a
/// larger value is a mistake, refused before the kernel is allocated.
inline constexpr double max_map_sigma = 1000;
/// The largest weight of a level in the anomaly maps (ModelConfig::level_weights): weights only
/// weigh the levels against each other, and a bound keeps a mistyped one from swamping the sums.
inline constexpr double max_level_weight = 1e6;

/// The largest σ of the training noise (ModelConfig::feature_noise): with init = whiten the
/// features have unit variance in every direction, and noise a thousand times larger leaves
/// nothing of them to learn, so a larger value is a mistake (and a bound keeps infinity out).
inline constexpr double max_feature_noise = 1000;

/// How fit() starts a model (ModelConfig::init).
enum class ModelInit {
  identity,  ///< the paper's: raw features into the flow, the centres of docs/algorithm.md §3.1
  whiten,    ///< data-dependent: a Ledoit–Wolf whitening in front of each flow, couplings that start
             ///< at the identity, and centres at the class statistics (docs/algorithm.md §2.5, §3.1.1)
};

/// The spelling of each ModelInit in text (a config's `init` key).
inline constexpr detail::NamedValue<ModelInit> model_init_names[] = {{"identity", ModelInit::identity},
                                                                     {"whiten", ModelInit::whiten}};

/// The covariance of the prior's components (ModelConfig::class_covariance).
enum class ClassCovariance {
  unit,  ///< the paper's: every component N(m, I)
  class_,  ///< each class its own: N(m, Σ_y), Σ_y the Ledoit–Wolf covariance of the class's latents
           ///< at the start, fixed (docs/algorithm.md §3.1.2); needs init = whiten
  intra  ///< the intra-class components N(m_{y,k}, Σ_y) only; the class level (L_g, L_mi, L_e,
         ///< the class posterior and its entropy) keeps the paper's N(μ_y, I) (§3.1.2)
};

/// Whether the prior's components carry class covariances (class_covariance = class or intra).
inline bool has_class_covariance(ClassCovariance c) { return c != ClassCovariance::unit; }

/// The spelling of each ClassCovariance in text (a config's `class_covariance` key).
inline constexpr detail::NamedValue<ClassCovariance> class_covariance_names[] = {
    {"unit", ClassCovariance::unit},
    {"class", ClassCovariance::class_},
    {"intra", ClassCovariance::intra}};

/// What the whitening of init = whiten subtracts (ModelConfig::whiten_mean).
enum class WhitenMean {
  shared,   ///< one mean of all the level's vectors (docs/algorithm.md §2.5)
  position  ///< a mean per feature-map position, over the training images (§2.5): at step 0 the
            ///< model knows where in the image a vector sits
};

/// The spelling of each WhitenMean in text (a config's `whiten_mean` key).
inline constexpr detail::NamedValue<WhitenMean> whiten_mean_names[] = {
    {"shared", WhitenMean::shared}, {"position", WhitenMean::position}};

/// Several class folders trained under one label: one class of the model (one centre μ, one
/// intra-class mixture, one set of calibration constants) standing for all of them. HGAD pushes
/// the centres of its classes apart (L_mi, docs/algorithm.md §3.3); classes whose normal images look
/// alike position by position (three similar circuit boards, say) then cost the flow the density
/// it should model, and one label for them avoids that. The method takes its classes as given;
/// which folders to group is the user's choice. Tested folders are scored, and reported, one by
/// one with their group's class.
struct ClassGroup {
  std::string name;                  ///< the model's class (an entry of class_names)
  std::vector<std::string> members;  ///< the class folders it stands for

  friend bool operator==(const ClassGroup& a, const ClassGroup& b) {
    return a.name == b.name && a.members == b.members;
  }
};

namespace detail {

/// The start of a class group's key in the text form: `group.NAME`.
inline constexpr char group_key_prefix[] = "group.";
inline std::string group_key(const std::string& group_name) {
  return group_key_prefix + group_name;
}

/// A value that breaks a config key's rule: "config: KEY = VALUE: WHY".
[[noreturn]] inline void config_error(const std::string& key, const std::string& value,
                                      const std::string& why) {
  throw Error("config: " + key + " = " + value + ": " + why);
}

}  // namespace detail

/// `group.NAME = a, b, ...`: a group's line in the text form of a config.
inline std::string to_config_line(const ClassGroup& g) {
  const std::string line = detail::group_key(g.name) + " =";
  return g.members.empty() ? line : line + " " + detail::join(g.members);
}

/// Every setting of an HgadModel. A default-constructed config has HGAD's hyper-parameters, the
/// data-dependent start (init = whiten) in place of the paper's, and no levels or classes; fill
/// those from the data before constructing a model.
struct ModelConfig {
  Objective objective = Objective::hgad;

  // Data: one flow and one prior per level; class names in class-index order.
  std::vector<LevelSpec> levels;
  std::vector<std::string> class_names;
  /// Classes that stand for several folders (`group.NAME = folder, folder, ...` in the text form).
  std::vector<ClassGroup> class_groups;

  /// How fit() initialises an untrained model: `whiten` (the default; docs/algorithm.md §2.5: at
  /// step 0 the NF model is the shared Gaussian of the training features and the HGAD model one
  /// Gaussian per class) or `identity` (the paper's start, for study and the golden files).
  ModelInit init = ModelInit::whiten;
  /// With init = whiten: where the intra-class centres start (docs/algorithm.md §3.1.1).
  IntraCenterInit intra_center_init = IntraCenterInit::kmeans;
  /// The covariance of the prior's components: `unit` (the paper's) or `class` (each class the
  /// covariance of its training latents at the start; docs/algorithm.md §3.1.2; needs init = whiten).
  ClassCovariance class_covariance = ClassCovariance::unit;
  /// With init = whiten: one mean for the level (`shared`) or one per position (`position`).
  WhitenMean whiten_mean = WhitenMean::shared;

  // Flow (docs/algorithm.md §2).
  Index pos_dim = 256;  ///< P, the positional-encoding dimension (0: unconditional flows)
  Index n_blocks = 12;  ///< AllInOneBlocks per flow
  double clamp = 1.9;   ///< affine_clamping α
  SoftClamp clamp_variant = SoftClamp::pinned;  ///< FrEIA soft clamp (docs/algorithm.md §2.3)

  // Prior and objective (docs/algorithm.md §3).
  Index n_centers = 10;           ///< M, intra-class centres per class including sg(μ_y)
  double lambda1 = 1.0;           ///< weight of L_g
  double lambda2 = 100.0;         ///< weight of L_mi
  double label_smoothing = 0.02;  ///< ε of the smoothed one-hot

  // Schedule and optimiser (docs/algorithm.md §4).
  Index meta_epochs = 25;
  Index sub_epochs = 8;
  Index warmup_meta_epochs = 2;
  Index stage1_meta_epochs = 2;
  double lr = 2e-4;
  double lr_decay_rate = 0.1;  ///< cosine floor η_min = lr · lr_decay_rate³
  double beta1 = 0.95;
  double beta2 = 0.99;
  double adam_eps = 1e-8;
  double weight_decay = 1e-4;  ///< coupled L2 on the flow parameters only
  Index batch_size = 8;        ///< images per optimiser step
  /// The share of each feature map's positions a training step uses (docs/algorithm.md §4.1; not
  /// in the paper, whose steps use every position; CFLOW-AD trains on random subsets of
  /// positions): each step draws round(f · H · W) of a level's positions, the same for the
  /// batch's images, and trains on those rows alone. One value for every level, or one per level
  /// (level_position_fraction reads it). {1} (the default): every position. Each in (0, 1].
  std::vector<double> position_fraction{1.0};
  /// σ of the noise on the flow's input in training (docs/algorithm.md §4.2; not in the paper):
  /// every training step adds N(0, σ² I) to each of its rows after the whitening, so that with
  /// init = whiten σ is in units of the whitened features (every direction of unit variance), with
  /// init = identity in those of the features. The flow then fits the training density smoothed by
  /// that Gaussian rather than the training vectors themselves. 0 (the default): no noise. Scoring,
  /// calibration and the held-out figures never add it. Finite and >= 0.
  double feature_noise = 0;
  std::uint64_t seed = 0;

  /// Training images per class used to compute the calibrated-mode normalisation constants after
  /// training (0: all of them), spread evenly over the class's images in the data set's order, so
  /// that each folder of a class group and each part of a sorted folder counts. Not in the paper
  /// (docs/algorithm.md §9.2 asks for a replacement of the transductive normalisation); a subset
  /// is a cheaper estimate.
  Index calibration_images = 0;

  /// Calibrated and label-free modes: subtract from each raw map, position by position, its mean
  /// over the class's calibration images before the §5 normalisation (`position`), or not (`none`,
  /// the paper's maps). Not in the paper: the flow's likelihood carries a positional bias (lowest
  /// at the border of the feature map, where the backbone's zero padding acts, in normal and
  /// defective images alike), and the image score, a maximum over positions, then often measures
  /// that bias instead of the defect; the per-position mean of normal images removes it, as a
  /// per-position Gaussian (PaDiM) does by construction. `position_std` also divides by each
  /// position's standard deviation over the calibration images, so that the positions where
  /// normal images vary most (the border, or the parts in which the folders of a class group
  /// differ) weigh less in that maximum (docs/algorithm.md §9.2). The transductive mode never uses
  /// either.
  CalibrationBaseline calibration_baseline = CalibrationBaseline::none;

  /// How each level's map enters the anomaly map (docs/algorithm.md §5.4, §9.2): `exp`, the paper's
  /// exp(X_l - max X_l), or `log`, X_l - max X_l. Under exp all positions far below the largest
  /// value of their level count as nearly the same largest anomaly (exp(-20) and exp(-40) are both
  /// about 0 beside 1), so the map cannot rank them; `log` keeps the order of every position.
  /// Applies to both maps, in every mode.
  MapScale map_scale = MapScale::exp;

  /// The weight of each level in the anomaly maps (docs/algorithm.md §5.4, §9.2): each level's
  /// term of the sum S is multiplied by its weight, in both maps and every mode. Empty (the paper's
  /// maps) weighs every level 1; else one finite weight >= 0 per level, not all 0. With map_scale =
  /// log the levels' per-dimension log-likelihoods are summed, so weights proportional to the
  /// levels' dimensions make the likelihood map the joint log-density of the levels' vectors. It
  /// enters the calibration constants and the thresholds, not the training.
  std::vector<double> level_weights;

  /// σ of the Gaussian blur of each anomaly map (docs/algorithm.md §5.4, §9.2), in pixels of the
  /// mask_size map: 4, the paper's (its maps are 256 pixels a side), or 0 for no blur. A wider blur
  /// spreads a defect's peak over its neighbourhood, which helps to cover large defects at the
  /// price of blurring small ones. Applies to both maps, in every mode. It enters neither the
  /// training nor the calibration constants, only the decision thresholds (quantiles of the
  /// calibration images' scores, which are read off blurred maps). At most max_map_sigma.
  double map_sigma = 4.0;

  /// σ of a further Gaussian blur of the map an image is given per pixel (docs/algorithm.md §9.2;
  /// not in the paper), in pixels of the mask_size map: the image score is read off the anomaly
  /// map first (map_sigma, image_score_fraction), then the map is blurred again by this σ for the
  /// pixel metrics and the heat maps. 0 (the default): the map the score is read off. It enters
  /// neither the training, nor the calibration constants, nor the decision thresholds. At most
  /// max_map_sigma.
  double pixel_map_sigma = 0;

  /// The image score (docs/algorithm.md §5.6, §9.2): 0, the maximum of the image's anomaly map
  /// (the paper's), or f in (0, 1], the mean of the map's highest f of pixels (image_score). Applies
  /// in every mode, and to the decision thresholds (quantiles of the training images' scores).
  double image_score_fraction = 0;

  /// The decision threshold of each class: this quantile of the image scores of its calibration
  /// images (its normal training images); an image scoring above it is anomalous. Not in the paper,
  /// which reports threshold-free metrics only. 0.99 lets about 1 normal image in 100 be flagged:
  /// the normal images are scored by a model fit on them, so their scores run low, and a lower
  /// quantile flags many unseen normals; 1 (the largest training score) flags fewer of them and
  /// misses more defects. With fewer than 100 calibration images the quantile interpolates between
  /// the two largest scores.
  double threshold_quantile = 0.99;

  FeatureSettings features;

  Index n_levels() const { return static_cast<Index>(levels.size()); }
  Index n_classes() const { return static_cast<Index>(class_names.size()); }
  /// Passes over the training data: meta_epochs · sub_epochs.
  Index total_epochs() const { return meta_epochs * sub_epochs; }
  /// The share of level `level`'s positions a training step uses: position_fraction's one value,
  /// or its value for that level.
  ///   requires: a valid configuration, and level in [0, n_levels()) when it has one per level.
  double level_position_fraction(Index level) const {
    if (position_fraction.size() == 1) return position_fraction.front();
    check(level >= 0 && level < static_cast<Index>(position_fraction.size()),
          "ModelConfig::level_position_fraction: level ", level, " of ", position_fraction.size(),
          " position_fraction values");
    return position_fraction[static_cast<std::size_t>(level)];
  }
  /// The number of calibration images of a class of n training images: calibration_images, or n
  /// when there are no more (or calibration_images is 0).
  Index calibration_count(Index n) const {
    return calibration_images == 0 || n <= calibration_images ? n : calibration_images;
  }

  /// The class of the model that scores folder (or class) `name`: its group's class when a group
  /// lists it, else the class of that name; -1 when the model has neither.
  Index class_of(const std::string& name) const {
    const auto it = std::find(class_names.begin(), class_names.end(), label_of(name));
    return it == class_names.end() ? -1 : static_cast<Index>(it - class_names.begin());
  }

  /// The label folder `name` trains under: the name of the group that lists it, else its own.
  std::string label_of(const std::string& name) const {
    for (const ClassGroup& g : class_groups)
      if (std::find(g.members.begin(), g.members.end(), name) != g.members.end()) return g.name;
    return name;
  }

  /// The folders class `name` stands for: a group's members, else the class itself.
  std::vector<std::string> folders_of(const std::string& name) const {
    for (const ClassGroup& g : class_groups)
      if (g.name == name) return g.members;
    return {name};
  }

  /// The folders the classes stand for, in class order: a group's members in its place.
  std::vector<std::string> folder_names() const {
    std::vector<std::string> out;
    for (const std::string& c : class_names) {
      const std::vector<std::string> folders = folders_of(c);
      out.insert(out.end(), folders.begin(), folders.end());
    }
    return out;
  }

  /// Sets class_names from the folders of a training set: each folder's group's name, or the
  /// folder's own, in the order of first appearance. Every member of every group must be among
  /// `folders`; an absent one throws hgad::Error naming the group and the folder.
  void set_classes_from_folders(const std::vector<std::string>& folders) {
    for (const ClassGroup& g : class_groups)
      for (const std::string& m : g.members)
        if (std::find(folders.begin(), folders.end(), m) == folders.end())
          detail::config_error(detail::group_key(g.name), m,
                               "no class folder of that name is being trained on");
    for (const ClassGroup& g : class_groups)
      check(std::find(folders.begin(), folders.end(), g.name) == folders.end(),
            "config: ", detail::group_key(g.name),
            ": a class folder has the group's name; list it in the group or rename one");
    class_names.clear();
    for (const std::string& f : folders) {
      const std::string name = label_of(f);
      if (std::find(class_names.begin(), class_names.end(), name) == class_names.end())
        class_names.push_back(name);
    }
  }

  /// Checks every value; throws hgad::Error naming the key and the offending value.
  /// `require_data` also demands at least one level and one class (a config a model can be built
  /// from); without it only the hyper-parameters are checked (a partial user config file).
  void validate(bool require_data = true) const;

  /// The text form, every key in the order of the key table; doubles in their shortest exact
  /// representation, so from_text(to_text()) == *this.
  std::string to_text() const;

  /// Parses `text` over the defaults (or over `base`). `source` names the text in errors:
  /// "config 'my.cfg' line 7: key 'lr': 'abc' is not a number". Unknown keys and repeated keys are
  /// errors. The result is not validated; call validate().
  static ModelConfig from_text(const std::string& text, const std::string& source = "config");
  static ModelConfig from_text(const std::string& text, const std::string& source,
                               ModelConfig base);

  friend bool operator==(const ModelConfig& a, const ModelConfig& b) {
    return a.to_text() == b.to_text();
  }
  friend bool operator!=(const ModelConfig& a, const ModelConfig& b) { return !(a == b); }
};

/// "hgad" or "nf"; anything else throws hgad::Error.
inline Objective parse_objective(const std::string& text) {
  Objective objective{};
  if (detail::value_named(objective_names, text, objective)) return objective;
  throw Error("unknown objective '" + text + "' (expected " +
              detail::alternatives(objective_names) + ")");
}

namespace detail {

/// What a config key demands of its value beyond its type, and the words of the error that says so:
/// "config: KEY = VALUE: WHY".
template <class T>
struct KeyRule {
  bool (*allows)(const T&);  ///< written so that NaN fails it
  std::string why;
};

/// What a key that lists names demands: each name's rule, and the words for a name given twice
/// (nullptr: a name may repeat).
struct NameListRule {
  KeyRule<std::string> name;
  const char* repeated;
};

/// The keys of the text form, in the order to_text writes them, each with the field it sets and
/// the values it allows: the one table that validate, to_text and from_text walk. Calls
/// `key(name, field, rule)` for every key, `field` being a member of `c` (a ModelConfig, const or
/// not) and `rule` a KeyRule, a NameListRule, the spellings of an enumeration or of a string's
/// choices; a key whose every value is allowed (seed), or whose rules relate it to other keys
/// (the class groups), comes without one. A name that ends in '.' is a prefix: each class group is
/// a key `group.NAME`. Relations between keys (K <= 2 D; the levels the feature settings give) are
/// no single key's rule: validate checks them after the walk.
template <class Config, class Key>
void for_each_config_key(Config& c, Key&& key) {
  const KeyRule<Index> at_least_1{[](const Index& n) { return n >= 1; }, "must be at least 1"};
  const KeyRule<Index> at_least_0{[](const Index& n) { return n >= 0; }, "must be >= 0"};
  const KeyRule<double> positive{[](const double& x) { return x > 0; }, "must be positive"};
  const KeyRule<double> non_negative{[](const double& x) { return x >= 0; }, "must be >= 0"};
  const KeyRule<double> in_0_1{[](const double& x) { return x >= 0 && x < 1; },
                               "must be in [0, 1)"};
  const KeyRule<double> share{[](const double& x) { return x > 0 && x <= 1; },
                              "must be in (0, 1]"};
  const KeyRule<double> blur_sigma{[](const double& x) { return x >= 0 && x <= max_map_sigma; },
                                   "must be in [0, " + format_double(max_map_sigma) + "]"};

  key("objective", c.objective, objective_names);
  key("levels", c.levels,
      KeyRule<LevelSpec>{
          [](const LevelSpec& s) { return s.dim >= 2 && s.height >= 1 && s.width >= 1; },
          "needs dim >= 2 (a coupling splits it in two) and a map of at least 1x1"});
  key("classes", c.class_names,
      NameListRule{{is_plain_name, std::string("a class name ") + plain_name_requirement},
                   "the class appears twice"});
  key(group_key_prefix, c.class_groups);
  key("init", c.init, model_init_names);
  key("intra_center_init", c.intra_center_init, intra_center_init_names);
  key("class_covariance", c.class_covariance, class_covariance_names);
  key("whiten_mean", c.whiten_mean, whiten_mean_names);
  key("pos_dim", c.pos_dim,
      KeyRule<Index>{[](const Index& p) { return p >= 0 && p % 4 == 0; },
                     "must be 0 (no positional encoding) or a positive multiple of 4"});
  key("n_blocks", c.n_blocks, at_least_1);
  key("clamp", c.clamp, positive);
  key("clamp_variant", c.clamp_variant, soft_clamp_names);
  key("n_centers", c.n_centers, at_least_1);
  key("lambda1", c.lambda1, non_negative);
  key("lambda2", c.lambda2, non_negative);
  key("label_smoothing", c.label_smoothing, in_0_1);
  key("meta_epochs", c.meta_epochs, at_least_1);
  key("sub_epochs", c.sub_epochs, at_least_1);
  key("warmup_meta_epochs", c.warmup_meta_epochs, at_least_0);
  key("stage1_meta_epochs", c.stage1_meta_epochs, at_least_0);
  key("lr", c.lr, positive);
  key("lr_decay_rate", c.lr_decay_rate, share);
  key("beta1", c.beta1, in_0_1);
  key("beta2", c.beta2, in_0_1);
  key("adam_eps", c.adam_eps, positive);
  key("weight_decay", c.weight_decay, non_negative);
  key("batch_size", c.batch_size, at_least_1);
  key("position_fraction", c.position_fraction, share);  // each value
  key("feature_noise", c.feature_noise,
      KeyRule<double>{[](const double& x) { return x >= 0 && x <= max_feature_noise; },
                      "must be in [0, " + format_double(max_feature_noise) + "]"});
  key("seed", c.seed);
  key("calibration_images", c.calibration_images,
      KeyRule<Index>{[](const Index& n) { return n >= 0; }, "must be >= 0 (0: all)"});
  key("calibration_baseline", c.calibration_baseline, calibration_baseline_names);
  key("map_scale", c.map_scale, map_scale_names);
  key("level_weights", c.level_weights,
      KeyRule<double>{[](const double& w) { return w >= 0 && w <= max_level_weight; },
                      "each weight must be in [0, " + format_double(max_level_weight) + "]"});
  key("map_sigma", c.map_sigma, blur_sigma);
  key("pixel_map_sigma", c.pixel_map_sigma, blur_sigma);
  key("image_score_fraction", c.image_score_fraction,
      KeyRule<double>{[](const double& x) { return x >= 0 && x <= 1; }, "must be in [0, 1]"});
  key("threshold_quantile", c.threshold_quantile,
      KeyRule<double>{[](const double& q) { return q > 0 && q <= 1; }, "must be in (0, 1]"});
  key("backbone", c.features.backbone,
      KeyRule<std::string>{is_plain_name,
                           "must be a name such as resnet18, or none for precomputed features"});
  key("layers", c.features.layers,
      NameListRule{{is_layer_name, "a layer name must be plain, or plain@scale and one or two "
                                   "digits"},
                    nullptr});
  key("pyramid_levels", c.features.pyramid_levels, at_least_0);
  key("neighbourhood", c.features.neighbourhood,
      KeyRule<Index>{[](const Index& k) { return k >= 1 && k % 2 == 1; },
                     "must be odd and at least 1 (1: no averaging)"});
  key("image_size", c.features.image_size, at_least_1);
  key("resize_mode", c.features.resize_mode, resize_mode_names);
  key("mask_size", c.features.mask_size, at_least_1);
}

/// One line on what each key of for_each_config_key sets, in the table's order: the words of
/// `hgad info --keys` and of the README's key list. A test checks that it names exactly the
/// table's keys.
struct KeyMeaning {
  const char* name;
  const char* meaning;
};
inline constexpr KeyMeaning config_key_meanings[] = {
    {"objective", "hgad (hierarchical Gaussian-mixture prior) or nf (single-Gaussian baseline)"},
    {"levels", "feature levels, dim x height x width each (filled in from the backbone)"},
    {"classes", "the classes, in index order (filled in from the class folders)"},
    {"group.", "group.NAME = folder, folder, ...: several class folders trained as one class"},
    {"init",
     "whiten (default: Ledoit-Wolf whitening, centres at the class statistics) or "
     "identity (the paper's start)"},
    {"intra_center_init", "with init = whiten: kmeans or noise (the class mean plus noise)"},
    {"class_covariance",
     "unit (the paper's), class: each class's components carry its covariance, or intra: its "
     "intra-class components only (init = whiten)"},
    {"whiten_mean", "with init = whiten: shared (one mean) or position (a mean per map position)"},
    {"pos_dim", "P, the positional-encoding dimension of the flows (0: none)"},
    {"n_blocks", "coupling blocks per flow"},
    {"clamp", "affine clamping alpha of the coupling blocks"},
    {"clamp_variant", "the soft-clamp formula of the coupling blocks"},
    {"n_centers", "M, intra-class mixture centres per class"},
    {"lambda1", "weight of the inter-class mixture loss L_g"},
    {"lambda2", "weight of the mutual-information loss L_mi"},
    {"label_smoothing", "smoothing of the one-hot class labels"},
    {"meta_epochs", "meta-epochs of training (passes = meta_epochs x sub_epochs)"},
    {"sub_epochs", "passes over the training data per meta-epoch"},
    {"warmup_meta_epochs", "meta-epochs of learning-rate warm-up"},
    {"stage1_meta_epochs", "meta-epochs before the intra-class mixture is trained"},
    {"lr", "Adam learning rate"},
    {"lr_decay_rate", "cosine schedule floor: lr x lr_decay_rate^3"},
    {"beta1", "Adam beta1"},
    {"beta2", "Adam beta2"},
    {"adam_eps", "Adam epsilon"},
    {"weight_decay", "L2 weight decay of the flow parameters"},
    {"batch_size", "images per optimiser step (memory grows with it)"},
    {"position_fraction",
     "share of each feature map's positions a training step draws and uses, one value or one per "
     "level (1: all, the paper's)"},
    {"feature_noise",
     "sigma of the Gaussian noise added to the flow's input in training, after the whitening (0: "
     "none, the paper's)"},
    {"seed", "random seed of the initialisation and the batch order"},
    {"calibration_images",
     "training images per class, spread over its images, used to calibrate the scores (0: all)"},
    {"calibration_baseline",
     "none; position: subtract each position's mean normal score; position_std: and divide by its "
     "standard deviation"},
    {"map_scale", "exp (the paper's maps) or log: the levels' log-likelihoods summed, no exp"},
    {"level_weights",
     "the weight of each level in the anomaly maps, one per level (empty: all 1, the paper's)"},
    {"map_sigma", "sigma in pixels of the anomaly maps' Gaussian blur (the paper's 4; 0: none)"},
    {"pixel_map_sigma",
     "sigma in pixels of a further blur of the pixel maps, after the image score (0: none)"},
    {"image_score_fraction",
     "0: an image's score is its map's maximum (the paper's); f: the mean of its highest f of pixels"},
    {"threshold_quantile",
     "decision threshold: this quantile of the training images' scores, per class"},
    {"backbone", "feature network: resnet18, resnet34, resnet50, wide_resnet50_2 (or none)"},
    {"layers", "backbone stages whose features are modelled, one level each (layer3@scale1: "
               "layer3 of the image at half its size)"},
    {"pyramid_levels", "0: one image, one level per layer; n: one layer on n image scales"},
    {"neighbourhood", "k: each feature vector averaged over its k x k window (odd; 1: none)"},
    {"image_size", "network input side in pixels"},
    {"resize_mode", "stretch (both sides) or shorter_side_crop (resize, centre-crop)"},
    {"mask_size", "side of the anomaly maps and ground-truth masks"},
};

/// The meaning of key `name` (a prefix such as "group." for its keys); "" for an unknown key.
inline const char* config_key_meaning(const std::string& name) {
  for (const KeyMeaning& k : config_key_meanings)
    if (name == k.name) return k.meaning;
  return "";
}

/// Whether `key`, read from a line of text, is the table's key `name` (or, for a prefix, one of
/// its keys).
inline bool key_matches(const char* name, const std::string& key) {
  const std::size_t n = std::strlen(name);
  return n > 0 && name[n - 1] == '.' ? key.compare(0, n, name) == 0 : key == name;
}

// How each kind of field is written, read and checked. read_value returns what the text should
// have been ("an integer"), or nothing when it was read; `key` is the whole key read, which for a
// class group carries the group's name.

inline std::string value_text(Index value) { return std::to_string(value); }
inline std::string value_text(std::uint64_t value) { return std::to_string(value); }
inline std::string value_text(double value) { return format_double(value); }
inline std::string value_text(const std::string& value) { return value; }
inline std::string value_text(const std::vector<std::string>& names) { return join(names); }
inline std::string value_text(const std::vector<double>& values) {
  std::vector<std::string> items;
  for (double v : values) items.push_back(format_double(v));
  return join(items);
}
inline std::string value_text(const LevelSpec& s) {
  return std::to_string(s.dim) + "x" + std::to_string(s.height) + "x" + std::to_string(s.width);
}
inline std::string value_text(const std::vector<LevelSpec>& levels) {
  std::vector<std::string> items;
  for (const LevelSpec& s : levels) items.push_back(value_text(s));
  return join(items);
}

template <class T, class... Rule>
void write_value(std::ostream& out, const char* name, const T& value, const Rule&...) {
  out << name << " = " << value_text(value) << "\n";
}
template <class Enum, std::size_t N>
void write_value(std::ostream& out, const char* name, const Enum& value,
                 const NamedValue<Enum> (&names)[N]) {
  out << name << " = " << name_of(names, value) << "\n";
}
inline void write_value(std::ostream& out, const char*, const std::vector<ClassGroup>& groups) {
  for (const ClassGroup& g : groups) out << to_config_line(g) << "\n";
}

inline std::string read_value(const std::string&, const std::string& text, Index& value,
                              const KeyRule<Index>&) {
  return parse_number(text, value) ? "" : "an integer";
}
inline std::string read_value(const std::string&, const std::string& text, double& value,
                              const KeyRule<double>&) {
  return parse_number(text, value) ? "" : "a finite number";
}
inline std::string read_value(const std::string&, const std::string& text, std::uint64_t& value) {
  return parse_number(text, value) ? "" : "a non-negative integer";
}
inline std::string read_value(const std::string&, const std::string& text, std::string& value,
                              const KeyRule<std::string>&) {
  value = text;
  return "";
}
template <std::size_t N>
std::string read_value(const std::string&, const std::string& text, std::string& value,
                       const char* const (&choices)[N]) {
  if (!is_one_of(choices, text)) return alternatives(choices);
  value = text;
  return "";
}
template <class Enum, std::size_t N>
std::string read_value(const std::string&, const std::string& text, Enum& value,
                       const NamedValue<Enum> (&names)[N]) {
  return value_named(names, text, value) ? "" : alternatives(names);
}
inline std::string read_value(const std::string&, const std::string& text,
                              std::vector<double>& values, const KeyRule<double>&) {
  std::vector<double> read;
  for (const std::string& item : split_list(text)) {
    double v = 0;
    if (!parse_number(item, v)) return "a list of finite numbers such as 1, 2, 4";
    read.push_back(v);
  }
  values = std::move(read);
  return "";
}
inline std::string read_value(const std::string&, const std::string& text,
                              std::vector<std::string>& names, const NameListRule&) {
  names = split_list(text);
  return "";
}
inline std::string read_value(const std::string&, const std::string& text,
                              std::vector<LevelSpec>& levels, const KeyRule<LevelSpec>&) {
  std::vector<LevelSpec> read;
  for (const std::string& item : split_list(text)) {
    const auto x1 = item.find('x');
    const auto x2 = x1 == std::string::npos ? std::string::npos : item.find('x', x1 + 1);
    LevelSpec s;
    if (x2 == std::string::npos || !parse_number(item.substr(0, x1), s.dim) ||
        !parse_number(item.substr(x1 + 1, x2 - x1 - 1), s.height) ||
        !parse_number(item.substr(x2 + 1), s.width))
      return "a list of dim x height x width such as 128x32x32, 256x16x16";
    read.push_back(s);
  }
  levels = std::move(read);
  return "";
}
inline std::string read_value(const std::string& key, const std::string& text,
                              std::vector<ClassGroup>& groups) {
  groups.push_back(ClassGroup{key.substr(std::strlen(group_key_prefix)), split_list(text)});
  return "";
}

template <class T>
void check_value(const ModelConfig&, const char* name, const T& value, const KeyRule<T>& rule) {
  if (!rule.allows(value)) config_error(name, value_text(value), rule.why);
}
/// An enumeration holds only values that have names.
template <class Enum, std::size_t N>
void check_value(const ModelConfig&, const char*, const Enum&, const NamedValue<Enum> (&)[N]) {}
template <std::size_t N>
void check_value(const ModelConfig&, const char* name, const std::string& value,
                 const char* const (&choices)[N]) {
  if (!is_one_of(choices, value)) config_error(name, value, "must be " + alternatives(choices));
}
inline void check_value(const ModelConfig&, const char*, const std::uint64_t&) {}
inline void check_value(const ModelConfig&, const char* name, const std::vector<LevelSpec>& levels,
                        const KeyRule<LevelSpec>& rule) {
  for (std::size_t l = 0; l < levels.size(); ++l)
    if (!rule.allows(levels[l]))
      config_error(name, value_text(levels[l]), "level " + std::to_string(l) + " " + rule.why);
}
inline void check_value(const ModelConfig&, const char* name, const std::vector<double>& values,
                        const KeyRule<double>& rule) {
  for (double v : values)
    if (!rule.allows(v)) config_error(name, value_text(values), rule.why);
}
inline void check_value(const ModelConfig&, const char* name, const std::vector<std::string>& names,
                        const NameListRule& rule) {
  for (std::size_t a = 0; a < names.size(); ++a) {
    if (!rule.name.allows(names[a])) config_error(name, names[a], rule.name.why);
    if (rule.repeated)
      for (std::size_t b = 0; b < a; ++b)
        if (names[a] == names[b]) config_error(name, names[a], rule.repeated);
  }
}
/// A group is a class of the model (when the classes are known) defined once, and lists class
/// folders that are neither classes, nor groups, nor listed anywhere else.
inline void check_value(const ModelConfig& c, const char*, const std::vector<ClassGroup>& groups) {
  const std::vector<std::string>& classes = c.class_names;
  for (std::size_t a = 0; a < groups.size(); ++a) {
    const ClassGroup& g = groups[a];
    const std::string key = group_key(g.name);
    if (!is_plain_name(g.name))
      config_error(key, "", std::string("a group name ") + plain_name_requirement);
    if (g.members.empty()) config_error(key, "", "a group needs at least one class folder");
    if (!classes.empty() && std::find(classes.begin(), classes.end(), g.name) == classes.end())
      config_error(key, "", "the group is not among the classes");
    for (std::size_t b = 0; b < a; ++b)
      if (groups[b].name == g.name) config_error(key, "", "the group is defined twice");
    for (std::size_t i = 0; i < g.members.size(); ++i) {
      const std::string& m = g.members[i];
      if (!is_plain_name(m))
        config_error(key, m, std::string("a class folder name ") + plain_name_requirement);
      if (std::find(classes.begin(), classes.end(), m) != classes.end())
        config_error(key, m, "the folder is a class of its own as well");
      for (std::size_t b = 0; b <= a; ++b) {
        const auto& other = groups[b].members;
        const auto end = b == a ? other.begin() + static_cast<std::ptrdiff_t>(i) : other.end();
        if (std::find(other.begin(), end, m) != end)
          config_error(key, m,
                       "the folder is listed twice (also in " + group_key(groups[b].name) + ")");
      }
      for (const ClassGroup& h : groups)
        if (h.name == m) config_error(key, m, "the folder has the name of a group");
    }
  }
}

}  // namespace detail

inline void ModelConfig::validate(bool require_data) const {
  if (require_data) {
    if (levels.empty()) detail::config_error("levels", "", "at least one feature level is needed");
    if (class_names.empty()) detail::config_error("classes", "", "at least one class is needed");
  }
  detail::for_each_config_key(*this,
                              [this](const char* name, const auto& field, const auto&... rule) {
                                detail::check_value(*this, name, field, rule...);
                              });

  if (objective == Objective::hgad && !class_names.empty())
    for (const LevelSpec& s : levels)
      if (s.dim <= (n_classes() - 1) / 2)  // K > 2 D, without forming 2 D (D may be huge)
        detail::config_error(
            "classes", std::to_string(n_classes()) + " classes",
            "the class-centre initialisation needs K <= 2 D, and a level has D = " +
                std::to_string(s.dim));
  if (!level_weights.empty()) {
    if (!levels.empty() && level_weights.size() != levels.size())
      detail::config_error("level_weights", detail::value_text(level_weights),
                           "needs as many weights as levels (" +
                               std::to_string(levels.size()) + ")");
    if (std::all_of(level_weights.begin(), level_weights.end(), [](double w) { return w == 0; }))
      detail::config_error("level_weights", detail::value_text(level_weights),
                           "at least one level must weigh more than 0");
  }
  if (position_fraction.empty() || (position_fraction.size() > 1 && !levels.empty() &&
                                    position_fraction.size() != levels.size()))
    detail::config_error("position_fraction", detail::value_text(position_fraction),
                         "needs one value, or one per level" +
                             (levels.empty() ? "" : " (" + std::to_string(levels.size()) + ")"));
  if (has_class_covariance(class_covariance) && init != ModelInit::whiten)
    detail::config_error("class_covariance",
                         detail::name_of(class_covariance_names, class_covariance),
                         "the class covariances are estimated at the data-dependent start: set "
                         "init = whiten");
  if (whiten_mean == WhitenMean::position && init != ModelInit::whiten)
    detail::config_error("whiten_mean", "position",
                         "the means are taken at the data-dependent start: set init = whiten");
  if (has_class_covariance(class_covariance) && objective != Objective::hgad)
    detail::config_error("class_covariance",
                         detail::name_of(class_covariance_names, class_covariance),
                         "the NF objective has no classes; use objective = hgad");
  const FeatureSettings& f = features;
  if (f.backbone != "none") {
    if (f.layers.empty())
      detail::config_error("layers", "", "at least one backbone layer is needed");
    if (f.pyramid_levels > 0 && f.layers.size() != 1)
      detail::config_error("layers", std::to_string(f.layers.size()) + " layers",
                           "an image pyramid uses exactly one layer");
    if (f.pyramid_levels > 0 && f.layers[0].find('@') != std::string::npos)
      detail::config_error("layers", f.layers[0],
                           "a layer at its own scale cannot stand beside pyramid_levels");
    const std::size_t expected =
        f.pyramid_levels > 0 ? static_cast<std::size_t>(f.pyramid_levels) : f.layers.size();
    if (!levels.empty() && levels.size() != expected)
      detail::config_error("levels", std::to_string(levels.size()) + " levels",
                           "the feature settings give " + std::to_string(expected) + " levels");
  } else if (f.neighbourhood != 1) {
    detail::config_error("neighbourhood", std::to_string(f.neighbourhood),
                         "the mean is taken over backbone features; precomputed features "
                         "(backbone = none) are used as given");
  }
}

inline std::string ModelConfig::to_text() const {
  std::ostringstream out;
  out << "# hgad model configuration (key = value; levels are dim x height x width)\n";
  detail::for_each_config_key(*this,
                              [&out](const char* name, const auto& field, const auto&... rule) {
                                detail::write_value(out, name, field, rule...);
                              });
  return out.str();
}

inline ModelConfig ModelConfig::from_text(const std::string& text, const std::string& source) {
  return from_text(text, source, ModelConfig{});
}

inline ModelConfig ModelConfig::from_text(const std::string& text, const std::string& source,
                                          ModelConfig base) {
  ModelConfig c = std::move(base);
  std::vector<std::string> seen;
  std::istringstream in(text);
  std::string raw;
  int line_number = 0;
  while (std::getline(in, raw)) {
    ++line_number;
    const std::string where = "config '" + source + "' line " + std::to_string(line_number);
    const auto hash = raw.find('#');
    const std::string content = detail::trim(hash == std::string::npos ? raw : raw.substr(0, hash));
    if (content.empty()) continue;
    const auto eq = content.find('=');
    check(eq != std::string::npos, where, ": expected 'key = value', got '", content, "'");
    const std::string key = detail::trim(content.substr(0, eq));
    const std::string value = detail::trim(content.substr(eq + 1));
    check(!key.empty(), where, ": missing key before '='");
    for (const std::string& k : seen) check(k != key, where, ": key '", key, "' is set twice");
    seen.push_back(key);

    bool known = false;
    detail::for_each_config_key(c, [&](const char* name, auto& field, const auto&... rule) {
      if (known || !detail::key_matches(name, key)) return;
      known = true;
      const std::string expected = detail::read_value(key, value, field, rule...);
      if (!expected.empty())
        throw Error(where + ": key '" + key + "': '" + value + "' is not " + expected);
    });
    if (!known) throw Error(where + ": unknown key '" + key + "'");
  }
  return c;
}

/// The keys that enter the scoring of a trained model and nothing before it (neither the start
/// nor the training): a trained model may change them and be calibrated again
/// (HgadModel::change_scoring, `hgad calibrate`).
inline constexpr const char* scoring_config_keys[] = {
    "calibration_images", "calibration_baseline", "map_scale",         "level_weights",
    "map_sigma",          "pixel_map_sigma",      "image_score_fraction",
    "threshold_quantile"};

/// The first key outside scoring_config_keys whose value differs between `a` and `b` (as to_text
/// writes it), or "" when they differ in scoring keys at most.
inline std::string first_training_difference(const ModelConfig& a, const ModelConfig& b) {
  auto lines = [](const ModelConfig& c) {
    std::vector<std::pair<std::string, std::string>> out;
    detail::for_each_config_key(c, [&out](const char* name, const auto& field, const auto&... rule) {
      std::ostringstream line;
      detail::write_value(line, name, field, rule...);
      out.emplace_back(name, line.str());
    });
    return out;
  };
  const auto la = lines(a), lb = lines(b);
  for (std::size_t i = 0; i < la.size(); ++i) {
    const std::string& name = la[i].first;
    if (std::find_if(std::begin(scoring_config_keys), std::end(scoring_config_keys),
                     [&](const char* k) { return name == k; }) != std::end(scoring_config_keys))
      continue;
    if (la[i].second != lb[i].second) return name == detail::group_key_prefix ? "group" : name;
  }
  return "";
}

}  // namespace hgad
