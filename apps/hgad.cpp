// hgad: train one HGAD model on many classes of images in MVTec layout, measure it, and score new
// images with it. `hgad --help` lists the commands, `hgad <command> --help` their options.
//
// Exit status: 0 on success, 1 when the work fails (a missing or malformed file, a model that does
// not fit the backbone, ...), 2 for a command line that cannot be acted on. Output files (the
// model, the JSON report, heat maps) are written only once everything they hold has been computed,
// and each through a temporary file renamed into place.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <hgad/detail/atomic_file.hpp>
#include <hgad/detail/memory.hpp>
#include <hgad/detail/parallel.hpp>
#include <hgad/io/embeddings.hpp>
#include <hgad/io/image.hpp>
#include <hgad/io/mvtec.hpp>
#include <hgad/model/class_groups.hpp>
#include <hgad/model/config.hpp>
#include <hgad/model/detector.hpp>
#include <hgad/model/hgad_model.hpp>
#include <hgad/model/pipeline.hpp>

#include <hgad/parallel/communicator.hpp>
#ifdef HGAD_CLI_CUDA  // built with hgad's CUDA part: the GPUs of a data-parallel training
#include "gpu_world.hpp"
#endif
#ifdef HGAD_HAVE_MPI  // built with MPI (CMake: HGAD_ENABLE_MPI): hgad train under mpirun
#include <hgad/parallel/mpi_communicator.hpp>
#endif

#include "cli_support.hpp"

namespace fs = std::filesystem;
using hgad::Index;
using hgad_cli::Args;
using hgad_cli::Json;
using hgad_cli::OptionSpec;
using hgad_cli::Progress;
using hgad_cli::UsageError;
using Scalar = float;
using Model = hgad::HgadModel<Scalar>;

#ifndef HGAD_CLI_VERSION
#define HGAD_CLI_VERSION "unknown"  // apps/CMakeLists.txt passes the project's version
#endif

namespace {

// ------------------------------------------------------------------------------------------------
// Shared helpers

/// Largest config file read: a configuration is a few hundred bytes of `key = value` lines, so
/// anything near this is not one (and /dev/zero or a wrong file must not be read to the end).
constexpr std::size_t max_config_bytes = std::size_t(1) << 20;

/// The text of a file of at most `max_bytes` bytes, read without reading past that bound (a FIFO
/// or process substitution works; /dev/zero is refused after max_bytes + 1 bytes).
std::string read_text_file(const std::string& path, const char* what, std::size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  hgad::check(static_cast<bool>(in) && !fs::is_directory(path), "cannot read the ", what, " '",
              path, "'");
  std::string text(max_bytes + 1, '\0');
  in.read(&text[0], static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(in.gcount()));
  hgad::check(!in.bad(), "cannot read the ", what, " '", path, "'");
  hgad::check(text.size() <= max_bytes, "the ", what, " '", path, "' is larger than ",
              max_bytes >> 20, " MiB (", max_bytes, " bytes): not a configuration");
  return text;
}

void require_directory(const std::string& path, const std::string& option) {
  if (!fs::is_directory(path)) throw hgad::Error(option + " '" + path + "' is not a directory");
}

void require_file(const std::string& path, const std::string& what) {
  if (!fs::exists(path)) throw hgad::Error(what + " '" + path + "' does not exist");
  if (fs::is_directory(path))
    throw hgad::Error(what + " '" + path + "' is a directory, expected a file");
}

/// An output file path whose folder exists, that is not a folder itself and that can be written:
/// checked before the work starts (by creating and removing the temporary file the atomic write
/// will use), so that a long training does not end in a write that fails.
void require_output_file(const std::string& path, const std::string& option) {
  if (fs::is_directory(path))
    throw hgad::Error(option + " '" + path + "' is a directory, expected a file name");
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty() && !fs::is_directory(parent))
    throw hgad::Error(option + " '" + path + "': the folder '" + parent.string() +
                      (fs::exists(parent) ? "' is not a folder" : "' does not exist"));
  try {
    hgad::detail::check_writable(path);
  } catch (const hgad::Error& e) {
    throw hgad::Error(option + ": " + e.what());
  }
}

/// Writes an output file: `-` is standard output, anything else goes through
/// detail::write_file_atomically (a regular file replaced atomically, a device or FIFO written in
/// place). Standard output is flushed first, so that text printed before stays before.
void write_text_output(const std::string& path, const std::string& text) {
  std::fflush(stdout);
  if (path == "-") {
    hgad::check(
        std::fwrite(text.data(), 1, text.size(), stdout) == text.size() && std::fflush(stdout) == 0,
        "cannot write to standard output");
    return;
  }
  hgad::detail::write_file_atomically(path, text.data(), text.size());
}

std::vector<std::string> split_names(const std::string& text, const std::string& option) {
  std::vector<std::string> names = hgad::detail::split_list(text);
  std::set<std::string> seen;
  for (const auto& n : names) {
    if (!hgad::detail::is_plain_name(n))
      throw UsageError(option + ": invalid class name '" + n + "'");
    if (!seen.insert(n).second) throw UsageError(option + ": class '" + n + "' is given twice");
  }
  if (names.empty()) throw UsageError(option + " needs at least one class name");
  return names;
}

void apply_threads(const Args& args) {
  if (args.has("threads"))
    hgad::set_num_threads(static_cast<int>(args.get_int("threads", 1, 1, 1024)));
}

/// --epochs N: N passes over the training data (meta_epochs = N, sub_epochs = 1), with warm-up and
/// stage 1 kept at HGAD's share of the schedule (2 of 25 meta-epochs, docs/algorithm.md §4), at least
/// one epoch each when N >= 2.
void apply_epochs(hgad::ModelConfig& config, Index epochs) {
  config.meta_epochs = epochs;
  config.sub_epochs = 1;
  const Index share =
      epochs >= 2 ? std::max<Index>(1, static_cast<Index>(std::lround(epochs * 2.0 / 25.0))) : 0;
  config.warmup_meta_epochs = share;
  config.stage1_meta_epochs = share;
}

/// --epochs N of train and embeddings: N >= 1 passes (apply_epochs), or 0, the data-dependent
/// start of init = whiten alone, untrained (docs/algorithm.md §2.5); -1 when the option is absent.
///   throws: UsageError for 0 without init = whiten.
Index epochs_option(const Args& args, hgad::ModelConfig& config) {
  const Index epochs = args.has("epochs") ? args.get_int("epochs", 0, 0, 100000) : -1;
  if (epochs >= 1) apply_epochs(config, epochs);
  if (epochs == 0 && config.init != hgad::ModelInit::whiten)
    throw UsageError("--epochs 0 takes the data-dependent start of init = whiten, untrained; the config has init = " +
                     std::string(hgad::detail::name_of(hgad::model_init_names, config.init)));
  return epochs;
}

std::string format_metric(double v) {
  if (!std::isfinite(v)) return "  -  ";
  char buffer[16];
  std::snprintf(buffer, sizeof(buffer), "%.3f", v);
  return buffer;
}

/// The value of option `name` read by `parse`, or `fallback` when the option is absent; a value
/// `parse` rejects is a usage error naming the option.
template <class T, class Parse>
T parsed_option(const Args& args, const std::string& name, Parse parse, T fallback) {
  if (!args.has(name)) return fallback;
  try {
    return parse(args.get(name, ""));
  } catch (const hgad::Error& e) {
    throw UsageError("--" + name + ": " + e.what());
  }
}

/// --device: the CPU unless given; CUDA is checked here (a program built with hgad's CUDA part, and
/// a GPU), before any work is done.
hgad::Device device_of(const Args& args) {
  const hgad::Device device = parsed_option(args, "device", hgad::parse_device, hgad::Device::cpu);
  hgad::require_level_device<Scalar>(device);
  return device;
}

std::string loss_status(const hgad::FitProgress<Scalar>& p) {
  std::ostringstream s;
  s << "epoch " << p.epoch + 1 << "/" << p.n_epochs << " stage " << p.stage;
  char lr[32];
  std::snprintf(lr, sizeof(lr), " lr %.2e", p.lr);
  s << lr << " loss";
  for (const auto& t : p.level_terms) {
    char v[32];
    std::snprintf(v, sizeof(v), " %.3f", double(t.total));
    s << v;
  }
  // The per-dimension negative log-likelihood of the batch: L_g_intra in stage 2, L_g in stage 1
  // (up to the omitted Gaussian constant), L_z for the NF baseline.
  s << " nll";
  for (const auto& t : p.level_terms) {
    const double nll = t.objective == hgad::Objective::nf ? t.l_z
                       : t.stage == 2                     ? t.l_g_intra
                                                          : t.l_g;
    char v[32];
    std::snprintf(v, sizeof(v), " %.3f", nll);
    s << v;
  }
  return s.str();
}

Json metrics_json(const hgad::ClassReport& m) {
  Json j = Json::object();
  j.set("images", Json::integer(m.n_images));
  j.set("anomalous", Json::integer(m.n_anomalous));
  j.set("image_auroc", Json::number(m.image_auroc));
  j.set("pixel_auroc", Json::number(m.pixel_auroc));
  j.set("aupro", Json::number(m.aupro));
  j.set("image_ap", Json::number(m.image_ap));
  j.set("pixel_ap", Json::number(m.pixel_ap));
  j.set("image_f1_max", Json::number(m.image_f1_max));
  j.set("pixel_f1_max", Json::number(m.pixel_f1_max));
  j.set("class_accuracy", Json::number(m.class_accuracy));
  j.set("threshold", Json::number(m.threshold));
  j.set("image_precision_at_threshold", Json::number(m.image_precision));
  j.set("image_recall_at_threshold", Json::number(m.image_recall));
  j.set("image_f1_at_threshold", Json::number(m.image_f1));
  return j;
}

/// One value of the config table as JSON: numbers as numbers, names as strings, lists as arrays.
Json config_value_json(Index value) { return Json::integer(value); }
Json config_value_json(std::uint64_t value) {
  // A seed beyond 2^63 does not fit a JSON integer of every reader: its decimal text instead.
  return value <= std::uint64_t(INT64_MAX) ? Json::integer(static_cast<std::int64_t>(value))
                                           : Json::string(std::to_string(value));
}
Json config_value_json(double value) { return Json::number(value); }
Json config_value_json(const std::string& value) { return Json::string(value); }
Json config_value_json(const std::vector<std::string>& names) {
  Json list = Json::array();
  for (const std::string& name : names) list.push(Json::string(name));
  return list;
}
Json config_value_json(const std::vector<double>& values) {
  Json list = Json::array();
  for (double v : values) list.push(Json::number(v));
  return list;
}
Json config_value_json(const std::vector<hgad::LevelSpec>& levels) {
  Json list = Json::array();
  for (const hgad::LevelSpec& s : levels) list.push(Json::string(hgad::detail::value_text(s)));
  return list;
}
Json config_value_json(const std::vector<hgad::ClassGroup>& groups) {
  Json object = Json::object();
  for (const hgad::ClassGroup& g : groups) object.set(g.name, config_value_json(g.members));
  return object;
}
template <class T, class Rule>
Json config_value_json(const T& value, const Rule&) {
  return config_value_json(value);
}
template <class Enum, std::size_t N>
Json config_value_json(const Enum& value, const hgad::detail::NamedValue<Enum> (&names)[N]) {
  return Json::string(hgad::detail::name_of(names, value));
}

