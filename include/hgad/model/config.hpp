#pragma once
/// \file
/// ModelConfig: every setting of an HGAD model (ALGORITHM.md §11), with its text form.
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
/// Defaults are HGAD's (ALGORITHM.md §2–§4): 12 blocks, clamp 1.9 with the pinned FrEIA soft clamp,
/// M = 10 intra-class centres, λ1 = 1, λ2 = 100, label smoothing 0.02, 25 meta-epochs of 8
/// sub-epochs, 2 warm-up and 2 stage-1 meta-epochs, lr 2e-4, Adam betas (0.95, 0.99), coupled
/// weight decay 1e-4 on the flows, batch size 8, seed 0, P = 256.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "../detail/check.hpp"
#include "../detail/text.hpp"
#include "../flow/all_in_one_options.hpp"
#include "../loss/loss_terms.hpp"
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
  /// previous (ALGORITHM.md §1.2).
  std::vector<std::string> layers = {"layer2", "layer3"};
  Index pyramid_levels = 0;
  Index image_size = 256;  ///< network input side (ALGORITHM.md §1.1 uses 1024)
  /// How an image reaches image_size: "stretch" resizes both sides (aspect ignored,
  /// industrial-mini's BASELINES.md protocol); "shorter_side_crop" resizes the shorter side and
  /// centre-crops (torchvision Resize(int) + CenterCrop, HGAD's protocol, ALGORITHM.md §1.1).
  std::string resize_mode = "stretch";
  Index mask_size = 256;  ///< side of ground-truth masks and anomaly maps (ALGORITHM.md §1.1)

  friend bool operator==(const FeatureSettings& a, const FeatureSettings& b) {
    return a.backbone == b.backbone && a.layers == b.layers &&
           a.pyramid_levels == b.pyramid_levels && a.image_size == b.image_size &&
           a.resize_mode == b.resize_mode && a.mask_size == b.mask_size;
  }
  friend bool operator!=(const FeatureSettings& a, const FeatureSettings& b) { return !(a == b); }
};

/// What the calibrated maps are measured against (ModelConfig::calibration_baseline).
enum class CalibrationBaseline {
  none,      ///< the raw maps, normalised as ALGORITHM.md §5 step 4 with frozen constants
  position,  ///< each raw map minus its per-position mean over the calibration images first
};

/// Several class folders trained under one label: one class of the model (one centre μ, one
/// intra-class mixture, one set of calibration constants) standing for all of them. HGAD pushes
/// the centres of its classes apart (L_mi, ALGORITHM.md §3.3); classes whose normal images look
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

/// `group.NAME = a, b, ...`: a group's line in the text form of a config.
inline std::string to_config_line(const ClassGroup& g) {
  std::string line = "group." + g.name + " =";
  for (std::size_t i = 0; i < g.members.size(); ++i) line += (i ? ", " : " ") + g.members[i];
  return line;
}

/// Every setting of an HgadModel. A default-constructed config has HGAD's hyper-parameters and
/// no levels or classes; fill those from the data before constructing a model.
struct ModelConfig {
  Objective objective = Objective::hgad;

  // Data: one flow and one prior per level; class names in class-index order.
  std::vector<LevelSpec> levels;
  std::vector<std::string> class_names;
  /// Classes that stand for several folders (`group.NAME = folder, folder, ...` in the text form).
  std::vector<ClassGroup> class_groups;

  // Flow (ALGORITHM.md §2).
  Index pos_dim = 256;  ///< P, the positional-encoding dimension (0: unconditional flows)
  Index n_blocks = 12;  ///< AllInOneBlocks per flow
  double clamp = 1.9;   ///< affine_clamping α
  SoftClamp clamp_variant = SoftClamp::pinned;  ///< FrEIA soft clamp (ALGORITHM.md §2.3)

