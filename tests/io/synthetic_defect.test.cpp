// Synthetic defects (io/synthetic_defect.hpp): the drawn rectangles and changes stay in their
// ranges, the defect writes exactly its rectangle, the mask marks exactly it, and the pipeline's
// defective rows are the backbone's features of the defective image.

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <hgad/io/image.hpp>
#include <hgad/io/synthetic_defect.hpp>
#include <hgad/model/pipeline.hpp>

#include "io/temp_dir.hpp"

namespace synthetic_defect_test {

namespace {

bool overlap(const hgad::SyntheticDefect& d) {
  return d.source_top < d.top + d.height && d.top < d.source_top + d.height &&
         d.source_left < d.left + d.width && d.left < d.source_left + d.width;
}

}  // namespace

TEST_CASE("draw_synthetic_defect stays within its ranges and the image, and a seed fixes it",
          "[io][synthetic]") {
  const hgad::Index S = 256;
  const hgad::SyntheticDefectRanges r;
  bool brighter = false, darker = false;
  for (std::uint64_t seed = 0; seed < 2000; ++seed) {
    hgad::Rng rng(seed);
    const hgad::SyntheticDefect d = hgad::draw_synthetic_defect(S, rng);
    INFO("seed " << seed);
    REQUIRE(d.image_size == S);
    REQUIRE(d.height >= 1);
    REQUIRE(d.width >= 1);
    REQUIRE(d.height <= S / 2);
    REQUIRE(d.width <= S / 2);
    // The area is drawn in [0.02, 0.08] of the image and each side rounded: allow one pixel per
    // side.
    const double area = double(d.height * d.width) / double(S * S);
    CHECK(area >= r.min_area * (1 - 2.0 / 36));
    CHECK(area <= r.max_area * (1 + 2.0 / 36));
    const double aspect = double(d.height) / double(d.width);
    CHECK(aspect <= r.max_aspect * 1.1);
    CHECK(aspect >= 1 / (r.max_aspect * 1.1));
    for (hgad::Index v : {d.top, d.source_top}) CHECK((v >= 0 && v + d.height <= S));
    for (hgad::Index v : {d.left, d.source_left}) CHECK((v >= 0 && v + d.width <= S));
    CHECK_FALSE(overlap(d));
    CHECK(d.gain >= r.min_gain);
    CHECK(d.gain <= r.max_gain);
    CHECK(std::abs(d.offset) >= r.min_offset);
    CHECK(std::abs(d.offset) <= r.max_offset);
    brighter = brighter || d.offset > 0;
    darker = darker || d.offset < 0;
    hgad::Rng again(seed);
    const hgad::SyntheticDefect e = hgad::draw_synthetic_defect(S, again);
    CHECK((e.top == d.top && e.left == d.left && e.source_top == d.source_top &&
           e.source_left == d.source_left && e.height == d.height && e.width == d.width &&
           e.gain == d.gain && e.offset == d.offset));
  }
  CHECK(brighter);
  CHECK(darker);

  hgad::Rng rng(1);
  CHECK_THROWS_WITH(hgad::draw_synthetic_defect(4, rng), Catch::Contains("image_size 4"));
  hgad::SyntheticDefectRanges bad;
  bad.min_gain = 2;
  CHECK_THROWS_WITH(hgad::draw_synthetic_defect(S, rng, bad),
                    Catch::Contains("ranges out of order"));
  hgad::SyntheticDefectRanges too_wide;  // 30 % of the image cannot fit in sides of half of it
  too_wide.max_area = 0.3;
  CHECK_THROWS_WITH(hgad::draw_synthetic_defect(S, rng, too_wide),
                    Catch::Contains("ranges out of order"));
}

TEST_CASE(
    "synthetic_defect_ranges names four sizes, and small and spread draw their areas "
    "log-uniformly",
    "[io][synthetic]") {
  const hgad::SyntheticDefectRanges defaults;
  const hgad::SyntheticDefectRanges large = hgad::synthetic_defect_ranges("large");
  CHECK(large.min_area == defaults.min_area);
  CHECK(large.max_area == defaults.max_area);
  CHECK(large.area_law == hgad::AreaLaw::uniform);
  CHECK_THROWS_WITH(hgad::synthetic_defect_ranges("tiny"),
                    Catch::Contains("'tiny': expected large, small, spread or wide"));

  const hgad::Index S = 256;
  struct Case {
    const char* name;
    double min_area, max_area;
  };
  for (const Case& c : {Case{"small", 0.002, 0.02}, Case{"spread", 0.002, 0.08}}) {
    INFO(c.name);
    const hgad::SyntheticDefectRanges r = hgad::synthetic_defect_ranges(c.name);
    CHECK(r.area_law == hgad::AreaLaw::log_uniform);
    CHECK(r.min_area == c.min_area);
    CHECK(r.max_area == c.max_area);
    CHECK(r.max_aspect == defaults.max_aspect);
    CHECK(r.min_gain == defaults.min_gain);
    CHECK(r.max_offset == defaults.max_offset);
    // Each side is the drawn one rounded, so the drawn area lies between (h - ½)(w - ½) and
    // (h + ½)(w + ½). Log-uniform: each of the four equal steps of log area holds a quarter of the
    // draws (a uniform law would put 0.68 of "spread" in its last quarter, 0.02-0.08, and 0.06 in
    // its first, 0.002-0.0045).
    const double log_min = std::log(c.min_area), step = (std::log(c.max_area) - log_min) / 4;
    std::array<int, 4> counts{};
    const int n = 4000;
    for (std::uint64_t seed = 0; seed < std::uint64_t(n); ++seed) {
      hgad::Rng rng(seed);
      const hgad::SyntheticDefect d = hgad::draw_synthetic_defect(S, rng, r);
      INFO("seed " << seed);
      const double h = double(d.height), w = double(d.width), image = double(S * S);
      REQUIRE((h - 0.5) * (w - 0.5) <= c.max_area * image);
      REQUIRE((h + 0.5) * (w + 0.5) >= c.min_area * image);
      REQUIRE_FALSE(overlap(d));
      const double at = (std::log(h * w / image) - log_min) / step;
      ++counts[std::size_t(std::clamp(int(std::floor(at)), 0, 3))];
    }
    // Rounding moves areas near the steps' edges; a quarter is 1000 draws, with a binomial
    // standard deviation of 27.
    for (int k = 0; k < 4; ++k) {
      INFO("quarter " << k);
      CHECK(std::abs(counts[std::size_t(k)] - n / 4) < 150);
    }
  }
}

TEST_CASE(
    "wide defects cover 8 to 40 percent of the image, with sides up to the whole image, and may "
    "overlap their source",
    "[io][synthetic]") {
  const hgad::SyntheticDefectRanges r = hgad::synthetic_defect_ranges("wide");
  const hgad::SyntheticDefectRanges defaults;
  CHECK(r.area_law == hgad::AreaLaw::log_uniform);
  CHECK(r.min_area == 0.08);
  CHECK(r.max_area == 0.4);
  CHECK(r.max_side == 1);
  CHECK(r.max_aspect == defaults.max_aspect);
  CHECK(r.min_gain == defaults.min_gain);
  CHECK(r.max_gain == defaults.max_gain);
  CHECK(r.min_offset == defaults.min_offset);
  CHECK(r.max_offset == defaults.max_offset);

  const hgad::Index S = 256;
  int over_half = 0, overlapping = 0, below_mid = 0;
  const int n = 2000;
  for (std::uint64_t seed = 0; seed < std::uint64_t(n); ++seed) {
    hgad::Rng rng(seed);
    const hgad::SyntheticDefect d = hgad::draw_synthetic_defect(S, rng, r);
    INFO("seed " << seed);
    REQUIRE(d.height >= 1);
    REQUIRE(d.width >= 1);
    REQUIRE(d.height <= S);
    REQUIRE(d.width <= S);
    for (hgad::Index v : {d.top, d.source_top}) REQUIRE((v >= 0 && v + d.height <= S));
    for (hgad::Index v : {d.left, d.source_left}) REQUIRE((v >= 0 && v + d.width <= S));
    // A side longer than the image is cut to it, which can only lower the area below its draw.
    const double h = double(d.height), w = double(d.width), image = double(S * S);
    REQUIRE((h - 0.5) * (w - 0.5) <= r.max_area * image);
    REQUIRE((h + 0.5) * (w + 0.5) >= r.min_area * image);
    over_half += d.height > S / 2 || d.width > S / 2;
    overlapping += overlap(d);
    // The geometric middle of [0.08, 0.4] is sqrt(0.032) = 0.179: half the draws lie below it.
    below_mid += h * w / image < std::sqrt(0.08 * 0.4);
  }
  // Sides beyond half the image (the other sizes' limit) and sources that cannot lie apart from
  // a target this large both occur.
  CHECK(over_half > n / 10);
  CHECK(overlapping > 0);
  // Binomial standard deviation 22 around 1000; the cut of long sides moves a few draws down.
  CHECK(std::abs(below_mid - n / 2) < 150);
}

TEMPLATE_TEST_CASE("an overlapping defect copies its source as it was in the image",
                   "[io][synthetic]", float, double) {
  using T = TestType;
  // By hand: a 6x6 one-channel image, the 4x4 block at (0, 0) copied to (2, 2), v -> v + 0.1;
  // the two overlap on rows and columns 2-3, which the copy must read before it writes them.
  hgad::Tensor<T> image({1, 6, 6});
  for (hgad::Index i = 0; i < 36; ++i) image.data()[i] = T(double(i) / 64.0);
  hgad::SyntheticDefect d;
  d.image_size = 6;
  d.top = 2, d.left = 2, d.source_top = 0, d.source_left = 0, d.height = 4, d.width = 4;
  d.gain = 1, d.offset = 0.1;
  const hgad::Tensor<T> out = hgad::apply_synthetic_defect(image, d);
  for (hgad::Index i = 0; i < 6; ++i)
    for (hgad::Index j = 0; j < 6; ++j) {
      const bool inside = i >= 2 && j >= 2;
      const double expected =
          inside ? double((i - 2) * 6 + (j - 2)) / 64.0 + 0.1 : double(i * 6 + j) / 64.0;
      CHECK(double(out.data()[i * 6 + j]) == Approx(expected).margin(1e-7));
    }
}

TEMPLATE_TEST_CASE("apply_synthetic_defect writes its rectangle alone, and the mask marks it",
                   "[io][synthetic]", float, double) {
  using T = TestType;
  // By hand: an 8x8 two-channel image, the 2x3 block at (5, 4) copied to (1, 0), v -> 2 v - 0.25.
  hgad::Tensor<T> image({2, 8, 8});
  for (hgad::Index i = 0; i < image.numel(); ++i) image.data()[i] = T(double(i % 64) / 64.0);
  hgad::SyntheticDefect d;
  d.image_size = 8;
  d.top = 1, d.left = 0, d.source_top = 5, d.source_left = 4, d.height = 2, d.width = 3;
  d.gain = 2, d.offset = -0.25;
  const hgad::Tensor<T> out = hgad::apply_synthetic_defect(image, d);
  for (hgad::Index c = 0; c < 2; ++c)
    for (hgad::Index i = 0; i < 8; ++i)
      for (hgad::Index j = 0; j < 8; ++j) {
        const bool inside = i >= 1 && i < 3 && j < 3;
        // The source pixel (i + 4, j + 4) holds ((i + 4) 8 + j + 4) / 64.
        const double expected =
            inside ? std::clamp(2 * double((i + 4) * 8 + j + 4) / 64.0 - 0.25, 0.0, 1.0)
                   : double(image.data()[(c * 8 + i) * 8 + j]);
        CHECK(double(out.data()[(c * 8 + i) * 8 + j]) == Approx(expected).margin(1e-7));
      }
  // Pixel (2, 2) comes from (6, 6) = 54 / 64, and 2 · 54/64 - 0.25 > 1 is clamped to 1.
  CHECK(double(out.data()[2 * 8 + 2]) == 1.0);
  CHECK(double(image.data()[2 * 8 + 2]) == Approx(18.0 / 64));  // the input is left alone

  // The mask at the image's size is the rectangle; at half the size, the pixels whose centres fall
  // in it.
  const hgad::Tensor<T> full = hgad::synthetic_defect_mask<T>(d, 8);
  REQUIRE(full.shape() == hgad::Shape({1, 8, 8}));
  for (hgad::Index i = 0; i < 8; ++i)
    for (hgad::Index j = 0; j < 8; ++j)
      CHECK(full.data()[i * 8 + j] == T(i >= 1 && i < 3 && j < 3 ? 1 : 0));
  const hgad::Tensor<T> half = hgad::synthetic_defect_mask<T>(d, 4);
  // Mask pixel (i, j) has its centre at image pixel (2 i + 1, 2 j + 1): rows 1 (i = 0) and
  // 3 (i = 1) -> only i = 0; columns 1, 3 -> only j = 0.
  for (hgad::Index i = 0; i < 4; ++i)
    for (hgad::Index j = 0; j < 4; ++j)
      CHECK(half.data()[i * 4 + j] == T(i == 0 && j == 0 ? 1 : 0));

  CHECK_THROWS_WITH(hgad::apply_synthetic_defect(hgad::Tensor<T>({2, 8, 7}), d),
                    Catch::Contains("(2, 8, 7)"));
}

TEST_CASE("extract_with_synthetic_defects gives each image's features as it is and with its defect",
          "[io][synthetic][backbone]") {
  namespace fs = std::filesystem;
  const std::string weights = std::string(HGAD_SHARED_DIR) + "/weights/resnet18-imagenet";
  if (!fs::exists(weights)) {
    WARN("skipped: " << weights << " is absent");
    return;
  }
  hgad_test::TempDir dir("synthetic_defect");
  for (int k = 0; k < 3; ++k) {
    hgad::Tensor<float> image({3, 64, 64});
    for (hgad::Index i = 0; i < image.numel(); ++i)
      image.data()[i] = float(0.3 + 0.4 * ((i / 64 / 8 + i % 64 / 8 + k) % 2));
    fs::create_directories(dir.path() / "a/train/good");
    hgad::save_png(dir.file("a/train/good/t" + std::to_string(k) + ".png"), image);
  }
  const hgad::MvtecDataset data(dir.path().string(), hgad::Split::train);
  hgad::FeatureSettings settings;
  settings.image_size = 64;
  settings.mask_size = 32;
  settings.layers = {"layer2"};
  auto fx = hgad::make_extractor<float>(settings, weights);
  const std::uint64_t seed = 5;
  // Images 2 and 0, in that order, one per batch.
  const auto set = hgad::extract_with_synthetic_defects(data, {2, 0}, *fx, settings, seed, 1);
  REQUIRE(set.size() == 4);
  CHECK(set.labels == std::vector<int>{0, 1, 0, 1});
  CHECK(set.paths[1] == set.paths[0] + "#defect");
  const auto plain = hgad::extract_images(data, {2, 0}, *fx, settings, false);
  const hgad::Index row = set.features[0].numel() / 4;
  for (hgad::Index k = 0; k < 2; ++k) {
    // The normal rows: the features extract_images gives.
    CHECK(std::equal(set.features[0].data() + 2 * k * row,
                     set.features[0].data() + (2 * k + 1) * row,
                     plain.features[0].data() + k * row));
    // The defective rows: the backbone on the image with the defect drawn from the documented
    // seed (the seed and the image's index in the data set), made here step by step.
    const hgad::Index index = k == 0 ? 2 : 0;
    hgad::Rng rng(seed * 0x9E3779B97F4A7C15ull + std::uint64_t(index));
    const hgad::SyntheticDefect d = hgad::draw_synthetic_defect(64, rng);
    const auto raw = hgad::load_sample<float>(data[index], hgad::preprocess_for(settings, false));
    const auto defective = hgad::normalize_imagenet(hgad::apply_synthetic_defect(raw.image, d))
                               .reshape({1, 3, 64, 64});
    const auto maps = hgad::channels_last(fx->extract(defective)[0]);
    REQUIRE(maps.numel() == row);
    double largest = 0;
    for (hgad::Index i = 0; i < row; ++i)
      largest = std::max(largest, std::abs(double(maps.data()[i]) -
                                           double(set.features[0].data()[(2 * k + 1) * row + i])));
    CHECK(largest <= 1e-5);
    // Its mask, and an all-zero one for the normal row.
    const auto mask = hgad::synthetic_defect_mask<float>(d, 32);
    CHECK(std::equal(mask.data(), mask.data() + 32 * 32, set.masks.data() + (2 * k + 1) * 32 * 32));
    CHECK(std::all_of(set.masks.data() + 2 * k * 32 * 32, set.masks.data() + (2 * k + 1) * 32 * 32,
                      [](float v) { return v == 0; }));
  }
  // The defect changed the image's features.
  CHECK_FALSE(std::equal(set.features[0].data(), set.features[0].data() + row,
                         set.features[0].data() + row));
}

}  // namespace synthetic_defect_test
