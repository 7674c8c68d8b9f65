#pragma once
/// \file
/// Threshold-free ranking metrics of binary labels against scores: AUROC, average precision and
/// F1-max (docs/algorithm.md §6), written to give scikit-learn's values, ties included.
///
///     std::vector<int> y_true = {0, 0, 1, 1};
///     std::vector<double> y_score = {0.1, 0.4, 0.35, 0.8};
///     double auroc = hgad::roc_auc_score(y_true, y_score);           // 0.75
///     double ap = hgad::average_precision_score(y_true, y_score);    // 0.8333...
///     hgad::RankingMetrics all = hgad::ranking_metrics(y_true, y_score);  // one sort for the
///     three
///
/// Every function takes y_true then y_score, like scikit-learn, as two std::vectors, two pointers
/// and a count, or two CPU/GPU tensors of the same number of elements (flattened). Labels must be
/// exactly 0 or 1 (any arithmetic type or bool); scores must be finite float or double.
///
/// Undefined cases throw hgad::Error, as scikit-learn raises: AUROC when y_true holds only one
/// class, AP and F1-max when it holds no positive (scikit-learn returns 0 there with a warning).
///
/// Cost: the positive and the negative scores are copied once as order keys and radix-sorted
/// (O(n) time, about 2n keys of extra memory, 8 bytes per float score at the peak); every metric
/// then comes from one walk over the distinct thresholds.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "../detail/check.hpp"
#include "../detail/radix_sort.hpp"
#include "../tensor.hpp"