/// A model configuration as a JSON object with a member per key of its text form, in the same
/// order (hgad::detail::for_each_config_key); the class groups, keys `group.NAME` in the text, are
/// the object "groups" of NAME: [members].
Json config_json(const hgad::ModelConfig& config) {
  Json j = Json::object();
  hgad::detail::for_each_config_key(config, [&j](const char* name, const auto& field,
                                                 const auto&... rule) {
    const std::string key = name;
    j.set(key == hgad::detail::group_key_prefix ? "groups" : key, config_value_json(field, rule...));
  });
  return j;
}

/// The backbone folder: --backbone, else the one recorded in the model at training time.
std::string backbone_dir_for(const Args& args, const Model& model) {
  std::string dir = args.get("backbone", model.metadata("backbone_dir"));
  if (dir.empty())
    throw hgad::Error(
        "the model records no backbone folder; pass --backbone DIR (the weights it was trained "
        "with)");
  require_directory(
      dir, args.has("backbone") ? "--backbone" : "the backbone folder recorded in the model,");
  return dir;
}

Model load_model(const std::string& path) {
  require_file(path, "model");
  return Model::load(path);
}

// ------------------------------------------------------------------------------------------------
// train

/// --keep-best, of train and embeddings alike.
const OptionSpec keep_best_option = {
    "keep-best", "",
    "with --validation: keep the parameters of the pass (or the start) with the highest held-out "
    "log-likelihood"};

/// The --validation percentage (0 without it).
///   throws: UsageError for --keep-best without --validation.
Index validation_option(const Args& args) {
  const Index percent = args.has("validation") ? args.get_int("validation", 0, 1, 90) : 0;
  if (args.has("keep-best") && percent == 0)
    throw UsageError("--keep-best keeps the pass with the best held-out log-likelihood: it needs --validation");
  return percent;
}

const std::vector<OptionSpec> train_options = {
    {"data", "DIR", "dataset root in MVTec layout (<class>/train/good/...)"},
    {"classes", "A,B,...", "classes to train on (default: every class folder, sorted)"},
    {"backbone", "DIR", "ResNet weights folder (.npy per tensor, batch-norm folded)"},
    {"out", "MODEL", "model file to write"},
    {"config", "FILE", "key = value settings over HGAD's defaults (see hgad info)"},
    {"epochs", "N",
     "N passes over the training data (overrides the config's schedule); 0 with init = whiten: "
     "the data-dependent start alone, untrained"},
    {"objective", "hgad|nf", "HGAD's hierarchical prior, or the single-Gaussian NF baseline"},
    {"cache", "DIR", "keep the backbone features in DIR and reuse them when nothing changed"},
    {"auto-group", "",
     "train with the class groups that a first model's confusion suggests (with init = whiten: the "
     "untrained start's, and the model is trained once)"},
    {"validation", "PERCENT",
     "hold out this share of each class's training images (spread evenly over its folder) and "
     "report their mean log-likelihood at the start and after every pass: settings are chosen on "
     "training data alone (hgad test --validation scores them with synthetic defects)"},
    keep_best_option,
    {"checkpoint-every", "N",
     "every N passes, write the model and optimiser state to MODEL.checkpoint"},
    {"resume", "FILE",
     "continue the training stored in a checkpoint (its configuration; same data)"},
    {"threads", "N", "worker threads (default: all cores)"},
    {"device", "cpu|cuda",
     "where the backbone, the flows' training and the scores run (default cpu)"},
    {"max-memory", "GB",
     "refuse a configuration estimated to need more (default: what is available)"},
};

/// The class confusion of a calibrated HGAD model, one line per class (the share of its normal
/// positions' posterior it keeps, then the classes it gives at least 0.01 to), and the class
/// groups it suggests as config lines; every line starts with `prefix`. Empty for other models.
std::string class_confusion_report(const Model& model, const std::string& prefix) {
  const hgad::ModelConfig& config = model.config();
  if (config.objective != hgad::Objective::hgad || !model.is_calibrated() ||
      model.calibration(0).class_posterior.empty())
    return "";
  const auto confusion = model.class_confusion();
  const auto& names = config.class_names;
  std::size_t width = 0;
  for (const auto& n : names) width = std::max(width, n.size());
  std::ostringstream out;
  out << prefix
      << "class confusion on the training images (mean posterior share over each class's "
         "positions):\n";
  char buf[64];
  for (std::size_t a = 0; a < names.size(); ++a) {
    std::snprintf(buf, sizeof(buf), "%.2f", confusion[a][a]);
    out << prefix << "  " << std::left << std::setw(int(width)) << names[a] << "  keeps " << buf;
    std::vector<std::size_t> others;
    for (std::size_t b = 0; b < names.size(); ++b)
      if (b != a && confusion[a][b] >= 0.01) others.push_back(b);
    std::sort(others.begin(), others.end(),
              [&](std::size_t x, std::size_t y) { return confusion[a][x] > confusion[a][y]; });
    for (std::size_t b : others) {
      std::snprintf(buf, sizeof(buf), "%.2f", confusion[a][b]);
      out << ", " << names[b] << " " << buf;
    }
    out << "\n";
  }
  const auto groups = hgad::suggest_class_groups(config, confusion);
  std::snprintf(buf, sizeof(buf), "%.2f", hgad::default_group_threshold);
  if (groups.empty())
    out << prefix << "no two classes give each other " << buf
        << " or more: no class group suggested\n";
  else
    out << prefix << "suggested class groups (two classes give each other " << buf
        << " or more on average; hgad train --auto-group, or these config lines):\n";
  for (const auto& g : groups) out << prefix << "  " << hgad::to_config_line(g) << "\n";
  return out.str();
}

/// Refuses, before any work, a training whose estimated memory (hgad::training_memory:
/// parameters with their gradients and Adam moments, the largest level's step, the features of
/// the training images) exceeds --max-memory GB, or else what the machine has available.
void check_training_memory(const hgad::ModelConfig& config, Index n_images, const Args& args) {
  const auto estimate = hgad::training_memory<float>(config, n_images);
  double limit = hgad::detail::available_memory_bytes();
  std::string source = "the machine has available (MemAvailable)";
  if (args.has("max-memory")) {
    double gb = 0;
    if (!hgad::detail::parse_number(args.get("max-memory", ""), gb) || !(gb > 0))
      throw UsageError("--max-memory: '" + args.get("max-memory", "") +
                       "' is not a positive number of GB");
    limit = gb * 1e9;
    source = "--max-memory allows";
  }
  if (limit <= 0 || estimate.total() <= limit) return;
  throw hgad::Error("this training needs about " + hgad::detail::bytes_text(estimate.total()) +
                    " (parameters " + hgad::detail::bytes_text(estimate.parameters) +
                    ", one training step " + hgad::detail::bytes_text(estimate.activations) +
                    ", features of " + std::to_string(n_images) + " images " +
                    hgad::detail::bytes_text(estimate.features) + ") but " + source + " " +
                    hgad::detail::bytes_text(limit) + "; reduce " + hgad::memory_culprits(config));
}

/// Every rank's part (rows shard_rows(n, R, r)) of the extracted training images, gathered on
/// every rank: the features of each level (shapes from `levels`) and the classes, in the order of
/// the data set. Paths and masks are not gathered (training reads neither).
template <class Scalar>
hgad::ExtractedImages<Scalar> gather_images(hgad::Communicator& comm,
                                            const hgad::ExtractedImages<Scalar>& part,
                                            const std::vector<hgad::LevelSpec>& levels, Index n) {
  const hgad::RowRange mine = hgad::shard_rows(n, comm.size(), comm.rank());
  hgad::ExtractedImages<Scalar> all;
  for (std::size_t l = 0; l < levels.size(); ++l) {
    const hgad::LevelSpec& s = levels[l];
    hgad::Tensor<Scalar> level({n, s.height, s.width, s.dim});
    const Index row = s.height * s.width * s.dim;
    const hgad::Tensor<Scalar>& own = part.features[l];
    std::copy(own.data(), own.data() + own.numel(), level.data() + mine.begin * row);
    comm.all_gather_rows(level.data(), n, row);
    all.features.push_back(std::move(level));
  }
  all.classes.assign(static_cast<std::size_t>(n), 0);
  all.labels.assign(static_cast<std::size_t>(n), 0);
  std::copy(part.classes.begin(), part.classes.end(), all.classes.begin() + mine.begin);
  std::copy(part.labels.begin(), part.labels.end(), all.labels.begin() + mine.begin);
  comm.all_gather_rows(all.classes.data(), n, 1);
  comm.all_gather_rows(all.labels.data(), n, 1);
  return all;
}

/// The images `rows` of `set` (features and classes), in that order.
template <class Scalar>
hgad::ExtractedImages<Scalar> select_images(const hgad::ExtractedImages<Scalar>& set,
                                            const std::vector<Index>& rows) {
  hgad::ExtractedImages<Scalar> out;
  const Index n = static_cast<Index>(rows.size());
  for (const hgad::Tensor<Scalar>& level : set.features) {
    hgad::Tensor<Scalar> picked({n, level.dim(1), level.dim(2), level.dim(3)});
    const Index row = level.dim(1) * level.dim(2) * level.dim(3);
    for (Index i = 0; i < n; ++i)
      std::copy(level.data() + rows[static_cast<std::size_t>(i)] * row,
                level.data() + (rows[static_cast<std::size_t>(i)] + 1) * row, picked.data() + i * row);
    out.features.push_back(std::move(picked));
  }
  for (Index r : rows) {
    out.classes.push_back(set.classes[static_cast<std::size_t>(r)]);
    out.labels.push_back(set.labels[static_cast<std::size_t>(r)]);
  }
  return out;
}

/// The held-out images of --validation PERCENT: within each class folder (images in the data set's
/// order), image j is held out when floor((j + 1) P / 100) > floor(j P / 100), so that P % of every
/// folder is held out, spread evenly over it; at least one image of a folder is held out and at
/// least two are kept.
///   throws: UsageError when a folder has too few images for that.
std::vector<bool> validation_rows(const std::vector<std::int64_t>& folder_of_image,
                                  const std::vector<std::string>& folder_names, Index percent) {
  std::vector<Index> seen(folder_names.size(), 0), count(folder_names.size(), 0);
  for (std::int64_t f : folder_of_image) ++count[static_cast<std::size_t>(f)];
  std::vector<Index> held(folder_names.size(), 0);
  for (std::size_t f = 0; f < folder_names.size(); ++f)
    if (count[f] < 3)
      throw UsageError("--validation: class folder '" + folder_names[f] + "' has " +
                       std::to_string(count[f]) + " training images; at least 3 are needed to hold one out");
  std::vector<bool> out;
  for (std::int64_t f : folder_of_image) {
    const std::size_t k = static_cast<std::size_t>(f);
    const Index j = seen[k]++;
    bool hold = (j + 1) * percent / 100 > j * percent / 100;
    if (j == count[k] - 1 && held[k] == 0) hold = true;    // at least one held out
    if (hold && count[k] - held[k] <= 2) hold = false;     // at least two kept
    held[k] += hold ? 1 : 0;
    out.push_back(hold);
  }
  return out;
}

