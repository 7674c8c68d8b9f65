#include <catch2/catch.hpp>

#include <hgad/model/anomaly_map.hpp>
#include <hgad/rng.hpp>

#include <cmath>
#include <vector>

namespace anomaly_map_test {

namespace {

using Catch::Matchers::WithinAbs;

/// scipy 'reflect' written out: fold into [-n, 2n) repeatedly, mirroring about the edges.
long mirror(long i, long n) {
  while (i < 0 || i >= n) {
    if (i < 0) i = -i - 1;
    if (i >= n) i = 2 * n - 1 - i;
  }
  return i;
}

/// Direct 2-D correlation with the outer product of the 1-D Gaussian, no separation.
std::vector<double> naive_gaussian_2d(const std::vector<double>& image, long height, long width,
                                      double sigma) {
  const long radius = long(4.0 * sigma + 0.5);
  std::vector<double> w;
  double total = 0;
  for (long x = -radius; x <= radius; ++x) {
    w.push_back(std::exp(-double(x * x) / (2 * sigma * sigma)));
    total += w.back();
  }
  for (double& v : w) v /= total;
  std::vector<double> out(image.size(), 0.0);
  for (long y = 0; y < height; ++y) {
    for (long x = 0; x < width; ++x) {
      double acc = 0;
      for (long dy = -radius; dy <= radius; ++dy) {
        for (long dx = -radius; dx <= radius; ++dx) {
          acc += w[std::size_t(dy + radius)] * w[std::size_t(dx + radius)] *
                 image[std::size_t(mirror(y + dy, height) * width + mirror(x + dx, width))];
        }
      }
      out[std::size_t(y * width + x)] = acc;
    }
  }
  return out;
}

template <class Scalar>
void require_close(const hgad::Tensor<Scalar>& got, const std::vector<double>& expected,
                   double tolerance) {
  REQUIRE(std::size_t(got.numel()) == expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) {
    REQUIRE(std::isfinite(double(got.data()[i])));
    REQUIRE_THAT(double(got.data()[i]), WithinAbs(expected[i], tolerance));
  }
}

}  // namespace

TEMPLATE_TEST_CASE("upsample_bilinear reproduces hand-computed 2x2 resizes", "[metrics]", float,
                   double) {
  // in = [[0, 1], [2, 3]] = 2 y + x on the input grid, so every output is 2 y_src + x_src.
  const auto in = hgad::Tensor<TestType>::from_vector({2, 2}, {0, 1, 2, 3});
  // align_corners: src = dst (2 - 1) / (out - 1): 3x3 -> 0, 1/2, 1; 4x4 -> 0, 1/3, 2/3, 1.
  require_close(hgad::upsample_bilinear(in, 3, 3, true), {0, 0.5, 1, 1, 1.5, 2, 2, 2.5, 3}, 1e-6);
  std::vector<double> expected4;
  for (int y = 0; y < 4; ++y) {
    for (int x = 0; x < 4; ++x) expected4.push_back(2.0 * y / 3 + x / 3.0);
  }
  require_close(hgad::upsample_bilinear(in, 4, 4, true), expected4, 1e-6);
  // half-pixel: src = max(0, (dst + 1/2) 2 / out - 1/2), clamped at the last pixel:
  // 4 -> -1/4 (0), 1/4, 3/4, 5/4 (1);  3 -> -1/6 (0), 1/2, 7/6 (1).
  const double c4[] = {0, 0.25, 0.75, 1};
  std::vector<double> half4;
  for (double y : c4) {
    for (double x : c4) half4.push_back(2 * y + x);
  }
  require_close(hgad::upsample_bilinear(in, 4, 4, false), half4, 1e-6);
  require_close(hgad::upsample_bilinear(in, 3, 3, false), {0, 0.5, 1, 1, 1.5, 2, 2, 2.5, 3}, 1e-6);
  // Non-square output, batched: (2, 2, 2) -> (2, 2, 3), second image negated.
  const auto batch = hgad::Tensor<TestType>::from_vector({2, 2, 2}, {0, 1, 2, 3, 0, -1, -2, -3});
  require_close(hgad::upsample_bilinear(batch, 2, 3, true),
                {0, 0.5, 1, 2, 2.5, 3, 0, -0.5, -1, -2, -2.5, -3}, 1e-6);
  // Same size with align_corners is the identity; a 1x1 input is constant.
  require_close(hgad::upsample_bilinear(in, 2, 2, true), {0, 1, 2, 3}, 0);
  require_close(hgad::upsample_bilinear(hgad::Tensor<TestType>::full({1, 1}, 7), 2, 3, false),
                {7, 7, 7, 7, 7, 7}, 0);
  REQUIRE_THROWS_WITH(hgad::upsample_bilinear(hgad::Tensor<TestType>({4}), 2, 2),
                      Catch::Contains("(4)"));
  REQUIRE_THROWS_WITH(hgad::upsample_bilinear(in, 0, 2), Catch::Contains("0 x 2"));
}

TEST_CASE("gaussian_kernel1d and the filter of a delta match scipy's values", "[metrics]") {
  // scipy 1.10: d = np.zeros(41); d[20] = 1; g = gaussian_filter1d(d, 4):
  // g[20] = 0.09973909953098634, g[25] = 0.04566388723834511, g[36] = 3.345874043329486e-05,
  // g[37] = 0 (radius 16).
  const auto kernel = hgad::gaussian_kernel1d(4.0);
  REQUIRE(kernel.size() == 33);
  REQUIRE_THAT(kernel[16], WithinAbs(0.09973909953098634, 1e-16));
  REQUIRE_THAT(kernel[21], WithinAbs(0.04566388723834511, 1e-16));
  REQUIRE_THAT(kernel[32], WithinAbs(3.345874043329486e-05, 1e-19));
  hgad::Tensor<double> delta({1, 41});
  delta(0, 20) = 1;
  const auto filtered = hgad::gaussian_filter(delta, 4.0);
  for (int x = 0; x < 41; ++x) {
    const double expected = std::abs(x - 20) <= 16 ? kernel[std::size_t(x - 20 + 16)] : 0.0;
    REQUIRE(std::isfinite(filtered(0, x)));
    REQUIRE_THAT(filtered(0, x), WithinAbs(expected, 1e-17));
  }
  REQUIRE_THAT(filtered(0, 20), WithinAbs(0.09973909953098634, 1e-16));
  REQUIRE(filtered(0, 37) == 0.0);
}

TEST_CASE("gaussian_filter matches scipy where the radius exceeds the image", "[metrics]") {
  // scipy 1.10: a = np.arange(30.).reshape(5, 6) ** 1.5; r = gaussian_filter(a, 4):
  // r[0,0] = 58.97322743043745, r[2,3] = 63.382397292398984, r[4,5] = 67.1027707292386,
  // r[1,4] = 62.362839838814324. b = np.arange(12.).reshape(3, 4); gaussian_filter(b, 1.0):
  // [0,0] = 2.1152021848572917, [1,2] = 5.936877488090004, [2,3] = 8.884797815142711.
  hgad::Tensor<double> a({5, 6});
  for (int i = 0; i < 30; ++i) a.data()[i] = std::pow(double(i), 1.5);
  const auto r = hgad::gaussian_filter(a, 4.0);
  REQUIRE_THAT(r(0, 0), WithinAbs(58.97322743043745, 1e-11));
  REQUIRE_THAT(r(2, 3), WithinAbs(63.382397292398984, 1e-11));
  REQUIRE_THAT(r(4, 5), WithinAbs(67.1027707292386, 1e-11));
  REQUIRE_THAT(r(1, 4), WithinAbs(62.362839838814324, 1e-11));
  hgad::Tensor<double> b({3, 4});
  for (int i = 0; i < 12; ++i) b.data()[i] = i;
  const auto rb = hgad::gaussian_filter(b, 1.0);
  REQUIRE_THAT(rb(0, 0), WithinAbs(2.1152021848572917, 1e-13));
  REQUIRE_THAT(rb(1, 2), WithinAbs(5.936877488090004, 1e-13));
  REQUIRE_THAT(rb(2, 3), WithinAbs(8.884797815142711, 1e-13));
}

TEMPLATE_TEST_CASE("gaussian_filter equals a direct 2-D convolution with reflected borders",
                   "[metrics]", float, double) {
  hgad::Rng rng(4);
  const double tolerance = sizeof(TestType) == 4 ? 2e-6 : 1e-12;
  struct Case {
    long n, height, width;
    double sigma;
  };
  for (const Case c : {Case{2, 7, 9, 1.3}, Case{1, 19, 23, 4.0}, Case{1, 1, 5, 0.7}}) {
    auto input = hgad::Tensor<TestType>::uniform({c.n, c.height, c.width}, rng, -1, 1);
    const auto got = hgad::gaussian_filter(input, c.sigma);
    REQUIRE(got.shape() == input.shape());
    std::vector<double> expected;
    for (long i = 0; i < c.n; ++i) {
      std::vector<double> plane(std::size_t(c.height * c.width));
      for (std::size_t p = 0; p < plane.size(); ++p) {
        plane[p] = double(input.data()[std::size_t(i * c.height * c.width) + p]);
      }
      const auto filtered = naive_gaussian_2d(plane, c.height, c.width, c.sigma);
      expected.insert(expected.end(), filtered.begin(), filtered.end());
    }
    require_close(got, expected, tolerance);
  }
  const auto constant = hgad::gaussian_filter(hgad::Tensor<TestType>::full({2, 10, 13}, 3.25), 4.0);
  require_close(constant, std::vector<double>(260, 3.25), sizeof(TestType) == 4 ? 1e-6 : 1e-13);
  const auto same = hgad::Tensor<TestType>::uniform({3, 4}, rng, 0, 1);
  require_close(hgad::gaussian_filter(same, 0.0),
                std::vector<double>(same.data(), same.data() + 12), 0);
  REQUIRE_THROWS_WITH(hgad::gaussian_filter(same, -1.0), Catch::Contains("sigma"));
}

TEMPLATE_TEST_CASE("The transductive anomaly map follows docs/algorithm.md 5.4 step by step",
                   "[metrics]", float, double) {
  hgad::Rng rng(9);
  const hgad::Index n = 3, out_h = 12, out_w = 10;
  std::vector<hgad::Tensor<TestType>> levels = {
      hgad::Tensor<TestType>::randn({n, 6, 5}, rng, -2, 1),
      hgad::Tensor<TestType>::randn({n, 3, 3}, rng, -1, 2)};
  // Without weights (the paper's sum) and with a weight per level (level_weights).
  for (const auto& weights : {std::vector<double>{}, std::vector<double>{0.5, 3.0}}) {
    for (const bool log_scale : {false, true}) {
      INFO("log_scale " << log_scale << ", " << weights.size() << " weights");
      hgad::AnomalyMapOptions options;
      options.height = out_h;
      options.width = out_w;
      options.sigma = 1.5;
      options.log_scale = log_scale;
      options.level_weights = weights;
      const auto a = hgad::transductive_anomaly_map(levels, options);
      REQUIRE(a.shape() == hgad::Shape{n, out_h, out_w});

      // Composed from the separately tested blocks, in double: max subtraction, exp (not on the log
      // scale), upsample, weighted sum, max - S, blur.
      hgad::Tensor<double> s({n, out_h, out_w});
      for (std::size_t l = 0; l < levels.size(); ++l) {
        const auto& level = levels[l];
        const double weight = weights.empty() ? 1.0 : weights[l];
        double m = -INFINITY;
        for (hgad::Index i = 0; i < level.numel(); ++i) m = std::max(m, double(level.data()[i]));
        hgad::Tensor<double> q(level.shape());
        for (hgad::Index i = 0; i < level.numel(); ++i) {
          const double relative = double(level.data()[i]) - m;
          q.data()[i] = log_scale ? relative : std::exp(relative);
        }
        const auto up = hgad::upsample_bilinear(q, out_h, out_w, true);
        for (hgad::Index i = 0; i < s.numel(); ++i) s.data()[i] += weight * up.data()[i];
      }
      double s_max = -INFINITY;
      for (hgad::Index i = 0; i < s.numel(); ++i) s_max = std::max(s_max, s.data()[i]);
      for (hgad::Index i = 0; i < s.numel(); ++i) s.data()[i] = s_max - s.data()[i];
      const auto blurred = hgad::gaussian_filter(s, 1.5);
      // Absolute tolerances: the log scale's maps reach about 10 (30 weighted), the exp scale's
      // about 2.
      const double scale = log_scale ? 30 : 1;
      require_close(a, blurred.to_vector(), scale * (sizeof(TestType) == 4 ? 1e-6 : 1e-13));

      const auto constants = hgad::anomaly_map_constants(levels, options);
      REQUIRE(constants.level_max.size() == 2);
      REQUIRE_THAT(constants.sum_max, WithinAbs(s_max, scale * 1e-13));

      // Unblurred: the pixel holding max S is exactly 0 and no pixel is negative.
      options.sigma = 0;
      const auto raw = hgad::transductive_anomaly_map(levels, options);
      double raw_min = INFINITY;
      for (hgad::Index i = 0; i < raw.numel(); ++i)
        raw_min = std::min(raw_min, double(raw.data()[i]));
      REQUIRE(raw_min == 0.0);
    }
  }
}

TEMPLATE_TEST_CASE(
    "On the log scale an anomaly map keeps the order of positions far below the "
    "largest, which the exp scale gives the same score",
    "[metrics]", float, double) {
  // One level of 2 x 2 maps at the output's size: image 0 has one position 40 below the largest,
  // image 1 one position 60 below. exp(-40) and exp(-60) are both 0 beside 1, so the exp scale
  // scores the two images alike; the log scale scores image 1 (the less likely) 20 higher.
  hgad::Tensor<TestType> maps({2, 2, 2});
  maps.data()[3] = TestType(-40);
  maps.data()[4 + 3] = TestType(-60);
  hgad::AnomalyMapOptions options;
  options.height = options.width = 2;
  options.sigma = 0;
  const std::vector<hgad::Tensor<TestType>> levels = {maps};
  const auto exp_scores = hgad::image_scores(hgad::transductive_anomaly_map(levels, options));
  CHECK(double(exp_scores[0]) == Approx(1.0).margin(1e-15));
  CHECK(exp_scores[0] == exp_scores[1]);
  options.log_scale = true;
  const auto log_scores = hgad::image_scores(hgad::transductive_anomaly_map(levels, options));
  CHECK(double(log_scores[0]) == Approx(40));
  CHECK(double(log_scores[1]) == Approx(60));
}

TEMPLATE_TEST_CASE("The calibrated anomaly map scores an image alone as inside a batch",
                   "[metrics]", float, double) {
  hgad::Rng rng(21);
  hgad::AnomalyMapOptions options;
  options.height = 16;
  options.width = 16;
  std::vector<hgad::Tensor<TestType>> train = {hgad::Tensor<TestType>::randn({5, 8, 8}, rng),
                                               hgad::Tensor<TestType>::randn({5, 4, 4}, rng),
                                               hgad::Tensor<TestType>::randn({5, 2, 2}, rng)};
  std::vector<hgad::Tensor<TestType>> test = {hgad::Tensor<TestType>::randn({4, 8, 8}, rng),
                                              hgad::Tensor<TestType>::randn({4, 4, 4}, rng),
                                              hgad::Tensor<TestType>::randn({4, 2, 2}, rng)};
  const auto constants = hgad::anomaly_map_constants(train, options);
  const auto batch = hgad::calibrated_anomaly_map(test, constants, options);
  for (hgad::Index i = 0; i < 4; ++i) {
    std::vector<hgad::Tensor<TestType>> one;
    for (const auto& level : test) one.push_back(level.slice(i, i + 1));
    const auto alone = hgad::calibrated_anomaly_map(one, constants, options);
    REQUIRE(alone.shape() == hgad::Shape{1, 16, 16});
    for (hgad::Index p = 0; p < 256; ++p) {
      REQUIRE(std::isfinite(alone.data()[p]));
      REQUIRE(alone.data()[p] == batch.data()[i * 256 + p]);
    }
  }
  // With the test set's own constants the calibrated map is the transductive one.
  const auto own =
      hgad::calibrated_anomaly_map(test, hgad::anomaly_map_constants(test, options), options);
  const auto transductive = hgad::transductive_anomaly_map(test, options);
  REQUIRE(own.to_vector() == transductive.to_vector());

  const auto scores = hgad::image_scores(batch);
  REQUIRE(scores.size() == 4);
  for (hgad::Index i = 0; i < 4; ++i) {
    TestType m = batch.data()[i * 256];
    for (hgad::Index p = 0; p < 256; ++p) m = std::max(m, batch.data()[i * 256 + p]);
    REQUIRE(scores[std::size_t(i)] == m);
  }
}

TEMPLATE_TEST_CASE("The image score is the map's maximum or the mean of its highest fraction",
                   "[metrics]", float, double) {
  // Two 10 x 10 maps holding 0 .. 99 in a shuffled order (the second reversed).
  hgad::Tensor<TestType> maps({2, 10, 10});
  for (hgad::Index p = 0; p < 100; ++p) {
    maps.data()[p] = TestType((p * 37) % 100);
    maps.data()[100 + p] = TestType(99 - (p * 37) % 100);
  }
  CHECK(hgad::image_scores(maps) == std::vector<TestType>{99, 99});
  // ⌊0.05 · 100⌋ = 5 highest: 99, 98, 97, 96, 95.
  CHECK(hgad::image_scores(maps, 0.05) == std::vector<TestType>{97, 97});
  CHECK(hgad::image_scores(maps, 0.059) == std::vector<TestType>{97, 97});
  // Fewer than one pixel is the maximum; all of them the mean.
  CHECK(hgad::image_scores(maps, 0.001) == std::vector<TestType>{99, 99});
  CHECK(hgad::image_scores(maps, 1.0) == std::vector<TestType>{TestType(49.5), TestType(49.5)});
  // A single stray pixel (1099 in place of 11) sets the maximum; in the mean of the highest 10
  // it counts a tenth: (1099 + 99 + 98 + ... + 91) / 10.
  maps.data()[3] = 1099;
  CHECK(hgad::image_score(maps.data(), 100, 0.0) == 1099);
  CHECK(hgad::image_score(maps.data(), 100, 0.1) == Approx(195.4));
  REQUIRE_THROWS_WITH(hgad::image_score(maps.data(), 100, 1.5), Catch::Contains("[0, 1]"));
  REQUIRE_THROWS_WITH(hgad::image_score(maps.data(), 0, 0.0), Catch::Contains("no pixels"));
}

TEST_CASE("Anomaly map functions reject inconsistent levels and constants", "[metrics]") {
  std::vector<hgad::Tensor<float>> levels = {hgad::Tensor<float>({2, 4, 4}),
                                             hgad::Tensor<float>({3, 2, 2})};
  REQUIRE_THROWS_WITH(hgad::transductive_anomaly_map(levels),
                      Catch::Contains("level 1 holds 3 images") && Catch::Contains("2"));
  REQUIRE_THROWS_WITH(hgad::transductive_anomaly_map(std::vector<hgad::Tensor<float>>{}),
                      Catch::Contains("no level maps"));
  REQUIRE_THROWS_WITH(
      hgad::transductive_anomaly_map(std::vector<hgad::Tensor<float>>{hgad::Tensor<float>({4, 4})}),
      Catch::Contains("(N, h, w)") && Catch::Contains("(4, 4)"));
  levels[1] = hgad::Tensor<float>({2, 2, 2});
  levels[1](1, 1, 0) = NAN;
  REQUIRE_THROWS_WITH(hgad::transductive_anomaly_map(levels),
                      Catch::Contains("level 1") && Catch::Contains("non-finite"));
  levels[1](1, 1, 0) = 0;
  hgad::AnomalyMapConstants constants;
  constants.level_max = {0.0};
  REQUIRE_THROWS_WITH(hgad::calibrated_anomaly_map(levels, constants),
                      Catch::Contains("1 level constants for 2 levels"));
  REQUIRE_THROWS_WITH(hgad::image_scores(hgad::Tensor<float>({2, 3})), Catch::Contains("(2, 3)"));
  hgad::AnomalyMapOptions weighted;
  weighted.level_weights = {1.0};
  REQUIRE_THROWS_WITH(hgad::transductive_anomaly_map(levels, weighted),
                      Catch::Contains("1 level weights for 2 levels"));
  weighted.level_weights = {1.0, -0.5};
  REQUIRE_THROWS_WITH(hgad::anomaly_map_constants(levels, weighted),
                      Catch::Contains("weight of level 1") && Catch::Contains("-0.5"));
  weighted.level_weights = {1.0, NAN};
  REQUIRE_THROWS_WITH(hgad::transductive_anomaly_map(levels, weighted),
                      Catch::Contains("weight of level 1"));
}

}  // namespace anomaly_map_test
