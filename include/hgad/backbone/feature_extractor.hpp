#pragma once
/// \file
/// Multi-level CNN features for the flows: the FeatureExtractor interface, its ResNet
/// implementation, the image-pyramid and neighbourhood-mean wrappers, and the flattening of
/// feature maps into rows.
///
/// Two multi-level schemes are covered by one configuration (docs/algorithm.md §1.2):
/// - HGAD: one stage of an image pyramid. x_s = bilinear resize (align_corners=True) of the
///   normalised image to size / 2^s, F_s = backbone(x_s)[stage], s = 0 .. n_scales - 1.
/// - CFlow: several stages (e.g. layer1, layer2, layer3) of the one image.
/// Both at once (several stages on several scales) is allowed too.
///
///     auto fx = hgad::make_feature_extractor<float>(
///         hgad::FeatureConfig::pyramid(hgad::ResNetArch::resnet18, hgad::ResNetStage::layer3, 3),
///         dir);
///     auto maps = fx->extract(images);                 // images (B, 3, 256, 256), normalised
///     // maps[s] is (B, 256, 16 / 2^s, 16 / 2^s); fx->levels()[s].name == "layer3@scale" + s
///     auto rows = hgad::flatten_features(maps[0]);     // (B * 16 * 16, 256), row n = b h w + i w
///     + j
///
/// A user backbone (or a source of precomputed features) plugs in by deriving from
/// FeatureExtractor<Scalar> and implementing levels(), feature_shape() and extract().

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "../detail/check.hpp"
#include "../detail/parallel.hpp"
#include "../detail/text.hpp"
#include "../tensor.hpp"
#include "resnet.hpp"

namespace hgad {

/// One output of a feature extractor.
struct FeatureLevel {
  std::string name;    ///< e.g. "layer3" or, in a pyramid, "layer3@scale1"
  Index channels = 0;  ///< C of the (B, C, h, w) maps
  Index stride = 1;    ///< down-sampling factor relative to the input image (h ~ H / stride)
};

/// A frozen feature extractor: normalised images in, one feature map per level out.
template <class Scalar>
class FeatureExtractor {
 public:
  virtual ~FeatureExtractor() = default;

  /// The levels extract() returns, in that order.
  virtual std::vector<FeatureLevel> levels() const = 0;

  /// The (C, h, w) of level `level` for input images of height x width.
  virtual Shape feature_shape(std::size_t level, Index height, Index width) const = 0;

  /// requires: images (B, 3, H, W), normalised as the backbone expects (ImageNet mean and std).
  /// ensures:  out.size() == levels().size(); out[l] is (B, feature_shape(l, H, W)...).
  virtual std::vector<Tensor<Scalar>> extract(const Tensor<Scalar>& images) const = 0;

