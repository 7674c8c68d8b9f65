#pragma once
/// \file
/// From a folder of images in MVTec layout to model-ready features, and from anomaly maps to the
/// per-class metrics: the glue between io/, backbone/, model/ and metrics/ that the `hgad` program
/// and user programs share. It needs stb (through io/mvtec.hpp), so it is not in the umbrella
/// header.
///
///     hgad::ModelConfig config;                                   // config.features: resnet18,
///     layer2+layer3, 256 auto fx = hgad::make_extractor<float>(config.features,
///     "weights/resnet18-imagenet"); config.levels = hgad::feature_levels(*fx, config.features); //
///     {128x32x32, 256x16x16} hgad::MvtecDataset train(root, hgad::Split::train); auto set =
///     hgad::extract_images(train, hgad::all_indices(train), *fx, config.features, false);
///     hgad::HgadModel<float> model(config);
///     model.fit(set.features, set.classes);

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "../backbone/feature_extractor.hpp"
#include "../detail/atomic_file.hpp"
#include "../detail/check.hpp"
#include "../detail/parallel.hpp"
#include "../io/mvtec.hpp"
#include "../io/npy.hpp"
#include "../io/synthetic_defect.hpp"
#include "../metrics/aupro.hpp"
#include "../metrics/ranking.hpp"
#include "../tensor.hpp"
#include "config.hpp"
#include "hgad_model.hpp"

