// hgad::Detector: one model file and an image in, score, decision, class and map out; checked
// against the model's own scoring of the same features.

#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <hgad/model/detector.hpp>
#include <string>
#include <vector>

#include "io/temp_dir.hpp"

namespace detector_test {

namespace {

namespace fs = std::filesystem;

std::string weights_dir() { return std::string(HGAD_SHARED_DIR) + "/weights/resnet18-imagenet"; }

/// A 40x48 RGB image: a checkerboard with a bright square when `defect`, as interleaved bytes.
std::vector<std::uint8_t> pixels(unsigned seed, bool defect) {
  std::vector<std::uint8_t> p(40 * 48 * 3);
  for (int y = 0; y < 40; ++y)
    for (int x = 0; x < 48; ++x)
      for (int k = 0; k < 3; ++k) {
        double v = 0.3 + 0.2 * ((x / 8 + y / 8 + seed) % 2) + 0.1 * k;
        if (defect && x > 15 && x < 25 && y > 15 && y < 25) v += 0.4;
        p[std::size_t((y * 48 + x) * 3 + k)] = std::uint8_t(std::lround(std::min(v, 1.0) * 255));
      }
  return p;
}

hgad::Tensor<float> to_tensor(const std::vector<std::uint8_t>& p) {
  hgad::Tensor<float> t({3, 40, 48});
  for (hgad::Index k = 0; k < 3; ++k)
    for (hgad::Index j = 0; j < 40 * 48; ++j)
      t.data()[k * 40 * 48 + j] = float(p[std::size_t(j * 3 + k)]) / 255.0f;
  return t;
}

}  // namespace

TEST_CASE("Detector scores a file and a pixel buffer as the model scores their features",
          "[model]") {
  if (!fs::exists(weights_dir())) {
    WARN("skipped: " << weights_dir() << " is absent");
    return;
  }
  hgad_test::TempDir dir("detector");
  hgad::ModelConfig config;
  config.features.image_size = 64;
  config.features.mask_size = 16;
  config.features.layers = {"layer2"};
  config.pos_dim = 8;
  config.n_blocks = 1;
  config.n_centers = 2;
  config.meta_epochs = 1;
  config.sub_epochs = 1;
  config.warmup_meta_epochs = 0;
  config.stage1_meta_epochs = 0;
  config.batch_size = 2;
  config.class_names = {"plain", "other"};
  auto fx = hgad::make_extractor<float>(config.features, weights_dir());
  config.levels = hgad::feature_levels(*fx, config.features);

  // Features of four normal images per class (the second class a shifted checkerboard).
  const hgad::Preprocess pre = hgad::preprocess_for(config.features);
  auto features_of = [&](const hgad::Tensor<float>& rgb) {
    hgad::Tensor<float> x =
        hgad::detail::mvtec::fit(rgb, pre.image_size, pre.resize_size, pre.mode, pre.image_filter);
    x = hgad::normalize_imagenet(x).reshape({1, 3, 64, 64});
    std::vector<hgad::Tensor<float>> out;
    for (const auto& m : fx->extract(x)) out.push_back(hgad::channels_last(m));
    return out;
  };
  const hgad::LevelSpec s = config.levels[0];
  hgad::Tensor<float> train = hgad::Tensor<float>::empty({8, s.height, s.width, s.dim});
  std::vector<std::int64_t> labels;
  for (hgad::Index i = 0; i < 8; ++i) {
    const auto f = features_of(to_tensor(pixels(unsigned(i % 4 + 3 * (i / 4)), false)));
    std::copy(f[0].data(), f[0].data() + f[0].numel(), train.data() + i * f[0].numel());
    labels.push_back(i / 4);
  }
  hgad::HgadModel<float> model(config);
  model.fit({train}, labels);
  model.calibrate({train}, labels);
  model.set_metadata("backbone_dir", weights_dir());
  const std::string path = dir.file("m.hgad");
  model.save(path);

  const auto det = hgad::Detector<float>::load(path);  // the weights folder recorded in the model
  const std::vector<std::uint8_t> bad = pixels(0, true);
  const hgad::Tensor<float> bad_rgb = to_tensor(bad);
  hgad::save_png(dir.file("bad.png"), bad_rgb);

  const auto expected = model.score(features_of(bad_rgb), 0, hgad::ScoreMode::calibrated);
  const hgad::Detection<float> from_file = det.score_file(dir.file("bad.png"), "plain");
  const hgad::Detection<float> from_pixels = det.score_pixels(bad.data(), 48, 40, 3, "plain");
  REQUIRE(std::isfinite(expected.score));
  CHECK(from_file.score == expected.score);
  CHECK(from_pixels.score == expected.score);
  CHECK(from_file.class_name == "plain");
  CHECK(from_file.class_index == 0);
  CHECK(from_file.map.shape() == hgad::Shape{16, 16});
  CHECK(from_file.map.to_vector() == expected.map.to_vector());
  REQUIRE(from_file.anomalous.has_value());
  CHECK(from_file.threshold == model.calibration(0).threshold);
  CHECK(*from_file.anomalous == (expected.score > model.calibration(0).threshold));

  // Label-free: the model's class, and the threshold of that class.
  const auto free = det.score_pixels(bad.data(), 48, 40, 3);
  REQUIRE(free.class_index >= 0);
  CHECK(free.class_name == config.class_names[std::size_t(free.class_index)]);
  CHECK(free.threshold == model.calibration(free.class_index).threshold);

  // A gray buffer is the RGB image with three equal channels.
  std::vector<std::uint8_t> gray(40 * 48), gray_rgb(40 * 48 * 3);
  for (std::size_t j = 0; j < gray.size(); ++j)
    gray[j] = gray_rgb[3 * j] = gray_rgb[3 * j + 1] = gray_rgb[3 * j + 2] = bad[3 * j + 1];
  CHECK(det.score_pixels(gray.data(), 48, 40, 1, "plain").score ==
        det.score_pixels(gray_rgb.data(), 48, 40, 3, "plain").score);

  CHECK_THROWS_WITH(det.score_file(dir.file("bad.png"), "zebra"),
                    Catch::Contains("zebra") && Catch::Contains("plain, other"));
  CHECK_THROWS_WITH(det.score_pixels(bad.data(), 48, 40, 4), Catch::Contains("channels"));
  CHECK_THROWS_WITH(det.score_file(dir.file("missing.png")), Catch::Contains("missing.png"));
  hgad::HgadModel<float> uncalibrated(config);
  uncalibrated.save(dir.file("raw.hgad"));
  CHECK_THROWS_WITH(hgad::Detector<float>::load(dir.file("raw.hgad"), weights_dir()),
                    Catch::Contains("raw.hgad") && Catch::Contains("calibration"));
}

}  // namespace detector_test
