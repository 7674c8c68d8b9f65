#pragma once
/// \file
/// AUPRO: the normalised area under the per-region-overlap curve up to a false-positive rate of 0.3
/// (docs/algorithm.md §6), in the CFlow/HGAD form that ../shared/datasets/industrial-mini/BASELINES.md
/// uses for its reference figures.
///
///     // masks (N, H, W) with values 0 or 1, maps (N, H, W): every test image of one class
///     double score = hgad::aupro(masks, maps);   // FPR limit 0.3, 200 thresholds
///
/// The protocol, step by step (numpy names in quotes):
///  1. Thresholds th_i = "np.arange(min, max, (max - min) / 200)" over all pixels of the class,
///     computed in double exactly as numpy does: step = (max - min) / 200, count
///     ceil((max - min) / step) (200, or 201 when rounding makes the quotient exceed 200),
///     th_0 = min, th_1 = min + step, th_i = min + i ((min + step) - min).
///  2. At each th_i the binary map is "map > th_i" (strict).
///  3. PRO_i = mean over all 8-connected regions of the ground truth of the class (regions of all
///     images pooled, each region one vote) of the fraction of the region's pixels that are
///     positive.
///  4. FPR_i = (positive pixels among all mask == 0 pixels of the class) / (mask == 0 pixels).
///  5. Only the points with FPR_i < 0.3 (strict) are kept; their FPR is min-max normalised to
///     [0, 1] and the area under PRO over normalised FPR is taken by the trapezoid rule, as
///     "sklearn.metrics.auc" does for the decreasing FPR sequence (a positive area).
/// A defective image whose mask is empty contributes negative pixels and no region.
///
/// Cost: instead of 200 full passes, each pixel is placed once in the bin of thresholds below its
/// score (computed from the even spacing, checked against the thresholds); per-region and negative
/// histograms over those bins, summed from the top, give every PRO_i and FPR_i. O(n + T * regions)
/// for n pixels and T thresholds, parallel over images, O(T) memory per region; the masks and maps
/// are not copied on the CPU.
///
/// Errors (hgad::Error): shape mismatches, masks other than 0/1, non-finite scores, a class without
/// any defect region (PRO undefined) or without any mask == 0 pixel (FPR undefined).
/// NaN results: a constant map (numpy.arange with step 0 is undefined), no threshold with
/// FPR < max_fpr, or all kept points at one FPR (the min-max normalisation divides 0 by 0).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../detail/check.hpp"
#include "../detail/parallel.hpp"
#include "../tensor.hpp"
#include "connected_components.hpp"