/// Splits `set` by --validation PERCENT (validation_rows over its images' folders): the images
/// trained on, returned, and those held out, moved to `held` when it is given.
hgad::ExtractedImages<Scalar> without_held_out(const hgad::ExtractedImages<Scalar>& set,
                                               const std::vector<std::string>& folder_names,
                                               Index percent,
                                               hgad::ExtractedImages<Scalar>* held = nullptr) {
  const std::vector<bool> hold = validation_rows(set.classes, folder_names, percent);
  std::vector<Index> kept, out_rows;
  for (Index i = 0; i < set.size(); ++i) (hold[static_cast<std::size_t>(i)] ? out_rows : kept).push_back(i);
  if (held != nullptr) *held = select_images(set, out_rows);
  return select_images(set, kept);
}

/// Each image's class in `cfg` (its group's, when a group lists its folder), from its folder
/// index into `folder_names`.
std::vector<std::int64_t> class_labels(const hgad::ModelConfig& cfg,
                                       const std::vector<std::int64_t>& folder_of_image,
                                       const std::vector<std::string>& folder_names) {
  std::vector<std::int64_t> class_of_folder;  // folder index -> the class of `cfg`
  for (const std::string& folder : folder_names) class_of_folder.push_back(cfg.class_of(folder));
  std::vector<std::int64_t> labels;
  for (std::int64_t folder : folder_of_image)
    labels.push_back(class_of_folder[static_cast<std::size_t>(folder)]);
  return labels;
}

/// The number of images HgadModel::calibrate scores of a set with these labels.
Index calibration_image_count(const hgad::ModelConfig& cfg, const std::vector<std::int64_t>& labels) {
  Index used = 0;
  for (const auto& set : hgad::ModelScoring<Scalar>::calibration_sets(cfg, labels))
    used += static_cast<Index>(set.size());
  return used;
}

/// The held-out measurements of a fit() with validation, on one line: the start, then each pass;
/// " kept" marks the one keep_best ended on.
std::string validation_curve(const hgad::FitReport<Scalar>& report) {
  std::string line = "held-out mean log-likelihood per dimension (class accuracy):";
  char buffer[96];
  for (std::size_t i = 0; i < report.validation.size(); ++i) {
    const std::string at = i == 0 ? std::string("start") : "pass " + std::to_string(i);
    std::snprintf(buffer, sizeof buffer, "%s %s %.5f (%s)%s", i ? "," : "", at.c_str(),
                  report.validation[i].mean_log_likelihood,
                  format_metric(report.validation[i].class_accuracy).c_str(),
                  static_cast<Index>(i) == report.best ? " kept" : "");
    line += buffer;
  }
  return line + "\n";
}

/// The held-out figure of the model a fit() left: the measurement it kept, else its last one; an
/// untrained start, which fit() did not measure, is measured here.
hgad::HeldOut final_held_out(const hgad::FitReport<Scalar>& report, const Model& model,
                             const std::vector<hgad::Tensor<Scalar>>& features,
                             const std::vector<std::int64_t>& labels) {
  if (report.validation.empty()) return model.held_out(features, labels);
  return report.validation[static_cast<std::size_t>(report.best >= 0 ? report.best
                                                                     : Index(report.validation.size()) - 1)];
}

/// The ranks of the MPI job this process belongs to, or null when it was started alone.
///   throws: UsageError when mpirun started several copies of a program built without MPI (each
///           would train, and write, the same model on its own).
std::unique_ptr<hgad::Communicator> launched_world() {
#ifdef HGAD_HAVE_MPI
  if (hgad::MpiCommunicator::launched()) return std::make_unique<hgad::MpiCommunicator>();
#else
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"}) {
    const char* size = std::getenv(name);
    if (size != nullptr && std::string(size) != "1")
      throw UsageError(
          std::string("started by an MPI launcher (") + name + " = " + size +
          "), but this hgad was built without MPI: configure with -DHGAD_ENABLE_MPI=ON "
          "(Debian: libopenmpi-dev) to train data-parallel, or run one process");
  }
#endif
  return nullptr;
}

int cmd_train(const Args& args) {
  if (args.help()) {
    std::cout
        << "usage: hgad train --data DIR --backbone DIR --out MODEL [options]\n\n"
           "Trains one model on the train/good images of every class at once (HGAD's unified\n"
           "setting), computes the calibrated-mode constants from the same images and writes the\n"
           "model. Without --config the hyper-parameters are HGAD's (docs/algorithm.md), which are "
           "sized\n"
           "for a GPU; --epochs and a --config file shorten them.\n\n"
           "Under `mpirun -np R` (a program built with MPI) the R processes train one model\n"
           "together: each reads every training image, takes its part of every batch, and the\n"
           "gradients are summed over the processes before each step; process 0 reports the\n"
           "progress and writes the checkpoints and the model. With --device cuda each process\n"
           "uses the GPU of its rank on its machine, and the gradients are summed on the GPUs\n"
           "through NCCL when the program has it and no two processes share a GPU.\n\noptions:\n"
        << hgad_cli::describe_options(train_options);
    return 0;
  }
  const std::string data = args.required("data");
  const std::string backbone = args.required("backbone");
  const std::string out = args.required("out");
  apply_threads(args);
  // Under mpirun: the ranks of the job train one model; rank 0 alone reports and writes.
  const std::unique_ptr<hgad::Communicator> world = launched_world();
  const bool writer = world == nullptr || world->rank() == 0;
  hgad_cli::progress_silenced = !writer;
  const Index checkpoint_every = args.has("checkpoint-every") ? args.get_int("checkpoint-every", 1, 1, 100000) : 0;
  const std::string checkpoint_path = out + ".checkpoint";
  // --resume: the checkpoint's model, configuration and class folders, and its run's state.
  std::unique_ptr<std::pair<Model, hgad::TrainingState<Scalar>>> resumed;
  if (args.has("resume")) {
    for (const char* option : {"config", "epochs", "objective", "classes", "validation"})
      if (args.has(option))
        throw UsageError(std::string("--resume continues the run stored in the checkpoint with its own settings; "
                                     "drop --") + option);
    const std::string file = args.get("resume", "");
    require_file(file, "--resume");
    resumed = std::make_unique<std::pair<Model, hgad::TrainingState<Scalar>>>(Model::load_checkpoint(file));
  }
  hgad::ModelConfig config;
  if (resumed) {
    config = resumed->first.config();
  } else if (args.has("config")) {
    const std::string file = args.get("config", "");
    require_file(file, "--config");
    config =
        hgad::ModelConfig::from_text(read_text_file(file, "config file", max_config_bytes), file);
  }
  config.objective = parsed_option(args, "objective", hgad::parse_objective, config.objective);
  const bool untrained = epochs_option(args, config) == 0;
  const Index validation_percent = validation_option(args);
  if (args.has("auto-group") && config.objective != hgad::Objective::hgad)
    throw UsageError("--auto-group regroups HGAD's classes; the NF objective has none");
  std::vector<std::string> classes;
  if (args.has("classes")) classes = split_names(args.get("classes", ""), "--classes");
  if (resumed) classes = split_names(resumed->first.metadata("train_folders"), "the checkpoint's class folders");
  require_directory(data, "--data");
  require_directory(backbone, "--backbone");
  require_output_file(out, "--out");
  const hgad::Device device = device_of(args);
  if (device == hgad::Device::cuda && config.objective != hgad::Objective::hgad)
    throw UsageError("--device cuda trains HGAD's objective; the NF baseline trains on the CPU");
  config.validate(false);
  // Under mpirun with --device cuda: each process's GPU, and NCCL between them where it can.
  std::unique_ptr<hgad::Communicator> gpus;
  std::string gpus_how;
  if (world && device == hgad::Device::cuda) {
#ifdef HGAD_CLI_CUDA
    hgad_cli::GpuWorld joined = hgad_cli::join_gpus(*world);
    gpus = std::move(joined.communicator);
    gpus_how = joined.how;
#endif
  }

  hgad::MvtecOptions options;
  options.classes = classes;
  const hgad::MvtecDataset train(data, hgad::Split::train, options);
  if (!resumed) config.set_classes_from_folders(train.class_names());
  auto fx = hgad::make_extractor<Scalar>(config.features, backbone, device);
  if (resumed)
    hgad::check_backbone_matches(config, *fx);
  else
    config.levels = hgad::feature_levels(*fx, config.features);
  config.validate(true);
  check_training_memory(config, train.size(), args);

  if (writer) {
    std::fprintf(stderr, "hgad train: %lld images of %lld classes, %lld levels (",
                 static_cast<long long>(train.size()), static_cast<long long>(config.n_classes()),
                 static_cast<long long>(config.n_levels()));
    for (std::size_t l = 0; l < config.levels.size(); ++l)
      std::fprintf(stderr, "%s%lldx%lldx%lld", l ? ", " : "",
                   static_cast<long long>(config.levels[l].dim),
                   static_cast<long long>(config.levels[l].height),
                   static_cast<long long>(config.levels[l].width));
    std::fprintf(stderr, "), %lld epochs, objective %s",
                 static_cast<long long>(untrained ? 0 : config.total_epochs()),
                 hgad::to_string(config.objective).c_str());
    if (world) std::fprintf(stderr, ", %d processes", world->size());
    if (!gpus_how.empty()) std::fprintf(stderr, " (%s)", gpus_how.c_str());
    std::fprintf(stderr, "\n");
  }

  // Under mpirun each rank runs the backbone on its own part of the images (shard_rows) and the
  // ranks then exchange the features, so that every rank holds all of them in the data set's
  // order; each rank caches its part under a tag of its own.
  const int ranks = world ? world->size() : 1;
  if (ranks > train.size())
    throw UsageError(std::to_string(ranks) + " processes for " + std::to_string(train.size()) +
                     " training images: every process needs at least one");
  const hgad::RowRange part = hgad::shard_rows(train.size(), ranks, world ? world->rank() : 0);
  hgad::ExtractedImages<Scalar> set;
  {
    std::vector<Index> mine;
    for (Index i = part.begin; i < part.end; ++i) mine.push_back(i);
    const std::string tag = ranks == 1 ? std::string("train")
                                       : "train.rank" + std::to_string(world->rank()) + "of" +
                                             std::to_string(ranks);
    Progress bar("features", part.size(), "img");
    set = hgad::extract_images_cached(args.get("cache", ""), tag, backbone, train, mine, *fx,
                                      config.features, false, 8,
                                      [&](Index done, Index) { bar.update(done); });
    bar.finish();
    if (ranks > 1) set = gather_images(*world, set, config.levels, train.size());
  }
  // --validation: the held-out images leave the training (and the calibration) here.
  hgad::ExtractedImages<Scalar> held;
  if (validation_percent > 0) {
    set = without_held_out(set, train.class_names(), validation_percent, &held);
    if (ranks > set.size())
      throw UsageError(std::to_string(ranks) + " processes for " + std::to_string(set.size()) +
                       " training images after --validation: every process needs at least one");
  }
  // Trains and calibrates one model of `cfg` on the extracted images, each labelled with its
  // folder's class in `cfg` (its group's, when a group lists the folder); with --validation,
  // held_figure is the held-out figure of the model it returns.
  // start_only: the data-dependent start of init = whiten, calibrated but not trained (whatever
  // --epochs says; the choice of --auto-group's groups, below).
  hgad::HeldOut held_figure;
  auto train_model = [&](const hgad::ModelConfig& cfg, bool start_only) {
    const std::vector<std::int64_t> labels = class_labels(cfg, set.classes, train.class_names());
    const std::vector<std::int64_t> held_labels =
        class_labels(cfg, held.classes, train.class_names());
    // The run stored by --resume continues (once); any other training starts anew.
    const bool resume =
        !start_only && resumed && cfg.to_text() == resumed->first.config().to_text();
    const bool at_start = untrained || start_only;
    Model model = resume ? std::move(resumed->first) : Model(cfg);
    model.set_device(device);
    model.set_metadata("train_folders", hgad::detail::mvtec::join_names(train.class_names()));
    {
      const Index B = std::min<Index>(cfg.batch_size, set.size());
      // --epochs 0: the data-dependent start, no step (the bar shows the start being set).
      Progress bar(at_start ? "start" : "training",
                   at_start ? 1 : cfg.total_epochs() * (set.size() / B),
                   at_start ? "model" : "step");
      hgad::FitOptions<Scalar> fit;
      fit.communicator = gpus ? gpus.get() : world.get();  // callbacks run on rank 0 only
      fit.on_step = [&](const hgad::FitProgress<Scalar>& p) { bar.update(p.step, loss_status(p)); };
      fit.checkpoint_every = checkpoint_every;
      fit.on_checkpoint = [&](const Model& m, const hgad::TrainingState<Scalar>& state) {
        m.save_checkpoint(checkpoint_path, state);
      };
      if (resume) {
        fit.resume = &resumed->second;
        bar.update(resumed->second.steps_done);
      }
      if (validation_percent > 0) {
        fit.validation_features = &held.features;
        fit.validation_labels = &held_labels;
        fit.keep_best = args.has("keep-best");
      }
      hgad::FitReport<Scalar> report;
      if (at_start)
        model.initialise_from_data(set.features, labels);  // --epochs 0: the start alone
      else
        report = model.fit(set.features, labels, fit);
      if (resume) resumed.reset();
      bar.finish();
      if (writer && !report.validation.empty()) std::printf("%s", validation_curve(report).c_str());
      if (writer && validation_percent > 0 && !start_only)
        held_figure = final_held_out(report, model, held.features, held_labels);
    }
    const Index used = calibration_image_count(cfg, labels);
    // Under mpirun each rank scores its part of the calibration images and every rank ends with
    // the whole calibration (--auto-group's decision is then every rank's alike).
    {
      Progress bar("calibration", hgad::shard_rows(used, ranks, world ? world->rank() : 0).size(),
                   "img");
      model.calibrate(set.features, labels, [&](Index done, Index) { bar.update(done); },
                      world.get());
      bar.finish();
    }
    return model;
  };
  // --auto-group takes its groups from the class confusion of a first model on the training
  // images. With init = whiten the untrained start already tells the classes apart (its class
  // posterior is that of the class means under the shared covariance, docs/algorithm.md §2.5), so
  // the groups come from the start and the model is trained once, with them; with the paper's
  // start, from a first trained model, and the grouped model is trained again. A resumed run that
  // already trains class groups is the grouped training of --auto-group (or a grouping of the
  // user's): it is not regrouped.
  const bool regroup =
      args.has("auto-group") && !(args.has("resume") && !config.class_groups.empty());
  const bool group_at_start = regroup && !untrained && config.init == hgad::ModelInit::whiten;
  // The class confusion reads the class posterior, which the class centres alone set: the start
  // that only chooses the groups places its intra-class centres by the noise rule, not by k-means.
  hgad::ModelConfig first_config = config;
  if (group_at_start) first_config.intra_center_init = hgad::IntraCenterInit::noise;
  Model model = train_model(first_config, group_at_start);
  if (writer)
    std::printf("%s%s", group_at_start ? "the untrained start (init = whiten):\n" : "",
                class_confusion_report(model, "").c_str());
  bool train_again = group_at_start;  // the start only chose the groups
  if (regroup) {
    const auto groups = hgad::suggest_class_groups(config, model.class_confusion());
    const hgad::ModelConfig grouped = groups.empty() ? config : hgad::regrouped(config, groups, train.class_names());
    if (grouped.n_classes() == 1) {
      if (writer)
        std::printf("the suggested groups would leave one class, and HGAD models several: %s\n",
                    group_at_start ? "the classes are kept" : "the first model is kept");
    } else if (!groups.empty()) {
      config = grouped;
      config.validate(true);
      if (writer)
        std::printf("training %swith %lld classes\n", group_at_start ? "" : "again ",
                    static_cast<long long>(config.n_classes()));
      train_again = true;
    }
  }
  if (train_again) {
    model = train_model(config, false);
    if (writer) std::printf("%s", class_confusion_report(model, "").c_str());
  }
  if (!writer) return 0;
  if (validation_percent > 0) {
    const hgad::HeldOut& v = held_figure;
    std::printf("validation (%lld %% of each class's training images, %lld images): mean log-likelihood "
                "per dimension",
                static_cast<long long>(validation_percent), static_cast<long long>(v.images));
    for (std::size_t l = 0; l < v.log_likelihood.size(); ++l)
      std::printf("%s level %zu %.5f", l ? "," : "", l, v.log_likelihood[l]);
    std::printf(", mean %.5f; class accuracy %s\n", v.mean_log_likelihood,
                format_metric(v.class_accuracy).c_str());
  }
  model.set_metadata("backbone_dir", fs::absolute(backbone).lexically_normal().string());
  model.set_metadata("train_data", fs::absolute(data).lexically_normal().string());
  // hgad test --validation reads it: those images are the ones it may score.
  model.set_metadata("validation_percent", std::to_string(validation_percent));
  model.save(out);
  if (checkpoint_every > 0) fs::remove(checkpoint_path);  // the finished model supersedes it
  std::printf("wrote %s: %lld classes, %lld levels, %lld parameters, %lld epochs\n", out.c_str(),
              static_cast<long long>(model.n_classes()), static_cast<long long>(model.n_levels()),
              static_cast<long long>(model.n_parameters()),
              static_cast<long long>(model.epochs_trained()));
  return 0;
}

