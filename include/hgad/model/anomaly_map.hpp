#pragma once
/// \file
/// From per-level score maps to pixel anomaly maps (docs/algorithm.md §5.4): bilinear upsampling,
/// scipy's Gaussian filter, and the normalisation that turns the likelihood (or negative-entropy)
/// maps of every feature level into one anomaly map per image, in a transductive form (the paper's,
/// constants taken over the test set of a class) and a calibrated form (constants given).
///
///     // logp[l]: (N, h_l, w_l) per-level log-likelihood maps of the N test images of one class
///     hgad::Tensor<float> a = hgad::transductive_anomaly_map(logp);           // (N, 256, 256)
///     // deployment: constants from the training images, then any batch, even one image
///     hgad::AnomalyMapConstants c = hgad::anomaly_map_constants(logp_train);
///     hgad::Tensor<float> b = hgad::calibrated_anomaly_map(logp_one_image, c); // (1, 256, 256)
///     std::vector<float> scores = hgad::image_scores(a);                      // max per image
///
/// Every function is pure: it reads its inputs and returns new tensors. These live in model/
/// because they are the model's scoring post-processing; the metrics (hgad/metrics/) consume their
/// output. The composite maps are computed in double internally, as the reference implementation
/// does in float64 (torch.double, then numpy), and rounded to Scalar once at the end.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "../detail/check.hpp"
#include "../detail/parallel.hpp"
#include "../tensor.hpp"

