#include <catch2/catch.hpp>

#include <hgad/metrics/aupro.hpp>
#include <hgad/metrics/connected_components.hpp>
#include <hgad/rng.hpp>

#include <cmath>
#include <functional>
#include <vector>

namespace aupro_test {

namespace {

using Catch::Matchers::WithinAbs;

/// Labels 8-connected foreground regions by recursive flood fill; returns the region count.
int flood_fill_regions(const std::vector<int>& mask, int height, int width,
                       std::vector<int>& label) {
  label.assign(mask.size(), 0);
  int n = 0;
  std::function<void(int, int)> fill = [&](int y, int x) {
    for (int dy = -1; dy <= 1; ++dy) {
      for (int dx = -1; dx <= 1; ++dx) {
        const int ny = y + dy, nx = x + dx;
        if (ny < 0 || ny >= height || nx < 0 || nx >= width) continue;
        const int q = ny * width + nx;
        if (mask[q] && !label[q]) {
          label[q] = n;
          fill(ny, nx);
        }
      }
    }
  };
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      if (mask[y * width + x] && !label[y * width + x]) {
        label[y * width + x] = ++n;
        fill(y, x);
      }
    }
  }
  return n;
}

/// AUPRO by the BASELINES.md recipe with one full pass over every pixel per threshold.
double direct_aupro(const std::vector<std::vector<int>>& masks,
                    const std::vector<std::vector<double>>& maps, int height, int width,
                    double max_fpr) {
  double lo = maps[0][0], hi = maps[0][0];
  for (const auto& m : maps) {
    for (double v : m) lo = std::min(lo, v), hi = std::max(hi, v);
  }
  const double step = (hi - lo) / 200;
  const int length = int(std::ceil((hi - lo) / step));
  std::vector<std::vector<int>> labels(masks.size());
  std::vector<int> n_regions(masks.size());
  for (std::size_t i = 0; i < masks.size(); ++i) {
    n_regions[i] = flood_fill_regions(masks[i], height, width, labels[i]);
  }
  std::vector<double> fprs, pros;
  for (int t = 0; t < length; ++t) {
    const double th = t == 0 ? lo : t == 1 ? lo + step : lo + t * ((lo + step) - lo);
    double fp = 0, negatives = 0;
    std::vector<double> overlaps;
    for (std::size_t i = 0; i < masks.size(); ++i) {
      for (int r = 1; r <= n_regions[i]; ++r) {
        double hit = 0, area = 0;
        for (std::size_t p = 0; p < masks[i].size(); ++p) {
          if (labels[i][p] != r) continue;
          area += 1;
          hit += maps[i][p] > th ? 1 : 0;
        }
        overlaps.push_back(hit / area);
      }
      for (std::size_t p = 0; p < masks[i].size(); ++p) {
        if (masks[i][p]) continue;
        negatives += 1;
        fp += maps[i][p] > th ? 1 : 0;
      }
    }
    double pro = 0;
    for (double o : overlaps) pro += o;
    if (fp / negatives < max_fpr) {
      fprs.push_back(fp / negatives);
      pros.push_back(pro / double(overlaps.size()));
    }
  }
  const double f_min = *std::min_element(fprs.begin(), fprs.end());
  const double f_max = *std::max_element(fprs.begin(), fprs.end());
  double area = 0;
  for (std::size_t i = 0; i + 1 < fprs.size(); ++i) {
    const double x0 = (fprs[i] - f_min) / (f_max - f_min);
    const double x1 = (fprs[i + 1] - f_min) / (f_max - f_min);
    area += (x0 - x1) * (pros[i] + pros[i + 1]) / 2;
  }
  return area;
}

template <class Scalar>
hgad::Tensor<Scalar> stack(const std::vector<std::vector<double>>& images, int height, int width) {
  std::vector<Scalar> flat;
  for (const auto& image : images) {
    for (double v : image) flat.push_back(Scalar(v));
  }
  return hgad::Tensor<Scalar>::from_vector({hgad::Index(images.size()), height, width}, flat);
}

}  // namespace