  std::size_t n_levels() const { return levels().size(); }
};

/// Bilinear resize of an NCHW batch to out_h x out_w, PyTorch's F.interpolate(mode='bilinear',
/// antialias=False). Source coordinate of output pixel i along an axis of n_in -> n_out pixels:
///   align_corners = true:  u = i (n_in - 1) / (n_out - 1)   (0 when n_out == 1)
///   align_corners = false: u = max(0, (i + 0.5) n_in / n_out - 0.5)
/// then out = (1 - t) x[floor u] + t x[min(floor u + 1, n_in - 1)], t = u - floor u, per axis.
template <class Scalar>
Tensor<Scalar> resize_bilinear_batch(const Tensor<Scalar>& x, Index out_h, Index out_w,
                                     bool align_corners) {
  check(x.rank() == 4, "resize_bilinear_batch: input must be (N, C, H, W), got ",
        x.shape());
  check(out_h >= 1 && out_w >= 1, "resize_bilinear_batch: output size ", out_h, "x", out_w,
        " is empty");
  const Index planes = x.dim(0) * x.dim(1), in_h = x.dim(2), in_w = x.dim(3);
  check(in_h >= 1 && in_w >= 1, "resize_bilinear_batch: input ", x.shape(),
        " is empty");
  struct Tap {
    Index i0, i1;
    Scalar t;
  };
  auto taps = [align_corners](Index n_in, Index n_out) {
    std::vector<Tap> out(static_cast<std::size_t>(n_out));
    for (Index i = 0; i < n_out; ++i) {
      double u;
      if (align_corners) {
        u = n_out > 1 ? double(i) * double(n_in - 1) / double(n_out - 1) : 0.0;
      } else {
        u = std::max(0.0, (double(i) + 0.5) * double(n_in) / double(n_out) - 0.5);
      }
      const Index i0 = std::min(static_cast<Index>(u), n_in - 1);
      out[static_cast<std::size_t>(i)] = {i0, std::min(i0 + 1, n_in - 1), Scalar(u - double(i0))};
    }
    return out;
  };
  const std::vector<Tap> ty = taps(in_h, out_h), tx = taps(in_w, out_w);
  Tensor<Scalar> y({x.dim(0), x.dim(1), out_h, out_w});
  const Scalar* src = x.data();
  Scalar* dst = y.data();
  detail::parallel_for(planes, planes * out_h * out_w * 8, [&](Index p) {
    const Scalar* plane = src + p * in_h * in_w;
    Scalar* out = dst + p * out_h * out_w;
    for (Index i = 0; i < out_h; ++i) {
      const Tap& a = ty[static_cast<std::size_t>(i)];
      const Scalar* r0 = plane + a.i0 * in_w;
      const Scalar* r1 = plane + a.i1 * in_w;
      for (Index j = 0; j < out_w; ++j) {
        const Tap& b = tx[static_cast<std::size_t>(j)];
        const Scalar top = r0[b.i0] + b.t * (r0[b.i1] - r0[b.i0]);
        const Scalar bottom = r1[b.i0] + b.t * (r1[b.i1] - r1[b.i0]);
        out[i * out_w + j] = top + a.t * (bottom - top);
      }
    }
  });
  return y;
}

/// (B, C, h, w) -> (B h w, C): row n = b h w + i w + j holds the C-vector at (b, i, j)
/// (docs/algorithm.md §1.3: permute to (B, h, w, C), reshape).
template <class Scalar>
Tensor<Scalar> flatten_features(const Tensor<Scalar>& maps) {
  check(maps.rank() == 4, "flatten_features: maps must be (B, C, h, w), got ",
        maps.shape());
  const Index b = maps.dim(0), c = maps.dim(1), hw = maps.dim(2) * maps.dim(3);
  Tensor<Scalar> rows({b * hw, c});
  const Scalar* src = maps.data();
  Scalar* dst = rows.data();
  detail::parallel_for(b, b * c * hw, [&](Index n) {
    Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> in(
        src + n * c * hw, c, hw);
    Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> out(
        dst + n * hw * c, hw, c);
    out = in.transpose();
  });
  return rows;
}

/// The inverse of flatten_features: (B h w, C) -> (B, C, h, w).
template <class Scalar>
Tensor<Scalar> unflatten_features(const Tensor<Scalar>& rows, Index batch, Index height,
                                  Index width) {
  check(rows.rank() == 2 && rows.dim(0) == batch * height * width, "unflatten_features: rows ",
        rows.shape(), " do not hold ", batch, " x ", height, " x ", width,
        " positions");
  const Index c = rows.dim(1), hw = height * width;
  Tensor<Scalar> maps({batch, c, height, width});
  const Scalar* src = rows.data();
  Scalar* dst = maps.data();
  detail::parallel_for(batch, batch * c * hw, [&](Index n) {
    Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> in(
        src + n * hw * c, hw, c);
    Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> out(
        dst + n * c * hw, c, hw);
    out = in.transpose();
  });
  return maps;
}

/// Stages of a frozen ResNet as feature levels (CFlow: layer1, layer2, layer3 of one image).
template <class Scalar>
class ResNetFeatureExtractor : public FeatureExtractor<Scalar> {
 public:
  /// Uses `net` (shared, never modified) and returns `stages` in that order.
  ResNetFeatureExtractor(std::shared_ptr<const ResNet<Scalar>> net, std::vector<ResNetStage> stages)
      : m_net(std::move(net)), m_stages(std::move(stages)) {
    check(m_net != nullptr, "ResNetFeatureExtractor: null network");
    check(!m_stages.empty(), "ResNetFeatureExtractor: no stage given");
    for (ResNetStage s : m_stages) {
      check(static_cast<int>(s) <= static_cast<int>(m_net->last_stage()),
            "ResNetFeatureExtractor: stage ", to_string(s), " is beyond the loaded stage ",
            to_string(m_net->last_stage()));
    }
  }
  /// Loads `arch` from `weights_dir` up to the deepest of `stages`.
  ResNetFeatureExtractor(ResNetArch arch, const std::string& weights_dir,
                         std::vector<ResNetStage> stages)
      : ResNetFeatureExtractor(
            std::make_shared<const ResNet<Scalar>>(arch, weights_dir, deepest(stages)), stages) {
  }  // a copy: the first argument reads stages too (unspecified order)