  // Prior and objective (ALGORITHM.md §3).
  Index n_centers = 10;           ///< M, intra-class centres per class including sg(μ_y)
  double lambda1 = 1.0;           ///< weight of L_g
  double lambda2 = 100.0;         ///< weight of L_mi
  double label_smoothing = 0.02;  ///< ε of the smoothed one-hot

  // Schedule and optimiser (ALGORITHM.md §4).
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
  std::uint64_t seed = 0;

  /// Training images per class used to compute the calibrated-mode normalisation constants after
  /// training (0: all of them). Not in the paper (ALGORITHM.md §9.2 asks for a replacement of the
  /// transductive normalisation); the constants are maxima, so a subset is a cheap estimate.
  Index calibration_images = 0;

  /// Calibrated and label-free modes: subtract from each raw map, position by position, its mean
  /// over the class's calibration images before the §5 normalisation (`position`), or not (`none`,
  /// the paper's maps). Not in the paper: the flow's likelihood carries a positional bias (lowest
  /// at the border of the feature map, where the backbone's zero padding acts, in normal and
  /// defective images alike), and the image score, a maximum over positions, then often measures
  /// that bias instead of the defect; the per-position mean of normal images removes it, as a
  /// per-position Gaussian (PaDiM) does by construction. The transductive mode never uses it.
  CalibrationBaseline calibration_baseline = CalibrationBaseline::none;

  FeatureSettings features;

  Index n_levels() const { return static_cast<Index>(levels.size()); }
  Index n_classes() const { return static_cast<Index>(class_names.size()); }
  /// Passes over the training data: meta_epochs · sub_epochs.
  Index total_epochs() const { return meta_epochs * sub_epochs; }

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
        check(std::find(folders.begin(), folders.end(), m) != folders.end(), "config: group.",
              g.name, " = ", m, ": no class folder of that name is being trained on");
    for (const ClassGroup& g : class_groups)
      check(std::find(folders.begin(), folders.end(), g.name) == folders.end(), "config: group.",
            g.name, ": a class folder has the group's name; list it in the group or rename one");
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

