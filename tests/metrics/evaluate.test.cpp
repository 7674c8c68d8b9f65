#include <catch2/catch.hpp>

#include <hgad/metrics.hpp>

#include <cmath>
#include <vector>

namespace evaluate_test {

namespace {

using Catch::Matchers::WithinAbs;

double pair_count_auroc(const std::vector<double>& labels, const std::vector<double>& scores) {
  double wins = 0, pairs = 0;
  for (std::size_t i = 0; i < labels.size(); ++i) {
    for (std::size_t j = 0; j < labels.size(); ++j) {
      if (labels[i] != 1 || labels[j] != 0) continue;
      pairs += 1;
      wins += scores[i] > scores[j] ? 1 : scores[i] == scores[j] ? 0.5 : 0;
    }
  }
  return wins / pairs;
}

}  // namespace

TEST_CASE("evaluate_class counts empty-mask defects in image metrics and not as regions",
          "[metrics]") {
  // Image 0: defective with two regions (the hand case of the AUPRO test); image 1: good;
  // image 2: defective with an empty mask (all its pixels are negatives).
  const std::vector<double> masks = {1, 0, 0, 1, 0, 1, 0, 1, 0, 0, 0, 0,  //
                                     0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  //
                                     0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  const std::vector<double> maps = {3, 0, 0, 2, 0, 1, 2, 2, 1, 0, 0, 0,  //
                                    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  //
                                    0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0};
  const std::vector<int> labels = {1, 0, 1};
  const std::vector<double> scores = {3, 0, 1};
  const auto m =
      hgad::evaluate_class(labels, scores, hgad::Tensor<double>::from_vector({3, 3, 4}, masks),
                           hgad::Tensor<double>::from_vector({3, 3, 4}, maps));
  REQUIRE(m.n_images == 3);
  REQUIRE(m.n_defective == 2);
  REQUIRE(m.n_regions == 2);
  REQUIRE_THAT(m.image_auroc, WithinAbs(1.0, 1e-15));
  REQUIRE_THAT(m.image_average_precision, WithinAbs(1.0, 1e-15));
  REQUIRE_THAT(m.image_f1_max, WithinAbs(1.0, 1e-15));
  REQUIRE_THAT(m.pixel_auroc, WithinAbs(pair_count_auroc(masks, maps), 1e-15));
  // The AUPRO hand case: 32 negatives, FPR 3/32, 1/32, 0 -> normalised 1, 1/3, 0 -> 0.75.
  REQUIRE_THAT(m.aupro, WithinAbs(0.75, 1e-12));
  REQUIRE(std::isfinite(m.pixel_average_precision));
  REQUIRE(std::isfinite(m.pixel_f1_max));
}

TEST_CASE("evaluate_class returns NaN for metrics a defect-free class leaves undefined",
          "[metrics]") {
  const auto masks = hgad::Tensor<float>({2, 2, 2});
  const auto maps = hgad::Tensor<float>::from_vector({2, 2, 2}, {0, 1, 2, 3, 4, 5, 6, 7});
  const auto m =
      hgad::evaluate_class(std::vector<int>{0, 0}, std::vector<float>{3, 7}, masks, maps);
  REQUIRE(std::isnan(m.image_auroc));
  REQUIRE(std::isnan(m.image_average_precision));
  REQUIRE(std::isnan(m.pixel_auroc));
  REQUIRE(std::isnan(m.aupro));
  REQUIRE(m.n_regions == 0);
  REQUIRE_THROWS_WITH(hgad::evaluate_class(std::vector<int>{0}, std::vector<float>{3}, masks, maps),
                      Catch::Contains("1 image labels") && Catch::Contains("2 maps"));
  REQUIRE_THROWS_WITH(hgad::evaluate_class(std::vector<int>{0, 1}, std::vector<float>{3, 7},
                                           hgad::Tensor<float>({2, 4}), maps),
                      Catch::Contains("(2, 4)"));
}

}  // namespace evaluate_test