  std::vector<FeatureLevel> levels() const override {
    std::vector<FeatureLevel> out;
    for (ResNetStage s : m_stages)
      out.push_back({to_string(s), m_net->channels(s), m_net->stride(s)});
    return out;
  }
  Shape feature_shape(std::size_t level, Index height, Index width) const override {
    check(level < m_stages.size(), "ResNetFeatureExtractor::feature_shape: level ", level, " of ",
          m_stages.size());
    const ResNetStage s = m_stages[level];
    return {m_net->channels(s), ResNet<Scalar>::output_size(height, s),
            ResNet<Scalar>::output_size(width, s)};
  }
  std::vector<Tensor<Scalar>> extract(const Tensor<Scalar>& images) const override {
    return m_net->forward(images, m_stages);
  }

  const ResNet<Scalar>& network() const { return *m_net; }
  const std::vector<ResNetStage>& stages() const { return m_stages; }

 private:
  static ResNetStage deepest(const std::vector<ResNetStage>& stages) {
    check(!stages.empty(), "ResNetFeatureExtractor: no stage given");
    return *std::max_element(stages.begin(), stages.end(), [](ResNetStage a, ResNetStage b) {
      return static_cast<int>(a) < static_cast<int>(b);
    });
  }

  std::shared_ptr<const ResNet<Scalar>> m_net;
  std::vector<ResNetStage> m_stages;
};

/// One level of a PyramidFeatureExtractor: level `base_level` of its base extractor, run on the
/// image resized to 1 / 2^scale.
struct PyramidLevel {
  int scale = 0;
  std::size_t base_level = 0;
};

/// Runs a base extractor on an image pyramid (HGAD, docs/algorithm.md §1.2): for s = 0 .. n_scales - 1,
/// x_s = bilinear resize (align_corners=True, no antialiasing) of the normalised images to
/// (floor(H / 2^s), floor(W / 2^s)), x_0 = the images themselves. Two ways to choose the levels:
/// - every base level on every scale, scale-major (the levels of x_0, then those of x_1, ...),
///   named "<base name>@scale<s>" (HGAD: one stage on three scales);
/// - a list of (scale, base level) pairs, in that order, each named "<base name>@scale<s>" for
///   s > 0 and "<base name>" for s = 0 (e.g. layer1, layer2, layer3 of the image beside
///   "layer3@scale1", layer3 of the image at half its size). The base runs once per scale used.
template <class Scalar>
class PyramidFeatureExtractor : public FeatureExtractor<Scalar> {
 public:
  /// Every level of `base` on each of n_scales scales.
  PyramidFeatureExtractor(std::shared_ptr<const FeatureExtractor<Scalar>> base, int n_scales)
      : m_base(std::move(base)), m_name_scale0(true) {
    check(m_base != nullptr, "PyramidFeatureExtractor: null base extractor");
    check(n_scales >= 1 && n_scales <= 16, "PyramidFeatureExtractor: n_scales ", n_scales,
          " must be in [1, 16]");
    for (int s = 0; s < n_scales; ++s)
      for (std::size_t l = 0; l < m_base->n_levels(); ++l) m_levels.push_back({s, l});
  }
  /// The levels `levels` of `base`, in that order; no pair twice.
  PyramidFeatureExtractor(std::shared_ptr<const FeatureExtractor<Scalar>> base,
                          std::vector<PyramidLevel> levels)
      : m_base(std::move(base)), m_levels(std::move(levels)), m_name_scale0(false) {
    check(m_base != nullptr, "PyramidFeatureExtractor: null base extractor");
    check(!m_levels.empty(), "PyramidFeatureExtractor: no level given");
    const std::vector<FeatureLevel> base_levels = m_base->levels();
    const std::size_t n_base = base_levels.size();
    for (std::size_t i = 0; i < m_levels.size(); ++i) {
      const PyramidLevel& l = m_levels[i];
      check(l.scale >= 0 && l.scale <= 15, "PyramidFeatureExtractor: level ", i, " has scale ",
            l.scale, ", expected 0 .. 15");
      check(l.base_level < n_base, "PyramidFeatureExtractor: level ", i, " names base level ",
            l.base_level, " of ", n_base);
      for (std::size_t j = 0; j < i; ++j)
        check(m_levels[j].scale != l.scale || m_levels[j].base_level != l.base_level,
              "PyramidFeatureExtractor: levels ", j, " and ", i, " are the same (",
              level_name(l, base_levels), ")");
    }
  }