// ------------------------------------------------------------------------------------------------
// test

const std::vector<OptionSpec> test_options = {
    {"model", "MODEL", "model written by hgad train"},
    {"data", "DIR", "dataset root in MVTec layout (<class>/test/..., <class>/ground_truth/...)"},
    {"mode", "MODE", "transductive | calibrated | label-free (default calibrated)"},
    {"criterion", "C", "product (HGAD, default) | likelihood | entropy: the maps combined"},
    {"classes", "A,B,...", "test only these of the model's classes (or of its groups' folders)"},
    {"validation", "PERCENT",
     "instead of the test images, the training images `hgad train --validation PERCENT` held out, "
     "each as it is and with a synthetic defect (a pasted patch) whose mask is known"},
    {"defects", "SIZES",
     "with --validation: large (2-8 % of the image, default) | small (0.2-2 %) | spread (0.2-8 %) "
     "| wide (8-40 %)"},
    {"defect-kinds", "",
     "below each class, a row per kind of defect (its test/<kind>/ folder): the class's good "
     "images with that kind's alone"},
    {"json", "FILE",
     "every metric per class and the mean, each image's score and decision, and the config as JSON "
     "(-: stdout, table to stderr)"},
    {"backbone", "DIR", "ResNet weights folder (default: the one recorded at training)"},
    {"cache", "DIR", "keep the backbone features in DIR and reuse them when nothing changed"},
    {"threads", "N", "worker threads (default: all cores)"},
    {"device", "cpu|cuda",
     "where the backbone, the flows' training and the scores run (default cpu)"},
};

/// The seed of the synthetic defects of hgad test --validation: one for every run, so that two
/// models are measured on the same defects.
constexpr std::uint64_t synthetic_defect_seed = 0;

