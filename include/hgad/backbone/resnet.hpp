#pragma once
/// \file
/// ResNet-18/34/50/101/152 and WideResNet-50-2/101-2 forward passes (torchvision's architecture,
/// inference only) from per-tensor `.npy` weights with batch-norm folded into the convolutions.
///
///     hgad::ResNet<float> net(hgad::ResNetArch::resnet18, "weights/resnet18-imagenet");
///     auto feats = net.forward(images, {hgad::ResNetStage::layer2, hgad::ResNetStage::layer3});
///     // images (B, 3, 256, 256) -> feats[0] (B, 128, 32, 32), feats[1] (B, 256, 16, 16)
///
/// Weights: one file per tensor named after torchvision's `state_dict` key, `<module>.weight.npy`
/// (O, I, kh, kw) and `<module>.bias.npy` (O), where every BatchNorm has been folded into the
/// convolution before it (tools/export_torchvision_resnet.py):
///
///     W' = W gamma / sqrt(var + eps),   b' = beta - mean gamma / sqrt(var + eps).
///
/// Architecture (He et al. 2016, "Deep Residual Learning"; torchvision.models.resnet):
///
///     stem   = maxpool3x3/2 pad 1 ( relu( conv1 7x7/2 pad 3 (x) ) )        64 ch, stride 4
///     basic(x)      = relu( conv2 3x3 ( relu( conv1 3x3/s (x) ) ) + shortcut(x) )
///     bottleneck(x) = relu( conv3 1x1 ( relu( conv2 3x3/s ( relu( conv1 1x1 (x) ) ) ) ) +
///     shortcut(x) ) shortcut(x)   = downsample.0 1x1/s (x) for the first block of a layer whose
///     stride or
///                     channel count changes, x otherwise
///     layer_l = blocks of planes 64 2^(l-1); the first block of layers 2-4 has stride 2.
///
/// The activations are kept channel-major (C, N, H, W) inside the forward pass, so every
/// convolution of the whole batch is a single blocked GEMM (conv.hpp).

#include <array>
#include <cmath>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../detail/check.hpp"
#include "../io/npy.hpp"
#include "../rng.hpp"
#include "../tensor.hpp"
#include "conv.hpp"

namespace hgad {

/// The torchvision ResNet variants.
enum class ResNetArch {
  resnet18,
  resnet34,
  resnet50,
  resnet101,
  resnet152,
  wide_resnet50_2,
  wide_resnet101_2,
};

/// Outputs a ResNet forward pass can return.
enum class ResNetStage {
  stem = 0,    ///< after conv1, ReLU and the max-pool (stride 4)
  layer1 = 1,  ///< stride 4
  layer2 = 2,  ///< stride 8
  layer3 = 3,  ///< stride 16
  layer4 = 4,  ///< stride 32
};

/// torchvision's names: "resnet18", ..., "wide_resnet50_2".
inline std::string to_string(ResNetArch arch) {
  switch (arch) {
    case ResNetArch::resnet18:
      return "resnet18";
    case ResNetArch::resnet34:
      return "resnet34";
    case ResNetArch::resnet50:
      return "resnet50";
    case ResNetArch::resnet101:
      return "resnet101";
    case ResNetArch::resnet152:
      return "resnet152";
    case ResNetArch::wide_resnet50_2:
      return "wide_resnet50_2";
    case ResNetArch::wide_resnet101_2:
      return "wide_resnet101_2";
  }
  return "unknown";
}

/// "stem", "layer1", ..., "layer4".
inline std::string to_string(ResNetStage stage) {
  return stage == ResNetStage::stem ? "stem" : "layer" + std::to_string(static_cast<int>(stage));
}

/// Parses a torchvision architecture name; throws hgad::Error listing the known names otherwise.
inline ResNetArch resnet_arch_from_string(const std::string& name) {
  for (ResNetArch a :
       {ResNetArch::resnet18, ResNetArch::resnet34, ResNetArch::resnet50, ResNetArch::resnet101,
        ResNetArch::resnet152, ResNetArch::wide_resnet50_2, ResNetArch::wide_resnet101_2}) {
    if (to_string(a) == name) return a;
  }
  throw Error("ResNet: unknown architecture '" + name +
              "' (known: resnet18, resnet34, resnet50, resnet101, resnet152, wide_resnet50_2, "
              "wide_resnet101_2)");
}

/// Parses "stem" or "layer1".."layer4"; throws hgad::Error otherwise.
inline ResNetStage resnet_stage_from_string(const std::string& name) {
  for (int s = 0; s <= 4; ++s) {
    if (to_string(static_cast<ResNetStage>(s)) == name) return static_cast<ResNetStage>(s);
  }
  throw Error("ResNet: unknown stage '" + name + "' (known: stem, layer1, layer2, layer3, layer4)");
}

/// The shape of a ResNet variant (torchvision.models.resnet: `_resnet(block, layers, ...)`).
struct ResNetSpec {
  bool bottleneck = false;        ///< Bottleneck blocks (expansion 4) instead of BasicBlocks
  std::array<int, 4> n_blocks{};  ///< blocks per layer
  Index width_per_group = 64;     ///< 128 for the wide variants: Bottleneck width = planes * 2