  /// The text form, every key in a fixed order; doubles in their shortest exact representation,
  /// so from_text(to_text()) == *this.
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

inline void ModelConfig::validate(bool require_data) const {
  auto fail = [](const std::string& key, const std::string& value, const std::string& why) {
    throw Error("config: " + key + " = " + value + ": " + why);
  };
  auto i2s = [](Index v) { return std::to_string(v); };
  auto d2s = [](double v) { return detail::format_double(v); };

  if (require_data) {
    if (levels.empty()) fail("levels", "", "at least one feature level is needed");
    if (class_names.empty()) fail("classes", "", "at least one class is needed");
  }
  for (std::size_t l = 0; l < levels.size(); ++l) {
    const LevelSpec& s = levels[l];
    if (s.dim < 2 || s.height < 1 || s.width < 1)
      fail("levels", i2s(s.dim) + "x" + i2s(s.height) + "x" + i2s(s.width),
           "level " + std::to_string(l) +
               " needs dim >= 2 (a coupling splits it in two) and a map of at least 1x1");
  }
  for (std::size_t a = 0; a < class_names.size(); ++a) {
    if (!detail::is_plain_name(class_names[a]))
      fail("classes", class_names[a],
           "a class name must be non-empty and use only letters, digits, '_', '-', '.'");
    for (std::size_t b = 0; b < a; ++b)
      if (class_names[a] == class_names[b])
        fail("classes", class_names[a], "the class appears twice");
  }
  for (std::size_t a = 0; a < class_groups.size(); ++a) {
    const ClassGroup& g = class_groups[a];
    const std::string key = "group." + g.name;
    if (!detail::is_plain_name(g.name))
      fail(key, "", "a group name must be non-empty and use only letters, digits, '_', '-', '.'");
    if (g.members.empty()) fail(key, "", "a group needs at least one class folder");
    if (!class_names.empty() &&
        std::find(class_names.begin(), class_names.end(), g.name) == class_names.end())
      fail(key, "", "the group is not among the classes");
    for (std::size_t b = 0; b < a; ++b)
      if (class_groups[b].name == g.name) fail(key, "", "the group is defined twice");
    for (std::size_t i = 0; i < g.members.size(); ++i) {
      const std::string& m = g.members[i];
      if (!detail::is_plain_name(m))
        fail(key, m,
             "a class folder name must be non-empty and use only letters, digits, '_', '-', '.'");
      if (std::find(class_names.begin(), class_names.end(), m) != class_names.end())
        fail(key, m, "the folder is a class of its own as well");
      for (std::size_t b = 0; b <= a; ++b) {
        const auto& other = class_groups[b].members;
        const auto end = b == a ? other.begin() + static_cast<std::ptrdiff_t>(i) : other.end();
        if (std::find(other.begin(), end, m) != end)
          fail(key, m, "the folder is listed twice (also in group." + class_groups[b].name + ")");
      }
      for (const ClassGroup& h : class_groups)
        if (h.name == m) fail(key, m, "the folder has the name of a group");
    }
  }
  if (objective == Objective::hgad) {
    for (const LevelSpec& s : levels)
      if (!class_names.empty() && n_classes() > 2 * s.dim)
        fail("classes", i2s(n_classes()) + " classes",
             "the class-centre initialisation needs K <= 2 D, and a level has D = " + i2s(s.dim));
  }
  if (pos_dim < 0 || pos_dim % 4 != 0)
    fail("pos_dim", i2s(pos_dim), "must be 0 (no positional encoding) or a positive multiple of 4");
  if (n_blocks < 1) fail("n_blocks", i2s(n_blocks), "must be at least 1");
  if (!(clamp > 0)) fail("clamp", d2s(clamp), "must be positive");
  if (n_centers < 1) fail("n_centers", i2s(n_centers), "must be at least 1");
  if (!(lambda1 >= 0)) fail("lambda1", d2s(lambda1), "must be >= 0");
  if (!(lambda2 >= 0)) fail("lambda2", d2s(lambda2), "must be >= 0");
  if (!(label_smoothing >= 0 && label_smoothing < 1))
    fail("label_smoothing", d2s(label_smoothing), "must be in [0, 1)");
  if (meta_epochs < 1) fail("meta_epochs", i2s(meta_epochs), "must be at least 1");
  if (sub_epochs < 1) fail("sub_epochs", i2s(sub_epochs), "must be at least 1");
  if (warmup_meta_epochs < 0) fail("warmup_meta_epochs", i2s(warmup_meta_epochs), "must be >= 0");
  if (stage1_meta_epochs < 0) fail("stage1_meta_epochs", i2s(stage1_meta_epochs), "must be >= 0");
  if (!(lr > 0)) fail("lr", d2s(lr), "must be positive");
  if (!(lr_decay_rate > 0 && lr_decay_rate <= 1))
    fail("lr_decay_rate", d2s(lr_decay_rate), "must be in (0, 1]");
  if (!(beta1 >= 0 && beta1 < 1)) fail("beta1", d2s(beta1), "must be in [0, 1)");
  if (!(beta2 >= 0 && beta2 < 1)) fail("beta2", d2s(beta2), "must be in [0, 1)");
  if (!(adam_eps > 0)) fail("adam_eps", d2s(adam_eps), "must be positive");
  if (!(weight_decay >= 0)) fail("weight_decay", d2s(weight_decay), "must be >= 0");
  if (batch_size < 1) fail("batch_size", i2s(batch_size), "must be at least 1");
  if (calibration_images < 0)
    fail("calibration_images", i2s(calibration_images), "must be >= 0 (0: all)");

  const FeatureSettings& f = features;
  if (!detail::is_plain_name(f.backbone))
    fail("backbone", f.backbone,
         "must be a name such as resnet18, or none for precomputed features");
  for (const std::string& layer : f.layers)
    if (!detail::is_plain_name(layer))
      fail("layers", layer, "a layer name must be non-empty and plain");
  if (f.pyramid_levels < 0) fail("pyramid_levels", i2s(f.pyramid_levels), "must be >= 0");
  if (f.backbone != "none") {
    if (f.layers.empty()) fail("layers", "", "at least one backbone layer is needed");
    if (f.pyramid_levels > 0 && f.layers.size() != 1)
      fail("layers", std::to_string(f.layers.size()) + " layers",
           "an image pyramid uses exactly one layer");
    const std::size_t expected =
        f.pyramid_levels > 0 ? static_cast<std::size_t>(f.pyramid_levels) : f.layers.size();
    if (!levels.empty() && levels.size() != expected)
      fail("levels", std::to_string(levels.size()) + " levels",
           "the feature settings give " + std::to_string(expected) + " levels");
  }
  if (f.resize_mode != "stretch" && f.resize_mode != "shorter_side_crop")
    fail("resize_mode", f.resize_mode, "must be stretch or shorter_side_crop");
  if (f.image_size < 1) fail("image_size", i2s(f.image_size), "must be at least 1");
  if (f.mask_size < 1) fail("mask_size", i2s(f.mask_size), "must be at least 1");
}

inline std::string ModelConfig::to_text() const {
  std::ostringstream out;
  auto line = [&out](const char* key, const std::string& value) {
    out << key << " = " << value << "\n";
  };
  auto join = [](const std::vector<std::string>& items) {
    std::string s;
    for (std::size_t i = 0; i < items.size(); ++i) s += (i ? ", " : "") + items[i];
    return s;
  };
  auto d2s = [](double v) { return detail::format_double(v); };
  std::vector<std::string> level_text;
  for (const LevelSpec& s : levels)
    level_text.push_back(std::to_string(s.dim) + "x" + std::to_string(s.height) + "x" +
                         std::to_string(s.width));

  out << "# hgad model configuration (key = value; levels are dim x height x width)\n";
  line("objective", to_string(objective));
  line("levels", join(level_text));
  line("classes", join(class_names));
  for (const ClassGroup& g : class_groups) out << to_config_line(g) << "\n";
  line("pos_dim", std::to_string(pos_dim));
  line("n_blocks", std::to_string(n_blocks));
  line("clamp", d2s(clamp));
  line("clamp_variant", clamp_variant == SoftClamp::pinned ? "pinned" : "head");
  line("n_centers", std::to_string(n_centers));
  line("lambda1", d2s(lambda1));
  line("lambda2", d2s(lambda2));
  line("label_smoothing", d2s(label_smoothing));
  line("meta_epochs", std::to_string(meta_epochs));
  line("sub_epochs", std::to_string(sub_epochs));
  line("warmup_meta_epochs", std::to_string(warmup_meta_epochs));
  line("stage1_meta_epochs", std::to_string(stage1_meta_epochs));
  line("lr", d2s(lr));
  line("lr_decay_rate", d2s(lr_decay_rate));
  line("beta1", d2s(beta1));
  line("beta2", d2s(beta2));
  line("adam_eps", d2s(adam_eps));
  line("weight_decay", d2s(weight_decay));
  line("batch_size", std::to_string(batch_size));
  line("seed", std::to_string(seed));
  line("calibration_images", std::to_string(calibration_images));
  line("calibration_baseline", calibration_baseline == CalibrationBaseline::none ? "none" : "position");
  line("backbone", features.backbone);
  line("layers", join(features.layers));
  line("pyramid_levels", std::to_string(features.pyramid_levels));
  line("image_size", std::to_string(features.image_size));
  line("resize_mode", features.resize_mode);
  line("mask_size", std::to_string(features.mask_size));
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

    auto bad = [&](const std::string& expected) {
      throw Error(where + ": key '" + key + "': '" + value + "' is not " + expected);
    };
    auto as_index = [&](Index& out) {
      std::int64_t v = 0;
      if (!detail::parse_number(value, v)) bad("an integer");
      out = static_cast<Index>(v);
    };
    auto as_double = [&](double& out) {
      if (!detail::parse_number(value, out)) bad("a finite number");
    };

    if (key == "objective") {
      if (value == "hgad")
        c.objective = Objective::hgad;
      else if (value == "nf")
        c.objective = Objective::nf;
      else
        bad("hgad or nf");
    } else if (key == "levels") {
      c.levels.clear();
      for (const std::string& item : detail::split_list(value)) {
        const auto x1 = item.find('x');
        const auto x2 = x1 == std::string::npos ? std::string::npos : item.find('x', x1 + 1);
        std::int64_t d = 0, h = 0, w = 0;
        if (x2 == std::string::npos || !detail::parse_number(item.substr(0, x1), d) ||
            !detail::parse_number(item.substr(x1 + 1, x2 - x1 - 1), h) ||
            !detail::parse_number(item.substr(x2 + 1), w))
          bad("a list of dim x height x width such as 128x32x32, 256x16x16");
        c.levels.push_back(LevelSpec{d, h, w});
      }
    } else if (key == "classes") {
      c.class_names = detail::split_list(value);
    } else if (key.rfind("group.", 0) == 0) {
      c.class_groups.push_back(ClassGroup{key.substr(6), detail::split_list(value)});
    } else if (key == "pos_dim") {
      as_index(c.pos_dim);
    } else if (key == "n_blocks") {
      as_index(c.n_blocks);
    } else if (key == "clamp") {
      as_double(c.clamp);
    } else if (key == "clamp_variant") {
      if (value == "pinned")
        c.clamp_variant = SoftClamp::pinned;
      else if (value == "head")
        c.clamp_variant = SoftClamp::head;
      else
        bad("pinned or head");
    } else if (key == "n_centers") {
      as_index(c.n_centers);
    } else if (key == "lambda1") {
      as_double(c.lambda1);
    } else if (key == "lambda2") {
      as_double(c.lambda2);
    } else if (key == "label_smoothing") {
      as_double(c.label_smoothing);
    } else if (key == "meta_epochs") {
      as_index(c.meta_epochs);
    } else if (key == "sub_epochs") {
      as_index(c.sub_epochs);
    } else if (key == "warmup_meta_epochs") {
      as_index(c.warmup_meta_epochs);
    } else if (key == "stage1_meta_epochs") {
      as_index(c.stage1_meta_epochs);
    } else if (key == "lr") {
      as_double(c.lr);
    } else if (key == "lr_decay_rate") {
      as_double(c.lr_decay_rate);
    } else if (key == "beta1") {
      as_double(c.beta1);
    } else if (key == "beta2") {
      as_double(c.beta2);
    } else if (key == "adam_eps") {
      as_double(c.adam_eps);
    } else if (key == "weight_decay") {
      as_double(c.weight_decay);
    } else if (key == "batch_size") {
      as_index(c.batch_size);
    } else if (key == "seed") {
      if (!detail::parse_number(value, c.seed)) bad("a non-negative integer");
    } else if (key == "calibration_images") {
      as_index(c.calibration_images);
    } else if (key == "calibration_baseline") {
      if (value == "none")
        c.calibration_baseline = CalibrationBaseline::none;
      else if (value == "position")
        c.calibration_baseline = CalibrationBaseline::position;
      else
        bad("none or position");
    } else if (key == "backbone") {
      c.features.backbone = value;
    } else if (key == "layers") {
      c.features.layers = detail::split_list(value);
    } else if (key == "pyramid_levels") {
      as_index(c.features.pyramid_levels);
    } else if (key == "image_size") {
      as_index(c.features.image_size);
    } else if (key == "resize_mode") {
      if (value != "stretch" && value != "shorter_side_crop") bad("stretch or shorter_side_crop");
      c.features.resize_mode = value;
    } else if (key == "mask_size") {
      as_index(c.features.mask_size);
    } else {
      throw Error(where + ": unknown key '" + key + "'");
    }
  }
  return c;
}

}  // namespace hgad