TEST_CASE("Connected components join diagonal neighbours under 8- but not 4-connectivity",
          "[metrics]") {
  // 1 1 0 0 1
  // 0 0 1 0 1
  // 1 0 0 0 0
  // 1 0 0 1 1
  const std::vector<int> mask = {1, 1, 0, 0, 1,  //
                                 0, 0, 1, 0, 1,  //
                                 1, 0, 0, 0, 0,  //
                                 1, 0, 0, 1, 1};
  const auto eight = hgad::label_connected_components(mask.data(), 4, 5, hgad::Connectivity::eight);
  REQUIRE(eight.n_components == 4);
  REQUIRE(eight.sizes == std::vector<hgad::Index>{3, 2, 2, 2});
  REQUIRE(eight.labels == std::vector<std::int32_t>{1, 1, 0, 0, 2,  //
                                                    0, 0, 1, 0, 2,  //
                                                    3, 0, 0, 0, 0,  //
                                                    3, 0, 0, 4, 4});
  const auto four = hgad::label_connected_components(mask.data(), 4, 5, hgad::Connectivity::four);
  REQUIRE(four.n_components == 5);
  REQUIRE(four.sizes == std::vector<hgad::Index>{2, 2, 1, 2, 2});
  REQUIRE(four.labels == std::vector<std::int32_t>{1, 1, 0, 0, 2,  //
                                                   0, 0, 3, 0, 2,  //
                                                   4, 0, 0, 0, 0,  //
                                                   4, 0, 0, 5, 5});
  const auto tensor_mask =
      hgad::Tensor<float>::from_vector({4, 5}, std::vector<float>(mask.begin(), mask.end()));
  REQUIRE(hgad::label_connected_components(tensor_mask).labels == eight.labels);
  const std::vector<int> empty(12, 0);
  REQUIRE(hgad::label_connected_components(empty.data(), 3, 4).n_components == 0);
  REQUIRE_THROWS_WITH(hgad::label_connected_components(hgad::Tensor<float>({2, 3, 4})),
                      Catch::Contains("(2, 3, 4)"));
}

TEST_CASE("Connected components agree with a flood fill on random masks", "[metrics]") {
  hgad::Rng rng(8);
  for (int trial = 0; trial < 30; ++trial) {
    const int height = 1 + int(rng.uniform_int(20)), width = 1 + int(rng.uniform_int(20));
    std::vector<int> mask(std::size_t(height * width));
    for (int& m : mask) m = rng.uniform() < 0.45 ? 1 : 0;
    std::vector<int> expected;
    const int n = flood_fill_regions(mask, height, width, expected);
    const auto got = hgad::label_connected_components(mask.data(), height, width);
    REQUIRE(got.n_components == n);
    REQUIRE(std::vector<int>(got.labels.begin(), got.labels.end()) == expected);
  }
}

TEST_CASE("numpy_arange_thresholds reproduces numpy.arange, including its 201-step case",
          "[metrics]") {
  // numpy 1.24: np.arange(0.836, 1.702, (1.702 - 0.836) / 200) has 201 elements with
  // r[1] = 0.8403299999999999, r[2] = 0.8446599999999999, r[137] = 1.4292099999999923,
  // r[200] = 1.7019999999999889.
  const auto th = hgad::numpy_arange_thresholds(0.836, 1.702, 200);
  REQUIRE(th.size() == 201);
  REQUIRE(th[0] == 0.836);
  REQUIRE(th[1] == 0.8403299999999999);
  REQUIRE(th[2] == 0.8446599999999999);
  REQUIRE(th[137] == 1.4292099999999923);
  REQUIRE(th[200] == 1.7019999999999889);
  REQUIRE(hgad::numpy_arange_thresholds(0.0, 3.0, 200).size() == 200);
  REQUIRE(hgad::numpy_arange_thresholds(1.0, 1.0, 200).empty());
}

