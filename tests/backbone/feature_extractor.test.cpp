#include <catch2/catch.hpp>

#include <hgad/backbone/feature_extractor.hpp>

#include <cmath>
#include <memory>

#include "backbone/naive.hpp"

namespace feature_extractor_test {

namespace {

using hgad::Index;
using hgad::ResNetStage;

/// A test backbone that returns the image itself (stride 1) and its 2x2 average pool (stride 2).
template <class T>
class IdentityExtractor : public hgad::FeatureExtractor<T> {
 public:
  std::vector<hgad::FeatureLevel> levels() const override {
    return {{"pixels", 3, 1}, {"pool", 3, 2}};
  }
  hgad::Shape feature_shape(std::size_t level, Index h, Index w) const override {
    return level == 0 ? hgad::Shape{3, h, w} : hgad::Shape{3, h / 2, w / 2};
  }
  std::vector<hgad::Tensor<T>> extract(const hgad::Tensor<T>& x) const override {
    hgad::Tensor<T> pool({x.dim(0), 3, x.dim(2) / 2, x.dim(3) / 2});
    for (Index b = 0; b < x.dim(0); ++b)
      for (Index c = 0; c < 3; ++c)
        for (Index i = 0; i < pool.dim(2); ++i)
          for (Index j = 0; j < pool.dim(3); ++j)
            pool(b, c, i, j) = (x(b, c, 2 * i, 2 * j) + x(b, c, 2 * i + 1, 2 * j) +
                                x(b, c, 2 * i, 2 * j + 1) + x(b, c, 2 * i + 1, 2 * j + 1)) /
                               4;
    return {x.clone(), pool};
  }
};

/// Bilinear resize with align_corners=True, written out per output pixel.
template <class T>
T naive_resize_ac(const hgad::Tensor<T>& x, Index b, Index c, Index i, Index j, Index oh,
                  Index ow) {
  const Index H = x.dim(2), W = x.dim(3);
  const double u = oh > 1 ? double(i) * (H - 1) / (oh - 1) : 0.0;
  const double v = ow > 1 ? double(j) * (W - 1) / (ow - 1) : 0.0;
  const Index y0 = Index(std::floor(u)), x0 = Index(std::floor(v));
  const Index y1 = std::min(y0 + 1, H - 1), x1 = std::min(x0 + 1, W - 1);
  const double ty = u - y0, tx = v - x0;
  return T((1 - ty) * ((1 - tx) * x(b, c, y0, x0) + tx * x(b, c, y0, x1)) +
           ty * ((1 - tx) * x(b, c, y1, x0) + tx * x(b, c, y1, x1)));
}

}  // namespace

TEMPLATE_TEST_CASE("resize_bilinear_batch matches hand-computed values both ways of align_corners",
                   "[backbone]", float, double) {
  const auto x = hgad::Tensor<TestType>::from_vector({1, 1, 2, 2}, {0, 1, 2, 3});
  // align_corners=True: the corners stay, the centre is the mean.
  const auto up = hgad::resize_bilinear_batch(x, 3, 3, true);
  const std::vector<TestType> expect_true = {0, 0.5, 1, 1, 1.5, 2, 2, 2.5, 3};
  // align_corners=False (PyTorch F.interpolate(size=4)): source u = (i + 0.5) / 2 - 0.5, clamped.
  const auto up4 = hgad::resize_bilinear_batch(x, 4, 4, false);
  const std::vector<TestType> expect_false = {0,   0.25, 0.75, 1,   0.5, 0.75, 1.25, 1.5,
                                              1.5, 1.75, 2.25, 2.5, 2,   2.25, 2.75, 3};
  for (std::size_t i = 0; i < expect_true.size(); ++i)
    CHECK(up.data()[i] == Approx(expect_true[i]).margin(1e-6));
  for (std::size_t i = 0; i < expect_false.size(); ++i)
    CHECK(up4.data()[i] == Approx(expect_false[i]).margin(1e-6));
  // Halving 5 -> 2 with align_corners=True keeps the two end pixels exactly.
  const auto row = hgad::Tensor<TestType>::from_vector({1, 1, 1, 5}, {4, 7, 1, 8, 2});
  const auto half = hgad::resize_bilinear_batch(row, 1, 2, true);
  CHECK(half.data()[0] == TestType(4));
  CHECK(half.data()[1] == TestType(2));
  // False: 5 -> 2, u = 0.75 and 3.25.
  const auto half_f = hgad::resize_bilinear_batch(row, 1, 2, false);
  CHECK(half_f.data()[0] == Approx(4 + 0.75 * 3).margin(1e-6));
  CHECK(half_f.data()[1] == Approx(8 + 0.25 * (2 - 8)).margin(1e-6));
  CHECK_THROWS_AS(hgad::resize_bilinear_batch(x, 0, 3, true), hgad::Error);
}

TEMPLATE_TEST_CASE("flatten_features orders rows as n = b h w + i w + j and unflatten inverts it",
                   "[backbone]", float, double) {
  hgad::Rng rng(3);
  const auto maps = hgad::Tensor<TestType>::randn({3, 5, 4, 7}, rng);
  const auto rows = hgad::flatten_features(maps);
  REQUIRE(rows.shape() == hgad::Shape{3 * 4 * 7, 5});
  for (Index b = 0; b < 3; ++b)
    for (Index c = 0; c < 5; ++c)
      for (Index i = 0; i < 4; ++i)
        for (Index j = 0; j < 7; ++j) REQUIRE(rows(b * 28 + i * 7 + j, c) == maps(b, c, i, j));
  const auto back = hgad::unflatten_features(rows, 3, 4, 7);
  CHECK(hgad_test::max_abs_diff(back, maps) == 0.0);
  CHECK_THROWS_AS(hgad::unflatten_features(rows, 3, 4, 6), hgad::Error);
  CHECK_THROWS_AS(hgad::flatten_features(rows), hgad::Error);
}

TEST_CASE("PyramidFeatureExtractor runs the base on align_corners resizes, scale-major",
          "[backbone]") {
  auto base = std::make_shared<IdentityExtractor<double>>();
  hgad::PyramidFeatureExtractor<double> pyramid(base, 3);
  const auto levels = pyramid.levels();
  REQUIRE(levels.size() == 6);
  CHECK(levels[0].name == "pixels@scale0");
  CHECK(levels[1].name == "pool@scale0");
  CHECK(levels[2].name == "pixels@scale1");
  CHECK(levels[5].name == "pool@scale2");
  CHECK(levels[3].stride == 4);
  CHECK(levels[5].stride == 8);
  hgad::Rng rng(9);
  const Index H = 13, W = 18;
  const auto x = hgad::Tensor<double>::randn({2, 3, H, W}, rng);
  const auto out = pyramid.extract(x);
  REQUIRE(out.size() == 6);
  for (std::size_t l = 0; l < 6; ++l) {
    const auto s = pyramid.feature_shape(l, H, W);
    CHECK(out[l].shape() == hgad::Shape{2, s[0], s[1], s[2]});
  }
  CHECK(hgad_test::max_abs_diff(out[0], x) == 0.0);
  for (int s = 1; s < 3; ++s) {
    const Index oh = H >> s, ow = W >> s;
    const auto& f = out[std::size_t(2 * s)];
    REQUIRE(f.shape() == hgad::Shape{2, 3, oh, ow});
    double err = 0;
    for (Index b = 0; b < 2; ++b)
      for (Index c = 0; c < 3; ++c)
        for (Index i = 0; i < oh; ++i)
          for (Index j = 0; j < ow; ++j)
            err = std::max(err, std::abs(f(b, c, i, j) - naive_resize_ac(x, b, c, i, j, oh, ow)));
    CHECK(err <= 1e-12);
  }
  CHECK_THROWS_AS(hgad::PyramidFeatureExtractor<double>(base, 0), hgad::Error);
  hgad::PyramidFeatureExtractor<double> deep(base, 5);
  CHECK_THROWS_AS(deep.extract(hgad::Tensor<double>({1, 3, 8, 8})), hgad::Error);
}

TEST_CASE("PyramidFeatureExtractor with chosen levels returns them in their order, each base once "
          "per scale",
          "[backbone]") {
  // Counts the base's runs, so that a scale used by two levels is seen to run once.
  struct Counting : IdentityExtractor<double> {
    mutable int runs = 0;
    std::vector<hgad::Tensor<double>> extract(const hgad::Tensor<double>& x) const override {
      ++runs;
      return IdentityExtractor<double>::extract(x);
    }
  };
  auto base = std::make_shared<Counting>();
  // pool of the image, pixels of the image at a quarter of its size, pixels of the image, pool
  // of the image at a quarter: scale 1 is skipped.
  const std::vector<hgad::PyramidLevel> chosen{{0, 1}, {2, 0}, {0, 0}, {2, 1}};
  hgad::PyramidFeatureExtractor<double> pyramid(base, chosen);
  const auto levels = pyramid.levels();
  REQUIRE(levels.size() == 4);
  CHECK(levels[0].name == "pool");
  CHECK(levels[1].name == "pixels@scale2");
  CHECK(levels[2].name == "pixels");
  CHECK(levels[3].name == "pool@scale2");
  CHECK(levels[0].stride == 2);
  CHECK(levels[1].stride == 4);
  CHECK(levels[3].stride == 8);
  CHECK(pyramid.n_scales() == 3);

  hgad::Rng rng(4);
  const Index H = 17, W = 12;
  const auto x = hgad::Tensor<double>::randn({2, 3, H, W}, rng);
  const auto out = pyramid.extract(x);
  CHECK(base->runs == 2);
  REQUIRE(out.size() == 4);
  for (std::size_t l = 0; l < 4; ++l) {
    const auto s = pyramid.feature_shape(l, H, W);
    CHECK(out[l].shape() == hgad::Shape{2, s[0], s[1], s[2]});
  }
  // Against the full pyramid of three scales: the same maps, picked.
  const auto all = hgad::PyramidFeatureExtractor<double>(base, 3).extract(x);
  CHECK(hgad_test::max_abs_diff(out[0], all[1]) == 0.0);
  CHECK(hgad_test::max_abs_diff(out[1], all[4]) == 0.0);
  CHECK(hgad_test::max_abs_diff(out[2], all[0]) == 0.0);
  CHECK(hgad_test::max_abs_diff(out[3], all[5]) == 0.0);
  CHECK(hgad_test::max_abs_diff(out[2], x) == 0.0);

  using Levels = std::vector<hgad::PyramidLevel>;
  CHECK_THROWS_WITH(hgad::PyramidFeatureExtractor<double>(base, Levels{{0, 0}, {1, 1}, {0, 0}}),
                    Catch::Contains("levels 0 and 2 are the same (pixels)"));
  CHECK_THROWS_WITH(hgad::PyramidFeatureExtractor<double>(base, Levels{{0, 2}}),
                    Catch::Contains("base level 2 of 2"));
  CHECK_THROWS_WITH(hgad::PyramidFeatureExtractor<double>(base, Levels{{16, 0}}),
                    Catch::Contains("scale 16"));
  CHECK_THROWS_AS(hgad::PyramidFeatureExtractor<double>(base, Levels{}), hgad::Error);
}

TEST_CASE("FeatureConfig::scales puts a stage of the image at half its size beside the stages of "
          "the image",
          "[backbone]") {
  hgad::Rng rng(8);
  auto net = std::make_shared<const hgad::ResNet<float>>(
      hgad::ResNetArch::resnet18,
      hgad::ResNet<float>::random_weights(hgad::ResNetArch::resnet18, ResNetStage::layer3, rng));
  const auto images = hgad::Tensor<float>::randn({2, 3, 64, 64}, rng);
  hgad::FeatureConfig config = hgad::FeatureConfig::multi_stage(hgad::ResNetArch::resnet18);
  config.stages.push_back(ResNetStage::layer3);
  config.scales = {0, 0, 0, 1};
  const auto fx = hgad::make_feature_extractor<float>(config, net);
  const auto levels = fx->levels();
  REQUIRE(levels.size() == 4);
  CHECK(levels[2].name == "layer3");
  CHECK(levels[3].name == "layer3@scale1");
  CHECK(levels[3].stride == 32);
  CHECK(fx->feature_shape(3, 64, 64) == hgad::Shape{256, 2, 2});
  const auto maps = fx->extract(images);
  REQUIRE(maps.size() == 4);
  // The first three are the network's stages of the image, the fourth its layer3 of the
  // align_corners=True half-size image.
  const auto whole =
      net->forward(images, {ResNetStage::layer1, ResNetStage::layer2, ResNetStage::layer3});
  for (std::size_t l = 0; l < 3; ++l) CHECK(hgad_test::max_abs_diff(maps[l], whole[l]) == 0.0);
  const auto half =
      net->forward(hgad::resize_bilinear_batch(images, 32, 32, true), {ResNetStage::layer3});
  CHECK(hgad_test::max_abs_diff(maps[3], half[0]) == 0.0);

  // The network returns each stage once; the scales must match the stages and stand alone.
  CHECK(hgad::detail::network_stages(config) ==
        std::vector<ResNetStage>{ResNetStage::layer1, ResNetStage::layer2, ResNetStage::layer3});
  config.scales = {0, 0, 1};
  CHECK_THROWS_WITH(hgad::make_feature_extractor<float>(config, net),
                    Catch::Contains("3 scales for 4 stages"));
  config.scales = {0, 0, 0, 1};
  config.n_scales = 2;
  CHECK_THROWS_WITH(hgad::make_feature_extractor<float>(config, net),
                    Catch::Contains("need n_scales = 1"));
}

TEST_CASE("stage_at_scale_from_string reads a stage and its pyramid scale", "[backbone]") {
  const hgad::StageAtScale plain = hgad::stage_at_scale_from_string("layer2");
  CHECK(plain.stage == ResNetStage::layer2);
  CHECK(plain.scale == 0);
  const hgad::StageAtScale half = hgad::stage_at_scale_from_string("layer3@scale1");
  CHECK(half.stage == ResNetStage::layer3);
  CHECK(half.scale == 1);
  CHECK(hgad::stage_at_scale_from_string("layer1@scale15").scale == 15);
  for (const char* bad :
       {"layer3@scale", "layer3@scale16", "layer3@scale-1", "layer3@scalex", "layer3@scale001"})
    CHECK_THROWS_WITH(hgad::stage_at_scale_from_string(bad),
                      Catch::Contains(std::string("layer '") + bad + "'"));
  CHECK_THROWS_WITH(hgad::stage_at_scale_from_string("layer9@scale1"),
                    Catch::Contains("unknown stage 'layer9'"));
}

TEST_CASE("FeatureConfig builds HGAD's pyramid and CFlow's multi-stage ResNet extractors",
          "[backbone]") {
  hgad::Rng rng(5);
  auto net = std::make_shared<const hgad::ResNet<float>>(
      hgad::ResNetArch::resnet18,
      hgad::ResNet<float>::random_weights(hgad::ResNetArch::resnet18, ResNetStage::layer3, rng));
  const auto images = hgad::Tensor<float>::randn({2, 3, 64, 64}, rng);

  auto hgad_fx = hgad::make_feature_extractor<float>(
      hgad::FeatureConfig::pyramid(hgad::ResNetArch::resnet18, ResNetStage::layer3, 3), net);
  const auto p = hgad_fx->extract(images);
  REQUIRE(p.size() == 3);
  CHECK(p[0].shape() == hgad::Shape{2, 256, 4, 4});
  CHECK(p[1].shape() == hgad::Shape{2, 256, 2, 2});
  CHECK(p[2].shape() == hgad::Shape{2, 256, 1, 1});
  CHECK(hgad_fx->levels()[2].stride == 64);
  // Level 1 is the network on the align_corners=True half-size image.
  const auto half =
      net->forward(hgad::resize_bilinear_batch(images, 32, 32, true), {ResNetStage::layer3});
  CHECK(hgad_test::max_abs_diff(p[1], half[0]) == 0.0);

  auto cflow_fx = hgad::make_feature_extractor<float>(
      hgad::FeatureConfig::multi_stage(hgad::ResNetArch::resnet18), net);
  const auto m = cflow_fx->extract(images);
  REQUIRE(m.size() == 3);
  const auto levels = cflow_fx->levels();
  CHECK(levels[0].name == "layer1");
  CHECK(levels[0].channels == 64);
  CHECK(levels[2].stride == 16);
  for (std::size_t l = 0; l < 3; ++l) {
    const auto s = cflow_fx->feature_shape(l, 64, 64);
    CHECK(m[l].shape() == hgad::Shape{2, s[0], s[1], s[2]});
  }
  CHECK_THROWS_AS(hgad::make_feature_extractor<float>(
                      hgad::FeatureConfig::pyramid(hgad::ResNetArch::resnet50), net),
                  hgad::Error);
  CHECK_THROWS_AS(hgad::ResNetFeatureExtractor<float>(net, {ResNetStage::layer4}), hgad::Error);
}

TEMPLATE_TEST_CASE("neighbourhood_mean averages each position's window, cut at the map's border",
                   "[backbone]", float, double) {
  hgad::Rng rng(11);
  const auto maps = hgad::Tensor<TestType>::randn({2, 3, 5, 7}, rng);
  for (Index k : {1, 3, 5, 9}) {
    const auto got = hgad::neighbourhood_mean(maps, k);
    REQUIRE(got.shape() == maps.shape());
    // Written out: the plain mean of the window's in-map values, one position at a time.
    double worst = 0;
    const Index r = k / 2;
    for (Index b = 0; b < 2; ++b)
      for (Index c = 0; c < 3; ++c)
        for (Index i = 0; i < 5; ++i)
          for (Index j = 0; j < 7; ++j) {
            double sum = 0;
            int count = 0;
            for (Index di = -r; di <= r; ++di)
              for (Index dj = -r; dj <= r; ++dj) {
                const Index y = i + di, x = j + dj;
                if (y < 0 || y >= 5 || x < 0 || x >= 7) continue;
                sum += double(maps(b, c, y, x));
                ++count;
              }
            worst = std::max(worst, std::abs(double(got(b, c, i, j)) - sum / count));
          }
    CHECK(worst <= (std::is_same<TestType, float>::value ? 1e-6 : 1e-14));
  }
  // Hand-computed: a 1 x 3 row 0, 3, 6 with k = 3 gives the means of {0, 3}, {0, 3, 6}, {3, 6}.
  const auto row = hgad::Tensor<TestType>::from_vector({1, 1, 1, 3}, {0, 3, 6});
  const auto mean = hgad::neighbourhood_mean(row, 3);
  CHECK(mean(0, 0, 0, 0) == Approx(1.5));
  CHECK(mean(0, 0, 0, 1) == Approx(3));
  CHECK(mean(0, 0, 0, 2) == Approx(4.5));
  // k = 1 is the map itself; an even or non-positive side is refused.
  CHECK(hgad_test::max_abs_diff(hgad::neighbourhood_mean(maps, 1), maps) == 0.0);
  CHECK_THROWS_AS(hgad::neighbourhood_mean(maps, 2), hgad::Error);
  CHECK_THROWS_AS(hgad::neighbourhood_mean(maps, 0), hgad::Error);
  CHECK_THROWS_AS(hgad::neighbourhood_mean(hgad::Tensor<TestType>({3, 5, 7}), 3), hgad::Error);
}

TEST_CASE("FeatureConfig::neighbourhood averages every level the network and pyramid give",
          "[backbone]") {
  hgad::Rng rng(6);
  auto net = std::make_shared<const hgad::ResNet<float>>(
      hgad::ResNetArch::resnet18,
      hgad::ResNet<float>::random_weights(hgad::ResNetArch::resnet18, ResNetStage::layer3, rng));
  const auto images = hgad::Tensor<float>::randn({2, 3, 64, 64}, rng);
  hgad::FeatureConfig config =
      hgad::FeatureConfig::pyramid(hgad::ResNetArch::resnet18, ResNetStage::layer2, 2);
  const auto plain = hgad::make_feature_extractor<float>(config, net)->extract(images);
  config.neighbourhood = 3;
  const auto fx = hgad::make_feature_extractor<float>(config, net);
  const auto averaged = fx->extract(images);
  REQUIRE(averaged.size() == plain.size());
  for (std::size_t l = 0; l < plain.size(); ++l) {
    CHECK(averaged[l].shape() == plain[l].shape());
    CHECK(fx->feature_shape(l, 64, 64) ==
          hgad::Shape{plain[l].dim(1), plain[l].dim(2), plain[l].dim(3)});
    CHECK(hgad_test::max_abs_diff(averaged[l], hgad::neighbourhood_mean(plain[l], 3)) == 0.0);
  }
  CHECK(fx->levels()[1].name == "layer2@scale1");
  config.neighbourhood = 4;
  CHECK_THROWS_AS(hgad::make_feature_extractor<float>(config, net), hgad::Error);
}

}  // namespace feature_extractor_test
