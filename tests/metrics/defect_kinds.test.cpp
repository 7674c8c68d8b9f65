#include <catch2/catch.hpp>

#include <hgad/model/pipeline.hpp>

#include <cmath>
#include <string>
#include <vector>

namespace defect_kinds_test {

namespace {

using Catch::Matchers::WithinAbs;

/// AUROC by counting every (positive, negative) pair, ties half: the definition, independent of
/// the library's sort-based ranking.
double pair_count_auroc(const std::vector<int>& labels, const std::vector<double>& scores) {
  double wins = 0, pairs = 0;
  for (std::size_t i = 0; i < labels.size(); ++i)
    for (std::size_t j = 0; j < labels.size(); ++j) {
      if (labels[i] != 1 || labels[j] != 0) continue;
      pairs += 1;
      wins += scores[i] > scores[j] ? 1 : scores[i] == scores[j] ? 0.5 : 0;
    }
  return wins / pairs;
}

/// One class of six 2 x 3 maps: three good images, two of kind "crack" with one-pixel masks the
/// maps find, one of kind "uneven" whose mask covers half the image and which the map misses.
struct SixImages {
  std::vector<std::string> kinds{"good", "crack", "good", "uneven", "crack", "good"};
  std::vector<int> labels{0, 1, 0, 1, 1, 0};
  std::vector<double> scores{0.1, 0.9, 0.3, 0.2, 0.8, 0.4};
  std::vector<double> map_values{
      0.1, 0.2, 0.1, 0.3, 0.2, 0.1,  // good
      0.1, 0.9, 0.2, 0.1, 0.2, 0.1,  // crack at (0, 1)
      0.3, 0.1, 0.2, 0.1, 0.1, 0.2,  // good
      0.2, 0.1, 0.1, 0.2, 0.3, 0.1,  // uneven: its mask is the bottom row
      0.2, 0.1, 0.1, 0.1, 0.1, 0.8,  // crack at (1, 2)
      0.1, 0.4, 0.1, 0.2, 0.1, 0.3,  // good
  };
  std::vector<float> mask_values{
      0, 0, 0, 0, 0, 0,  //
      0, 1, 0, 0, 0, 0,  //
      0, 0, 0, 0, 0, 0,  //
      0, 0, 0, 1, 1, 1,  //
      0, 0, 0, 0, 0, 1,  //
      0, 0, 0, 0, 0, 0,  //
  };

  template <class Scalar>
  hgad::Tensor<Scalar> maps() const {
    return hgad::Tensor<Scalar>::from_vector(
        {6, 2, 3}, std::vector<Scalar>(map_values.begin(), map_values.end()));
  }
  hgad::Tensor<float> masks() const {
    return hgad::Tensor<float>::from_vector({6, 2, 3}, mask_values);
  }

