#pragma once
/// \file
/// Detector: a trained model file and its backbone, ready to score images one at a time — the
/// common case in one call. It needs stb (through io/), so it is not in the umbrella header.
///
///     #include <hgad/model/detector.hpp>
///
///     auto det = hgad::Detector<float>::load("model.hgad", "weights/resnet18-imagenet");
///     hgad::Detection<float> r = det.score_file("part.png");  // or score_pixels(rgb, w, h, 3)
///     std::printf("%s %.3f %s\n", r.class_name.c_str(), r.score,
///                 !r.anomalous ? "no threshold" : *r.anomalous ? "anomalous" : "normal");
///     // r.map: (mask_size, mask_size) anomaly map, higher = more anomalous
///
/// Each image is scored on its own with the calibrated constants (HgadModel::score): with the
/// class given, in calibrated mode; without, label-free (the model predicts the class). The
/// decision compares the score with the scored class's threshold (ClassCalibration::threshold,
/// ModelConfig::threshold_quantile of its normal training images' scores).

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "../backbone/feature_extractor.hpp"
#include "../detail/check.hpp"
#include "../io/image.hpp"
#include "../io/mvtec.hpp"
#include "../tensor.hpp"
#include "config.hpp"
#include "hgad_model.hpp"
#include "pipeline.hpp"

namespace hgad {

/// The result of scoring one image.
template <class Scalar>
struct Detection {
  double score = 0;  ///< the image score (docs/algorithm.md §5, calibrated constants)
  /// score > threshold; empty when the model holds no threshold (a file of an older hgad).
  std::optional<bool> anomalous;
  double threshold = 0;           ///< the scored class's threshold (NaN when absent)
  std::string class_name;         ///< the class scored ("" for the NF objective in label-free mode)
  std::int64_t class_index = -1;  ///< its index in the model (-1: the class-agnostic entry)
  std::int64_t predicted_class = -1;  ///< the model's predicted class (-1 for the NF objective)
  Tensor<Scalar> map;                 ///< (mask_size, mask_size) anomaly map
};

/// A calibrated HgadModel with the feature extractor of its settings.
template <class Scalar>
class Detector {
 public:
  /// Loads the model file at `model_path` and the backbone weights in `weights_dir` (empty: the
  /// folder recorded in the model at training time), the network and flows run on `device`.
  ///   throws: hgad::Error naming the file when it is unreadable, not calibrated, or trained on
  ///   other features than the backbone gives.
  static Detector load(const std::string& model_path, const std::string& weights_dir = "",
                       Device device = Device::cpu) {
    HgadModel<Scalar> model = HgadModel<Scalar>::load(model_path);
    check(model.is_calibrated(), "Detector: the model '", model_path,
          "' holds no calibration constants (train it with hgad train, or call calibrate)");
    const std::string weights = weights_dir.empty() ? model.metadata("backbone_dir") : weights_dir;
    check(!weights.empty(), "Detector: the model '", model_path,
          "' records no backbone folder; pass the weights folder it was trained with");
    return Detector(std::move(model), weights, device);
  }

  /// A detector of a calibrated model and the weights folder of its backbone.
  Detector(HgadModel<Scalar> model, const std::string& weights_dir, Device device = Device::cpu)
      : m_model(std::move(model)) {
    check(m_model.is_calibrated(), "Detector: the model is not calibrated; call calibrate()");
    m_model.set_device(device);
    m_extractor = make_extractor<Scalar>(m_model.config().features, weights_dir, device);
    check_backbone_matches(m_model.config(), *m_extractor);
  }

  const HgadModel<Scalar>& model() const { return m_model; }

  /// Scores the PNG, JPEG or BMP file at `path`. `class_name` (a class of the model or a folder
  /// of one of its groups) scores in calibrated mode; empty, the model predicts the class.
  Detection<Scalar> score_file(const std::string& path, const std::string& class_name = "") const {
    return score_image(load_image<Scalar>(path, 3), class_name);
  }

  /// Scores an 8-bit image in memory: `channels` = 3 (RGB) or 1 (gray), row-major, interleaved,
  /// `width` × `height` pixels.
  Detection<Scalar> score_pixels(const std::uint8_t* pixels, Index width, Index height,
                                 int channels, const std::string& class_name = "") const {
    check(pixels != nullptr, "Detector::score_pixels: no pixels");
    check(width > 0 && height > 0, "Detector::score_pixels: an empty image of ", width, "x",
          height);
    check(channels == 1 || channels == 3,
          "Detector::score_pixels: channels must be 1 (gray) or 3 (RGB), got ", channels);
    Tensor<Scalar> image = Tensor<Scalar>::empty({3, height, width});
    for (Index k = 0; k < 3; ++k)
      for (Index j = 0; j < height * width; ++j)
        image.data()[k * height * width + j] =
            Scalar(pixels[j * channels + (channels == 3 ? k : 0)]) / Scalar(255);
    return score_image(image, class_name);
  }

  /// Scores a (3, H, W) RGB image with values in [0, 1] (load_image's layout).
  Detection<Scalar> score_image(const Tensor<Scalar>& rgb,
                                const std::string& class_name = "") const {
    check(rgb.rank() == 3 && rgb.dim(0) == 3, "Detector::score_image: expected (3, H, W), got ",
          rgb.shape());
    const ModelConfig& config = m_model.config();
    std::int64_t class_index = -1;
    if (!class_name.empty()) {
      class_index = config.class_of(class_name);
      check(class_index >= 0, "Detector: the model knows no class '", class_name,
            "' (its classes: ", detail::join(config.class_names), ")");
    }
    const Preprocess pre = preprocess_for(config.features);
    Tensor<Scalar> input =
        detail::mvtec::fit(rgb, pre.image_size, pre.resize_size, pre.mode, pre.image_filter);
    input = normalize_imagenet(input).reshape({1, 3, pre.image_size, pre.image_size});
    std::vector<Tensor<Scalar>> features;
    for (const Tensor<Scalar>& map : m_extractor->extract(input))
      features.push_back(channels_last(map));
    const ScoredImage<Scalar> scored = m_model.score(
        features, class_index, class_index >= 0 ? ScoreMode::calibrated : ScoreMode::label_free);
    Detection<Scalar> r;
    r.score = scored.score;
    r.class_index = scored.scored_class;
    r.predicted_class = scored.predicted_class;
    if (scored.scored_class >= 0)
      r.class_name = config.class_names[static_cast<std::size_t>(scored.scored_class)];
    const ClassCalibration& cal = m_model.calibration(
        scored.scored_class >= 0 ? Index(scored.scored_class) : m_model.n_classes());
    r.threshold = cal.threshold;
    if (cal.has_threshold()) r.anomalous = cal.is_anomalous(r.score);
    r.map = scored.map;
    return r;
  }

 private:
  HgadModel<Scalar> m_model;
  std::shared_ptr<FeatureExtractor<Scalar>> m_extractor;
};

}  // namespace hgad