TEMPLATE_TEST_CASE("AUPRO matches a hand-computed case with an empty defect mask", "[metrics]",
                   float, double) {
  // Image 1 (3 x 4): region A = {(0,0): 3, (1,1): 1} (diagonal, one 8-connected region),
  // region B = {(0,3): 2, (1,3): 2}; negatives hold one 2, one 1, six 0.
  // Thresholds 0, 0.015, ..., 2.985: 67 below 1 (map >= 1 positive), 67 in [1, 2), 66 in [2, 3).
  //   th < 1:      PRO = (1 + 1) / 2 = 1,        FP = 2 of 8 -> FPR 0.25
  //   1 <= th < 2: PRO = (1/2 + 1) / 2 = 0.75,   FP = 1      -> 0.125
  //   th >= 2:     PRO = (1/2 + 0) / 2 = 0.25,   FP = 0      -> 0
  // Normalised FPR 1, 0.5, 0: area 0.5 (1 + 0.75) / 2 + 0.5 (0.75 + 0.25) / 2 = 0.6875.
  // With max_fpr 0.2 only FPR 0.125 and 0 remain: area 1 (0.75 + 0.25) / 2 = 0.5.
  const std::vector<double> mask1 = {1, 0, 0, 1,  //
                                     0, 1, 0, 1,  //
                                     0, 0, 0, 0};
  const std::vector<double> map1 = {3, 0, 0, 2,  //
                                    0, 1, 2, 2,  //
                                    1, 0, 0, 0};
  const auto masks1 = stack<TestType>({mask1}, 3, 4);
  const auto maps1 = stack<TestType>({map1}, 3, 4);
  const double one_image = hgad::aupro(masks1, maps1);
  REQUIRE(std::isfinite(one_image));
  REQUIRE_THAT(one_image, WithinAbs(0.6875, 1e-12));
  REQUIRE_THAT(hgad::aupro(masks1, maps1, 0.2), WithinAbs(0.5, 1e-12));
  REQUIRE_THAT(hgad::aupro(masks1.reshape({3, 4}), maps1.reshape({3, 4})),
               WithinAbs(0.6875, 1e-12));

  const hgad::ProCurve curve = hgad::pro_curve(masks1, maps1);
  REQUIRE(curve.n_regions == 2);
  REQUIRE(curve.n_negative_pixels == 8);
  REQUIRE(curve.thresholds.size() == 200);
  REQUIRE(curve.pro[0] == 1.0);
  REQUIRE(curve.fpr[66] == 0.25);
  REQUIRE(curve.pro[67] == 0.75);
  REQUIRE(curve.fpr[133] == 0.125);
  REQUIRE(curve.pro[134] == 0.25);
  REQUIRE(curve.fpr[199] == 0.0);

  // A defective image with an empty mask (all 0) adds 12 negatives, one of them at 1, and no
  // region: FPR 3/20, 1/20, 0 -> normalised 1, 1/3, 0; area (2/3)(1.75)/2 + (1/3)(1)/2 = 0.75.
  std::vector<double> map2(12, 0.0);
  map2[5] = 1;
  const auto masks2 = stack<TestType>({mask1, std::vector<double>(12, 0.0)}, 3, 4);
  const auto maps2 = stack<TestType>({map1, map2}, 3, 4);
  REQUIRE_THAT(hgad::aupro(masks2, maps2), WithinAbs(0.75, 1e-12));
  REQUIRE(hgad::pro_curve(masks2, maps2).n_regions == 2);
}

TEST_CASE("AUPRO equals a direct 200-pass implementation on random tied maps", "[metrics]") {
  hgad::Rng rng(17);
  const int height = 13, width = 11;
  for (int trial = 0; trial < 10; ++trial) {
    const int n_images = 1 + int(rng.uniform_int(4));
    std::vector<std::vector<double>> masks(std::size_t(n_images + 1)), maps(masks.size());
    for (std::size_t i = 0; i < masks.size(); ++i) {
      masks[i].assign(std::size_t(height * width), 0.0);
      maps[i].assign(std::size_t(height * width), 0.0);
      const bool empty_mask = i == masks.size() - 1;
      for (int blob = 0; blob < 3 && !empty_mask; ++blob) {
        const int cy = int(rng.uniform_int(height)), cx = int(rng.uniform_int(width));
        const int r = 1 + int(rng.uniform_int(3));
        for (int y = std::max(0, cy - r); y < std::min(height, cy + r); ++y) {
          for (int x = std::max(0, cx - r); x < std::min(width, cx + r); ++x) {
            if (rng.uniform() < 0.7) masks[i][std::size_t(y * width + x)] = 1;
          }
        }
      }
      for (std::size_t p = 0; p < maps[i].size(); ++p) {
        const double level = std::floor(rng.uniform() * 9 + 3 * masks[i][p] * rng.uniform());
        maps[i][p] = rng.uniform() < 0.5 ? level / 7 : level / 7 + 0.01 * rng.uniform();
      }
    }
    std::vector<std::vector<int>> int_masks;
    for (const auto& m : masks) int_masks.emplace_back(m.begin(), m.end());
    for (double max_fpr : {0.3, 1.0}) {
      const double expected = direct_aupro(int_masks, maps, height, width, max_fpr);
      const double got = hgad::aupro(stack<double>(masks, height, width),
                                     stack<double>(maps, height, width), max_fpr);
      REQUIRE(std::isfinite(got));
      REQUIRE_THAT(got, WithinAbs(expected, 1e-12));
    }
  }
}