namespace hgad {

/// The image and mask preprocessing of a model's feature settings (ImageNet-normalised images).
inline Preprocess preprocess_for(const FeatureSettings& f, bool normalize = true) {
  Preprocess pre;
  pre.image_size = f.image_size;
  pre.mask_size = f.mask_size;
  pre.mode =
      f.resize_mode == "stretch" ? ResizeMode::stretch : ResizeMode::shorter_side_then_center_crop;
  pre.normalize = normalize;
  return pre;
}

/// The backbone configuration of a model's feature settings: the architecture named by
/// f.backbone (torchvision's names, e.g. resnet18, wide_resnet50_2), the stages f.layers (each
/// "<stage>" or "<stage>@scale<s>", the stage of the image at 1 / 2^s of its size), and
/// f.pyramid_levels scales of an image pyramid (0 or 1: the image alone), f.neighbourhood the
/// window of the neighbourhood mean.
///   throws: hgad::Error naming a layer that is unknown or given twice, or a scale beside
///           pyramid_levels.
inline FeatureConfig backbone_config_for(const FeatureSettings& f) {
  check(f.backbone != "none",
        "the model was trained on precomputed features (backbone = none); it cannot "
        "read images");
  FeatureConfig c;
  c.arch = resnet_arch_from_string(f.backbone);
  c.stages.clear();
  std::string scaled;  // the first layer named with a scale
  for (std::size_t i = 0; i < f.layers.size(); ++i) {
    const StageAtScale at = stage_at_scale_from_string(f.layers[i]);
    for (std::size_t j = 0; j < i; ++j)
      check(c.stages[j] != at.stage || c.scales[j] != at.scale, "layers: '", f.layers[j], "' and '",
            f.layers[i], "' are the same level");
    c.stages.push_back(at.stage);
    c.scales.push_back(at.scale);
    if (scaled.empty() && f.layers[i].find('@') != std::string::npos) scaled = f.layers[i];
  }
  if (scaled.empty()) c.scales.clear();
  c.n_scales = f.pyramid_levels > 1 ? static_cast<int>(f.pyramid_levels) : 1;
  check(scaled.empty() || f.pyramid_levels == 0, "layers: a layer at its own scale (", scaled,
        ") cannot stand beside pyramid_levels = ", f.pyramid_levels);
  c.neighbourhood = f.neighbourhood;
  return c;
}

/// The feature extractor of a model's settings with the weights in `weights_dir`, its network
/// run on `device` (make_feature_extractor).
template <class Scalar>
std::shared_ptr<FeatureExtractor<Scalar>> make_extractor(const FeatureSettings& f,
                                                         const std::string& weights_dir,
                                                         Device device = Device::cpu) {
  return make_feature_extractor<Scalar>(backbone_config_for(f), weights_dir, device);
}

/// The levels (dimension, height, width) an extractor gives for the settings' image size.
template <class Scalar>
std::vector<LevelSpec> feature_levels(const FeatureExtractor<Scalar>& fx,
                                      const FeatureSettings& f) {
  std::vector<LevelSpec> out;
  for (std::size_t l = 0; l < fx.n_levels(); ++l) {
    const Shape s = fx.feature_shape(l, f.image_size, f.image_size);
    out.push_back({s[0], s[1], s[2]});
  }
  return out;
}

/// Checks that a backbone gives the features a model was trained on; otherwise an hgad::Error
/// naming the level, what the model expects and what the backbone gives.
template <class Scalar>
void check_backbone_matches(const ModelConfig& config, const FeatureExtractor<Scalar>& fx) {
  const std::vector<LevelSpec> got = feature_levels(fx, config.features);
  check(got.size() == config.levels.size(), "the model has ", config.levels.size(),
        " feature levels but the backbone ", "gives ", got.size());
  const auto names = fx.levels();
  for (std::size_t l = 0; l < got.size(); ++l) {
    const LevelSpec& want = config.levels[l];
    check(got[l] == want,
          "the model was trained on other features than this backbone gives: level ", l, " (",
          names[l].name, ") has ", got[l].dim, " channels on a ", got[l].height, "x", got[l].width,
          " map, the model expects ", want.dim, " channels on ", want.height, "x", want.width);
  }
}

/// (B, C, h, w) → (B, h, w, C), the channels-last layout HgadModel reads.
template <class Scalar>
Tensor<Scalar> channels_last(const Tensor<Scalar>& maps) {
  check(maps.rank() == 4, "channels_last: expected (B, C, h, w), got ", maps.shape());
  const Index B = maps.dim(0), C = maps.dim(1), h = maps.dim(2), w = maps.dim(3);
  return flatten_features(maps).reshape({B, h, w, C});
}

/// Indices 0 .. size-1 of a dataset.
inline std::vector<Index> all_indices(const MvtecDataset& data) {
  std::vector<Index> out(static_cast<std::size_t>(data.size()));
  std::iota(out.begin(), out.end(), Index(0));
  return out;
}

/// Features, labels and (optionally) masks of a list of dataset images.
template <class Scalar>
struct ExtractedImages {
  std::vector<Tensor<Scalar>> features;  ///< per level (N, h, w, D), channels last
  std::vector<std::int64_t> classes;     ///< (N,) class indices
  std::vector<int> labels;               ///< (N,) 0 normal, 1 anomalous
  Tensor<float> masks;     ///< (N, mask_size, mask_size) in {0, 1} when masks were asked for
  bool has_masks = false;  ///< every image has a pixel mask
  std::vector<std::string> paths;