  /// The number of scales the levels reach (the largest scale + 1).
  int n_scales() const {
    int n = 0;
    for (const PyramidLevel& l : m_levels) n = std::max(n, l.scale + 1);
    return n;
  }

  std::vector<FeatureLevel> levels() const override {
    const std::vector<FeatureLevel> base = m_base->levels();
    std::vector<FeatureLevel> out;
    for (const PyramidLevel& l : m_levels) {
      const FeatureLevel& b = base[l.base_level];
      out.push_back({level_name(l, base), b.channels, b.stride << l.scale});
    }
    return out;
  }
  Shape feature_shape(std::size_t level, Index height, Index width) const override {
    check(level < m_levels.size(), "PyramidFeatureExtractor::feature_shape: level ", level, " of ",
          m_levels.size());
    const PyramidLevel& l = m_levels[level];
    return m_base->feature_shape(l.base_level, scaled(height, l.scale), scaled(width, l.scale));
  }
  std::vector<Tensor<Scalar>> extract(const Tensor<Scalar>& images) const override {
    check(images.rank() == 4, "PyramidFeatureExtractor::extract: images must be (B, 3, H, W), got ",
          images.shape());
    std::vector<Tensor<Scalar>> out(m_levels.size());
    for (int s = 0; s < n_scales(); ++s) {
      const bool used = std::any_of(m_levels.begin(), m_levels.end(),
                                    [s](const PyramidLevel& l) { return l.scale == s; });
      if (!used) continue;
      const Index h = scaled(images.dim(2), s), w = scaled(images.dim(3), s);
      const Tensor<Scalar> x = s == 0 ? images : resize_bilinear_batch(images, h, w, true);
      std::vector<Tensor<Scalar>> maps = m_base->extract(x);
      for (std::size_t i = 0; i < m_levels.size(); ++i)
        if (m_levels[i].scale == s) out[i] = maps[m_levels[i].base_level];
    }
    return out;
  }

  /// floor(size / 2^s), the pyramid size along one axis; an error when it reaches 0.
  static Index scaled(Index size, int s) {
    const Index v = size >> s;
    check(v >= 1, "PyramidFeatureExtractor: size ", size, " is too small for scale ", s);
    return v;
  }

 private:
  /// "<base name>@scale<s>", or the base name alone at scale 0 for chosen levels.
  std::string level_name(const PyramidLevel& l, const std::vector<FeatureLevel>& base) const {
    const std::string& name = base[l.base_level].name;
    return m_name_scale0 || l.scale > 0 ? name + "@scale" + std::to_string(l.scale) : name;
  }