TEST_CASE("AUPRO bins scores that equal a threshold exactly as map > threshold", "[metrics]") {
  // Integer scores 0..200 make every threshold 0, 1, ..., 199 a score; the second case draws
  // scores from the 201 thresholds of np.arange(0.836, 1.702, (1.702 - 0.836) / 200).
  hgad::Rng rng(29);
  const int height = 9, width = 10;
  const auto arange201 = hgad::numpy_arange_thresholds(0.836, 1.702, 200);
  for (int trial = 0; trial < 6; ++trial) {
    std::vector<std::vector<double>> masks(3), maps(3);
    for (std::size_t i = 0; i < 3; ++i) {
      masks[i].assign(std::size_t(height * width), 0.0);
      maps[i].assign(std::size_t(height * width), 0.0);
      for (std::size_t p = 0; p < masks[i].size(); ++p) {
        masks[i][p] = (p % 7 < 2 && i != 1) ? 1 : 0;
        maps[i][p] =
            trial < 3 ? double(rng.uniform_int(201)) : arange201[std::size_t(rng.uniform_int(201))];
      }
    }
    maps[0][0] = trial < 3 ? 0.0 : 0.836;
    maps[0][1] = trial < 3 ? 200.0 : 1.702;
    std::vector<std::vector<int>> int_masks;
    for (const auto& m : masks) int_masks.emplace_back(m.begin(), m.end());
    for (double max_fpr : {0.3, 1.0}) {
      const double expected = direct_aupro(int_masks, maps, height, width, max_fpr);
      const double got = hgad::aupro(stack<double>(masks, height, width),
                                     stack<double>(maps, height, width), max_fpr);
      REQUIRE(std::isfinite(got));
      REQUIRE_THAT(got, WithinAbs(expected, 1e-12));
    }
    const auto curve =
        hgad::pro_curve(stack<double>(masks, height, width), stack<double>(maps, height, width));
    REQUIRE(curve.thresholds.size() == (trial < 3 ? 200u : 201u));
  }
}

TEST_CASE("AUPRO reports bad inputs and degenerate maps", "[metrics]") {
  // Negatives at 0.1 ... 0.5 give FPR 1, 0.8, 0.6, 0.4, 0.2, 0: two points below 0.3.
  const auto masks = hgad::Tensor<float>::from_vector({1, 2, 3}, {1, 0, 0, 0, 0, 0});
  const auto maps =
      hgad::Tensor<float>::from_vector({1, 2, 3}, {0.9f, 0.1f, 0.2f, 0.3f, 0.4f, 0.5f});
  REQUIRE(std::isfinite(hgad::aupro(masks, maps)));
  REQUIRE_THROWS_WITH(hgad::aupro(masks, hgad::Tensor<float>({1, 3, 2})),
                      Catch::Contains("(1, 2, 3)") && Catch::Contains("(1, 3, 2)"));
  REQUIRE_THROWS_WITH(hgad::aupro(hgad::Tensor<float>({1, 2, 3}), maps),
                      Catch::Contains("no defect region"));
  REQUIRE_THROWS_WITH(hgad::aupro(hgad::Tensor<float>::ones({1, 2, 3}), maps),
                      Catch::Contains("no mask == 0 pixel"));
  REQUIRE_THROWS_WITH(
      hgad::aupro(hgad::Tensor<float>::from_vector({1, 2, 3}, {255, 0, 0, 0, 0, 0}), maps),
      Catch::Contains("mask value 255"));
  REQUIRE_THROWS_WITH(
      hgad::aupro(masks, hgad::Tensor<float>::from_vector({1, 2, 3}, {NAN, 0, 0, 0, 0, 0})),
      Catch::Contains("not finite"));
  REQUIRE_THROWS_WITH(hgad::aupro(masks, maps, 0.0), Catch::Contains("max_fpr"));
  // A constant map: numpy.arange with step 0 has no thresholds.
  REQUIRE(std::isnan(hgad::aupro(masks, hgad::Tensor<float>::full({1, 2, 3}, 0.5f))));
  // Negatives 0.1, 0.2, 0.3 (FPR 2/3, 1/3, 0): only FPR 0 is below 0.3, one FPR value.
  const auto masks_4 = hgad::Tensor<float>::from_vector({1, 2, 2}, {1, 0, 0, 0});
  const auto one_point = hgad::Tensor<float>::from_vector({1, 2, 2}, {0.9f, 0.1f, 0.2f, 0.3f});
  REQUIRE(std::isnan(hgad::aupro(masks_4, one_point)));
  // The negatives hold the maximum: every threshold has FPR 1, no point is kept.
  const auto no_point = hgad::Tensor<float>::from_vector({1, 2, 2}, {0.05f, 0.3f, 0.3f, 0.3f});
  REQUIRE(std::isnan(hgad::aupro(masks_4, no_point)));
}

}  // namespace aupro_test