  Index size() const { return static_cast<Index>(classes.size()); }
};

namespace detail::pipeline {

/// Writes the backbone's maps of a batch, maps[l] (B, C, h, w), channels last into rows
/// [first, first + B) of features[l] (N, h, w, C).
template <class Scalar>
void store_features(const std::vector<Tensor<Scalar>>& maps, Index first,
                    std::vector<Tensor<Scalar>>& features) {
  check(maps.size() == features.size(), "the feature extractor returned ", maps.size(),
        " levels, expected ", features.size());
  for (std::size_t l = 0; l < maps.size(); ++l) {
    const Tensor<Scalar> last = channels_last(maps[l]);
    std::copy(last.data(), last.data() + last.numel(),
              features[l].data() + first * (last.numel() / last.dim(0)));
  }
}

}  // namespace detail::pipeline

/// Loads, preprocesses and runs the backbone on dataset images `indices`, `batch_size` at a time,
/// each batch whole on one thread (detail::parallel_items: its decoding, the backbone's layers,
/// whose own loops then stay on that thread, and the copy of its features), which keeps two threads
/// busier than parallel loops inside each layer; the features do not depend on the threads.
/// `on_progress(done, total)` after every batch, in order.
template <class Scalar>
ExtractedImages<Scalar> extract_images(const MvtecDataset& data, const std::vector<Index>& indices,
                                       const FeatureExtractor<Scalar>& fx,
                                       const FeatureSettings& settings, bool with_masks,
                                       Index batch_size = 8,
                                       const std::function<void(Index, Index)>& on_progress = {}) {
  check(batch_size >= 1, "extract_images: batch_size must be >= 1");
  const Index N = static_cast<Index>(indices.size());
  const Preprocess pre = preprocess_for(settings);
  const std::vector<LevelSpec> levels = feature_levels(fx, settings);
  ExtractedImages<Scalar> out;
  for (const LevelSpec& s : levels)
    out.features.push_back(Tensor<Scalar>::empty({N, s.height, s.width, s.dim}));
  const Index S = settings.mask_size;
  if (with_masks) out.masks = Tensor<float>({N, S, S});
  out.has_masks = with_masks;
  std::vector<char> has_mask(static_cast<std::size_t>(N), 0);
  const Index batches = (N + batch_size - 1) / batch_size;
  const auto count_of = [&](Index first) { return std::min(batch_size, N - first); };
  detail::parallel_items(
      batches,
      [&](Index k) {  // batch k: rows [first, first + count) of every output, its own
        const Index first = k * batch_size, count = count_of(first);
        const std::vector<Index> chunk(indices.begin() + first, indices.begin() + first + count);
        const LoadedBatch<Scalar> batch = data.load_batch<Scalar>(chunk, pre);
        detail::pipeline::store_features(fx.extract(batch.images), first, out.features);
        if (!with_masks) return;
        for (Index b = 0; b < count; ++b) {
          has_mask[static_cast<std::size_t>(first + b)] =
              batch.has_mask[static_cast<std::size_t>(b)];
          const Scalar* m = batch.masks.data() + b * S * S;
          std::transform(m, m + S * S, out.masks.data() + (first + b) * S * S,
                         [](Scalar v) { return float(v); });
        }
      },
      [&](Index k) {
        const Index first = k * batch_size, count = count_of(first);
        for (Index i = first; i < first + count; ++i) {
          const MvtecSample& s = data[indices[static_cast<std::size_t>(i)]];
          out.classes.push_back(s.class_index);
          out.labels.push_back(s.label);
          out.paths.push_back(s.image_path);
          if (with_masks && !has_mask[static_cast<std::size_t>(i)]) out.has_masks = false;
        }
        if (on_progress) on_progress(first + count, N);
      });
  return out;
}

/// The features of dataset images `indices`, each as it is and with a synthetic defect
/// (io/synthetic_defect.hpp, docs/algorithm.md §9.6): 2 N images, image k of `indices` at rows 2k
/// (label 0, an all-zero mask) and 2k + 1 (label 1, the defect's mask). The defect is drawn on the
/// preprocessed image, before the ImageNet normalisation, from an Rng seeded with `seed` and the
/// image's index in `data`, so an image gets the same defect whichever others are listed with it;
/// `ranges` set its sizes (the default: the large defects). The class of both rows is the image's;
/// `paths` name the defective row `<path>#defect`.
template <class Scalar>
ExtractedImages<Scalar> extract_with_synthetic_defects(
    const MvtecDataset& data, const std::vector<Index>& indices, const FeatureExtractor<Scalar>& fx,
    const FeatureSettings& settings, std::uint64_t seed, Index batch_size = 8,
    const std::function<void(Index, Index)>& on_progress = {},
    const SyntheticDefectRanges& ranges = {}) {
  check(batch_size >= 1, "extract_with_synthetic_defects: batch_size must be >= 1");
  const Index N = static_cast<Index>(indices.size());
  const Preprocess raw = preprocess_for(settings, false);
  const std::vector<LevelSpec> levels = feature_levels(fx, settings);
  ExtractedImages<Scalar> out;
  for (const LevelSpec& s : levels)
    out.features.push_back(Tensor<Scalar>::empty({2 * N, s.height, s.width, s.dim}));
  const Index S = settings.mask_size, P = raw.image_size;
  out.masks = Tensor<float>::zeros({2 * N, S, S});
  out.has_masks = true;
  for (Index first = 0; first < N; first += batch_size) {
    const Index count = std::min(batch_size, N - first);
    const std::vector<Index> chunk(indices.begin() + first, indices.begin() + first + count);
    const LoadedBatch<Scalar> batch = data.load_batch<Scalar>(chunk, raw);
    Tensor<Scalar> pair({2 * count, 3, P, P});
    for (Index b = 0; b < count; ++b) {
      const Index index = chunk[static_cast<std::size_t>(b)];
      const Tensor<Scalar> image = batch.images.slice(b, b + 1).reshape({3, P, P});
      Rng rng(seed * 0x9E3779B97F4A7C15ull + static_cast<std::uint64_t>(index));
      const SyntheticDefect defect = draw_synthetic_defect(P, rng, ranges);
      const Tensor<Scalar> normal = normalize_imagenet(image);
      const Tensor<Scalar> defective = normalize_imagenet(apply_synthetic_defect(image, defect));
      std::copy(normal.data(), normal.data() + normal.numel(), pair.data() + 2 * b * 3 * P * P);
      std::copy(defective.data(), defective.data() + defective.numel(),
                pair.data() + (2 * b + 1) * 3 * P * P);
      const Tensor<Scalar> mask = synthetic_defect_mask<Scalar>(defect, S);
      std::transform(mask.data(), mask.data() + S * S,
                     out.masks.data() + (2 * (first + b) + 1) * S * S,
                     [](Scalar v) { return float(v); });
      const MvtecSample& s = data[index];
      for (int label : {0, 1}) {
        out.classes.push_back(s.class_index);
        out.labels.push_back(label);
        out.paths.push_back(label ? s.image_path + "#defect" : s.image_path);
      }
    }
    detail::pipeline::store_features(fx.extract(pair), 2 * first, out.features);
    if (on_progress) on_progress(first + count, N);
  }
  return out;
}

/// extract_images with a feature cache in `cache_dir` under the name `tag`: when the cache holds
/// features made from the same images and masks (paths and contents, as told by
/// detail::io::file_identity: size, mtime and ctime), settings and weights folder, they are read
/// back instead of running the backbone; otherwise they are computed and written (.npy files and a
/// `<tag>.key` text that describes them, each written atomically). An empty cache_dir disables it.
template <class Scalar>
ExtractedImages<Scalar> extract_images_cached(
    const std::string& cache_dir, const std::string& tag, const std::string& weights_dir,
    const MvtecDataset& data, const std::vector<Index>& indices, const FeatureExtractor<Scalar>& fx,
    const FeatureSettings& settings, bool with_masks, Index batch_size = 8,
    const std::function<void(Index, Index)>& on_progress = {}) {
  namespace fs = std::filesystem;
  if (cache_dir.empty())
    return extract_images(data, indices, fx, settings, with_masks, batch_size, on_progress);
  std::ostringstream key;
  key << "hgad feature cache 2\nweights " << fs::absolute(weights_dir).lexically_normal().string()
      << "\nscalar " << sizeof(Scalar) << "\nmasks " << with_masks << "\n";
  key << "backbone " << settings.backbone << "\nlayers";
  for (const auto& l : settings.layers) key << " " << l;
  key << "\npyramid " << settings.pyramid_levels << "\nneighbourhood " << settings.neighbourhood
      << "\nimage_size " << settings.image_size << "\nresize " << settings.resize_mode
      << "\nmask_size " << settings.mask_size << "\n";
  for (Index i : indices) {
    const MvtecSample& s = data[i];
    key << s.image_path << " " << detail::io::file_identity(s.image_path) << " " << s.mask_path
        << " " << detail::io::file_identity(s.mask_path) << "\n";
  }
  const fs::path base = fs::path(cache_dir) / tag;
  const std::string key_path = base.string() + ".key";
  const std::string levels_prefix = base.string() + ".level";
  const Index n_levels = static_cast<Index>(fx.n_levels());
  {
    std::ifstream in(key_path, std::ios::binary);
    std::ostringstream stored;
    if (in) stored << in.rdbuf();
    if (in && stored.str() == key.str()) {
      try {
        ExtractedImages<Scalar> out;
        for (Index l = 0; l < n_levels; ++l)
          out.features.push_back(load_npy<Scalar>(levels_prefix + std::to_string(l) + ".npy"));
        out.classes = load_npy_int64(base.string() + ".classes.npy");
        for (std::int64_t y : load_npy_int64(base.string() + ".labels.npy"))
          out.labels.push_back(int(y));
        out.has_masks = false;
        if (with_masks) {
          out.masks = load_npy<float>(base.string() + ".masks.npy");
          out.has_masks = load_npy_int64(base.string() + ".has_masks.npy").at(0) != 0;
        }
        for (Index i : indices) out.paths.push_back(data[i].image_path);
        const std::vector<LevelSpec> levels = feature_levels(fx, settings);
        bool ok = out.size() == static_cast<Index>(indices.size());
        for (Index l = 0; l < n_levels && ok; ++l) {
          const LevelSpec& sp = levels[static_cast<std::size_t>(l)];
          ok = out.features[static_cast<std::size_t>(l)].shape() ==
               Shape({out.size(), sp.height, sp.width, sp.dim});
        }
        if (ok) {
          if (on_progress) on_progress(out.size(), out.size());
          return out;
        }
      } catch (const Error&) {
        // An unreadable cache entry is recomputed below.
      }
    }
  }
  ExtractedImages<Scalar> out =
      extract_images(data, indices, fx, settings, with_masks, batch_size, on_progress);
  fs::create_directories(cache_dir);
  for (Index l = 0; l < n_levels; ++l)
    save_npy(levels_prefix + std::to_string(l) + ".npy", out.features[static_cast<std::size_t>(l)]);
  save_npy_int64(base.string() + ".classes.npy", out.classes);
  save_npy_int64(base.string() + ".labels.npy",
                 std::vector<std::int64_t>(out.labels.begin(), out.labels.end()));
  if (with_masks) {
    save_npy(base.string() + ".masks.npy", out.masks);
    save_npy_int64(base.string() + ".has_masks.npy", {out.has_masks ? 1 : 0});
  }
  const std::string text = key.str();
  detail::write_file_atomically(key_path, text.data(), text.size());
  return out;
}

/// The metrics of one class (docs/algorithm.md §6). NaN marks a metric the data cannot define (no
/// anomalous image, no pixel masks) or one the mode does not give (class accuracy outside the
/// label-free mode).
struct ClassReport {
  std::string name;
  Index n_images = 0;
  Index n_anomalous = 0;
  double image_auroc = std::numeric_limits<double>::quiet_NaN();
  double image_ap = std::numeric_limits<double>::quiet_NaN();
  double image_f1_max = std::numeric_limits<double>::quiet_NaN();
  double pixel_auroc = std::numeric_limits<double>::quiet_NaN();
  double pixel_ap = std::numeric_limits<double>::quiet_NaN();
  double pixel_f1_max = std::numeric_limits<double>::quiet_NaN();
  double aupro = std::numeric_limits<double>::quiet_NaN();
  double class_accuracy = std::numeric_limits<double>::quiet_NaN();
  /// The decision at the model's threshold (ClassCalibration::threshold of the class scored): an
  /// image is flagged when its score is above it (decision_metrics). NaN without a threshold (and
  /// `threshold` NaN in label-free mode, where each image has its predicted class's); precision is
  /// NaN when nothing is flagged, recall and F1 when no image is anomalous.
  double threshold = std::numeric_limits<double>::quiet_NaN();
  double image_precision = std::numeric_limits<double>::quiet_NaN();
  double image_recall = std::numeric_limits<double>::quiet_NaN();
  double image_f1 = std::numeric_limits<double>::quiet_NaN();
};

/// Precision, recall and F1 of a decision (`flagged[i]`: image i is called anomalous) against
/// labels (1 anomalous), into `m`.
inline void decision_metrics(const std::vector<int>& labels, const std::vector<bool>& flagged,
                             ClassReport& m) {
  check(labels.size() == flagged.size(), "decision_metrics: ", flagged.size(), " decisions for ",
        labels.size(), " labels");
  Index tp = 0, fp = 0, fn = 0;
  for (std::size_t i = 0; i < labels.size(); ++i) {
    tp += flagged[i] && labels[i] == 1;
    fp += flagged[i] && labels[i] == 0;
    fn += !flagged[i] && labels[i] == 1;
  }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  m.image_precision = tp + fp > 0 ? double(tp) / double(tp + fp) : nan;
  m.image_recall = tp + fn > 0 ? double(tp) / double(tp + fn) : nan;
  m.image_f1 = tp + fn > 0 ? 2.0 * double(tp) / double(2 * tp + fp + fn) : nan;
}

/// Image metrics from scores and labels; pixel metrics and AUPRO from maps (N, S, S) and masks
/// (N, S, S) when `masks` is non-empty (every pixel of every image counts, normal images included;
/// an anomalous image with an empty mask adds only negative pixels and no AUPRO region).
template <class Scalar>
ClassReport evaluate_class(const std::string& name, const std::vector<double>& scores,
                            const std::vector<int>& labels, const Tensor<Scalar>& maps,
                            const Tensor<float>& masks) {
  check(scores.size() == labels.size(), "evaluate_class: ", scores.size(), " scores for ",
        labels.size(), " labels");
  ClassReport m;
  m.name = name;
  m.n_images = static_cast<Index>(scores.size());
  for (int y : labels) m.n_anomalous += y;
  if (m.n_anomalous > 0 && m.n_anomalous < m.n_images) {
    const RankingMetrics r = ranking_metrics(labels, scores);
    m.image_auroc = r.auroc;
    m.image_ap = r.average_precision;
    m.image_f1_max = r.f1_max;
  }
  if (masks.numel() > 0 && maps.numel() > 0) {
    check(maps.numel() == masks.numel(), "evaluate_class: maps ", maps.shape(),
          " and masks ", masks.shape(), " differ in size");
    Index positives = 0;
    for (Index i = 0; i < masks.numel(); ++i) positives += masks.data()[i] > 0.5f ? 1 : 0;
    if (positives > 0 && positives < masks.numel()) {
      const RankingMetrics r = ranking_metrics(masks, maps);
      m.pixel_auroc = r.auroc;
      m.pixel_ap = r.average_precision;
      m.pixel_f1_max = r.f1_max;
      m.aupro = aupro(masks.reshape(maps.shape()), maps);
    }
  }
  return m;
}

/// The metrics of each kind of defect of one class (the folders under `<class>/test/`): for each
/// kind, evaluate_class on the class's normal images together with that kind's images alone, the
/// report named by the kind. A class's pixel metrics pool every pixel, so they weigh each kind by
/// the area of its masks; these reports show which kind sets them. `kinds[i]` names image i's kind;
/// an image labelled 0 is a normal one whatever its kind, and a kind with no image labelled 1 gets
/// no report. Reports in sorted order of the kinds; `scores`, `labels`, `maps` (N, S, S) and
/// `masks` (N, S, S, or empty) as for evaluate_class; with `flagged` (N decisions, as for
/// decision_metrics) each report also holds the decision's precision, recall and F1.
template <class Scalar>
std::vector<ClassReport> evaluate_defect_kinds(const std::vector<std::string>& kinds,
                                               const std::vector<double>& scores,
                                               const std::vector<int>& labels,
                                               const Tensor<Scalar>& maps,
                                               const Tensor<float>& masks,
                                               const std::vector<bool>& flagged = {}) {
  const Index n = static_cast<Index>(labels.size());
  check(static_cast<Index>(kinds.size()) == n && static_cast<Index>(scores.size()) == n,
        "evaluate_defect_kinds: ", kinds.size(), " kinds and ", scores.size(), " scores for ", n,
        " labels");
  check(flagged.empty() || static_cast<Index>(flagged.size()) == n,
        "evaluate_defect_kinds: ", flagged.size(), " decisions for ", n, " labels");
  check(maps.numel() == 0 || (maps.rank() == 3 && maps.dim(0) == n),
        "evaluate_defect_kinds: expected maps of shape (", n, ", S, S), got ", maps.shape());
  const bool pixels = masks.numel() > 0 && maps.numel() > 0;
  if (pixels)
    check(masks.shape() == maps.shape(), "evaluate_defect_kinds: masks have shape ", masks.shape(),
          " but the maps have shape ", maps.shape());
  std::vector<std::string> defect_kinds;
  for (std::size_t i = 0; i < kinds.size(); ++i)
    if (labels[i] == 1) defect_kinds.push_back(kinds[i]);
  std::sort(defect_kinds.begin(), defect_kinds.end());
  defect_kinds.erase(std::unique(defect_kinds.begin(), defect_kinds.end()), defect_kinds.end());

  std::vector<ClassReport> out;
  for (const std::string& kind : defect_kinds) {
    std::vector<Index> rows;
    for (Index i = 0; i < n; ++i)
      if (labels[static_cast<std::size_t>(i)] == 0 || kinds[static_cast<std::size_t>(i)] == kind)
        rows.push_back(i);
    const Index m = static_cast<Index>(rows.size());
    std::vector<double> kind_scores;
    std::vector<int> kind_labels;
    std::vector<bool> kind_flagged;
    for (Index i : rows) {
      kind_scores.push_back(scores[static_cast<std::size_t>(i)]);
      kind_labels.push_back(labels[static_cast<std::size_t>(i)]);
      if (!flagged.empty()) kind_flagged.push_back(flagged[static_cast<std::size_t>(i)]);
    }
    Tensor<Scalar> kind_maps;  // empty without pixel metrics
    Tensor<float> kind_masks;
    if (pixels) {
      const Shape shape{m, maps.dim(1), maps.dim(2)};
      const Index per_map = maps.dim(1) * maps.dim(2);
      kind_maps = Tensor<Scalar>::empty(shape);
      kind_masks = Tensor<float>::empty(shape);
      maps.backend().gather_rows(rows.data(), m, per_map, maps.data(), kind_maps.data());
      masks.backend().gather_rows(rows.data(), m, per_map, masks.data(), kind_masks.data());
    }
    out.push_back(evaluate_class(kind, kind_scores, kind_labels, kind_maps, kind_masks));
    if (!flagged.empty()) decision_metrics(kind_labels, kind_flagged, out.back());
  }
  return out;
}

/// The unweighted mean over classes of every metric, NaN entries skipped (NaN when all are).
inline ClassReport mean_metrics(const std::vector<ClassReport>& classes) {
  ClassReport mean;
  mean.name = "mean";
  auto avg = [&](double ClassReport::*field) {
    double sum = 0;
    int n = 0;
    for (const auto& c : classes)
      if (std::isfinite(c.*field)) {
        sum += c.*field;
        ++n;
      }
    return n ? sum / n : std::numeric_limits<double>::quiet_NaN();
  };
  for (const auto& c : classes) {
    mean.n_images += c.n_images;
    mean.n_anomalous += c.n_anomalous;
  }
  for (auto field :
       {&ClassReport::image_auroc, &ClassReport::image_ap, &ClassReport::image_f1_max,
        &ClassReport::pixel_auroc, &ClassReport::pixel_ap, &ClassReport::pixel_f1_max,
        &ClassReport::aupro, &ClassReport::class_accuracy, &ClassReport::image_precision,
        &ClassReport::image_recall, &ClassReport::image_f1})
    mean.*field = avg(field);
  return mean;
}

}  // namespace hgad