int cmd_test(const Args& args) {
  if (args.help()) {
    std::cout
        << "usage: hgad test --model MODEL --data DIR [options]\n\n"
           "Scores the test images of every class of the model and prints per class the image\n"
           "AUROC, pixel AUROC, AUPRO (FPR <= 0.3), image AP, image F1-max, the precision, recall\n"
           "and F1 of the model's decision (score above the class's threshold), and in label-free\n"
           "mode the accuracy of the predicted class, then the means. A class without a\n"
           "ground_truth/ folder (image-level labels only) gets the image metrics alone.\n"
           "  transductive  normalisation over the whole test set of a class (the paper's "
           "protocol)\n"
           "  calibrated    constants frozen from the training images; images scored one by one\n"
           "  label-free    calibrated, with each image's class predicted by the "
           "model\n\n"
           "With --validation P (a model trained with --validation P) the images are the\n"
           "training images the model was trained without, each scored as it is and with a\n"
           "synthetic defect: a rectangle of the image pasted elsewhere in it with its brightness\n"
           "and contrast changed, the rectangle being the defect's mask (docs/algorithm.md §9.6).\n"
           "The same figures then measure detection on training data alone, to choose settings\n"
           "without a test image. --defects sets their sizes: large, an area uniform in 2-8 % of\n"
           "the image; small, log-uniform in 0.2-2 %; spread, log-uniform in 0.2-8 %; wide,\n"
           "log-uniform in 8-40 %, each side up to the whole image.\n\n"
           "--defect-kinds adds below each class a row per kind of defect (the folders under\n"
           "<class>/test/ other than good): the class's good images with that kind's images\n"
           "alone. A class's pixel metrics pool every pixel, so a kind with large masks weighs\n"
           "most in them; these rows show which kind sets them.\n\n"
           "options:\n"
        << hgad_cli::describe_options(test_options);
    return 0;
  }
  const std::string model_path = args.required("model");
  const std::string data = args.required("data");
  const hgad::ScoreMode mode =
      parsed_option(args, "mode", hgad::parse_score_mode, hgad::ScoreMode::calibrated);
  const hgad::ScoreCriterion criterion =
      parsed_option(args, "criterion", hgad::parse_score_criterion, hgad::ScoreCriterion::product);
  std::vector<std::string> only;
  if (args.has("classes")) only = split_names(args.get("classes", ""), "--classes");
  const std::string json_path = args.get("json", "");
  if (!json_path.empty() && json_path != "-") require_output_file(json_path, "--json");
  const std::string defects = args.get("defects", "large");
  const hgad::SyntheticDefectRanges defect_ranges =
      parsed_option(args, "defects", hgad::synthetic_defect_ranges, hgad::SyntheticDefectRanges{});
  if (args.has("defects") && !args.has("validation"))
    throw UsageError(
        "--defects sizes the synthetic defects of --validation: it needs --validation");
  const bool per_kind = args.has("defect-kinds");
  if (per_kind && args.has("validation"))
    throw UsageError("--defect-kinds splits the test images by their folders; the synthetic "
                     "defects of --validation are of one kind");
  apply_threads(args);
  require_directory(data, "--data");

  const hgad::Device device = device_of(args);
  Model model = load_model(model_path);
  model.set_device(device);
  const hgad::ModelConfig& config = model.config();
  if (mode != hgad::ScoreMode::transductive && !model.is_calibrated())
    throw hgad::Error("the model '" + model_path +
                      "' holds no calibration constants; use --mode transductive");
  if (mode == hgad::ScoreMode::label_free && config.objective == hgad::Objective::nf)
    std::fprintf(stderr,
                 "hgad test: note: the NF baseline has no class model; label-free scoring uses the "
                 "class-agnostic constants\n");
  std::vector<std::string> classes = only.empty() ? config.folder_names() : only;
  for (const auto& c : classes)
    if (config.class_of(c) < 0) throw UsageError("--classes: the model knows no class '" + c + "'");
  // --validation: the images the model was trained without, as the model file records them.
  const Index validation_percent = validation_option(args);
  const std::string recorded = model.metadata("validation_percent", "0");
  if (validation_percent > 0 && recorded != std::to_string(validation_percent))
    throw UsageError(
        "--validation " + std::to_string(validation_percent) + ": the model '" + model_path +
        "' was trained " +
        (recorded == "0"
             ? std::string("on all its training images (or by an hgad that did not record it)")
             : "with --validation " + recorded) +
        "; scoring images it was trained on would measure nothing");
  const std::string backbone = backbone_dir_for(args, model);
  auto fx = hgad::make_extractor<Scalar>(config.features, backbone, device);
  hgad::check_backbone_matches(config, *fx);

  hgad::MvtecOptions options;
  options.classes = classes;
  options.mask_mode = hgad::MaskMode::when_present;
  const hgad::MvtecDataset test(
      data, validation_percent > 0 ? hgad::Split::train : hgad::Split::test, options);
  std::vector<bool> held_out;
  if (validation_percent > 0) {
    std::vector<std::int64_t> folder_of_image;
    for (Index i = 0; i < test.size(); ++i) folder_of_image.push_back(test[i].class_index);
    held_out = validation_rows(folder_of_image, test.class_names(), validation_percent);
  }
  std::vector<std::string> maskless;  // the synthetic defects of --validation bring their masks
  for (Index c = 0; c < test.n_classes() && validation_percent == 0; ++c)
    if (!test.has_masks(c)) maskless.push_back(test.class_names()[static_cast<std::size_t>(c)]);
  // The thresholds hold for calibrated scores of the product criterion's maps; transductive scores
  // and other maps have another scale.
  const bool has_thresholds = model.is_calibrated() && model.calibration(0).has_threshold();
  const bool with_threshold =
      mode != hgad::ScoreMode::transductive && has_thresholds && model.thresholds_hold(criterion);

  std::vector<hgad::ClassReport> results;
  std::vector<std::vector<hgad::ClassReport>> kind_results;  // per class, with --defect-kinds
  Json image_rows = Json::array();  // every test image's score, for --json
  for (Index c = 0; c < test.n_classes(); ++c) {
    const std::string& name = test.class_names()[static_cast<std::size_t>(c)];
    const std::int64_t model_class = config.class_of(name);
    std::vector<Index> indices = test.indices_of_class(c);
    if (validation_percent > 0)
      indices.erase(std::remove_if(indices.begin(), indices.end(),
                                   [&](Index i) { return !held_out[static_cast<std::size_t>(i)]; }),
                    indices.end());
    hgad::ExtractedImages<Scalar> set;
    {
      Progress bar(name + " features", static_cast<Index>(indices.size()), "img");
      const auto progress = [&](Index done, Index) { bar.update(done); };
      set = validation_percent > 0
                ? hgad::extract_with_synthetic_defects(test, indices, *fx, config.features,
                                                       synthetic_defect_seed, 8, progress,
                                                       defect_ranges)
                : hgad::extract_images_cached(args.get("cache", ""), "test_" + name, backbone, test,
                                              indices, *fx, config.features, true, 8, progress);
      bar.finish();
    }
    std::vector<hgad::ScoredImage<Scalar>> scored;
    {
      Progress bar(name + " scoring", set.size(), "img");
      scored = model.score_set(
          set.features,
          std::vector<std::int64_t>(static_cast<std::size_t>(set.size()), model_class), mode,
          [&](Index i) { bar.update(i + 1); }, criterion);
      bar.finish();
    }
    const Index S = config.features.mask_size;
    hgad::Tensor<Scalar> maps = hgad::Tensor<Scalar>::empty({set.size(), S, S});
    std::vector<double> scores;
    Index correct = 0;
    for (Index i = 0; i < set.size(); ++i) {
      const auto& s = scored[static_cast<std::size_t>(i)];
      std::copy(s.map.data(), s.map.data() + S * S, maps.data() + i * S * S);
      scores.push_back(s.score);
      if (s.predicted_class == model_class) ++correct;
    }
    hgad::ClassReport m = hgad::evaluate_class(name, scores, set.labels, maps,
                                                set.has_masks ? set.masks : hgad::Tensor<float>());
    if (mode == hgad::ScoreMode::label_free && config.objective == hgad::Objective::hgad)
      m.class_accuracy = double(correct) / double(set.size());
    std::vector<bool> flagged;
    if (with_threshold) {
      for (const auto& s : scored)
        flagged.push_back(model.calibration(s.scored_class >= 0 ? s.scored_class : model.n_classes())
                              .is_anomalous(s.score));
      hgad::decision_metrics(set.labels, flagged, m);
      if (mode == hgad::ScoreMode::calibrated) m.threshold = model.calibration(model_class).threshold;
    }
    results.push_back(m);
    if (per_kind) {
      std::vector<std::string> kinds;
      for (Index i : indices) kinds.push_back(test[i].defect_type);
      kind_results.push_back(hgad::evaluate_defect_kinds(
          kinds, scores, set.labels, maps, set.has_masks ? set.masks : hgad::Tensor<float>(),
          flagged));
      for (hgad::ClassReport& k : kind_results.back()) k.threshold = m.threshold;
    }
    for (Index i = 0; i < set.size(); ++i) {
      const auto& s = scored[static_cast<std::size_t>(i)];
      Json row = Json::object();
      row.set("class", Json::string(name));
      row.set("image", Json::string(set.paths[static_cast<std::size_t>(i)]));
      row.set("label", Json::integer(set.labels[static_cast<std::size_t>(i)]));
      row.set("score", Json::number(s.score));
      if (with_threshold) row.set("anomalous", Json::boolean(flagged[static_cast<std::size_t>(i)]));
      if (s.predicted_class >= 0)
        row.set("predicted_class",
                Json::string(config.class_names[static_cast<std::size_t>(s.predicted_class)]));
      image_rows.push(std::move(row));
    }
  }
  const hgad::ClassReport mean = hgad::mean_metrics(results);
  const bool with_accuracy =
      mode == hgad::ScoreMode::label_free && config.objective == hgad::Objective::hgad;

  // With --json - the JSON is standard output, and the table goes to standard error.
  std::FILE* const table = json_path == "-" ? stderr : stdout;
  std::fprintf(table, "mode %s, criterion %s, objective %s, model %s\n", hgad::to_string(mode),
               hgad::to_string(criterion), hgad::to_string(config.objective).c_str(), model_path.c_str());
  if (validation_percent > 0)
    std::fprintf(table,
                 "images: the %lld %% of each class's training images held out at training, each "
                 "as it is and with a synthetic defect (%s)\n",
                 static_cast<long long>(validation_percent), defects.c_str());
  std::fprintf(table, "%-16s %7s %8s %8s %8s %8s %8s %8s %8s %8s%s\n", "class", "images", "img-AUC",
               "pix-AUC", "AUPRO", "img-AP", "F1-max", "F1@thr", "prec@thr", "rec@thr",
               with_accuracy ? "  cls-acc" : "");
  auto row = [&](const hgad::ClassReport& m) {
    std::fprintf(table, "%-16s %7lld %8s %8s %8s %8s %8s %8s %8s %8s", m.name.c_str(),
                 static_cast<long long>(m.n_images), format_metric(m.image_auroc).c_str(),
                 format_metric(m.pixel_auroc).c_str(), format_metric(m.aupro).c_str(),
                 format_metric(m.image_ap).c_str(), format_metric(m.image_f1_max).c_str(),
                 format_metric(m.image_f1).c_str(), format_metric(m.image_precision).c_str(),
                 format_metric(m.image_recall).c_str());
    if (with_accuracy) std::fprintf(table, " %8s", format_metric(m.class_accuracy).c_str());
    std::fprintf(table, "\n");
  };
  for (std::size_t c = 0; c < results.size(); ++c) {
    row(results[c]);
    if (!per_kind) continue;
    for (hgad::ClassReport k : kind_results[c]) {
      k.name = "  " + k.name;
      row(k);
    }
  }
  row(mean);
  // Below the table, so that a script reading the rows keeps its columns.
  if (!maskless.empty())
    std::fprintf(table, "note: no ground_truth folder for %s: image metrics only; the pixel metrics "
                 "(pix-AUC, AUPRO) are absent (-)\n",
                 hgad::detail::join(maskless).c_str());
  if (with_threshold) {
    // F1@thr, prec@thr and rec@thr are explained by --help; no line here, which scripts would read.
  } else if (mode == hgad::ScoreMode::transductive) {
    std::fprintf(table, "note: F1@thr, prec@thr and rec@thr are absent (-): the thresholds hold for "
                 "calibrated scores, not transductive ones\n");
  } else if (!has_thresholds) {
    std::fprintf(table,
                 "note: the model holds no decision threshold (written by an older hgad): F1@thr, "
                 "prec@thr and rec@thr are absent (-); train it again to get one\n");
  } else {
    std::fprintf(table,
                 "note: F1@thr, prec@thr and rec@thr are absent (-): the thresholds hold for "
                 "the product criterion's scores, not the %s criterion's\n",
                 hgad::to_string(criterion));
  }

  if (!json_path.empty()) {
    Json j = Json::object();
    j.set("version", Json::string(HGAD_CLI_VERSION));
    j.set("mode", Json::string(hgad::to_string(mode)));
    j.set("criterion", Json::string(hgad::to_string(criterion)));
    j.set("model", Json::string(model_path));
    j.set("data", Json::string(data));
    // "validation": the held-out training images of --validation, each also with a defect.
    j.set("images_of", Json::string(validation_percent > 0 ? "validation" : "test"));
    if (validation_percent > 0) {
      j.set("validation_percent", Json::integer(validation_percent));
      j.set("defects", Json::string(defects));
    }
    j.set("objective", Json::string(hgad::to_string(config.objective)));
    Json no_masks = Json::array();
    for (const std::string& name : maskless) no_masks.push(Json::string(name));
    j.set("classes_without_masks", no_masks);
    Json per_class = Json::object();
    for (std::size_t c = 0; c < results.size(); ++c) {
      Json m = metrics_json(results[c]);
      if (per_kind) {
        Json kinds = Json::object();
        for (const hgad::ClassReport& k : kind_results[c]) kinds.set(k.name, metrics_json(k));
        m.set("defect_kinds", std::move(kinds));
      }
      per_class.set(results[c].name, std::move(m));
    }
    j.set("classes", per_class);
    j.set("mean", metrics_json(mean));
    j.set("images", std::move(image_rows));
    j.set("config", config_json(config));
    write_text_output(json_path, j.dump(2));
  }
  return 0;
}

// ------------------------------------------------------------------------------------------------
// calibrate

/// "a, b, c": the keys a trained model's scoring may change (hgad::scoring_config_keys).
std::string scoring_keys_text() {
  return hgad::detail::join(std::vector<std::string>(std::begin(hgad::scoring_config_keys),
                                                     std::end(hgad::scoring_config_keys)));
}