  /// The images of the good ones and one kind, as evaluate_defect_kinds should select them.
  std::vector<std::size_t> rows_of(const std::string& kind) const {
    std::vector<std::size_t> rows;
    for (std::size_t i = 0; i < labels.size(); ++i)
      if (labels[i] == 0 || kinds[i] == kind) rows.push_back(i);
    return rows;
  }
};

}  // namespace

TEMPLATE_TEST_CASE("evaluate_defect_kinds scores the good images with each kind of defect alone",
                   "[metrics][pipeline]", float, double) {
  const SixImages c;
  const auto reports =
      hgad::evaluate_defect_kinds(c.kinds, c.scores, c.labels, c.maps<TestType>(), c.masks());
  REQUIRE(reports.size() == 2);
  CHECK(reports[0].name == "crack");  // sorted, "good" is no kind
  CHECK(reports[1].name == "uneven");
  for (const hgad::ClassReport& r : reports) {
    INFO(r.name);
    const std::vector<std::size_t> rows = c.rows_of(r.name);
    std::vector<int> labels, pixel_labels;
    std::vector<double> scores, pixel_scores;
    for (std::size_t i : rows) {
      labels.push_back(c.labels[i]);
      scores.push_back(c.scores[i]);
      for (std::size_t p = 0; p < 6; ++p) {
        pixel_labels.push_back(c.mask_values[i * 6 + p] > 0.5f ? 1 : 0);
        pixel_scores.push_back(double(TestType(c.map_values[i * 6 + p])));
      }
    }
    CHECK(r.n_images == static_cast<hgad::Index>(rows.size()));
    CHECK(r.n_anomalous == (r.name == "crack" ? 2 : 1));
    CHECK_THAT(r.image_auroc, WithinAbs(pair_count_auroc(labels, scores), 1e-12));
    CHECK_THAT(r.pixel_auroc, WithinAbs(pair_count_auroc(pixel_labels, pixel_scores), 1e-12));
    CHECK(std::isfinite(r.aupro));
  }
  // The cracks are found, image and pixel; the uneven image is not.
  CHECK(reports[0].image_auroc == 1.0);
  CHECK(reports[0].pixel_auroc == 1.0);
  CHECK(reports[1].image_auroc < 0.5);
  CHECK(reports[1].pixel_auroc < 0.8);

  // The whole class's pixel AUROC pools the kinds' pixels: the large uneven mask pulls it below
  // the cracks' figure.
  const hgad::ClassReport all =
      hgad::evaluate_class("all", c.scores, c.labels, c.maps<TestType>(), c.masks());
  CHECK(all.pixel_auroc < reports[0].pixel_auroc);
  CHECK(all.pixel_auroc > reports[1].pixel_auroc);
}

TEST_CASE("evaluate_defect_kinds gives AUPRO on the kind's images alone", "[metrics][pipeline]") {
  const SixImages c;
  const auto reports =
      hgad::evaluate_defect_kinds(c.kinds, c.scores, c.labels, c.maps<double>(), c.masks());
  for (const hgad::ClassReport& r : reports) {
    const std::vector<std::size_t> rows = c.rows_of(r.name);
    const hgad::Index m = static_cast<hgad::Index>(rows.size());
    hgad::Tensor<double> maps({m, 2, 3});
    hgad::Tensor<float> masks({m, 2, 3});
    for (std::size_t k = 0; k < rows.size(); ++k)
      for (std::size_t p = 0; p < 6; ++p) {
        maps.data()[k * 6 + p] = c.map_values[rows[k] * 6 + p];
        masks.data()[k * 6 + p] = c.mask_values[rows[k] * 6 + p];
      }
    CHECK(r.aupro == hgad::aupro(masks, maps));
  }
}

TEST_CASE("evaluate_defect_kinds gives each kind the decision's precision and recall",
          "[metrics][pipeline]") {
  const SixImages c;
  // Both cracks flagged, the uneven image missed, one good image (5) flagged.
  const std::vector<bool> flagged{false, true, false, false, true, true};
  const auto reports = hgad::evaluate_defect_kinds(c.kinds, c.scores, c.labels, c.maps<double>(),
                                                   c.masks(), flagged);
  REQUIRE(reports.size() == 2);
  CHECK_THAT(reports[0].image_precision, WithinAbs(2.0 / 3.0, 1e-15));  // 2 cracks, 1 good
  CHECK(reports[0].image_recall == 1.0);
  CHECK_THAT(reports[0].image_f1, WithinAbs(0.8, 1e-15));
  CHECK(reports[1].image_precision == 0.0);  // the one flagged is good
  CHECK(reports[1].image_recall == 0.0);
  CHECK(reports[1].image_f1 == 0.0);
  // Without decisions they stay NaN.
  const auto plain =
      hgad::evaluate_defect_kinds(c.kinds, c.scores, c.labels, c.maps<double>(), c.masks());
  CHECK(std::isnan(plain[0].image_recall));
  CHECK_THROWS_WITH(hgad::evaluate_defect_kinds(c.kinds, c.scores, c.labels, c.maps<double>(),
                                                c.masks(), std::vector<bool>(5, true)),
                    Catch::Contains("5 decisions for 6 labels"));
}

TEST_CASE("evaluate_defect_kinds without masks, without defects and with bad sizes",
          "[metrics][pipeline]") {
  const SixImages c;
  const auto image_only = hgad::evaluate_defect_kinds(c.kinds, c.scores, c.labels, c.maps<double>(),
                                                      hgad::Tensor<float>());
  REQUIRE(image_only.size() == 2);
  CHECK(std::isnan(image_only[1].pixel_auroc));
  CHECK(std::isnan(image_only[1].aupro));
  CHECK(image_only[0].image_auroc == 1.0);

  // A folder of normal images under another name is no kind; a class without defects has none.
  std::vector<int> normal(6, 0);
  CHECK(
      hgad::evaluate_defect_kinds(c.kinds, c.scores, normal, c.maps<double>(), c.masks()).empty());

  std::vector<std::string> short_kinds(c.kinds.begin(), c.kinds.end() - 1);
  CHECK_THROWS_WITH(
      hgad::evaluate_defect_kinds(short_kinds, c.scores, c.labels, c.maps<double>(), c.masks()),
      Catch::Contains("5 kinds and 6 scores for 6 labels"));
  CHECK_THROWS_WITH(hgad::evaluate_defect_kinds(c.kinds, c.scores, c.labels,
                                                hgad::Tensor<double>({5, 2, 3}), c.masks()),
                    Catch::Contains("expected maps of shape (6, S, S)"));
  CHECK_THROWS_WITH(hgad::evaluate_defect_kinds(c.kinds, c.scores, c.labels, c.maps<double>(),
                                                hgad::Tensor<float>({6, 3, 2})),
                    Catch::Contains("masks have shape"));
}

}  // namespace defect_kinds_test
