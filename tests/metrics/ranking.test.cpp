#include <catch2/catch.hpp>

#include <hgad/metrics/ranking.hpp>
#include <hgad/rng.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace ranking_test {

namespace {

using Catch::Matchers::WithinAbs;

/// P(s+ > s-) + P(s+ = s-) / 2 over every positive-negative pair.
double mann_whitney_pairs(const std::vector<int>& y, const std::vector<double>& s) {
  double wins = 0;
  double pairs = 0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    if (y[i] != 1) continue;
    for (std::size_t j = 0; j < y.size(); ++j) {
      if (y[j] != 0) continue;
      pairs += 1;
      if (s[i] > s[j]) wins += 1;
      if (s[i] == s[j]) wins += 0.5;
    }
  }
  return wins / pairs;
}

/// Step-wise AP and F1-max by counting, at each distinct score t, the samples with score >= t.
struct DirectPr {
  double average_precision = 0;
  double f1_max = 0;
};
DirectPr direct_precision_recall(const std::vector<int>& y, const std::vector<double>& s) {
  std::vector<double> thresholds = s;
  std::sort(thresholds.begin(), thresholds.end(), std::greater<double>());
  thresholds.erase(std::unique(thresholds.begin(), thresholds.end()), thresholds.end());
  double n_positive = 0;
  for (int label : y) n_positive += label;
  DirectPr out;
  double recall_previous = 0;
  for (double t : thresholds) {
    double tp = 0, predicted = 0;
    for (std::size_t i = 0; i < y.size(); ++i) {
      if (s[i] >= t) {
        predicted += 1;
        tp += y[i];
      }
    }
    const double precision = tp / predicted;
    const double recall = tp / n_positive;
    out.average_precision += (recall - recall_previous) * precision;
    recall_previous = recall;
    if (precision + recall > 0) {
      out.f1_max = std::max(out.f1_max, 2 * precision * recall / (precision + recall));
    }
  }
  return out;
}

/// Mann-Whitney U from mid-ranks: (sum of positive ranks - P (P + 1) / 2) / (P N).
double auroc_from_midranks(const std::vector<int>& y, const std::vector<double>& s) {
  std::vector<std::size_t> order(s.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return s[a] < s[b]; });
  double rank_sum = 0;
  double n_positive = 0;
  for (std::size_t begin = 0; begin < order.size();) {
    std::size_t end = begin;
    while (end < order.size() && s[order[end]] == s[order[begin]]) ++end;
    const double mid_rank = 0.5 * double(begin + 1 + end);
    for (std::size_t k = begin; k < end; ++k) {
      if (y[order[k]] == 1) {
        rank_sum += mid_rank;
        n_positive += 1;
      }
    }
    begin = end;
  }
  const double n_negative = double(y.size()) - n_positive;
  return (rank_sum - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative);
}

void random_tied_case(hgad::Rng& rng, std::size_t n, int n_levels, std::vector<int>& y,
                      std::vector<double>& s) {
  y.assign(n, 0);
  s.assign(n, 0.0);
  for (std::size_t i = 0; i < n; ++i) {
    y[i] = rng.uniform() < 0.4 ? 1 : 0;
    const double level = double(rng.uniform_int(std::uint64_t(n_levels)));
    s[i] = (level + (y[i] ? 1.5 : 0.0) * rng.uniform()) / 4.0 - 1.0;
    if (rng.uniform() < 0.5) s[i] = std::floor(s[i] * 4) / 4;
  }
  y[0] = 1;
  y[1] = 0;
}

}  // namespace

TEST_CASE("roc_auc_score and average_precision_score reproduce scikit-learn's documented examples",
          "[metrics]") {
  const std::vector<int> y = {0, 0, 1, 1};
  const std::vector<double> s = {0.1, 0.4, 0.35, 0.8};
  REQUIRE_THAT(hgad::roc_auc_score(y, s), WithinAbs(0.75, 1e-15));
  REQUIRE_THAT(hgad::average_precision_score(y, s), WithinAbs(0.8333333333333333, 1e-15));
  const auto curve = hgad::binary_clf_curve(y, s);
  REQUIRE(curve.thresholds == std::vector<double>{0.8, 0.4, 0.35, 0.1});
  REQUIRE(curve.tps == std::vector<hgad::Index>{1, 1, 2, 2});
  REQUIRE(curve.fps == std::vector<hgad::Index>{0, 1, 1, 2});
}