  static ResNetSpec of(ResNetArch arch) {
    switch (arch) {
      case ResNetArch::resnet18:
        return {false, {2, 2, 2, 2}, 64};
      case ResNetArch::resnet34:
        return {false, {3, 4, 6, 3}, 64};
      case ResNetArch::resnet50:
        return {true, {3, 4, 6, 3}, 64};
      case ResNetArch::resnet101:
        return {true, {3, 4, 23, 3}, 64};
      case ResNetArch::resnet152:
        return {true, {3, 8, 36, 3}, 64};
      case ResNetArch::wide_resnet50_2:
        return {true, {3, 4, 6, 3}, 128};
      case ResNetArch::wide_resnet101_2:
        return {true, {3, 4, 23, 3}, 128};
    }
    throw Error("ResNetSpec: unknown architecture");
  }
  /// Channel expansion of the block's output over its planes: 4 (Bottleneck) or 1 (BasicBlock).
  Index expansion() const { return bottleneck ? 4 : 1; }
  /// Output channels of a stage: 64 for the stem, 64 2^(l-1) * expansion for layer l.
  Index channels(ResNetStage stage) const {
    const int l = static_cast<int>(stage);
    return l == 0 ? 64 : (Index(64) << (l - 1)) * expansion();
  }
  /// Down-sampling factor of a stage relative to the input: 4, 4, 8, 16, 32.
  static Index stride(ResNetStage stage) {
    const int l = static_cast<int>(stage);
    return l <= 1 ? 4 : Index(4) << (l - 1);
  }
};

/// One convolution of a ResNet: its state_dict name (without ".weight" / ".bias"), channels,
/// square kernel and stride; the padding is kernel / 2.
struct ResNetConvShape {
  std::string name;
  Index out_channels = 0, in_channels = 0, kernel = 1, stride = 1;
};

/// One residual block: conv1 and conv2 (BasicBlock), plus conv3 (Bottleneck), and the 1×1
/// shortcut convolution of the first block of a layer whose stride or channel count changes.
struct ResNetBlockShape {
  ResNetConvShape conv1, conv2, conv3, downsample;
  bool has_downsample = false;
  bool has_conv3() const { return !conv3.name.empty(); }
};

/// The convolutions of `arch` up to stage `last`: the stem and the blocks of each layer.
struct ResNetLayout {
  ResNetConvShape stem;
  std::vector<std::vector<ResNetBlockShape>> layers;  ///< layers[l - 1]: the blocks of layer l
};

inline ResNetLayout resnet_layout(ResNetArch arch, ResNetStage last) {
  const ResNetSpec spec = ResNetSpec::of(arch);
  ResNetLayout layout;
  layout.stem = {"conv1", 64, 3, 7, 2};
  Index in = 64;
  for (int l = 1; l <= static_cast<int>(last); ++l) {
    const Index planes = Index(64) << (l - 1), out_ch = planes * spec.expansion();
    const Index width = planes * spec.width_per_group / 64;
    std::vector<ResNetBlockShape> blocks;
    for (int i = 0; i < spec.n_blocks[static_cast<std::size_t>(l - 1)]; ++i) {
      const std::string p = "layer" + std::to_string(l) + "." + std::to_string(i) + ".";
      const Index stride = (i == 0 && l > 1) ? 2 : 1;
      ResNetBlockShape b;
      if (spec.bottleneck) {
        b.conv1 = {p + "conv1", width, in, 1, 1};
        b.conv2 = {p + "conv2", width, width, 3, stride};
        b.conv3 = {p + "conv3", out_ch, width, 1, 1};
      } else {
        b.conv1 = {p + "conv1", planes, in, 3, stride};
        b.conv2 = {p + "conv2", planes, planes, 3, 1};
      }
      if (i == 0 && (stride != 1 || in != out_ch)) {
        b.downsample = {p + "downsample.0", out_ch, in, 1, stride};
        b.has_downsample = true;
      }
      blocks.push_back(std::move(b));
      in = out_ch;
    }
    layout.layers.push_back(std::move(blocks));
  }
  return layout;
}

/// The blocks of `layout` as `Block`s (members conv1, conv2, conv3, downsample, has_downsample),
/// each convolution made by take(const ResNetConvShape&): one construction for the CPU ResNet and
/// the GPU backbone.
template <class Block, class Take>
std::vector<std::vector<Block>> build_resnet_blocks(const ResNetLayout& layout, Take&& take) {
  std::vector<std::vector<Block>> layers;
  for (const auto& layer : layout.layers) {
    std::vector<Block> blocks;
    for (const ResNetBlockShape& shape : layer) {
      Block b;
      b.conv1 = take(shape.conv1);
      b.conv2 = take(shape.conv2);
      if (shape.has_conv3()) b.conv3 = take(shape.conv3);
      if (shape.has_downsample) b.downsample = take(shape.downsample);
      b.has_downsample = shape.has_downsample;
      blocks.push_back(std::move(b));
    }
    layers.push_back(std::move(blocks));
  }
  return layers;
}

/// The names and shapes of every weight tensor of `arch` up to stage `last`, in forward order
/// (torchvision `state_dict` keys; files are `<key>.npy`).
inline std::vector<std::pair<std::string, Shape>> resnet_weight_shapes(ResNetArch arch,
                                                                       ResNetStage last) {
  std::vector<std::pair<std::string, Shape>> out;
  auto conv = [&](const ResNetConvShape& c) {
    out.emplace_back(c.name + ".weight", Shape{c.out_channels, c.in_channels, c.kernel, c.kernel});
    out.emplace_back(c.name + ".bias", Shape{c.out_channels});
  };
  const ResNetLayout layout = resnet_layout(arch, last);
  conv(layout.stem);
  for (const auto& layer : layout.layers) {
    for (const ResNetBlockShape& b : layer) {
      conv(b.conv1);
      conv(b.conv2);
      if (b.has_conv3()) conv(b.conv3);
      if (b.has_downsample) conv(b.downsample);
    }
  }
  return out;
}

/// Tensor `key` of `tensors`, which must be a CPU tensor of shape `expected`; errors name the key,
/// the file it came from (when `dir` is not empty) and both shapes.
template <class Scalar>
const Tensor<Scalar>& resnet_weight(const std::map<std::string, Tensor<Scalar>>& tensors, const std::string& key,
                                    const Shape& expected, const std::string& dir = "") {
  const std::string where = dir.empty() ? "" : " (file '" + dir + "/" + key + ".npy')";
  const auto it = tensors.find(key);
  check(it != tensors.end(), "ResNet: missing weight tensor '", key, "'", where, ", expected shape ",
        expected);
  check(it->second.shape() == expected, "ResNet: weight tensor '", key, "'", where, " has shape ",
        it->second.shape(), ", expected ", expected);
  check(it->second.device() == Device::cpu, "ResNet: weight tensor '", key, "' must be a CPU tensor");
  return it->second;
}

/// The weight tensors of `arch` up to `last` from `dir`, one `<key>.npy` per tensor named as in
/// resnet_weight_shapes; a missing file is an error naming the file and the expected shape.
template <class Scalar>
std::map<std::string, Tensor<Scalar>> load_resnet_weights(ResNetArch arch, const std::string& dir,
                                                          ResNetStage last = ResNetStage::layer3) {
  std::map<std::string, Tensor<Scalar>> map;
  for (const auto& [name, shape] : resnet_weight_shapes(arch, last)) {
    const std::string path = dir + "/" + name + ".npy";
    check(std::ifstream(path).good(), "ResNet: missing weight file '", path, "' for tensor '", name,
          "', expected shape ", shape);
    map.emplace(name, load_npy<Scalar>(path));
  }
  return map;
}

/// One residual block of He et al. (2016), as torchvision builds it: a BasicBlock is
/// relu(conv2(relu(conv1(x))) + s), a Bottleneck relu(conv3(relu(conv2(relu(conv1(x))))) + s), where
/// the shortcut s is x, or a 1×1 strided convolution of x (without ReLU) where the block changes
/// the shape. Each convolution carries its folded batch norm; `conv(c, x, relu, residual)` applies
/// one, adds `residual` (when not null) before the optional ReLU. The CPU ResNet and the GPU's
/// backbone engine (cuda/backbone_engine.hpp) both run their blocks through this function.
template <class Block, class Activation, class ConvFn>
Activation resnet_block(const Block& b, const Activation& x, bool bottleneck, ConvFn&& conv) {
  const Activation shortcut = b.has_downsample ? conv(b.downsample, x, false, nullptr) : x;
  Activation t = conv(b.conv1, x, true, nullptr);
  if (bottleneck) {
    t = conv(b.conv2, t, true, nullptr);
    return conv(b.conv3, t, true, &shortcut);
  }
  return conv(b.conv2, t, true, &shortcut);
}

/// A frozen torchvision ResNet up to a chosen stage, evaluated in inference mode.
template <class Scalar>
class ResNet {
 public:
  using TensorMap = std::map<std::string, Tensor<Scalar>>;

