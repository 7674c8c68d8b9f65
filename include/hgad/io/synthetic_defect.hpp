#pragma once
/// \file
/// Synthetic defects on normal images: a way to measure detection on training data alone.
///
/// A model that is chosen on the likelihood of held-out normal images is chosen for how well it
/// fits normal images, which is not what a detector is for (docs/results.md §1.1). Held-out normal
/// images can also be given a defect whose place is known: a rectangle of the image is copied to
/// another place of the same image with its brightness and contrast changed, the "cut-paste"
/// defect of Li et al. (CVPR 2021) with their colour jitter reduced to one gain and one offset.
/// Scored together with the image as it was, the copy gives an image AUROC, a pixel AUROC and an
/// AUPRO without one real anomaly (docs/algorithm.md §9.6).
///
///     hgad::Rng rng(seed);
///     const hgad::SyntheticDefect d = hgad::draw_synthetic_defect(256, rng);
///     auto defective = hgad::apply_synthetic_defect(image, d);  // image (3, 256, 256) in [0, 1]
///     auto mask = hgad::synthetic_defect_mask<float>(d, 256);  // (1, 256, 256) in {0, 1}

#include <algorithm>
#include <cmath>
#include <string>

#include "../detail/check.hpp"
#include "../rng.hpp"
#include "../tensor.hpp"