  std::shared_ptr<const FeatureExtractor<Scalar>> m_base;
  std::vector<PyramidLevel> m_levels;
  bool m_name_scale0;
};

namespace detail {

/// Refuses a neighbourhood window side that is even or below 1, naming `where`.
inline void check_neighbourhood_window(Index k, const char* where) {
  check(k >= 1 && k % 2 == 1, where, ": the window side must be odd and >= 1, got ", k);
}

}  // namespace detail

/// The mean of each feature vector's k x k neighbourhood (docs/algorithm.md §1.2.1), the window
/// cut at the map's border: for a map F (B, C, h, w) and r = (k - 1) / 2,
///   out[b, c, i, j] = mean of F[b, c, i', j'] over |i' - i| <= r, |j' - j| <= r, 0 <= i' < h,
///                     0 <= j' < w.
/// The window is a rectangle, so the mean is taken along rows, then along columns.
/// requires: maps (B, C, h, w), k odd and >= 1 (k = 1 returns a copy).
template <class Scalar>
Tensor<Scalar> neighbourhood_mean(const Tensor<Scalar>& maps, Index k) {
  check(maps.rank() == 4, "neighbourhood_mean: maps must be (B, C, h, w), got ",
        maps.shape());
  detail::check_neighbourhood_window(k, "neighbourhood_mean");
  if (k == 1 || maps.numel() == 0) return maps.clone();
  Tensor<Scalar> out(maps.shape());  // every value written below
  const Index planes = maps.dim(0) * maps.dim(1), h = maps.dim(2), w = maps.dim(3), r = k / 2;
  const Scalar* src = maps.data();
  Scalar* dst = out.data();
  detail::parallel_for(planes, planes * h * w * (2 * k + 2), [&](Index p) {
    const Scalar* in = src + p * h * w;
    std::vector<Scalar> along_rows(static_cast<std::size_t>(h * w));
    for (Index i = 0; i < h; ++i) {
      for (Index j = 0; j < w; ++j) {
        const Index j0 = std::max<Index>(0, j - r), j1 = std::min(w - 1, j + r);
        Scalar sum = 0;
        for (Index t = j0; t <= j1; ++t) sum += in[i * w + t];
        along_rows[static_cast<std::size_t>(i * w + j)] = sum / Scalar(j1 - j0 + 1);
      }
    }
    Scalar* o = dst + p * h * w;
    for (Index i = 0; i < h; ++i) {
      const Index i0 = std::max<Index>(0, i - r), i1 = std::min(h - 1, i + r);
      for (Index j = 0; j < w; ++j) {
        Scalar sum = 0;
        for (Index t = i0; t <= i1; ++t) sum += along_rows[static_cast<std::size_t>(t * w + j)];
        o[i * w + j] = sum / Scalar(i1 - i0 + 1);
      }
    }
  });
  return out;
}

/// Replaces each feature vector of a base extractor's maps by the mean of its k x k neighbourhood
/// (neighbourhood_mean); the levels and their shapes are the base's.
template <class Scalar>
class NeighbourhoodMeanExtractor : public FeatureExtractor<Scalar> {
 public:
  NeighbourhoodMeanExtractor(std::shared_ptr<const FeatureExtractor<Scalar>> base, Index k)
      : m_base(std::move(base)), m_k(k) {
    check(m_base != nullptr, "NeighbourhoodMeanExtractor: null base extractor");
    detail::check_neighbourhood_window(k, "NeighbourhoodMeanExtractor");
  }

  Index window() const { return m_k; }

  std::vector<FeatureLevel> levels() const override { return m_base->levels(); }
  Shape feature_shape(std::size_t level, Index height, Index width) const override {
    return m_base->feature_shape(level, height, width);
  }
  std::vector<Tensor<Scalar>> extract(const Tensor<Scalar>& images) const override {
    std::vector<Tensor<Scalar>> maps = m_base->extract(images);
    for (Tensor<Scalar>& m : maps) m = neighbourhood_mean(m, m_k);
    return maps;
  }