  /// Loads the weights of the stem and layer1..`last` from `weights_dir/<key>.npy`.
  /// Throws hgad::Error naming the file when one is missing or unreadable, and naming the tensor,
  /// the expected and the found shape when one has the wrong shape.
  ResNet(ResNetArch arch, const std::string& weights_dir, ResNetStage last = ResNetStage::layer3)
      : ResNet(arch, load_resnet_weights<Scalar>(arch, weights_dir, last), last, weights_dir) {}

  /// Takes the weights from `tensors`, keyed by state_dict name ("conv1.weight", ...); entries
  /// beyond stage `last` are ignored.
  ResNet(ResNetArch arch, const TensorMap& tensors, ResNetStage last = ResNetStage::layer3)
      : ResNet(arch, tensors, last, std::string()) {}

  /// Random weights of the right shapes (He-normal weights, N(0, 0.1^2) biases): for benchmarks
  /// and tests where only the shapes matter.
  static TensorMap random_weights(ResNetArch arch, ResNetStage last, Rng& rng) {
    TensorMap map;
    for (const auto& [name, shape] : resnet_weight_shapes(arch, last)) {
      if (shape.rank() == 4) {
        const double fan_in = double(shape[1] * shape[2] * shape[3]);
        map.emplace(name, Tensor<Scalar>::randn(shape, rng, 0, Scalar(std::sqrt(2.0 / fan_in))));
      } else {
        map.emplace(name, Tensor<Scalar>::randn(shape, rng, 0, Scalar(0.1)));
      }
    }
    return map;
  }