const std::vector<OptionSpec> calibrate_options = {
    {"model", "MODEL", "model written by hgad train"},
    {"data", "DIR", "the dataset root the model was trained on (<class>/train/good/...)"},
    {"config", "FILE",
     "key = value lines of the scoring settings to change (" + scoring_keys_text() + ")"},
    {"out", "MODEL", "model file to write (may be MODEL itself)"},
    {"backbone", "DIR", "ResNet weights folder (default: the one recorded at training)"},
    {"cache", "DIR", "keep the backbone features in DIR and reuse them when nothing changed"},
    {"threads", "N", "worker threads (default: all cores)"},
    {"device", "cpu|cuda", "where the backbone and the scores run (default cpu)"},
};

int cmd_calibrate(const Args& args) {
  if (args.help()) {
    std::cout
        << "usage: hgad calibrate --model MODEL --data DIR --out MODEL [options]\n\n"
           "Computes the calibrated-mode constants of a trained model again from its training\n"
           "images, after changing the settings of --config that enter the scoring alone (not the\n"
           "training): the maps and scores of a trained model can be tried another way without\n"
           "training it again. The images are those it was trained on, in the same classes and\n"
           "groups; the images `hgad train --validation` held out stay out, so that `hgad test\n"
           "--validation` still scores images the model has not seen.\n\noptions:\n"
        << hgad_cli::describe_options(calibrate_options);
    return 0;
  }
  const std::string model_path = args.required("model");
  const std::string data = args.required("data");
  const std::string out = args.required("out");
  require_output_file(out, "--out");
  apply_threads(args);
  require_directory(data, "--data");
  const hgad::Device device = device_of(args);
  Model model = load_model(model_path);
  model.set_device(device);
  hgad::ModelConfig config = model.config();
  if (args.has("config")) {
    const std::string file = args.get("config", "");
    require_file(file, "--config");
    config = hgad::ModelConfig::from_text(read_text_file(file, "config file", max_config_bytes),
                                          file, config);
  }
  model.change_scoring(config);
  // The images of the training: its folders in its order (a class's calibration images are
  // spread over its images in that order), less the images --validation held out.
  const std::string folders = model.metadata("train_folders");
  hgad::MvtecOptions options;
  options.classes = folders.empty() ? config.folder_names()
                                    : split_names(folders, "the model's class folders");
  const hgad::MvtecDataset train(data, hgad::Split::train, options);
  Index validation_percent = 0;
  const std::string recorded = model.metadata("validation_percent", "0");
  if (!hgad::detail::parse_number(recorded, validation_percent) || validation_percent < 0 ||
      validation_percent > 90)
    throw hgad::Error("the model '" + model_path + "' records the validation share '" + recorded +
                      "', not a percentage in [0, 90]");
  const std::string backbone = backbone_dir_for(args, model);
  auto fx = hgad::make_extractor<Scalar>(config.features, backbone, device);
  hgad::check_backbone_matches(config, *fx);
  std::vector<Index> rows(static_cast<std::size_t>(train.size()));
  std::iota(rows.begin(), rows.end(), Index(0));
  hgad::ExtractedImages<Scalar> set;
  {
    Progress bar("features", train.size(), "img");
    set = hgad::extract_images_cached(args.get("cache", ""), "train", backbone, train, rows, *fx,
                                      config.features, false, 8,
                                      [&](Index done, Index) { bar.update(done); });
    bar.finish();
  }
  if (validation_percent > 0) set = without_held_out(set, train.class_names(), validation_percent);
  const std::vector<std::int64_t> labels = class_labels(config, set.classes, train.class_names());
  {
    Progress bar("calibration", calibration_image_count(config, labels), "img");
    model.calibrate(set.features, labels, [&](Index done, Index) { bar.update(done); });
    bar.finish();
  }
  model.save(out);
  std::printf("wrote %s: calibrated on %lld training images of %lld classes%s\n", out.c_str(),
              static_cast<long long>(set.size()), static_cast<long long>(model.n_classes()),
              validation_percent > 0
                  ? (" (" + std::to_string(validation_percent) + " % held out)").c_str()
                  : "");
  return 0;
}

// ------------------------------------------------------------------------------------------------
// predict

/// A CSV field as RFC 4180 writes it: as it is, or, when it holds a comma, a double quote, a
/// carriage return or a line feed, in double quotes with each double quote doubled.
std::string csv_field(const std::string& text) {
  if (text.find_first_of(",\"\r\n") == std::string::npos) return text;
  std::string quoted = "\"";
  for (char c : text) {
    if (c == '"') quoted += '"';
    quoted += c;
  }
  return quoted + "\"";
}

/// The names of the heat maps of `images` (`<stem>_heatmap.png`), distinct for distinct entries
/// even on a case-insensitive file system: an image keeps its file's stem when it is the first of
/// the list with that stem (compared ignoring ASCII case); a later one with the same stem gets
/// `<stem>_<n>`, the smallest n >= 1 that is neither the stem of an image of the list nor a name
/// already given. `a/x.jpg b/x.jpg x_1.jpg` -> `x`, `x_2`, `x_1`. scores.csv says which is which.
std::vector<std::string> heatmap_stems(const std::vector<std::string>& images) {
  const auto folded = [](std::string s) {
    for (char& c : s)
      if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
    return s;
  };
  std::vector<std::string> stems;
  std::set<std::string> taken;  // folded stems of every image, then every name given
  for (const auto& path : images) {
    stems.push_back(fs::path(path).stem().string());
    taken.insert(folded(stems.back()));
  }
  std::set<std::string> given;
  for (std::string& stem : stems) {
    if (given.insert(folded(stem)).second) continue;
    std::string name;
    for (int n = 1;; ++n) {
      name = stem + "_" + std::to_string(n);
      if (!taken.count(folded(name))) break;
    }
    taken.insert(folded(name));
    given.insert(folded(name));
    stem = name;
  }
  return stems;
}

/// The top of the heat maps' colour scale, whose bottom is 0: twice the largest image score of
/// the model's training images (ClassCalibration::train_score_max over every entry), so that red
/// marks a region at least twice as unusual as the most unusual normal image; 1 when every
/// training image scored 0.
double heat_map_scale(const Model& model) {
  double highest = 0;
  for (Index c = 0; c <= model.n_classes(); ++c)
    highest = std::max(highest, model.calibration(c).train_score_max);
  return highest > 0 ? 2 * highest : 1.0;
}

const std::vector<OptionSpec> predict_options = {
    {"model", "MODEL", "model written by hgad train"},
    {"out", "DIR", "folder for the heat maps and scores.csv (created if missing)"},
    {"class", "NAME", "the images' class (default: predicted by the model, label-free)"},
    {"backbone", "DIR", "ResNet weights folder (default: the one recorded at training)"},
    {"threads", "N", "worker threads (default: all cores)"},
    {"device", "cpu|cuda", "where the backbone, the flows' training and the scores run (default cpu)"},
};

int cmd_predict(const Args& args) {
  if (args.help()) {
    std::cout
        << "usage: hgad predict --model MODEL --out DIR [options] IMAGE...\n\n"
           "Scores each image on its own (calibrated constants) and writes\n"
           "DIR/<stem>_heatmap.png, the anomaly map in jet colours blended over the image, and\n"
           "DIR/scores.csv (RFC 4180 quoting). An image whose file stem an earlier image of the\n"
           "call has already taken gets DIR/<stem>_<n>_heatmap.png, n the smallest number that is\n"
           "no image's stem: a/x.png b/x.png x_1.png give x, x_2, x_1; the heatmap column of\n"
           "scores.csv names each file. Prints one line per image: score, anomalous (yes when the\n"
           "score is above the threshold of the class, calibrated on its training images:\n"
           "threshold_quantile), class used, file. Each image's line and heat map are written as\n"
           "soon as it is scored, scores.csv once all are. Every heat map of a model has the same\n"
           "colour scale, from 0 (blue) to twice the largest score of its training images (red),\n"
           "so an image's heat map does not depend on the other images of the call.\n\noptions:\n"
        << hgad_cli::describe_options(predict_options);
    return 0;
  }
  const std::string model_path = args.required("model");
  const std::string out_dir = args.required("out");
  const std::vector<std::string>& images = args.positionals();
  if (images.empty()) throw UsageError("no IMAGE given");
  apply_threads(args);
  if (fs::exists(out_dir) && !fs::is_directory(out_dir))
    throw hgad::Error("--out '" + out_dir + "' exists and is not a directory");
  for (const auto& path : images) require_file(path, "image");

  const hgad::Device device = device_of(args);
  Model loaded = load_model(model_path);
  if (!loaded.is_calibrated())
    throw hgad::Error("the model '" + model_path + "' holds no calibration constants");
  std::string class_name;
  if (args.has("class")) {
    class_name = args.get("class", "");
    if (loaded.config().class_of(class_name) < 0)
      throw UsageError("--class: the model knows no class '" + class_name + "'");
  }
  // The folder is made, and shown to take files, before the images are scored.
  std::error_code made;
  fs::create_directories(out_dir, made);
  if (made)
    throw hgad::Error("--out '" + out_dir + "': cannot create the folder: " + made.message());
  require_output_file((fs::path(out_dir) / "scores.csv").string(), "--out");
  const std::string backbone = backbone_dir_for(args, loaded);
  const hgad::Detector<Scalar> detector(std::move(loaded), backbone, device);
  const Model& model = detector.model();
  const hgad::ModelConfig& config = model.config();
  if (!model.calibration(0).has_threshold())
    std::fprintf(stderr,
                 "hgad predict: note: the model '%s' holds no decision threshold (written by an "
                 "older hgad): the anomalous column is '-'; train it again to get one\n",
                 model_path.c_str());

  hgad::Preprocess display = hgad::preprocess_for(config.features, false);
  display.image_size = config.features.mask_size;
  // One colour scale for every heat map of the model, so that an image's heat map does not depend
  // on the other images of the call and each is written as soon as it is scored.
  const double top = heat_map_scale(model);
  const std::vector<std::string> stems = heatmap_stems(images);
  std::ostringstream csv;
  csv << "image,class,score,anomalous,heatmap\n";
  Progress bar("scoring", static_cast<Index>(images.size()), "img");
  for (std::size_t i = 0; i < images.size(); ++i) {
    const hgad::Detection<Scalar> scored = detector.score_file(images[i], class_name);
    hgad::MvtecSample sample;
    sample.image_path = images[i];
    const hgad::Tensor<Scalar> picture = hgad::load_sample<Scalar>(sample, display).image;
    const std::string heat_path = (fs::path(out_dir) / (stems[i] + "_heatmap.png")).string();
    const hgad::Tensor<Scalar> colours = hgad::colormap_jet(scored.map, Scalar(0), Scalar(top));
    hgad::save_png(heat_path, hgad::blend(picture, colours, Scalar(0.5)));
    const std::string scored_class = scored.class_name.empty() ? "-" : scored.class_name;
    const char* anomalous = !scored.anomalous ? "-" : *scored.anomalous ? "yes" : "no";
    char score[32];
    std::snprintf(score, sizeof(score), "%.6g", scored.score);
    bar.clear();
    std::printf("%s\t%s\t%s\t%s\n", score, anomalous, scored_class.c_str(), images[i].c_str());
    std::fflush(stdout);
    csv << csv_field(images[i]) << "," << csv_field(scored_class) << "," << score << "," << anomalous
        << "," << csv_field(heat_path) << "\n";
    bar.advance();
  }
  bar.finish();
  write_text_output((fs::path(out_dir) / "scores.csv").string(), csv.str());
  return 0;
}