namespace hgad {

/// The points of the ROC and precision-recall curves at every distinct score, as scikit-learn's
/// `_binary_clf_curve`: thresholds in decreasing order, and at each threshold t the numbers of
/// positives (tps) and negatives (fps) with score >= t.
template <class Scalar>
struct BinaryClfCurve {
  std::vector<Scalar> thresholds;  // (T,) distinct scores, decreasing
  std::vector<Index> tps;          // (T,) cumulative true positives, tps.back() = n_positive
  std::vector<Index> fps;          // (T,) cumulative false positives, fps.back() = n_negative
};

/// AUROC, average precision and F1-max of one labelling, from one sort.
struct RankingMetrics {
  double auroc = 0;              // NaN when y_true holds a single class
  double average_precision = 0;  // NaN when y_true holds no positive
  double f1_max = 0;             // NaN when y_true holds no positive
  double f1_threshold = 0;  // the score t at which F1(score >= t) is maximal (the highest such t)
  Index n_positive = 0;
  Index n_negative = 0;
};

namespace detail::metrics {

template <class Scalar>
struct SortedScores {
  std::vector<SortKey<Scalar>> positive;  // ascending order keys
  std::vector<SortKey<Scalar>> negative;  // ascending order keys
};

template <class Label>
bool label_is_positive(const char* where, Label label, Index i) {
  if constexpr (std::is_same_v<Label, bool>) {
    (void)where, (void)i;
    return label;
  } else {
    static_assert(std::is_arithmetic_v<Label>,
                  "ranking metrics: labels must be arithmetic or bool");
    check(label == Label(0) || label == Label(1), where, ": y_true[", i, "] = ", +label,
          " is not 0 or 1");
    return label == Label(1);
  }
}

/// Splits the scores by label into two arrays of order keys and sorts each ascending.
template <class Scalar, class LabelAt, class ScoreAt>
SortedScores<Scalar> sort_by_label(const char* where, Index n, LabelAt label_at, ScoreAt score_at) {
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>,
                "ranking metrics: scores must be float or double");
  check(n > 0, where, ": no samples");
  Index n_positive = 0;
  for (Index i = 0; i < n; ++i) {
    const Scalar s = score_at(i);
    check(std::isfinite(s), where, ": y_score[", i, "] = ", s, " is not finite");
    n_positive += label_is_positive(where, label_at(i), i) ? 1 : 0;
  }
  SortedScores<Scalar> sorted;
  sorted.positive.reserve(static_cast<std::size_t>(n_positive));
  sorted.negative.reserve(static_cast<std::size_t>(n - n_positive));
  for (Index i = 0; i < n; ++i) {
    const auto key = order_key(score_at(i));
    if (label_at(i)) {
      sorted.positive.push_back(key);
    } else {
      sorted.negative.push_back(key);
    }
  }
  std::vector<SortKey<Scalar>> scratch;
  radix_sort(sorted.positive, scratch);
  radix_sort(sorted.negative, scratch);
  return sorted;
}

/// Calls visit(key, tp, fp) for every distinct score in decreasing order, with the cumulative
/// counts of positives and negatives whose score is >= that score (tied scores form one group).
template <class Key, class Visit>
void for_each_threshold(const std::vector<Key>& positive, const std::vector<Key>& negative,
                        Visit&& visit) {
  std::size_t i = positive.size();
  std::size_t j = negative.size();
  Index tp = 0;
  Index fp = 0;
  while (i > 0 || j > 0) {
    Key key;
    if (i == 0) {
      key = negative[j - 1];
    } else if (j == 0) {
      key = positive[i - 1];
    } else {
      key = std::max(positive[i - 1], negative[j - 1]);
    }
    while (i > 0 && positive[i - 1] == key) --i, ++tp;
    while (j > 0 && negative[j - 1] == key) --j, ++fp;
    visit(key, tp, fp);
  }
}

/// AUROC, AP and F1-max from sorted scores.
///
/// AUROC is the trapezoidal area under the ROC curve through (0, 0) and the points
/// (fp_t / N, tp_t / P) of the distinct thresholds t, as scikit-learn's roc_auc_score
/// (roc_curve, then auc). It equals the Mann-Whitney statistic with ties counted 1/2:
///     AUROC = sum_t (fp_t - fp_{t-1}) (tp_t + tp_{t-1}) / (2 P N),
/// accumulated exactly in integers while 2 P N fits 64 bits.
///
/// AP is scikit-learn's average_precision_score, the step-wise sum without interpolation:
///     AP = sum_t (R_t - R_{t-1}) P_t,  R_t = tp_t / P,  P_t = tp_t / (tp_t + fp_t),  R_0 = 0.
///
/// F1-max is the largest F1 over the thresholds "score >= t":
///     F1_t = 2 P_t R_t / (P_t + R_t) = 2 tp_t / (tp_t + fp_t + P),
/// as max over precision_recall_curve of 2PR/(P+R) (the curve's end point P = 1, R = 0 has F1 = 0).
template <class Scalar>
RankingMetrics ranking_from_sorted(const SortedScores<Scalar>& sorted) {
  RankingMetrics out;
  out.n_positive = static_cast<Index>(sorted.positive.size());
  out.n_negative = static_cast<Index>(sorted.negative.size());
  const auto n_positive = static_cast<std::uint64_t>(out.n_positive);
  const auto n_negative = static_cast<std::uint64_t>(out.n_negative);
  const bool exact =
      n_negative == 0 || n_positive <= std::numeric_limits<std::uint64_t>::max() / (2 * n_negative);
  std::uint64_t area_twice = 0;
  long double area_twice_wide = 0;
  double average_precision = 0;
  double f1_max = 0;
  SortKey<Scalar> f1_key = 0;
  Index tp_previous = 0;
  Index fp_previous = 0;
  for_each_threshold(
      sorted.positive, sorted.negative, [&](SortKey<Scalar> key, Index tp, Index fp) {
        const auto d_fp = static_cast<std::uint64_t>(fp - fp_previous);
        const auto tp_sum = static_cast<std::uint64_t>(tp + tp_previous);
        if (exact) {
          area_twice += d_fp * tp_sum;
        } else {
          area_twice_wide += static_cast<long double>(d_fp) * static_cast<long double>(tp_sum);
        }
        if (n_positive > 0) {
          const double precision = double(tp) / double(tp + fp);
          average_precision += double(tp - tp_previous) / double(n_positive) * precision;
          const double f1 = 2.0 * double(tp) / double(tp + fp + out.n_positive);
          if (f1 > f1_max) {
            f1_max = f1;
            f1_key = key;
          }
        }
        tp_previous = tp;
        fp_previous = fp;
      });
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (n_positive == 0 || n_negative == 0) {
    out.auroc = nan;
  } else if (exact) {
    out.auroc = double(area_twice) / (2.0 * double(n_positive) * double(n_negative));
  } else {
    out.auroc = double(area_twice_wide / (2.0L * n_positive * n_negative));
  }
  out.average_precision = n_positive > 0 ? average_precision : nan;
  out.f1_max = n_positive > 0 ? f1_max : nan;
  out.f1_threshold = n_positive > 0 ? double(from_order_key<Scalar>(f1_key)) : nan;
  return out;
}

template <class Scalar, class LabelAt, class ScoreAt>
BinaryClfCurve<Scalar> binary_clf_curve_impl(Index n, LabelAt label_at, ScoreAt score_at) {
  const auto sorted = sort_by_label<Scalar>("binary_clf_curve", n, label_at, score_at);
  BinaryClfCurve<Scalar> curve;
  for_each_threshold(sorted.positive, sorted.negative,
                     [&](SortKey<Scalar> key, Index tp, Index fp) {
                       curve.thresholds.push_back(from_order_key<Scalar>(key));
                       curve.tps.push_back(tp);
                       curve.fps.push_back(fp);
                     });
  return curve;
}

template <class Scalar, class LabelAt, class ScoreAt>
RankingMetrics ranking_metrics_impl(const char* where, Index n, LabelAt label_at,
                                    ScoreAt score_at) {
  return ranking_from_sorted(sort_by_label<Scalar>(where, n, label_at, score_at));
}

inline void require_both_classes(const char* where, const RankingMetrics& m) {
  check(m.n_positive > 0 && m.n_negative > 0, where, ": only one class is present in y_true (",
        m.n_positive, " positives, ", m.n_negative,
        " negatives); ROC AUC is not defined in that case");
}

inline void require_positive(const char* where, const RankingMetrics& m) {
  check(m.n_positive > 0, where, ": y_true holds no positive among ", m.n_negative,
        " samples; precision and recall are not defined");
}

template <class Scalar, class Label, class Compute>
auto with_vectors(const char* where, const std::vector<Label>& y_true,
                  const std::vector<Scalar>& y_score, Compute&& compute) {
  check(y_true.size() == y_score.size(), where, ": y_true has ", y_true.size(),
        " elements but y_score has ", y_score.size());
  return compute(
      static_cast<Index>(y_true.size()), [&](Index i) { return y_true[std::size_t(i)]; },
      [&](Index i) { return y_score[std::size_t(i)]; });
}

template <class Scalar, class LabelScalar, class Compute>
auto with_tensors(const char* where, const Tensor<LabelScalar>& y_true,
                  const Tensor<Scalar>& y_score, Compute&& compute) {
  check(y_true.numel() == y_score.numel(), where, ": y_true has shape ", y_true.shape(),
        " but y_score has shape ", y_score.shape());
  const Tensor<LabelScalar> labels = y_true.cpu();
  const Tensor<Scalar> scores = y_score.cpu();
  const LabelScalar* l = labels.data();
  const Scalar* s = scores.data();
  return compute(
      scores.numel(), [l](Index i) { return l[i]; }, [s](Index i) { return s[i]; });
}

template <class Scalar, class Label, class Compute>
auto with_pointers(const Label* y_true, const Scalar* y_score, Index n, Compute&& compute) {
  return compute(
      n, [y_true](Index i) { return y_true[i]; }, [y_score](Index i) { return y_score[i]; });
}

}  // namespace detail::metrics