  ResNetArch arch() const { return m_arch; }
  const ResNetSpec& spec() const { return m_spec; }
  /// The deepest stage whose weights are loaded.
  ResNetStage last_stage() const { return m_last; }
  Index channels(ResNetStage stage) const { return m_spec.channels(stage); }
  static Index stride(ResNetStage stage) { return ResNetSpec::stride(stage); }

  /// Spatial size of a stage's output for an input of `size` pixels along one axis.
  static Index output_size(Index size, ResNetStage stage) {
    Index s = conv_output_size(size, 7, 2, 3);
    s = conv_output_size(s, 3, 2, 1);
    for (int l = 2; l <= static_cast<int>(stage); ++l) s = conv_output_size(s, 3, 2, 1);
    return s;
  }

  /// Multiply-adds x 2 of all convolutions up to `last` for one image of height x width (bias,
  /// ReLU, residual adds and the max-pool are not counted).
  Index flops(Index height, Index width, ResNetStage last) const {
    check(static_cast<int>(last) <= static_cast<int>(m_last), "ResNet::flops: stage ",
          to_string(last), " is beyond the loaded stage ", to_string(m_last));
    Index total = 0, h = height, w = width;
    auto count = [&](const Conv& c, Index ih, Index iw) {
      const Index oh = conv_output_size(ih, c.kernel, c.stride, c.padding);
      const Index ow = conv_output_size(iw, c.kernel, c.stride, c.padding);
      total += 2 * c.out_channels * c.in_channels * c.kernel * c.kernel * oh * ow;
    };
    count(m_stem, h, w);
    h = output_size(height, ResNetStage::stem);
    w = output_size(width, ResNetStage::stem);
    for (int l = 1; l <= static_cast<int>(last); ++l) {
      for (const Block& b : m_layers[static_cast<std::size_t>(l - 1)]) {
        const Conv& strided = m_spec.bottleneck ? b.conv2 : b.conv1;
        const Index oh = conv_output_size(h, strided.kernel, strided.stride, strided.padding);
        const Index ow = conv_output_size(w, strided.kernel, strided.stride, strided.padding);
        count(b.conv1, h, w);
        if (m_spec.bottleneck) {
          count(b.conv2, h, w);
          count(b.conv3, oh, ow);
        } else {
          count(b.conv2, oh, ow);
        }
        if (b.has_downsample) count(b.downsample, h, w);
        h = oh;
        w = ow;
      }
    }
    return total;
  }