namespace hgad {

/// 0.3: the FPR limit of AUPRO in CFlow, HGAD's evaluation and BASELINES.md.
inline constexpr double aupro_default_max_fpr = 0.3;
/// 200: the number of thresholds of BASELINES.md ("np.arange(min, max, (max - min) / 200)").
inline constexpr Index aupro_default_n_thresholds = 200;

/// The per-region-overlap curve of one class: at every threshold, the mean region overlap and the
/// false-positive rate of "map > threshold".
struct ProCurve {
  std::vector<double> thresholds;  // (T,) increasing, numpy.arange semantics (see the file comment)
  std::vector<double> pro;         // (T,) mean over regions of the positive fraction of the region
  std::vector<double> fpr;         // (T,) positive fraction of the mask == 0 pixels
  Index n_regions = 0;             // 8-connected ground-truth regions over all images
  Index n_negative_pixels = 0;     // mask == 0 pixels over all images
};

/// The thresholds "np.arange(lo, hi, (hi - lo) / n_steps)" in double, reproducing numpy's length
/// ceil((hi - lo) / step) and its fill rule th_i = lo + i ((lo + step) - lo) for i >= 2.
/// Empty when hi <= lo.
inline std::vector<double> numpy_arange_thresholds(double lo, double hi, Index n_steps) {
  check(n_steps > 0, "numpy_arange_thresholds: n_steps must be positive, got ", n_steps);
  std::vector<double> thresholds;
  if (!(hi > lo)) return thresholds;
  const double step = (hi - lo) / double(n_steps);
  const auto length = static_cast<Index>(std::ceil((hi - lo) / step));
  thresholds.reserve(static_cast<std::size_t>(length));
  thresholds.push_back(lo);
  if (length > 1) thresholds.push_back(lo + step);
  const double delta = (lo + step) - lo;
  for (Index i = 2; i < length; ++i) thresholds.push_back(lo + double(i) * delta);
  return thresholds;
}

namespace detail::metrics {

struct ImageProHistograms {
  std::vector<Index> negative;             // (T + 1,) mask == 0 pixels per bin
  std::vector<std::vector<Index>> region;  // (regions, T + 1) region pixels per bin
  std::vector<Index> region_size;          // (regions,)
};

}  // namespace detail::metrics

/// The PRO curve of one class at the numpy.arange thresholds between the smallest and largest
/// score (see the file comment for the exact protocol).
/// requires: masks and maps of one shape (N, H, W) or (H, W); masks 0 or 1; finite maps; at least
///           one mask == 1 pixel and one mask == 0 pixel.
/// ensures: pro and fpr are non-increasing along the thresholds; empty curve for a constant map.
template <class MaskScalar, class Scalar>
ProCurve pro_curve(const Tensor<MaskScalar>& masks, const Tensor<Scalar>& maps,
                   Index n_thresholds = aupro_default_n_thresholds) {
  check(masks.shape() == maps.shape(), "pro_curve: masks have shape ", masks.shape(),
        " but the anomaly maps have shape ", maps.shape());
  check(maps.rank() == 2 || maps.rank() == 3,
        "pro_curve: expected maps of shape (N, H, W) or (H, W), got ", maps.shape());
  check(maps.numel() > 0, "pro_curve: empty maps of shape ", maps.shape());
  const Tensor<MaskScalar> mask_host = masks.cpu();
  const Tensor<Scalar> map_host = maps.cpu();
  const Index n_images = maps.rank() == 3 ? maps.dim(0) : 1;
  const Index height = maps.dim(maps.rank() - 2);
  const Index width = maps.dim(maps.rank() - 1);
  const Index n_pixels = height * width;
  check(n_pixels < (Index(1) << 31), "pro_curve: ", height, " x ", width,
        " pixels per image exceed the int32 region labels");
  const MaskScalar* mask_data = mask_host.data();
  const Scalar* map_data = map_host.data();

  Scalar lo = map_data[0];
  Scalar hi = map_data[0];
  for (Index i = 0; i < maps.numel(); ++i) {
    const Scalar s = map_data[i];
    check(std::isfinite(s), "pro_curve: anomaly map value ", s, " at flat index ", i,
          " is not finite");
    check(mask_data[i] == MaskScalar(0) || mask_data[i] == MaskScalar(1), "pro_curve: mask value ",
          mask_data[i], " at flat index ", i, " is not 0 or 1");
    lo = std::min(lo, s);
    hi = std::max(hi, s);
  }

  ProCurve curve;
  curve.thresholds = numpy_arange_thresholds(double(lo), double(hi), n_thresholds);
  const auto n_bins = static_cast<std::size_t>(curve.thresholds.size() + 1);
  const std::vector<double>& thresholds = curve.thresholds;

  // Bin b of a pixel = number of thresholds strictly below its score: it is positive at th_i
  // exactly when i < b. The evenly spaced thresholds give a first guess, corrected against the
  // stored (rounded) thresholds, which are non-decreasing.
  const Index n_th = static_cast<Index>(thresholds.size());
  const double first = n_th > 0 ? thresholds.front() : 0.0;
  const double spacing = n_th > 1 ? thresholds[1] - thresholds[0] : 1.0;
  const auto bin_of = [&thresholds, n_th, first, spacing](double s) {
    const double guess = std::floor((s - first) / spacing) + 1.0;
    Index b = guess <= 0 ? 0 : guess >= double(n_th) ? n_th : static_cast<Index>(guess);
    while (b > 0 && thresholds[std::size_t(b - 1)] >= s) --b;
    while (b < n_th && thresholds[std::size_t(b)] < s) ++b;
    return static_cast<std::size_t>(b);
  };
  std::vector<detail::metrics::ImageProHistograms> per_image(static_cast<std::size_t>(n_images));
  detail::parallel_for(n_images, n_images * n_pixels * 8, [&](std::int64_t image) {
    const MaskScalar* mask = mask_data + image * n_pixels;
    const Scalar* map = map_data + image * n_pixels;
    const ComponentLabels components =
        label_connected_components(mask, height, width, Connectivity::eight);
    detail::metrics::ImageProHistograms& h = per_image[static_cast<std::size_t>(image)];
    h.negative.assign(n_bins, 0);
    h.region.assign(static_cast<std::size_t>(components.n_components),
                    std::vector<Index>(n_bins, 0));
    h.region_size = components.sizes;
    for (Index p = 0; p < n_pixels; ++p) {
      const std::size_t bin = bin_of(double(map[p]));
      const std::int32_t label = components.labels[static_cast<std::size_t>(p)];
      if (label == 0) {
        ++h.negative[bin];
      } else {
        ++h.region[static_cast<std::size_t>(label - 1)][bin];
      }
    }
  });

  std::vector<Index> negative(n_bins, 0);
  for (const auto& h : per_image) {
    for (std::size_t b = 0; b < n_bins; ++b) negative[b] += h.negative[b];
    curve.n_regions += static_cast<Index>(h.region.size());
  }
  for (Index count : negative) curve.n_negative_pixels += count;
  check(curve.n_regions > 0, "pro_curve: the masks of all ", n_images,
        " images hold no defect region, so the per-region overlap is not defined");
  check(curve.n_negative_pixels > 0, "pro_curve: the masks of all ", n_images,
        " images have no mask == 0 pixel, so the false-positive rate is not defined");

  const std::size_t n_points = thresholds.size();
  curve.pro.assign(n_points, 0.0);
  curve.fpr.assign(n_points, 0.0);
  Index false_positives = 0;
  for (std::size_t i = n_points; i-- > 0;) {
    false_positives += negative[i + 1];
    curve.fpr[i] = double(false_positives) / double(curve.n_negative_pixels);
  }
  std::vector<double> overlap(n_points, 0.0);
  for (const auto& h : per_image) {
    for (std::size_t r = 0; r < h.region.size(); ++r) {
      Index positive = 0;
      for (std::size_t i = n_points; i-- > 0;) {
        positive += h.region[r][i + 1];
        overlap[i] += double(positive) / double(h.region_size[r]);
      }
    }
  }
  for (std::size_t i = 0; i < n_points; ++i) curve.pro[i] = overlap[i] / double(curve.n_regions);
  return curve;
}

/// The AUPRO of a PRO curve: keep the points with fpr < max_fpr, min-max normalise their FPR, and
/// take the trapezoidal area under PRO (positive for the decreasing FPR sequence, as
/// sklearn.metrics.auc). NaN when no point or only one FPR value is kept.
inline double aupro_from_curve(const ProCurve& curve, double max_fpr = aupro_default_max_fpr) {
  check(curve.pro.size() == curve.fpr.size(), "aupro_from_curve: ", curve.pro.size(),
        " PRO values but ", curve.fpr.size(), " FPR values");
  check(max_fpr > 0 && max_fpr <= 1, "aupro_from_curve: max_fpr must lie in (0, 1], got ", max_fpr);
  std::vector<double> fpr;
  std::vector<double> pro;
  for (std::size_t i = 0; i < curve.fpr.size(); ++i) {
    if (curve.fpr[i] < max_fpr) {
      fpr.push_back(curve.fpr[i]);
      pro.push_back(curve.pro[i]);
    }
  }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (fpr.empty()) return nan;
  const double fpr_min = *std::min_element(fpr.begin(), fpr.end());
  const double fpr_max = *std::max_element(fpr.begin(), fpr.end());
  if (!(fpr_max > fpr_min)) return nan;
  for (double& f : fpr) f = (f - fpr_min) / (fpr_max - fpr_min);
  double area = 0;
  for (std::size_t i = 0; i + 1 < fpr.size(); ++i) {
    area += (fpr[i + 1] - fpr[i]) * (pro[i + 1] + pro[i]) / 2.0;
  }
  return -area;
}

/// AUPRO of the anomaly maps of one class against its ground-truth masks, integrated up to
/// max_fpr with the BASELINES.md protocol (file comment): pro_curve, then aupro_from_curve.
/// requires: as pro_curve; 0 < max_fpr <= 1.
/// ensures: a value in [0, 1], or NaN in the degenerate cases listed in the file comment.
template <class MaskScalar, class Scalar>
double aupro(const Tensor<MaskScalar>& masks, const Tensor<Scalar>& maps,
             double max_fpr = aupro_default_max_fpr,
             Index n_thresholds = aupro_default_n_thresholds) {
  return aupro_from_curve(pro_curve(masks, maps, n_thresholds), max_fpr);
}

}  // namespace hgad