TEMPLATE_TEST_CASE("Ranking metrics group tied scores into one threshold", "[metrics]", float,
                   double) {
  // Positives {0.5, 0.9}, negatives {0.5, 0.2}. Pairs: 0.5~0.5 counts 1/2, the other three win:
  // AUROC = 3.5 / 4. Thresholds 0.9 (P 1, R 1/2), 0.5 (P 2/3, R 1), 0.2 (P 1/2, R 1):
  // AP = 1/2 * 1 + 1/2 * 2/3 = 5/6; F1 = 2/3, 4/5, 2/3, so F1-max = 0.8 at t = 0.5.
  const std::vector<int> y = {0, 1, 0, 1};
  const std::vector<TestType> s = {TestType(0.5), TestType(0.5), TestType(0.2), TestType(0.9)};
  const hgad::RankingMetrics m = hgad::ranking_metrics(y, s);
  REQUIRE(m.n_positive == 2);
  REQUIRE(m.n_negative == 2);
  REQUIRE_THAT(m.auroc, WithinAbs(0.875, 1e-15));
  REQUIRE_THAT(m.average_precision, WithinAbs(5.0 / 6.0, 1e-15));
  REQUIRE_THAT(m.f1_max, WithinAbs(0.8, 1e-15));
  REQUIRE_THAT(m.f1_threshold, WithinAbs(double(TestType(0.5)), 0));
  REQUIRE_THAT(hgad::f1_max(y, s), WithinAbs(0.8, 1e-15));

  // Every score tied: the ROC is the diagonal and precision is the positive rate everywhere.
  const std::vector<int> y_tied = {1, 0, 0, 1, 0};
  const std::vector<TestType> s_tied(5, TestType(3));
  REQUIRE_THAT(hgad::roc_auc_score(y_tied, s_tied), WithinAbs(0.5, 1e-15));
  REQUIRE_THAT(hgad::average_precision_score(y_tied, s_tied), WithinAbs(0.4, 1e-15));
  REQUIRE_THAT(hgad::f1_max(y_tied, s_tied), WithinAbs(2.0 * 2 / (5 + 2), 1e-15));

  // -0 and +0 are one tied score.
  const std::vector<int> y_zero = {1, 0};
  const std::vector<TestType> s_zero = {TestType(-0.0), TestType(0.0)};
  REQUIRE_THAT(hgad::roc_auc_score(y_zero, s_zero), WithinAbs(0.5, 0));
}

TEST_CASE("roc_auc_score equals the Mann-Whitney pair count with ties counted one half",
          "[metrics]") {
  hgad::Rng rng(11);
  std::vector<int> y;
  std::vector<double> s;
  for (int trial = 0; trial < 200; ++trial) {
    random_tied_case(rng, 2 + rng.uniform_int(150), 1 + int(rng.uniform_int(12)), y, s);
    const double expected = mann_whitney_pairs(y, s);
    const double auroc = hgad::roc_auc_score(y, s);
    REQUIRE(std::isfinite(auroc));
    REQUIRE_THAT(auroc, WithinAbs(expected, 1e-14));
    const std::vector<float> s_float(s.begin(), s.end());
    const double expected_float =
        mann_whitney_pairs(y, std::vector<double>(s_float.begin(), s_float.end()));
    REQUIRE_THAT(hgad::roc_auc_score(y, s_float), WithinAbs(expected_float, 1e-14));
  }
}

TEST_CASE("roc_auc_score equals the mid-rank Mann-Whitney statistic on a large tied sample",
          "[metrics]") {
  hgad::Rng rng(5);
  std::vector<int> y;
  std::vector<double> s;
#ifdef HGAD_SANITIZED
  const std::size_t n = 20000;
#else
  const std::size_t n = 300000;
#endif
  random_tied_case(rng, n, 1000, y, s);
  const double expected = auroc_from_midranks(y, s);
  REQUIRE(std::isfinite(expected));
  REQUIRE_THAT(hgad::roc_auc_score(y, s), WithinAbs(expected, 1e-12));
}

TEST_CASE("average_precision_score and f1_max equal the step-wise definitions on random ties",
          "[metrics]") {
  hgad::Rng rng(23);
  std::vector<int> y;
  std::vector<double> s;
  for (int trial = 0; trial < 200; ++trial) {
    random_tied_case(rng, 2 + rng.uniform_int(150), 1 + int(rng.uniform_int(12)), y, s);
    const DirectPr expected = direct_precision_recall(y, s);
    const hgad::RankingMetrics m = hgad::ranking_metrics(y, s);
    REQUIRE(std::isfinite(m.average_precision));
    REQUIRE(std::isfinite(m.f1_max));
    REQUIRE_THAT(m.average_precision, WithinAbs(expected.average_precision, 1e-14));
    REQUIRE_THAT(m.f1_max, WithinAbs(expected.f1_max, 1e-14));
  }
}