  /// Runs the network on a batch of normalised images and returns the requested stages.
  ///
  /// requires: images (B, 3, H, W), ImageNet-normalised; every stage at most last_stage().
  /// ensures:  out[i] is (B, channels(stages[i]), output_size(H, .), output_size(W, .)), NCHW.
  std::vector<Tensor<Scalar>> forward(const Tensor<Scalar>& images,
                                      const std::vector<ResNetStage>& stages) const {
    check(images.rank() == 4 && images.dim(1) == 3,
          "ResNet::forward: images must be (B, 3, H, W), got ", images.shape());
    check(images.device() == Device::cpu, "ResNet::forward: images must be a CPU tensor");
    check(!stages.empty(), "ResNet::forward: no stage requested");
    int deepest = 0;
    for (ResNetStage s : stages) {
      check(static_cast<int>(s) <= static_cast<int>(m_last), "ResNet::forward: stage ",
            to_string(s), " requested but the weights were loaded only up to ", to_string(m_last));
      deepest = std::max(deepest, static_cast<int>(s));
    }
    const Index n = images.dim(0), h = images.dim(2), w = images.dim(3);
    check(h >= 1 && w >= 1 && n >= 1, "ResNet::forward: empty batch ", images.shape());
    std::vector<Tensor<Scalar>> out(stages.size());
    auto emit = [&](ResNetStage stage, const Activation& a) {
      for (std::size_t i = 0; i < stages.size(); ++i) {
        if (stages[i] != stage) continue;
        Tensor<Scalar> t({n, a.channels, a.height, a.width});
        detail::transpose_batch_channels(a.data(), t.data(), n, a.channels, a.height * a.width,
                                         true);
        out[i] = t;
      }
    };

    Activation x(3, n, h, w);
    detail::transpose_batch_channels(images.data(), x.data(), n, Index(3), h * w, false);
    Activation stem_conv = apply(m_stem, x, true, nullptr);
    x = Activation();
    Activation cur(64, n, conv_output_size(stem_conv.height, 3, 2, 1),
                   conv_output_size(stem_conv.width, 3, 2, 1));
    // 3x3/2 pad 1 max-pool of torchvision's stem.
    detail::max_pool_views(as_view(stem_conv), 3, 2, 1, cur.view());
    stem_conv = Activation();
    emit(ResNetStage::stem, cur);
    for (int l = 1; l <= deepest; ++l) {
      for (const Block& b : m_layers[static_cast<std::size_t>(l - 1)]) cur = apply(b, cur);
      emit(static_cast<ResNetStage>(l), cur);
    }
    return out;
  }