 private:
  std::shared_ptr<const FeatureExtractor<Scalar>> m_base;
  Index m_k;
};

/// Which backbone features feed the flows: `stages` of `arch` on `n_scales` pyramid scales, each
/// feature vector averaged over its `neighbourhood` x `neighbourhood` window (1: as it is).
struct FeatureConfig {
  ResNetArch arch = ResNetArch::resnet18;
  std::vector<ResNetStage> stages{ResNetStage::layer3};
  int n_scales = 1;
  Index neighbourhood = 1;
  /// The pyramid scale each entry of `stages` is read at instead (the image at 1 / 2^scale of its
  /// size), so that stages of several sizes of the image stand beside each other, e.g. stages
  /// {layer1, layer2, layer3, layer3} at scales {0, 0, 0, 1}; needs n_scales = 1. Empty: every
  /// stage on every one of the n_scales scales.
  std::vector<int> scales;

  /// HGAD's scheme: one stage of an image pyramid of n_scales (docs/algorithm.md §1.2 uses 3).
  static FeatureConfig pyramid(ResNetArch arch, ResNetStage stage = ResNetStage::layer3,
                               int n_scales = 3) {
    FeatureConfig c;
    c.arch = arch;
    c.stages = {stage};
    c.n_scales = n_scales;
    return c;
  }
  /// CFlow's scheme: several stages of one image.
  static FeatureConfig multi_stage(ResNetArch arch, std::vector<ResNetStage> stages = {
                                                        ResNetStage::layer1, ResNetStage::layer2,
                                                        ResNetStage::layer3}) {
    FeatureConfig c;
    c.arch = arch;
    c.stages = std::move(stages);
    return c;
  }
};

/// Makes a ResNet extractor of `stages` on a device other than the CPU (see
/// register_backbone_device).
template <class Scalar>
using BackboneDeviceMaker = std::function<std::shared_ptr<FeatureExtractor<Scalar>>(
    ResNetArch arch, const std::string& weights_dir, std::vector<ResNetStage> stages)>;

/// A stage read at a pyramid scale, as a layer is named in a model's settings: "layer3" (scale 0)
/// or "layer3@scale1" (layer3 of the image at half its size).
struct StageAtScale {
  ResNetStage stage = ResNetStage::layer3;
  int scale = 0;
};

/// Parses "<stage>" or "<stage>@scale<s>", s in 0 .. 15 (detail::split_layer_name).
///   throws: hgad::Error naming the text, for an unknown stage or scale.
inline StageAtScale stage_at_scale_from_string(const std::string& name) {
  const detail::LayerName parts = detail::split_layer_name(name);
  check(parts.ok && parts.scale <= 15, "layer '", name,
        "': expected <stage> or <stage>@scale<s> with s in 0 .. 15 (e.g. layer3@scale1)");
  return {resnet_stage_from_string(parts.base), parts.scale};
}

namespace detail {

/// Refuses a FeatureConfig whose `scales` do not fit its `stages` and `n_scales`.
inline void check_feature_scales(const FeatureConfig& config) {
  if (config.scales.empty()) return;
  check(config.n_scales == 1, "FeatureConfig: stages at their own scales need n_scales = 1, got ",
        config.n_scales);
  check(config.scales.size() == config.stages.size(), "FeatureConfig: ", config.scales.size(),
        " scales for ", config.stages.size(), " stages");
}

/// The stages the network itself returns: config.stages, or, with per-stage scales, each stage
/// once, in the order of its first appearance.
inline std::vector<ResNetStage> network_stages(const FeatureConfig& config) {
  check_feature_scales(config);
  if (config.scales.empty()) return config.stages;
  std::vector<ResNetStage> out;
  for (ResNetStage s : config.stages)
    if (std::find(out.begin(), out.end(), s) == out.end()) out.push_back(s);
  return out;
}

/// config.stages at config.scales as levels of a pyramid over the network's stages
/// (network_stages).
inline std::vector<PyramidLevel> pyramid_levels_of(const FeatureConfig& config) {
  const std::vector<ResNetStage> net = network_stages(config);
  std::vector<PyramidLevel> out;
  for (std::size_t i = 0; i < config.stages.size(); ++i) {
    const auto at = std::find(net.begin(), net.end(), config.stages[i]);
    out.push_back({config.scales[i], static_cast<std::size_t>(at - net.begin())});
  }
  return out;
}

template <class Scalar>
BackboneDeviceMaker<Scalar>& cuda_backbone_maker() {
  static BackboneDeviceMaker<Scalar> maker;
  return maker;
}

/// The extractor `config` describes around the network's extractor `base` (which returns
/// network_stages(config)): the pyramid, then the neighbourhood mean.
template <class Scalar>
std::shared_ptr<FeatureExtractor<Scalar>> around_network(
    const FeatureConfig& config, std::shared_ptr<FeatureExtractor<Scalar>> base) {
  check_feature_scales(config);
  if (!config.scales.empty())
    base = std::make_shared<PyramidFeatureExtractor<Scalar>>(std::move(base),
                                                             pyramid_levels_of(config));
  else if (config.n_scales != 1)
    base = std::make_shared<PyramidFeatureExtractor<Scalar>>(std::move(base), config.n_scales);
  if (config.neighbourhood != 1)
    base =
        std::make_shared<NeighbourhoodMeanExtractor<Scalar>>(std::move(base), config.neighbourhood);
  return base;
}

}  // namespace detail

/// Registers how backbones are made for `device` (only Device::cuda takes a maker) and returns
/// the maker it replaces. Called by hgad::cuda::register_model_devices().
template <class Scalar>
BackboneDeviceMaker<Scalar> register_backbone_device(Device device, BackboneDeviceMaker<Scalar> maker) {
  check(device == Device::cuda,
        "register_backbone_device: the CPU backbone is built in; only Device::cuda takes a maker");
  return std::exchange(detail::cuda_backbone_maker<Scalar>(), std::move(maker));
}

/// The extractor a FeatureConfig describes, with the weights loaded from `weights_dir`.
template <class Scalar>
std::shared_ptr<FeatureExtractor<Scalar>> make_feature_extractor(const FeatureConfig& config,
                                                                 const std::string& weights_dir) {
  return detail::around_network<Scalar>(
      config, std::make_shared<ResNetFeatureExtractor<Scalar>>(config.arch, weights_dir,
                                                               detail::network_stages(config)));
}

/// The extractor a FeatureConfig describes, on an already loaded network of architecture
/// config.arch (e.g. one built from in-memory weights).
template <class Scalar>
std::shared_ptr<FeatureExtractor<Scalar>> make_feature_extractor(
    const FeatureConfig& config, std::shared_ptr<const ResNet<Scalar>> net) {
  check(net != nullptr && net->arch() == config.arch,
        "make_feature_extractor: the network is not a ", to_string(config.arch));
  return detail::around_network<Scalar>(
      config, std::make_shared<ResNetFeatureExtractor<Scalar>>(std::move(net),
                                                               detail::network_stages(config)));
}

/// The extractor a FeatureConfig describes, with the weights loaded from `weights_dir`, its
/// network run on `device` (the pyramid's resizing and the neighbourhood mean stay on the CPU).
///   throws: hgad::Error for Device::cuda in a program without hgad's CUDA part registered.
template <class Scalar>
std::shared_ptr<FeatureExtractor<Scalar>> make_feature_extractor(const FeatureConfig& config,
                                                                 const std::string& weights_dir, Device device) {
  if (device == Device::cpu) return make_feature_extractor<Scalar>(config, weights_dir);
  const BackboneDeviceMaker<Scalar>& maker = detail::cuda_backbone_maker<Scalar>();
  check(static_cast<bool>(maker),
        "the CUDA device was asked for the backbone, but this program was built without hgad's CUDA part "
        "(configure with -DHGAD_ENABLE_CUDA=ON where nvcc is installed)");
  return detail::around_network<Scalar>(
      config, maker(config.arch, weights_dir, detail::network_stages(config)));
}

}  // namespace hgad