// ------------------------------------------------------------------------------------------------
// info

const std::vector<OptionSpec> info_options = {
    {"keys", "", "list every config key with its default and meaning (no MODEL)"},
};

/// `hgad info --keys`: every key of the config table as `key = default` with its meaning, the
/// text a --config file is written in (and the README's list).
std::string config_keys_text() {
  std::ostringstream out;
  out << "# hgad config keys: key = default  # meaning (levels and classes come from the data)\n";
  std::istringstream defaults(hgad::ModelConfig{}.to_text());
  std::vector<std::string> lines;
  for (std::string line; std::getline(defaults, line);)
    if (!line.empty() && line[0] != '#') lines.push_back(line);
  std::size_t next = 0;
  for (const auto& k : hgad::detail::config_key_meanings) {
    const std::string name = k.name;
    std::string line;
    if (name == hgad::detail::group_key_prefix)
      line = name + "NAME = a, b";  // no group by default
    else if (next < lines.size() && lines[next].compare(0, name.size() + 2, name + " =") == 0)
      line = lines[next++];
    else
      line = name + " =";
    out << std::left << std::setw(36) << line << "  # " << k.meaning << "\n";
  }
  return out.str();
}

int cmd_info(const Args& args) {
  if (args.help()) {
    std::cout << "usage: hgad info MODEL\n       hgad info --keys\n\nPrints what the model "
                 "file holds: its configuration (in the key = value\n"
                 "form hgad train --config reads), training state, calibration and decision\n"
                 "thresholds. --keys lists every config key with its default and meaning.\n";
    return 0;
  }
  if (args.has("keys")) {
    if (!args.positionals().empty()) throw UsageError("--keys takes no MODEL");
    std::printf("%s", config_keys_text().c_str());
    return 0;
  }
  if (args.positionals().size() != 1) throw UsageError("expected exactly one MODEL");
  const std::string path = args.positionals()[0];
  const Model model = load_model(path);
  std::printf("# model %s\n# %lld parameters, %lld epochs trained, %s\n", path.c_str(),
              static_cast<long long>(model.n_parameters()),
              static_cast<long long>(model.epochs_trained()),
              model.is_calibrated() ? "calibrated" : "not calibrated");
  for (const char* key : {"backbone_dir", "train_data"}) {
    const std::string v = model.metadata(key);
    if (!v.empty()) std::printf("# %s: %s\n", key, v.c_str());
  }
  if (model.is_calibrated()) {
    if (model.calibration(0).has_threshold()) {
      std::printf("# decision thresholds (threshold_quantile %s of the training images' scores; "
                  "above: anomalous):",
                  hgad::detail::format_double(model.config().threshold_quantile).c_str());
      for (Index c = 0; c <= model.n_classes(); ++c)
        std::printf("%s %s %.6g", c ? "," : "",
                    c < model.n_classes()
                        ? model.config().class_names[static_cast<std::size_t>(c)].c_str()
                        : "(any class)",
                    model.calibration(c).threshold);
      std::printf("\n");
    } else {
      std::printf("# decision thresholds: missing (a model file written before hgad stored them; "
                  "predict reports no decision, train again to get them)\n");
    }
  }
  std::printf("%s", model.config().to_text().c_str());
  std::printf("%s", class_confusion_report(model, "# ").c_str());
  return 0;
}

// ------------------------------------------------------------------------------------------------
// embeddings

const std::vector<OptionSpec> embeddings_options = {
    {"data", "DIR", "folder of <class>_X.npy, <class>_y.npy and unified_split_seed0.csv"},
    {"objective", "hgad|nf", "HGAD's hierarchical prior, or the single-Gaussian NF baseline"},
    {"json", "FILE", "also write every figure as JSON (-: stdout, table to stderr)"},
    {"out", "MODEL", "also save the trained model"},
    {"config", "FILE", "key = value settings over this command's defaults"},
    {"epochs", "N",
     "N passes over the training rows (overrides the config's schedule); 0 with init = whiten: "
     "the data-dependent start alone, untrained"},
    {"validation", "PERCENT",
     "hold out the last PERCENT % of each class's training normals; report their likelihood at the "
     "start, after every pass and at the end"},
    keep_best_option,
    {"no-baselines", "",
     "skip the two Gaussians fitted on the same training rows (one per class, one shared) that "
     "are otherwise scored beside the model"},
    {"threads", "N", "worker threads (default: all cores)"},
    {"device", "cpu|cuda",
     "where the backbone, the flows' training and the scores run (default cpu)"},
};

/// The image AUROC of the likelihood term alone on one class's test rows (n, 1, 1, D) with labels
/// y: the score is -logp, the per-dimension log-likelihood under the class's mixture (N(0, I) for
/// NF), with the class given or, label_free, predicted. `accuracy`, when given, receives the share
/// of rows whose predicted class is `class_index`.
double likelihood_auroc(const Model& model, const std::vector<hgad::Tensor<Scalar>>& test,
                        std::int64_t class_index, const std::vector<int>& y, bool label_free,
                        double* accuracy = nullptr) {
  const Index n = test[0].dim(0);
  std::vector<double> scores;
  Index correct = 0;
  for (Index i = 0; i < n; ++i) {
    const auto raw = model.raw_scores(Model::image_view(test, i), label_free ? -1 : class_index);
    scores.push_back(-double(raw.log_likelihood[0].data()[0]));
    correct += raw.predicted_class == class_index ? 1 : 0;
  }
  if (accuracy) *accuracy = double(correct) / double(n);
  return hgad::roc_auc_score(y, scores);
}

/// The Gaussian baselines of hgad embeddings, as untrained models of the library (their densities
/// are the model's, docs/algorithm.md §2.5 and §3.1.2): `init = whiten` makes the NF model at
/// step 0 the shared Gaussian N(μ, Σ_LW) of all training rows, and the HGAD model with
/// `class_covariance = intra` and one centre per class one Gaussian per class, N(m_y, Σ_y) with
/// Σ_y the Ledoit–Wolf covariance of the class's rows in the shared whitened space. Both take the
/// model's configuration but for those keys, and neither is trained.
hgad::ModelConfig gaussian_baseline_config(hgad::ModelConfig config, bool per_class) {
  config.init = hgad::ModelInit::whiten;
  config.objective = per_class ? hgad::Objective::hgad : hgad::Objective::nf;
  config.class_covariance = per_class ? hgad::ClassCovariance::intra : hgad::ClassCovariance::unit;
  config.n_centers = 1;
  config.validate(true);
  return config;
}

/// The embeddings command's defaults: one level of D x 1 x 1, no positional encoding (P = 0),
/// HGAD's prior and loss weights, and a schedule sized for a CPU: 4 blocks, 40 passes (2 warm-up,
/// 4 in stage 1) with batches of 64 rows.
hgad::ModelConfig embeddings_defaults() {
  hgad::ModelConfig c;
  c.pos_dim = 0;
  c.n_blocks = 4;
  c.meta_epochs = 40;
  c.sub_epochs = 1;
  c.warmup_meta_epochs = 2;
  c.stage1_meta_epochs = 4;
  c.batch_size = 64;
  c.features.backbone = "none";
  c.features.layers = {};
  c.features.image_size = 1;
  c.features.mask_size = 1;
  return c;
}