TEST_CASE("Ranking metrics accept pointers, tensors and bool or float labels", "[metrics]") {
  const std::vector<double> s = {0.1, 0.4, 0.35, 0.8};
  const int y_int[] = {0, 0, 1, 1};
  REQUIRE_THAT(hgad::roc_auc_score(y_int, s.data(), 4), WithinAbs(0.75, 1e-15));
  const std::vector<bool> y_bool = {false, false, true, true};
  REQUIRE_THAT(hgad::roc_auc_score(y_bool, s), WithinAbs(0.75, 1e-15));
  const auto y_tensor = hgad::Tensor<float>::from_vector({2, 2}, {0, 0, 1, 1});
  const auto s_tensor = hgad::Tensor<double>::from_vector({4}, s);
  REQUIRE_THAT(hgad::roc_auc_score(y_tensor, s_tensor), WithinAbs(0.75, 1e-15));
  REQUIRE_THAT(hgad::average_precision_score(y_tensor, s_tensor),
               WithinAbs(0.8333333333333333, 1e-15));
}

TEST_CASE("Ranking metrics reject one-class labels, size mismatches and bad values", "[metrics]") {
  const std::vector<double> s = {0.1, 0.4, 0.35};
  REQUIRE_THROWS_WITH(hgad::roc_auc_score(std::vector<int>{0, 0, 0}, s),
                      Catch::Contains("only one class") && Catch::Contains("0 positives"));
  REQUIRE_THROWS_WITH(hgad::roc_auc_score(std::vector<int>{1, 1, 1}, s),
                      Catch::Contains("only one class"));
  REQUIRE_THROWS_WITH(hgad::average_precision_score(std::vector<int>{0, 0, 0}, s),
                      Catch::Contains("no positive"));
  REQUIRE_THROWS_WITH(hgad::f1_max(std::vector<int>{0, 0, 0}, s), Catch::Contains("no positive"));
  REQUIRE_THAT(hgad::average_precision_score(std::vector<int>{1, 1, 1}, s), WithinAbs(1.0, 0));
  const hgad::RankingMetrics one_class = hgad::ranking_metrics(std::vector<int>{0, 0, 0}, s);
  REQUIRE(std::isnan(one_class.auroc));
  REQUIRE(std::isnan(one_class.average_precision));
  REQUIRE_THROWS_WITH(hgad::roc_auc_score(std::vector<int>{0, 1}, s),
                      Catch::Contains("2 elements") && Catch::Contains("3"));
  REQUIRE_THROWS_WITH(hgad::roc_auc_score(std::vector<int>{0, 2, 1}, s),
                      Catch::Contains("y_true[1] = 2"));
  const double nan = std::numeric_limits<double>::quiet_NaN();
  REQUIRE_THROWS_WITH(
      hgad::roc_auc_score(std::vector<int>{0, 1, 1}, std::vector<double>{0, nan, 1}),
      Catch::Contains("y_score[1]") && Catch::Contains("not finite"));
  REQUIRE_THROWS_WITH(hgad::roc_auc_score(std::vector<int>{}, std::vector<double>{}),
                      Catch::Contains("no samples"));
  REQUIRE_THROWS_WITH(hgad::roc_auc_score(hgad::Tensor<float>({2, 3}), hgad::Tensor<float>({5})),
                      Catch::Contains("(2, 3)") && Catch::Contains("(5)"));
}

TEMPLATE_TEST_CASE("Radix sort of order keys sorts finite values like std::sort", "[metrics]",
                   float, double) {
  hgad::Rng rng(3);
  std::vector<TestType> values;
  for (int i = 0; i < 5000; ++i) {
    const double magnitude = std::pow(10.0, rng.uniform(-30, 30));
    values.push_back(TestType((rng.uniform() < 0.5 ? -1 : 1) * magnitude));
    if (i % 97 == 0) values.push_back(TestType(0));
    if (i % 89 == 0) values.push_back(TestType(-0.0));
    if (i % 83 == 0) values.push_back(values[std::size_t(rng.uniform_int(values.size()))]);
  }
  values.push_back(std::numeric_limits<TestType>::max());
  values.push_back(std::numeric_limits<TestType>::lowest());
  values.push_back(std::numeric_limits<TestType>::denorm_min());
  std::vector<hgad::detail::SortKey<TestType>> keys, scratch;
  for (TestType v : values) keys.push_back(hgad::detail::order_key(v));
  hgad::detail::radix_sort(keys, scratch);
  std::vector<TestType> expected = values;
  std::sort(expected.begin(), expected.end());
  REQUIRE(keys.size() == expected.size());
  for (std::size_t i = 0; i < keys.size(); ++i) {
    REQUIRE(hgad::detail::from_order_key<TestType>(keys[i]) == expected[i]);
  }
}

}  // namespace ranking_test