// ---------------------------------------------------------------------------------------------
// ranking_metrics: AUROC, AP and F1-max together.

/// AUROC, average precision and F1-max of `y_score` against the binary `y_true`, from one sort;
/// the formulas are on detail::metrics::ranking_from_sorted. A metric that is undefined for these
/// labels is NaN here instead of an error (AUROC with one class, AP and F1 without positives).
/// requires: equal sizes, n > 0, labels 0 or 1, finite scores.
template <class Label, class Scalar>
RankingMetrics ranking_metrics(const Label* y_true, const Scalar* y_score, Index n) {
  return detail::metrics::with_pointers(y_true, y_score, n,
                                        [](Index n_, auto label_at, auto score_at) {
                                          return detail::metrics::ranking_metrics_impl<Scalar>(
                                              "ranking_metrics", n_, label_at, score_at);
                                        });
}
template <class Label, class Scalar>
RankingMetrics ranking_metrics(const std::vector<Label>& y_true,
                               const std::vector<Scalar>& y_score) {
  return detail::metrics::with_vectors("ranking_metrics", y_true, y_score,
                                       [](Index n, auto label_at, auto score_at) {
                                         return detail::metrics::ranking_metrics_impl<Scalar>(
                                             "ranking_metrics", n, label_at, score_at);
                                       });
}
template <class LabelScalar, class Scalar>
RankingMetrics ranking_metrics(const Tensor<LabelScalar>& y_true, const Tensor<Scalar>& y_score) {
  return detail::metrics::with_tensors("ranking_metrics", y_true, y_score,
                                       [](Index n, auto label_at, auto score_at) {
                                         return detail::metrics::ranking_metrics_impl<Scalar>(
                                             "ranking_metrics", n, label_at, score_at);
                                       });
}

// ---------------------------------------------------------------------------------------------
// roc_auc_score