namespace hgad {

namespace detail::anomaly_map_impl {

/// PyTorch's source coordinate of output index `out` for upsample_bilinear2d:
///   align_corners = true:  src = out (in - 1) / (size - 1)   (0 when size == 1)
///   align_corners = false: src = max(0, (out + 0.5) in / size - 0.5)
/// returns the two neighbours i0 <= i1 (clamped to the last index) and the weight of i1.
struct MapLinearTap {
  Index i0;
  Index i1;
  double lambda1;
};

inline std::vector<MapLinearTap> map_linear_taps(Index in_size, Index out_size,
                                                 bool align_corners) {
  std::vector<MapLinearTap> taps(static_cast<std::size_t>(out_size));
  for (Index o = 0; o < out_size; ++o) {
    double src;
    if (align_corners) {
      const double scale = out_size > 1 ? double(in_size - 1) / double(out_size - 1) : 0.0;
      src = scale * double(o);
    } else {
      const double scale = double(in_size) / double(out_size);
      src = std::max(0.0, scale * (double(o) + 0.5) - 0.5);
    }
    MapLinearTap& t = taps[static_cast<std::size_t>(o)];
    t.i0 = std::min(static_cast<Index>(src), in_size - 1);
    t.i1 = t.i0 < in_size - 1 ? t.i0 + 1 : t.i0;
    t.lambda1 = src - double(t.i0);
  }
  return taps;
}

/// out[y, x] = (1 - ly) [(1 - lx) in[y0, x0] + lx in[y0, x1]] + ly [(1 - lx) in[y1, x0] + lx in[y1,
/// x1]] for one plane of in_height x in_width, computed separably (each input row is interpolated
/// along x once into `rows_x`, in_height x out_width doubles; the same products as the formula);
/// adds to `out` when `accumulate` (the §5.4 sum over levels).
template <class In, class Out>
void upsample_bilinear_plane(const In* in, Index in_height, Index in_width,
                             const std::vector<MapLinearTap>& rows,
                             const std::vector<MapLinearTap>& cols, Out* out, bool accumulate,
                             std::vector<double>& rows_x) {
  const auto out_width = static_cast<Index>(cols.size());
  rows_x.resize(static_cast<std::size_t>(in_height * out_width));
  for (Index r = 0; r < in_height; ++r) {
    const In* src = in + r * in_width;
    double* dst = rows_x.data() + r * out_width;
    for (Index x = 0; x < out_width; ++x) {
      const MapLinearTap& c = cols[static_cast<std::size_t>(x)];
      dst[x] = (1.0 - c.lambda1) * double(src[c.i0]) + c.lambda1 * double(src[c.i1]);
    }
  }
  for (std::size_t y = 0; y < rows.size(); ++y) {
    const MapLinearTap& r = rows[y];
    const double* top = rows_x.data() + r.i0 * out_width;
    const double* bottom = rows_x.data() + r.i1 * out_width;
    const double l0 = 1.0 - r.lambda1;
    const double l1 = r.lambda1;
    Out* dst = out + static_cast<Index>(y) * out_width;
    if (accumulate) {
      for (Index x = 0; x < out_width; ++x)
        dst[x] = Out(double(dst[x]) + (l0 * top[x] + l1 * bottom[x]));
    } else {
      for (Index x = 0; x < out_width; ++x) dst[x] = Out(l0 * top[x] + l1 * bottom[x]);
    }
  }
}

/// scipy.ndimage mode 'reflect' (half-sample symmetric, d c b a | a b c d | d c b a), repeated
/// for offsets beyond one period.
inline Index reflect_index(Index i, Index n) {
  if (n == 1) return 0;
  const Index period = 2 * n;
  Index m = i % period;
  if (m < 0) m += period;
  return m < n ? m : period - 1 - m;
}

/// scipy.ndimage.gaussian_filter of one row-major height x width plane, in place: the 1-D kernel
/// along axis 0, then along axis 1, each pass accumulated in double and stored in T (as scipy
/// stores each pass in the array's dtype). `scratch` receives height * width elements.
template <class T>
void gaussian_filter_plane(T* data, Index height, Index width, const std::vector<double>& kernel,
                           std::vector<T>& scratch, std::vector<double>& line) {
  const auto radius = static_cast<Index>(kernel.size() / 2);
  scratch.resize(static_cast<std::size_t>(height * width));
  line.assign(static_cast<std::size_t>(std::max(width + 2 * radius, width)), 0.0);
  std::vector<double> row_sum(static_cast<std::size_t>(width));
  for (Index y = 0; y < height; ++y) {
    std::fill(row_sum.begin(), row_sum.end(), 0.0);
    for (Index k = -radius; k <= radius; ++k) {
      const double w = kernel[static_cast<std::size_t>(k + radius)];
      const T* src = data + reflect_index(y + k, height) * width;
      for (Index x = 0; x < width; ++x) row_sum[std::size_t(x)] += w * double(src[x]);
    }
    T* dst = scratch.data() + y * width;
    for (Index x = 0; x < width; ++x) dst[x] = T(row_sum[std::size_t(x)]);
  }
  for (Index y = 0; y < height; ++y) {
    const T* src = scratch.data() + y * width;
    for (Index i = 0; i < width + 2 * radius; ++i) {
      line[std::size_t(i)] = double(src[reflect_index(i - radius, width)]);
    }
    std::fill(row_sum.begin(), row_sum.end(), 0.0);
    for (std::size_t k = 0; k < kernel.size(); ++k) {
      const double w = kernel[k];
      const double* shifted = line.data() + k;
      for (Index x = 0; x < width; ++x) row_sum[std::size_t(x)] += w * shifted[x];
    }
    T* dst = data + y * width;
    for (Index x = 0; x < width; ++x) dst[x] = T(row_sum[std::size_t(x)]);
  }
}

template <class Scalar>
void check_level_maps(const char* where, const std::vector<Tensor<Scalar>>& levels) {
  check(!levels.empty(), where, ": no level maps");
  for (std::size_t l = 0; l < levels.size(); ++l) {
    check(levels[l].rank() == 3, where, ": level ", l, " must be (N, h, w), got shape ",
          levels[l].shape());
    check(levels[l].dim(0) == levels[0].dim(0), where, ": level ", l, " holds ", levels[l].dim(0),
          " images but level 0 holds ", levels[0].dim(0));
    check(levels[l].dim(1) > 0 && levels[l].dim(2) > 0, where, ": level ", l,
          " has an empty map of shape ", levels[l].shape());
  }
}

}  // namespace detail::anomaly_map_impl

// ---------------------------------------------------------------------------------------------
// Building blocks

/// Bilinear resampling of the last two axes of a (h, w), (N, h, w) or (N, C, h, w) tensor to
/// out_height x out_width, as torch.nn.functional.interpolate(mode='bilinear', align_corners=...)
/// without antialiasing. With align_corners the corner pixels' centres map onto each other:
/// src = dst (in - 1) / (out - 1); without, pixel areas align: src = (dst + 0.5) in / out - 0.5,
/// clamped at 0, and the last row/column is repeated past the edge. Coordinates and weights are
/// computed in double (PyTorch uses float for float tensors, a difference of rounding only).
/// requires: rank 2 to 4, non-empty spatial axes, out_height, out_width >= 1.
template <class Scalar>
Tensor<Scalar> upsample_bilinear(const Tensor<Scalar>& input, Index out_height, Index out_width,
                                 bool align_corners = true) {
  check(input.rank() >= 2, "upsample_bilinear: expected (..., h, w) with rank 2 to 4, got shape ",
        input.shape());
  const Index height = input.dim(input.rank() - 2);
  const Index width = input.dim(input.rank() - 1);
  check(height > 0 && width > 0, "upsample_bilinear: empty spatial size in shape ",
        input.shape());
  check(out_height > 0 && out_width > 0, "upsample_bilinear: output size ", out_height, " x ",
        out_width, " must be positive");
  std::vector<Index> dims = input.shape().dims();
  dims[dims.size() - 2] = out_height;
  dims[dims.size() - 1] = out_width;
  const Tensor<Scalar> host = input.cpu();
  Tensor<Scalar> out{Shape(dims)};
  const auto rows = detail::anomaly_map_impl::map_linear_taps(height, out_height, align_corners);
  const auto cols = detail::anomaly_map_impl::map_linear_taps(width, out_width, align_corners);
  const Index n_planes = height * width > 0 ? host.numel() / (height * width) : 0;
  const Scalar* src = host.data();
  Scalar* dst = out.data();
  detail::parallel_for(n_planes, n_planes * out_height * out_width * 6, [&](std::int64_t p) {
    std::vector<double> rows_x;
    detail::anomaly_map_impl::upsample_bilinear_plane(src + p * height * width, height, width, rows,
                                                      cols, dst + p * out_height * out_width, false,
                                                      rows_x);
  });
  return out;
}

/// The normalised 1-D Gaussian kernel of scipy.ndimage.gaussian_filter: radius
/// r = int(truncate sigma + 0.5), weights exp(-x^2 / (2 sigma^2)) for x = -r..r divided by their
/// sum. sigma = 4, truncate = 4 (§5.4; scipy's default truncate) gives r = 16, 33 taps. requires:
/// sigma > 0, truncate >= 0.
inline std::vector<double> gaussian_kernel1d(double sigma, double truncate = 4.0) {
  check(sigma > 0 && std::isfinite(sigma), "gaussian_kernel1d: sigma must be positive, got ",
        sigma);
  check(truncate >= 0 && std::isfinite(truncate), "gaussian_kernel1d: truncate must be >= 0, got ",
        truncate);
  const auto radius = static_cast<Index>(truncate * sigma + 0.5);
  std::vector<double> kernel(static_cast<std::size_t>(2 * radius + 1));
  double sum = 0;
  for (Index x = -radius; x <= radius; ++x) {
    const double w = std::exp(-0.5 / (sigma * sigma) * double(x * x));
    kernel[static_cast<std::size_t>(x + radius)] = w;
    sum += w;
  }
  for (double& w : kernel) w /= sum;
  return kernel;
}

/// scipy.ndimage.gaussian_filter(image, sigma, mode='reflect', truncate=truncate) applied to each
/// 2-D plane (the last two axes) of a (h, w), (N, h, w) or (N, C, h, w) tensor: the separable
/// kernel of gaussian_kernel1d along the rows axis, then the columns axis, with half-sample
/// symmetric borders (d c b a | a b c d | d c b a, repeated when the radius exceeds the size).
/// Each pass accumulates in double and stores Scalar, as scipy does for an array of that dtype.
/// sigma = 0 returns a copy (scipy skips such an axis).
/// requires: rank 2 to 4, sigma >= 0, truncate >= 0.
template <class Scalar>
Tensor<Scalar> gaussian_filter(const Tensor<Scalar>& input, double sigma = 4.0,
                               double truncate = 4.0) {
  check(input.rank() >= 2, "gaussian_filter: expected (..., h, w) with rank 2 to 4, got shape ",
        input.shape());
  check(sigma >= 0 && std::isfinite(sigma), "gaussian_filter: sigma must be >= 0, got ", sigma);
  Tensor<Scalar> out = input.cpu().clone();
  if (sigma == 0 || out.numel() == 0) return out;
  const std::vector<double> kernel = gaussian_kernel1d(sigma, truncate);
  const Index height = out.dim(out.rank() - 2);
  const Index width = out.dim(out.rank() - 1);
  const Index n_planes = out.numel() / (height * width);
  Scalar* data = out.data();
  detail::parallel_for(n_planes, n_planes * height * width * 2 * Index(kernel.size()),
                       [&](std::int64_t p) {
                         std::vector<Scalar> scratch;
                         std::vector<double> line;
                         detail::anomaly_map_impl::gaussian_filter_plane(
                             data + p * height * width, height, width, kernel, scratch, line);
                       });
  return out;
}

// ---------------------------------------------------------------------------------------------
// §5.4: per-level maps -> anomaly map

/// Sizes of the §5.4 post-processing.
struct AnomalyMapOptions {
  Index height = 256;         // output (mask) height: §5.4 upsamples to 256 x 256
  Index width = 256;          // output (mask) width
  bool align_corners = true;  // §5.4: bilinear_resize(..., align_corners=True)
  double sigma = 4.0;         // §5.4: gaussian_filter σ = 4; 0 disables the blur
  double truncate = 4.0;      // §5.4: scipy's default truncate, radius 16
  /// false (§5.4): each level enters S as exp(X_l - level_max[l]); true: as X_l - level_max[l]
  /// itself, so that positions far below the level's maximum do not all count as about 0 and every
  /// position keeps its order (ModelConfig::map_scale = log; not in the paper).
  bool log_scale = false;
  /// The weight of each level's term in S (ModelConfig::level_weights; not in the paper): empty
  /// weighs every level 1, else one finite weight >= 0 per level.
  std::vector<double> level_weights;
};

/// The constants of the §5.4 normalisation: the maximum of each level's map, and the maximum of
/// the upsampled sum S = Σ_l w_l · up(exp(X_l - level_max[l])) over all images and pixels.
struct AnomalyMapConstants {
  std::vector<double> level_max;  // (L,) max over images and positions of X_l
  double sum_max = 0;             // max over images and pixels of S
};

namespace detail::anomaly_map_impl {

/// S for image n: Σ_l w_l · up(exp(X_l[n] - level_max[l])) into sum (height * width doubles);
/// with log_scale, Σ_l w_l · up(X_l[n] - level_max[l]); w_l = options.level_weights[l], or 1.
template <class Scalar>
void level_sum(const std::vector<Tensor<Scalar>>& levels, const std::vector<double>& level_max,
               const AnomalyMapOptions& options, const std::vector<std::vector<MapLinearTap>>& rows,
               const std::vector<std::vector<MapLinearTap>>& cols, Index n, std::vector<double>& q,
               std::vector<double>& rows_x, std::vector<double>& sum) {
  std::fill(sum.begin(), sum.end(), 0.0);
  for (std::size_t l = 0; l < levels.size(); ++l) {
    const Index h = levels[l].dim(1);
    const Index w = levels[l].dim(2);
    const Scalar* x = levels[l].data() + n * h * w;
    const double weight = options.level_weights.empty() ? 1.0 : options.level_weights[l];
    q.resize(static_cast<std::size_t>(h * w));
    for (Index i = 0; i < h * w; ++i) {
      const double relative = double(x[i]) - level_max[l];
      q[std::size_t(i)] = weight * (options.log_scale ? relative : std::exp(relative));
    }
    upsample_bilinear_plane(q.data(), h, w, rows[l], cols[l], sum.data(), true, rows_x);
  }
}

template <class Scalar>
std::vector<Tensor<Scalar>> host_levels(const char* where,
                                        const std::vector<Tensor<Scalar>>& levels) {
  check_level_maps(where, levels);
  std::vector<Tensor<Scalar>> host;
  for (std::size_t l = 0; l < levels.size(); ++l) {
    host.push_back(levels[l].cpu());
    const Scalar* x = host.back().data();
    for (Index i = 0; i < host.back().numel(); ++i) {
      check(std::isfinite(x[i]), where, ": level ", l, " holds the non-finite value ", x[i],
            " at flat index ", i);
    }
  }
  return host;
}

inline void check_options(const char* where, const AnomalyMapOptions& options,
                          std::size_t n_levels) {
  check(options.height > 0 && options.width > 0, where, ": output size ", options.height, " x ",
        options.width, " must be positive");
  check(options.sigma >= 0 && std::isfinite(options.sigma), where, ": sigma must be >= 0, got ",
        options.sigma);
  const std::vector<double>& w = options.level_weights;
  check(w.empty() || w.size() == n_levels, where, ": ", w.size(), " level weights for ", n_levels,
        " levels");
  for (std::size_t l = 0; l < w.size(); ++l)
    check(w[l] >= 0 && std::isfinite(w[l]), where, ": the weight of level ", l,
          " must be finite and >= 0, got ", w[l]);
}

}  // namespace detail::anomaly_map_impl

/// The §5.4 normalisation constants of a set of per-level maps: level_max[l] = max X_l over all
/// images and positions, sum_max = max over all images and output pixels of
/// S = Σ_l w_l · bilinear(exp(X_l - level_max[l])) (X_l - level_max[l] with options.log_scale;
/// w_l = options.level_weights[l], 1 without weights). On the
/// test maps of a class these are the paper's transductive constants; on training (normal) maps
/// they are the calibration that calibrated_anomaly_map needs to score images one at a time.
/// Streams image by image: memory is one output plane per thread, not N of them.
/// requires: levels non-empty, each (N, h_l, w_l) with one N >= 1, finite values.
template <class Scalar>
AnomalyMapConstants anomaly_map_constants(const std::vector<Tensor<Scalar>>& levels,
                                          const AnomalyMapOptions& options = {}) {
  const auto host = detail::anomaly_map_impl::host_levels("anomaly_map_constants", levels);
  detail::anomaly_map_impl::check_options("anomaly_map_constants", options, host.size());
  const Index n_images = host[0].dim(0);
  check(n_images > 0, "anomaly_map_constants: no images");
  AnomalyMapConstants constants;
  std::vector<std::vector<detail::anomaly_map_impl::MapLinearTap>> rows, cols;
  for (const auto& level : host) {
    const Scalar* x = level.data();
    constants.level_max.push_back(double(*std::max_element(x, x + level.numel())));
    rows.push_back(detail::anomaly_map_impl::map_linear_taps(level.dim(1), options.height,
                                                             options.align_corners));
    cols.push_back(detail::anomaly_map_impl::map_linear_taps(level.dim(2), options.width,
                                                             options.align_corners));
  }
  std::vector<double> image_max(static_cast<std::size_t>(n_images));
  const Index n_out = options.height * options.width;
  detail::parallel_for(n_images, n_images * n_out * Index(host.size()) * 6, [&](std::int64_t n) {
    std::vector<double> q, rows_x, sum(static_cast<std::size_t>(n_out));
    detail::anomaly_map_impl::level_sum(host, constants.level_max, options, rows, cols, n,
                                        q, rows_x, sum);
    image_max[std::size_t(n)] = *std::max_element(sum.begin(), sum.end());
  });
  constants.sum_max = *std::max_element(image_max.begin(), image_max.end());
  return constants;
}

/// The §5.4 anomaly map with given constants, image by image:
///     S = Σ_l w_l · bilinear(exp(X_l - level_max[l]), height x width, align_corners)
///     A = gaussian_filter(sum_max - S, sigma, truncate)
/// (with options.log_scale, X_l - level_max[l] in place of its exp; w_l = 1 without
/// options.level_weights)
/// computed in double and rounded to Scalar. Each image depends only on itself and the constants,
/// so an image gets the same map alone or in any batch. With constants from training maps a test
/// image more normal than all of them can have S > sum_max and slightly negative A.
/// Applied to likelihood maps this is A_logp, to negative-entropy maps A_ent; the final map is
/// their element-wise product (§5.5).
/// requires: as anomaly_map_constants; constants.level_max.size() == levels.size().
/// ensures: shape (N, options.height, options.width).
template <class Scalar>
Tensor<Scalar> calibrated_anomaly_map(const std::vector<Tensor<Scalar>>& levels,
                                      const AnomalyMapConstants& constants,
                                      const AnomalyMapOptions& options = {}) {
  const auto host = detail::anomaly_map_impl::host_levels("calibrated_anomaly_map", levels);
  detail::anomaly_map_impl::check_options("calibrated_anomaly_map", options, host.size());
  check(constants.level_max.size() == host.size(),
        "calibrated_anomaly_map: ", constants.level_max.size(), " level constants for ",
        host.size(), " levels");
  for (double m : constants.level_max) {
    check(std::isfinite(m), "calibrated_anomaly_map: non-finite level constant ", m);
  }
  check(std::isfinite(constants.sum_max), "calibrated_anomaly_map: non-finite sum_max ",
        constants.sum_max);
  const Index n_images = host[0].dim(0);
  std::vector<std::vector<detail::anomaly_map_impl::MapLinearTap>> rows, cols;
  for (const auto& level : host) {
    rows.push_back(detail::anomaly_map_impl::map_linear_taps(level.dim(1), options.height,
                                                             options.align_corners));
    cols.push_back(detail::anomaly_map_impl::map_linear_taps(level.dim(2), options.width,
                                                             options.align_corners));
  }
  const std::vector<double> kernel = options.sigma > 0
                                         ? gaussian_kernel1d(options.sigma, options.truncate)
                                         : std::vector<double>{};
  Tensor<Scalar> out({n_images, options.height, options.width});
  Scalar* dst = out.data();
  const Index n_out = options.height * options.width;
  detail::parallel_for(
      n_images, n_images * n_out * (Index(host.size()) * 6 + 2 * Index(kernel.size())),
      [&](std::int64_t n) {
        std::vector<double> q, rows_x, a(static_cast<std::size_t>(n_out)), scratch, line;
        detail::anomaly_map_impl::level_sum(host, constants.level_max, options, rows,
                                            cols, n, q, rows_x, a);
        for (double& v : a) v = constants.sum_max - v;
        if (!kernel.empty()) {
          detail::anomaly_map_impl::gaussian_filter_plane(a.data(), options.height, options.width,
                                                          kernel, scratch, line);
        }
        std::transform(a.begin(), a.end(), dst + n * n_out, [](double v) { return Scalar(v); });
      });
  return out;
}

/// The paper's transductive §5.4 anomaly map: the constants are those of the maps themselves
/// (all test images of one class), i.e. calibrated_anomaly_map(levels,
/// anomaly_map_constants(levels)). An image's map depends on the other images of the set; use
/// calibrated_anomaly_map to deploy.
template <class Scalar>
Tensor<Scalar> transductive_anomaly_map(const std::vector<Tensor<Scalar>>& levels,
                                        const AnomalyMapOptions& options = {}) {
  return calibrated_anomaly_map(levels, anomaly_map_constants(levels, options), options);
}

/// The image score of one map of n pixels: with top_fraction = 0 its maximum (§5.6, the paper's);
/// with top_fraction f in (0, 1] the mean of its ⌊f · n⌋ highest pixels, at least one
/// (ModelConfig::image_score_fraction; not in the paper). The maximum of a map is one pixel, so a
/// single stray peak of a normal image ranks it as a defect would; the mean of the highest 1 %
/// needs a peak of some extent.
///   requires: n >= 1, 0 <= top_fraction <= 1.
template <class Scalar>
double image_score(const Scalar* map, Index n, double top_fraction = 0) {
  check(n >= 1, "image_score: the map has no pixels");
  check(top_fraction >= 0 && top_fraction <= 1, "image_score: top_fraction must be in [0, 1], got ",
        top_fraction);
  const auto top = std::max<Index>(1, static_cast<Index>(top_fraction * double(n)));
  if (top == 1) return double(*std::max_element(map, map + n));
  std::vector<Scalar> sorted(map, map + n);
  std::nth_element(sorted.begin(), sorted.begin() + (top - 1), sorted.end(), std::greater<Scalar>());
  double sum = 0;
  for (Index i = 0; i < top; ++i) sum += double(sorted[std::size_t(i)]);
  return sum / double(top);
}

/// The image score (image_score) of each image's map, for maps of shape (N, H, W).
template <class Scalar>
std::vector<Scalar> image_scores(const Tensor<Scalar>& maps, double top_fraction = 0) {
  check(maps.rank() == 3 && maps.dim(1) * maps.dim(2) > 0,
        "image_scores: expected non-empty maps of shape (N, H, W), got ", maps.shape());
  const Tensor<Scalar> host = maps.cpu();
  const Index n_pixels = host.dim(1) * host.dim(2);
  std::vector<Scalar> scores(static_cast<std::size_t>(host.dim(0)));
  for (Index n = 0; n < host.dim(0); ++n)
    scores[std::size_t(n)] = Scalar(image_score(host.data() + n * n_pixels, n_pixels, top_fraction));
  return scores;
}

}  // namespace hgad
