#pragma once
/// \file
/// Every metric of one product class at once (docs/algorithm.md §6): image AUROC/AP/F1-max from the
/// image scores, pixel AUROC/AP/F1-max over all pixels of all test images, and AUPRO@0.3.
///
///     // labels: 0 good, 1 defective (from the folder, not from the mask); scores: max of each map
///     hgad::ClassMetrics m = hgad::evaluate_class(labels, scores, masks, maps);
///     std::printf("%.3f %.3f %.3f\n", m.image_auroc, m.pixel_auroc, m.aupro);
///
/// A defective image whose mask is empty counts as defective in the image metrics, adds only
/// negative pixels to the pixel metrics and no region to AUPRO (BASELINES.md: "skip nothing").

#include <cstdint>
#include <limits>
#include <vector>

#include "../detail/check.hpp"
#include "../tensor.hpp"
#include "aupro.hpp"
#include "ranking.hpp"

namespace hgad {

/// The metrics of one class. A metric that the labels leave undefined is NaN: the AUROCs when only
/// one class is present, the APs and F1s without positives, AUPRO without any defect region (or
/// in the degenerate cases of aupro()).
struct ClassMetrics {
  double image_auroc = 0;
  double image_average_precision = 0;
  double image_f1_max = 0;
  double pixel_auroc = 0;
  double pixel_average_precision = 0;
  double pixel_f1_max = 0;
  double aupro = 0;  // integrated up to FPR max_fpr (0.3 by default)
  Index n_images = 0;
  Index n_defective = 0;  // images labelled 1
  Index n_regions = 0;    // 8-connected ground-truth regions
};

/// Image, pixel and region metrics of one class.
/// requires: image_labels (0/1) and image_scores of length N; masks (0/1) and maps of one shape
///           (N, H, W); finite scores and maps; 0 < max_fpr <= 1.
/// ensures: errors (hgad::Error) only for malformed inputs; undefined metrics are NaN.
/// Cost: one radix sort of the N H W pixel scores (about 2 N H W keys of extra memory) and one
/// binning pass for AUPRO.
template <class Label, class Scalar, class MaskScalar>
ClassMetrics evaluate_class(const std::vector<Label>& image_labels,
                            const std::vector<Scalar>& image_scores,
                            const Tensor<MaskScalar>& masks, const Tensor<Scalar>& maps,
                            double max_fpr = aupro_default_max_fpr,
                            Index n_thresholds = aupro_default_n_thresholds) {
  check(maps.rank() == 3, "evaluate_class: expected maps of shape (N, H, W), got ",
        maps.shape());
  check(masks.shape() == maps.shape(), "evaluate_class: masks have shape ",
        masks.shape(), " but the anomaly maps have shape ", maps.shape());
  check(static_cast<Index>(image_labels.size()) == maps.dim(0) &&
            image_scores.size() == image_labels.size(),
        "evaluate_class: ", image_labels.size(), " image labels and ", image_scores.size(),
        " image scores for ", maps.dim(0), " maps");
  ClassMetrics out;
  const RankingMetrics image = ranking_metrics(image_labels, image_scores);
  out.image_auroc = image.auroc;
  out.image_average_precision = image.average_precision;
  out.image_f1_max = image.f1_max;
  out.n_images = image.n_positive + image.n_negative;
  out.n_defective = image.n_positive;

  const RankingMetrics pixel = ranking_metrics(masks, maps);
  out.pixel_auroc = pixel.auroc;
  out.pixel_average_precision = pixel.average_precision;
  out.pixel_f1_max = pixel.f1_max;
  if (pixel.n_positive > 0 && pixel.n_negative > 0) {
    const ProCurve curve = pro_curve(masks, maps, n_thresholds);
    out.n_regions = curve.n_regions;
    out.aupro = aupro_from_curve(curve, max_fpr);
  } else {
    check(max_fpr > 0 && max_fpr <= 1, "evaluate_class: max_fpr must lie in (0, 1], got ", max_fpr);
    out.aupro = std::numeric_limits<double>::quiet_NaN();
  }
  return out;
}

}  // namespace hgad