namespace hgad {

/// One cut-paste defect on a square image of `image_size` pixels: the `height` × `width` rectangle
/// at (source_top, source_left) is copied to (top, left), each value v becoming
/// clamp(gain · v + offset, 0, 1).
struct SyntheticDefect {
  Index image_size = 0;
  Index top = 0, left = 0;                ///< where the copy goes
  Index source_top = 0, source_left = 0;  ///< where it is taken from
  Index height = 0, width = 0;
  double gain = 1;
  double offset = 0;
};

/// How the area of a defect is drawn in [min_area, max_area]: uniform, or log-uniform (each
/// factor of two in area equally likely, so small defects are as common as large ones).
enum class AreaLaw { uniform, log_uniform };

/// The ranges draw_synthetic_defect draws from. The defaults are the `large` defects (2-8 % of the
/// image, uniform); synthetic_defect_ranges() names the others.
struct SyntheticDefectRanges {
  double min_area = 0.02, max_area = 0.08;     ///< of the image's area
  AreaLaw area_law = AreaLaw::uniform;
  double max_aspect = 3;                       ///< height / width in [1 / max_aspect, max_aspect]
  double max_side = 0.5;                       ///< each side at most this share of the image's
  double min_gain = 0.75, max_gain = 1.25;     ///< the contrast change
  double min_offset = 0.08, max_offset = 0.2;  ///< |offset|, in units of the [0, 1] pixel range
};

/// The named defect sizes of `hgad test --defects` (docs/algorithm.md §9.6):
///   large   area uniform in [0.02, 0.08] of the image (the default ranges)
///   small   area log-uniform in [0.002, 0.02]
///   spread  area log-uniform in [0.002, 0.08]: every size from an 11 × 11 pixel square at 256²
///           to the large ones, each factor of two in area equally likely
///   wide    area log-uniform in [0.08, 0.4], each side up to the whole image: defects as large
///           as a band of another texture across a quarter of the image
/// The other ranges are the defaults in all four.
///   throws: hgad::Error naming the unknown name and the known ones.
inline SyntheticDefectRanges synthetic_defect_ranges(const std::string& name) {
  SyntheticDefectRanges r;
  if (name == "large") return r;
  r.area_law = AreaLaw::log_uniform;
  if (name == "wide") {
    r.min_area = 0.08;
    r.max_area = 0.4;
    r.max_side = 1;
    return r;
  }
  r.min_area = 0.002;
  if (name == "small") {
    r.max_area = 0.02;
    return r;
  }
  check(name == "spread", "synthetic defects '", name, "': expected large, small, spread or wide");
  return r;
}

/// Draws a defect for a square image of `image_size` pixels (≥ 8): an area in [min_area, max_area]
/// of the image, uniform or log-uniform (`area_law`); an aspect ratio log-uniform in
/// [1 / max_aspect, max_aspect] (each side at most max_side of the image's); both places uniform
/// over the image, the source drawn again (up to 64 times) until it does not overlap the target
/// (a large defect may overlap it: the copy reads the image as it was); a gain
/// uniform in [min_gain, max_gain] and an offset of either sign with |offset| uniform in
/// [min_offset, max_offset].
///   throws: hgad::Error for image_size < 8 or ranges out of order.
inline SyntheticDefect draw_synthetic_defect(Index image_size, Rng& rng,
                                             const SyntheticDefectRanges& r = {}) {
  check(image_size >= 8, "draw_synthetic_defect: image_size ", image_size, " must be at least 8");
  check(0 < r.max_side && r.max_side <= 1 && 0 < r.min_area && r.min_area <= r.max_area &&
            r.max_area <= r.max_side * r.max_side && r.max_aspect >= 1 && 0 < r.min_gain &&
            r.min_gain <= r.max_gain && 0 <= r.min_offset && r.min_offset <= r.max_offset,
        "draw_synthetic_defect: ranges out of order (side at most ", r.max_side,
        " in (0, 1], area [", r.min_area, ", ", r.max_area, "] within (0, side²], aspect ",
        r.max_aspect, " >= 1, gain [", r.min_gain, ", ", r.max_gain, "], offset [", r.min_offset,
        ", ", r.max_offset, "])");
  const double S = double(image_size);
  const double fraction = r.area_law == AreaLaw::uniform
                              ? rng.uniform(r.min_area, r.max_area)
                              : std::exp(rng.uniform(std::log(r.min_area), std::log(r.max_area)));
  const double area = fraction * S * S;
  const double aspect = std::exp(rng.uniform(-std::log(r.max_aspect), std::log(r.max_aspect)));
  const Index longest = std::max<Index>(1, Index(std::floor(r.max_side * S)));
  const auto side = [&](double v) { return std::clamp<Index>(Index(std::lround(v)), 1, longest); };
  SyntheticDefect d;
  d.image_size = image_size;
  d.height = side(std::sqrt(area * aspect));
  d.width = side(std::sqrt(area / aspect));
  const auto place = [&](Index extent) {
    return Index(rng.uniform_int(std::uint64_t(image_size - extent + 1)));
  };
  d.top = place(d.height);
  d.left = place(d.width);
  for (int attempt = 0; attempt < 64; ++attempt) {
    d.source_top = place(d.height);
    d.source_left = place(d.width);
    const bool apart = d.source_top >= d.top + d.height || d.top >= d.source_top + d.height ||
                       d.source_left >= d.left + d.width || d.left >= d.source_left + d.width;
    if (apart) break;
  }
  d.gain = rng.uniform(r.min_gain, r.max_gain);
  d.offset = rng.uniform(r.min_offset, r.max_offset) * (rng.uniform() < 0.5 ? -1.0 : 1.0);
  return d;
}

/// The image with defect `d`: a copy of `image` (C, S, S), values in [0, 1] (before any
/// normalisation), S = d.image_size, with the source rectangle, as it was, written at the target.
///   throws: hgad::Error for another shape.
template <class Scalar>
Tensor<Scalar> apply_synthetic_defect(const Tensor<Scalar>& image, const SyntheticDefect& d) {
  check(image.rank() == 3 && image.dim(1) == d.image_size && image.dim(2) == d.image_size,
        "apply_synthetic_defect: expected an image (C, ", d.image_size, ", ", d.image_size,
        "), got ", image.shape());
  Tensor<Scalar> out = image.clone();
  const Index S = d.image_size;
  for (Index c = 0; c < image.dim(0); ++c)
    for (Index i = 0; i < d.height; ++i)
      for (Index j = 0; j < d.width; ++j) {
        const double v = double(image.data()[(c * S + d.source_top + i) * S + d.source_left + j]);
        out.data()[(c * S + d.top + i) * S + d.left + j] =
            Scalar(std::clamp(d.gain * v + d.offset, 0.0, 1.0));
      }
  return out;
}

/// The defect's mask on a (1, mask_size, mask_size) grid: 1 where a mask pixel's centre lies in the
/// target rectangle (scaled from the image's size to the mask's), else 0.
template <class Scalar>
Tensor<Scalar> synthetic_defect_mask(const SyntheticDefect& d, Index mask_size) {
  check(mask_size >= 1 && d.image_size >= 1, "synthetic_defect_mask: mask_size ", mask_size,
        " and the defect's image_size ", d.image_size, " must be positive");
  Tensor<Scalar> mask = Tensor<Scalar>::zeros({1, mask_size, mask_size});
  const double scale = double(d.image_size) / double(mask_size);
  const auto inside = [&](Index k, Index start, Index extent) {
    const double at = (double(k) + 0.5) * scale;  // the mask pixel's centre in image pixels
    return at >= double(start) && at < double(start + extent);
  };
  for (Index i = 0; i < mask_size; ++i)
    for (Index j = 0; j < mask_size; ++j)
      if (inside(i, d.top, d.height) && inside(j, d.left, d.width))
        mask.data()[i * mask_size + j] = Scalar(1);
  return mask;
}

}  // namespace hgad