int cmd_embeddings(const Args& args) {
  if (args.help()) {
    std::cout
        << "usage: hgad embeddings --data DIR [options]\n\n"
           "The image-level unified protocol on precomputed embeddings: trains one model (P = 0, "
           "one\n"
           "level of D x 1 x 1) on the training normals of every class of the split file, then\n"
           "reports per class the image AUROC with the given class (calibrated constants), "
           "without\n"
           "it (label-free, with the class-prediction accuracy) and with the paper's transductive\n"
           "normalisation, each for the §5 score and for the likelihood term alone, and their "
           "means;\n"
           "beside them the image AUROC of one Gaussian per class and of one shared Gaussian "
           "fitted\n"
           "on the same training rows.\n"
           "\noptions:\n"
        << hgad_cli::describe_options(embeddings_options);
    return 0;
  }
  const std::string data = args.required("data");
  const std::string json_path = args.get("json", "");
  if (!json_path.empty() && json_path != "-") require_output_file(json_path, "--json");
  const std::string out_path = args.get("out", "");
  if (!out_path.empty()) require_output_file(out_path, "--out");
  apply_threads(args);
  hgad::ModelConfig config = embeddings_defaults();
  if (args.has("config")) {
    const std::string file = args.get("config", "");
    require_file(file, "--config");
    config = hgad::ModelConfig::from_text(read_text_file(file, "config file", max_config_bytes),
                                          file, config);
  }
  config.objective = parsed_option(args, "objective", hgad::parse_objective, config.objective);
  const Index epochs = epochs_option(args, config);
  if (!config.class_groups.empty())
    throw UsageError("--config: class groups (group." + config.class_groups[0].name +
                     ") are for hgad train; hgad embeddings trains on each class on its own");
  require_directory(data, "--data");

  auto dataset = hgad::load_embedding_dataset<Scalar>(data);
  const Index D = dataset.dim;
  // --validation: the last rows of each class's training normals (the split file orders them by a
  // hash, so these are a random subset) are held out of training, to choose settings on normal
  // training data alone: their mean log-likelihood and, for HGAD, the class accuracy.
  const Index validation_percent = validation_option(args);
  std::vector<hgad::Tensor<Scalar>> validation(dataset.classes.size());
  if (validation_percent > 0) {
    for (std::size_t k = 0; k < dataset.classes.size(); ++k) {
      auto& c = dataset.classes[k];
      const Index n = c.train.dim(0);
      const Index held = std::min<Index>(std::max<Index>(1, (n * validation_percent + 50) / 100), n - 2);
      if (held < 1)
        throw UsageError("--validation: class '" + c.name + "' has " + std::to_string(n) +
                         " training rows, too few to hold any out");
      validation[k] = c.train.slice(n - held, n).clone();
      c.train = c.train.slice(0, n - held).clone();
    }
  }
  config.class_names = dataset.class_names();
  config.levels = {{D, 1, 1}};
  config.pos_dim = 0;
  config.features.backbone = "none";
  config.validate(true);

  Index n_train = 0;
  for (const auto& c : dataset.classes) n_train += c.train.dim(0);
  hgad::Tensor<Scalar> train = hgad::Tensor<Scalar>::empty({n_train, 1, 1, D});
  std::vector<std::int64_t> labels;
  Index row = 0;
  for (const auto& c : dataset.classes) {
    std::copy(c.train.data(), c.train.data() + c.train.numel(), train.data() + row * D);
    row += c.train.dim(0);
    labels.insert(labels.end(), static_cast<std::size_t>(c.train.dim(0)), c.class_index);
  }
  std::fprintf(stderr,
               "hgad embeddings: %lld training rows of %lld classes, D = %lld, objective %s\n",
               static_cast<long long>(n_train), static_cast<long long>(config.n_classes()),
               static_cast<long long>(D), hgad::to_string(config.objective).c_str());

  // The held-out rows as one set, labelled with their classes.
  std::vector<hgad::Tensor<Scalar>> held;
  std::vector<std::int64_t> held_labels;
  if (validation_percent > 0) {
    Index rows = 0;
    for (const auto& v : validation) rows += v.dim(0);
    held.push_back(hgad::Tensor<Scalar>::empty({rows, 1, 1, D}));
    Scalar* at = held[0].data();
    for (std::size_t k = 0; k < dataset.classes.size(); ++k) {
      at = std::copy(validation[k].data(), validation[k].data() + validation[k].numel(), at);
      held_labels.insert(held_labels.end(), static_cast<std::size_t>(validation[k].dim(0)),
                         dataset.classes[k].class_index);
    }
  }

  Model model(config);
  model.set_device(device_of(args));
  const std::vector<hgad::Tensor<Scalar>> features = {train};
  hgad::FitReport<Scalar> report;
  {
    const Index B = std::min<Index>(config.batch_size, n_train);
    Progress bar(epochs == 0 ? "start" : "training",
                 epochs == 0 ? 1 : config.total_epochs() * (n_train / B), epochs == 0 ? "model" : "step");
    hgad::FitOptions<Scalar> fit;
    fit.on_step = [&](const hgad::FitProgress<Scalar>& p) { bar.update(p.step, loss_status(p)); };
    if (validation_percent > 0) {
      fit.validation_features = &held;
      fit.validation_labels = &held_labels;
      fit.keep_best = args.has("keep-best");
    }
    if (epochs == 0)
      model.initialise_from_data(features, labels);  // step 0: docs/algorithm.md §2.5
    else
      report = model.fit(features, labels, fit);
    bar.finish();
    if (!report.validation.empty()) std::fprintf(stderr, "%s", validation_curve(report).c_str());
  }
  model.calibrate(features, labels);

  // The Gaussians a user could fit instead, on the same training rows: one per class and one
  // shared, scored by their likelihood with the class given. They are beside the model's figures,
  // not part of them: when one cannot be fitted (a covariance of too few rows), the table says why
  // and the model's figures stand.
  std::vector<std::unique_ptr<Model>> gaussians;
  std::string baselines_status = "skipped (--no-baselines)";
  if (!args.has("no-baselines")) {
    try {
      for (const bool per_class : {true, false}) {
        gaussians.push_back(std::make_unique<Model>(gaussian_baseline_config(config, per_class)));
        gaussians.back()->initialise_from_data(features, labels);
      }
      baselines_status = "fitted";
    } catch (const hgad::Error& e) {
      gaussians.clear();
      baselines_status = std::string("not fitted: ") + e.what();
    }
  }

  // Columns: image AUROC with the §5 score (calibrated constants) and with the likelihood alone
  // (-logp, the per-dimension log-likelihood under the scored class's mixture, or N(0, I) for NF),
  // each with the true class and label-free; the class accuracy; the §5 score with transductive
  // constants; then the Gaussian baselines' image AUROC.
  struct Column {
    std::string key;      ///< the JSON's
    std::string heading;  ///< the table's
  };
  std::vector<Column> columns = {{"image_auroc_given", "given"},
                                 {"image_auroc_given_logp", "given-logp"},
                                 {"image_auroc_label_free", "label-free"},
                                 {"image_auroc_label_free_logp", "label-free-logp"},
                                 {"class_accuracy", "cls-acc"},
                                 {"image_auroc_transductive", "transductive"}};
  if (!gaussians.empty()) {
    columns.push_back({"image_auroc_gaussian_per_class", "gauss-class"});
    columns.push_back({"image_auroc_gaussian_shared", "gauss-shared"});
  }
  struct Row {
    std::string name;
    Index n_test = 0;
    std::vector<double> values;
  };
  std::vector<Row> rows;
  for (const auto& c : dataset.classes) {
    const Index n = c.test.dim(0);
    const std::vector<hgad::Tensor<Scalar>> test = {c.test.reshape({n, 1, 1, D})};
    const std::vector<std::int64_t> classes(static_cast<std::size_t>(n), c.class_index);
    std::vector<int> y(c.test_labels.begin(), c.test_labels.end());
    auto auroc_of_mode = [&](hgad::ScoreMode mode) {
      std::vector<double> scores;
      for (const auto& s : model.score_set(test, classes, mode)) scores.push_back(s.score);
      return hgad::roc_auc_score(y, scores);
    };
    auto logp_auroc = [&](bool label_free, double* accuracy) {
      return likelihood_auroc(model, test, c.class_index, y, label_free, accuracy);
    };
    Row r;
    r.name = c.name;
    r.n_test = n;
    double accuracy = 0;
    const bool hgad_objective = config.objective == hgad::Objective::hgad;
    r.values = {auroc_of_mode(hgad::ScoreMode::calibrated),
                logp_auroc(false, nullptr),
                auroc_of_mode(hgad::ScoreMode::label_free),
                hgad_objective ? logp_auroc(true, &accuracy) : logp_auroc(false, nullptr),
                hgad_objective ? 0.0 : std::nan(""),
                auroc_of_mode(hgad::ScoreMode::transductive)};
    if (hgad_objective) r.values[4] = accuracy;
    for (const auto& g : gaussians)
      r.values.push_back(likelihood_auroc(*g, test, c.class_index, y, false));
    rows.push_back(r);
  }
  Row mean;
  mean.name = "mean";
  mean.values.assign(columns.size(), 0.0);
  for (const auto& r : rows) {
    mean.n_test += r.n_test;
    for (std::size_t k = 0; k < columns.size(); ++k)
      mean.values[k] += r.values[k] / double(rows.size());
  }
  // With --json - the JSON is standard output, and the tables go to standard error.
  std::FILE* const table = json_path == "-" ? stderr : stdout;
  std::fprintf(
      table,
      "objective %s, %lld blocks, %lld epochs: image AUROC per class (score: the §5 product of "
      "the\n"
      "likelihood and entropy terms, or logp: the likelihood alone)\n",
      hgad::to_string(config.objective).c_str(), static_cast<long long>(config.n_blocks),
      static_cast<long long>(epochs == 0 ? 0 : config.total_epochs()));
  auto width = [&](std::size_t k) {
    return static_cast<int>(std::max<std::size_t>(7, columns[k].heading.size()));
  };
  std::fprintf(table, "%-12s %5s", "class", "test");
  for (std::size_t k = 0; k < columns.size(); ++k)
    std::fprintf(table, " %*s", width(k), columns[k].heading.c_str());
  std::fprintf(table, "\n");
  std::vector<const Row*> printed;
  for (const Row& r : rows) printed.push_back(&r);
  printed.push_back(&mean);
  for (const Row* r : printed) {
    std::fprintf(table, "%-12s %5lld", r->name.c_str(), static_cast<long long>(r->n_test));
    for (std::size_t k = 0; k < columns.size(); ++k)
      std::fprintf(table, " %*s", width(k), format_metric(r->values[k]).c_str());
    std::fprintf(table, "\n");
  }
  if (!gaussians.empty())
    std::fprintf(table,
                 "gauss-class, gauss-shared: one Gaussian per class and one shared Gaussian "
                 "(Ledoit-Wolf covariances)\nfitted on the same training rows, scored by their "
                 "likelihood with the class given; --no-baselines skips them\n");
  else if (!args.has("no-baselines"))
    std::fprintf(table, "the Gaussian baselines were %s\n", baselines_status.c_str());
  std::fprintf(table, "%s", class_confusion_report(model, "").c_str());

  // Held-out training normals: mean over classes of the mean per-dimension log-likelihood under the
  // row's own class (N(0, I) for NF), and the share of rows whose predicted class is right.
  double validation_logp = 0, validation_accuracy = 0;
  Index validation_rows = 0;
  if (validation_percent > 0) {
    const hgad::HeldOut measured = final_held_out(report, model, held, held_labels);
    validation_rows = measured.images;
    validation_logp = measured.mean_log_likelihood;
    validation_accuracy = measured.class_accuracy;
    std::fprintf(table,
                 "validation (%lld %% of each class's training normals, %lld rows): mean "
                 "log-likelihood per dimension %.5f, class accuracy %s\n",
                 static_cast<long long>(validation_percent), static_cast<long long>(validation_rows),
                 validation_logp, format_metric(validation_accuracy).c_str());
  }

  if (!json_path.empty()) {
    Json j = Json::object();
    j.set("version", Json::string(HGAD_CLI_VERSION));
    j.set("data", Json::string(data));
    j.set("objective", Json::string(hgad::to_string(config.objective)));
    auto row_json = [&](const Row& r) {
      Json c = Json::object();
      c.set("test_rows", Json::integer(r.n_test));
      for (std::size_t k = 0; k < columns.size(); ++k)
        c.set(columns[k].key, Json::number(r.values[k]));
      return c;
    };
    Json per_class = Json::object();
    for (const Row& r : rows) per_class.set(r.name, row_json(r));
    j.set("classes", per_class);
    j.set("mean", row_json(mean));
    j.set("gaussian_baselines", Json::string(baselines_status));
    if (validation_percent > 0) {
      Json v = Json::object();
      v.set("percent", Json::integer(validation_percent));
      v.set("rows", Json::integer(validation_rows));
      v.set("log_likelihood", Json::number(validation_logp));
      v.set("class_accuracy", Json::number(validation_accuracy));
      j.set("validation", v);
    }
    j.set("config", config_json(config));
    write_text_output(json_path, j.dump(2));
  }
  if (!out_path.empty()) model.save(out_path);
  return 0;
}

// ------------------------------------------------------------------------------------------------

const char* const general_usage =
    "usage: hgad <command> [options]\n\n"
    "HGAD (hierarchical Gaussian-mixture normalizing flows, Yao et al., ECCV 2024): one anomaly\n"
    "detector for many product classes.\n\n"
    "commands:\n"
    "  train       train one model on the classes of a folder in MVTec layout\n"
    "  test        score the test images and print per-class metrics\n"
    "  calibrate   change a trained model's scoring settings and calibrate it again\n"
    "  predict     score images and write heat maps\n"
    "  info        print a model's configuration\n"
    "  embeddings  the image-level unified protocol on precomputed embeddings\n\n"
    "'hgad <command> --help' describes a command's options.\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(general_usage, stderr);
    return 2;
  }
  const std::string command = argv[1];
  if (command == "--help" || command == "-h" || command == "help") {
    std::fputs(general_usage, stdout);
    return 0;
  }
  hgad::detail::remove_temporaries_on_signals();
  try {
    if (command == "train") return cmd_train(Args(command, argc, argv, 2, train_options, false));
    if (command == "test") return cmd_test(Args(command, argc, argv, 2, test_options, false));
    if (command == "calibrate")
      return cmd_calibrate(Args(command, argc, argv, 2, calibrate_options, false));
    if (command == "predict")
      return cmd_predict(Args(command, argc, argv, 2, predict_options, true));
    if (command == "info") return cmd_info(Args(command, argc, argv, 2, info_options, true));
    if (command == "embeddings")
      return cmd_embeddings(Args(command, argc, argv, 2, embeddings_options, false));
    std::fprintf(stderr, "hgad: unknown command '%s'\n\n%s", command.c_str(), general_usage);
    return 2;
  } catch (const UsageError& e) {
    std::fprintf(stderr, "hgad %s: %s\n(see 'hgad %s --help')\n", command.c_str(), e.what(),
                 command.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hgad %s: error: %s\n", command.c_str(), e.what());
    return 1;
  }
}