 private:
  struct Conv {
    std::string name;
    Tensor<Scalar> weight, bias;
    Index out_channels = 0, in_channels = 0, kernel = 0, stride = 1, padding = 0;
    detail::AlignedFloats
        packed;  ///< weight in the packed kernel's panels (float builds with SIMD)
  };
  struct Block {
    Conv conv1, conv2, conv3, downsample;
    bool has_downsample = false;
  };

  /// An uninitialised channel-major (C, N, H, W) buffer.
  struct Activation {
    Activation() = default;
    Activation(Index c, Index n_, Index h, Index w)
        : storage(new Scalar[static_cast<std::size_t>(c * n_ * h * w)]),
          channels(c),
          batch(n_),
          height(h),
          width(w) {}
    Scalar* data() const { return storage.get(); }
    detail::PlaneView<Scalar> view() const {
      return detail::cnhw_view(data(), channels, batch, height, width);
    }
    std::shared_ptr<Scalar[]> storage;
    Index channels = 0, batch = 0, height = 0, width = 0;
  };
  static detail::PlaneView<const Scalar> as_view(const Activation& a) {
    return detail::as_const(a.view());
  }

  ResNet(ResNetArch arch, const TensorMap& tensors, ResNetStage last, const std::string& dir)
      : m_arch(arch), m_spec(ResNetSpec::of(arch)), m_last(last) {
    auto take = [&](const ResNetConvShape& shape) {
      Conv c;
      c.name = shape.name;
      const Index o = shape.out_channels, i = shape.in_channels, k = shape.kernel;
      c.weight = resnet_weight(tensors, shape.name + ".weight", Shape{o, i, k, k}, dir);
      c.bias = resnet_weight(tensors, shape.name + ".bias", Shape{o}, dir);
      c.out_channels = o;
      c.in_channels = i;
      c.kernel = k;
      c.stride = shape.stride;
      c.padding = k / 2;
      if constexpr (std::is_same_v<Scalar, float>) {
        if (packed_conv_preferred())
          c.packed = detail::pack_conv_weights(c.weight.data(), o, i * k * k);
      }
      return c;
    };
    const ResNetLayout layout = resnet_layout(arch, last);
    m_stem = take(layout.stem);
    m_layers = build_resnet_blocks<Block>(layout, take);
  }

  /// act(conv(x) + bias + residual) into a new activation.
  Activation apply(const Conv& c, const Activation& x, bool relu,
                   const Activation* residual) const {
    Activation y(c.out_channels, x.batch, conv_output_size(x.height, c.kernel, c.stride, c.padding),
                 conv_output_size(x.width, c.kernel, c.stride, c.padding));
    detail::PlaneView<const Scalar> res;
    if (residual) res = as_view(*residual);
    detail::conv2d_views(as_view(x), c.weight.data(), c.bias.data(), c.kernel, c.kernel, c.stride,
                         c.padding, relu, residual ? &res : nullptr, y.view(),
                         c.packed.size() ? c.packed.data() : nullptr);
    return y;
  }

  Activation apply(const Block& b, const Activation& x) const {
    return resnet_block(b, x, m_spec.bottleneck,
                        [this](const Conv& c, const Activation& in, bool relu,
                               const Activation* residual) { return apply(c, in, relu, residual); });
  }

  ResNetArch m_arch;
  ResNetSpec m_spec;
  ResNetStage m_last;
  Conv m_stem;
  std::vector<std::vector<Block>> m_layers;
};

}  // namespace hgad