/// Area under the ROC curve, as sklearn.metrics.roc_auc_score for binary labels: the trapezoid
/// through (0, 0) and (FPR_t, TPR_t) at every distinct score t, tied scores forming one point;
/// equal to P(s+ > s-) + P(s+ = s-) / 2 over positive-negative pairs.
/// requires: equal sizes, labels 0 or 1 with both present (else hgad::Error), finite scores.
template <class Label, class Scalar>
double roc_auc_score(const Label* y_true, const Scalar* y_score, Index n) {
  const RankingMetrics m = ranking_metrics(y_true, y_score, n);
  detail::metrics::require_both_classes("roc_auc_score", m);
  return m.auroc;
}
template <class Label, class Scalar>
double roc_auc_score(const std::vector<Label>& y_true, const std::vector<Scalar>& y_score) {
  const RankingMetrics m = ranking_metrics(y_true, y_score);
  detail::metrics::require_both_classes("roc_auc_score", m);
  return m.auroc;
}
template <class LabelScalar, class Scalar>
double roc_auc_score(const Tensor<LabelScalar>& y_true, const Tensor<Scalar>& y_score) {
  const RankingMetrics m = ranking_metrics(y_true, y_score);
  detail::metrics::require_both_classes("roc_auc_score", m);
  return m.auroc;
}

// ---------------------------------------------------------------------------------------------
// average_precision_score

/// Average precision, as sklearn.metrics.average_precision_score: the step-wise sum
/// AP = sum_t (R_t - R_{t-1}) P_t over the distinct scores t in decreasing order (no
/// interpolation; tied scores form one step).
/// requires: equal sizes, labels 0 or 1 with at least one positive (else hgad::Error), finite
/// scores.
template <class Label, class Scalar>
double average_precision_score(const Label* y_true, const Scalar* y_score, Index n) {
  const RankingMetrics m = ranking_metrics(y_true, y_score, n);
  detail::metrics::require_positive("average_precision_score", m);
  return m.average_precision;
}
template <class Label, class Scalar>
double average_precision_score(const std::vector<Label>& y_true,
                               const std::vector<Scalar>& y_score) {
  const RankingMetrics m = ranking_metrics(y_true, y_score);
  detail::metrics::require_positive("average_precision_score", m);
  return m.average_precision;
}
template <class LabelScalar, class Scalar>
double average_precision_score(const Tensor<LabelScalar>& y_true, const Tensor<Scalar>& y_score) {
  const RankingMetrics m = ranking_metrics(y_true, y_score);
  detail::metrics::require_positive("average_precision_score", m);
  return m.average_precision;
}

// ---------------------------------------------------------------------------------------------
// f1_max

/// The largest F1 score 2PR / (P + R) over the thresholds "score >= t" at every distinct score t
/// (the maximum of 2PR/(P+R) over sklearn's precision_recall_curve).
/// requires: equal sizes, labels 0 or 1 with at least one positive (else hgad::Error), finite
/// scores.
template <class Label, class Scalar>
double f1_max(const Label* y_true, const Scalar* y_score, Index n) {
  const RankingMetrics m = ranking_metrics(y_true, y_score, n);
  detail::metrics::require_positive("f1_max", m);
  return m.f1_max;
}
template <class Label, class Scalar>
double f1_max(const std::vector<Label>& y_true, const std::vector<Scalar>& y_score) {
  const RankingMetrics m = ranking_metrics(y_true, y_score);
  detail::metrics::require_positive("f1_max", m);
  return m.f1_max;
}
template <class LabelScalar, class Scalar>
double f1_max(const Tensor<LabelScalar>& y_true, const Tensor<Scalar>& y_score) {
  const RankingMetrics m = ranking_metrics(y_true, y_score);
  detail::metrics::require_positive("f1_max", m);
  return m.f1_max;
}

// ---------------------------------------------------------------------------------------------
// binary_clf_curve

/// The distinct thresholds with their cumulative true and false positive counts, as scikit-learn's
/// _binary_clf_curve (roc_curve and precision_recall_curve are ratios of these).
/// requires: equal sizes, n > 0, labels 0 or 1, finite scores.
template <class Label, class Scalar>
BinaryClfCurve<Scalar> binary_clf_curve(const std::vector<Label>& y_true,
                                        const std::vector<Scalar>& y_score) {
  return detail::metrics::with_vectors(
      "binary_clf_curve", y_true, y_score, [](Index n, auto label_at, auto score_at) {
        return detail::metrics::binary_clf_curve_impl<Scalar>(n, label_at, score_at);
      });
}

}  // namespace hgad
