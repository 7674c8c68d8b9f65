#pragma once
/// \file
/// BackboneEngine: the ResNet forward pass (inference, BN folded; resnet.hpp) as the GPU runs it,
/// written once against an executor of the backbone kernels. CudaResNet (cuda_resnet.cuh) is the
/// engine with the CUDA executor; HostResNet (below) is the same engine with HostBackboneExec,
/// which runs the identical element bodies (backbone_bodies.hpp) in loops and the GEMMs on the
/// CPU backend. The test suite checks HostResNet against the CPU ResNet, so the layout, the index
/// arithmetic and the block order of the GPU path are verified without a device; the [cuda] tests
/// then check CudaResNet against the CPU ResNet too.
///
/// Every convolution is explicit im2col plus one GEMM over the whole batch (a 1×1 convolution of
/// stride 1 multiplies the activation directly), then one element-wise pass adding the bias, the
/// residual and the ReLU. The im2col matrix is built for as many images at a time as fit in
/// `max_col_elements` (default 2^28 elements, 1 GiB in float), so memory stays bounded at any batch
/// size; for ResNet-18 at 1024² the largest one-image im2col (the stem) has 3.9·10^7 elements.
///
///     hgad::cuda::CudaResNet<float> net(hgad::ResNetArch::resnet18,
///                                       hgad::load_resnet_weights<float>(hgad::ResNetArch::resnet18, dir),
///                                       hgad::ResNetStage::layer3, hgad::cuda::CudaBackboneExec<float>(gpu));
///     auto feats = net.forward(images, {hgad::ResNetStage::layer3});  // on the GPU, (B, C, h, w)

#include <algorithm>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "../backbone/resnet.hpp"
#include "../cpu_backend.hpp"
#include "../detail/check.hpp"
#include "../tensor.hpp"
#include "backbone_bodies.hpp"

namespace hgad::cuda {

/// A ResNet (torchvision's architecture, resnet.hpp) whose forward pass runs on the device of
/// `Exec`. Exec provides backend() (GEMMs), backend_ptr() (where tensors live) and the kernels
/// im2col, conv_epilogue, max_pool, to_channel_major and to_batch_major (see HostBackboneExec).
template <class Scalar, class Exec>
class BackboneEngine {
 public:
  using TensorMap = std::map<std::string, Tensor<Scalar>>;

  /// Copies the weights (CPU tensors named as in resnet_weight_shapes) to the executor's device.
  ///   requires: every tensor of resnet_weight_shapes(arch, last) present, with its shape.
  BackboneEngine(ResNetArch arch, const TensorMap& weights, ResNetStage last, Exec exec = Exec(),
                 Index max_col_elements = Index(1) << 28)
      : m_exec(std::move(exec)), m_spec(ResNetSpec::of(arch)), m_last(last), m_max_col(max_col_elements) {
    check(max_col_elements >= 1, "BackboneEngine: max_col_elements must be positive, got ", max_col_elements);
    auto take = [&](const ResNetConvShape& shape) {
      Conv c;
      const Index o = shape.out_channels, i = shape.in_channels, k = shape.kernel;
      c.weight = resnet_weight(weights, shape.name + ".weight", Shape{o, i, k, k}).to(m_exec.backend_ptr());
      c.bias = resnet_weight(weights, shape.name + ".bias", Shape{o}).to(m_exec.backend_ptr());
      c.out_channels = o;
      c.in_channels = i;
      c.kernel = k;
      c.stride = shape.stride;
      c.padding = k / 2;
      return c;
    };
    const ResNetLayout layout = resnet_layout(arch, last);
    m_stem = take(layout.stem);
    m_layers = build_resnet_blocks<Block>(layout, take);
  }

  ResNetStage last_stage() const { return m_last; }
  Index channels(ResNetStage stage) const { return m_spec.channels(stage); }
  Exec& exec() { return m_exec; }

  /// The requested stages of images (B, 3, H, W) (on any device; copied to the executor's), each
  /// (B, C, h, w) on the executor's device, in the order of `stages`.
  std::vector<Tensor<Scalar>> forward(const Tensor<Scalar>& images, const std::vector<ResNetStage>& stages) {
    check(images.rank() == 4 && images.dim(1) == 3, "BackboneEngine::forward: images must be (B, 3, H, W), got ",
          images.shape());
    check(!stages.empty(), "BackboneEngine::forward: no stage requested");
    int deepest = 0;
    for (ResNetStage s : stages) {
      check(static_cast<int>(s) <= static_cast<int>(m_last), "BackboneEngine::forward: stage ", to_string(s),
            " requested but the weights were loaded only up to ", to_string(m_last));
      deepest = std::max(deepest, static_cast<int>(s));
    }
    const Index n = images.dim(0), h = images.dim(2), w = images.dim(3);
    check(n >= 1 && h >= 1 && w >= 1, "BackboneEngine::forward: empty batch ", images.shape());
    const BackendPtr<Scalar>& bp = m_exec.backend_ptr();
    const Tensor<Scalar> input = images.to(bp);

    std::vector<Tensor<Scalar>> out(stages.size());
    auto emit = [&](ResNetStage stage, const Activation& a) {
      for (std::size_t i = 0; i < stages.size(); ++i) {
        if (stages[i] != stage) continue;
        Tensor<Scalar> t = Tensor<Scalar>::empty({n, a.channels, a.height, a.width}, bp);
        m_exec.to_batch_major(n, a.channels, a.height * a.width, a.data.data(), t.data());
        out[i] = t;
      }
    };

    Activation x{Tensor<Scalar>::empty({3, n, h, w}, bp), 3, n, h, w};
    m_exec.to_channel_major(n, Index(3), h * w, input.data(), x.data.data());
    Activation stem = convolve(m_stem, x, true, nullptr);
    x = Activation();
    // torchvision's stem max-pool: 3×3, stride 2, padding 1.
    WindowGeometry pool{stem.channels, n, stem.height, stem.width, 3, 2, 1,
                        conv_output_size(stem.height, 3, 2, 1), conv_output_size(stem.width, 3, 2, 1)};
    Activation cur{Tensor<Scalar>::empty({64, n, pool.out_height, pool.out_width}, bp), 64, n, pool.out_height,
                   pool.out_width};
    m_exec.max_pool(cur.data.numel(), pool, stem.data.data(), cur.data.data());
    stem = Activation();
    emit(ResNetStage::stem, cur);
    for (int l = 1; l <= deepest; ++l) {
      for (const Block& b : m_layers[static_cast<std::size_t>(l - 1)]) cur = block(b, cur);
      emit(static_cast<ResNetStage>(l), cur);
    }
    return out;
  }

 private:
  struct Conv {
    Tensor<Scalar> weight, bias;  ///< (O, C, k, k) = (O, C·k·k) row-major, and (O,), on the device
    Index out_channels = 0, in_channels = 0, kernel = 0, stride = 1, padding = 0;
  };
  struct Block {
    Conv conv1, conv2, conv3, downsample;
    bool has_downsample = false;
  };
  /// A (C, N, H, W) activation on the device.
  struct Activation {
    Tensor<Scalar> data;
    Index channels = 0, batch = 0, height = 0, width = 0;
  };

  /// act(conv(x) + bias + residual): im2col (or x itself for 1×1 / stride 1), one GEMM per group
  /// of images whose im2col fits in m_max_col elements, then the epilogue over the whole output.
  Activation convolve(const Conv& c, const Activation& x, bool relu, const Activation* residual) {
    const WindowGeometry g{x.channels, x.batch, x.height, x.width, c.kernel, c.stride, c.padding,
                           conv_output_size(x.height, c.kernel, c.stride, c.padding),
                           conv_output_size(x.width, c.kernel, c.stride, c.padding)};
    const Index plane = g.out_plane(), rows = g.col_rows(), per_image = g.out_height * g.out_width;
    Activation y{Tensor<Scalar>::empty({c.out_channels, x.batch, g.out_height, g.out_width}, m_exec.backend_ptr()),
                 c.out_channels, x.batch, g.out_height, g.out_width};
    Backend<Scalar>& be = m_exec.backend();
    if (c.kernel == 1 && c.stride == 1 && c.padding == 0) {
      be.gemm(Transpose::no, Transpose::no, c.out_channels, plane, rows, Scalar(1), c.weight.data(), rows,
              x.data.data(), plane, Scalar(0), y.data.data(), plane);
    } else {
      const Index group = std::max<Index>(1, std::min(x.batch, m_max_col / std::max<Index>(1, rows * per_image)));
      Tensor<Scalar> col = Tensor<Scalar>::empty({rows, group * per_image}, m_exec.backend_ptr());
      for (Index n0 = 0; n0 < x.batch; n0 += group) {
        const Index count = std::min(group, x.batch - n0), columns = count * per_image;
        m_exec.im2col(rows * columns, g, n0, count, x.data.data(), col.data());
        be.gemm(Transpose::no, Transpose::no, c.out_channels, columns, rows, Scalar(1), c.weight.data(), rows,
                col.data(), columns, Scalar(0), y.data.data() + n0 * per_image, plane);
      }
    }
    m_exec.conv_epilogue(y.data.numel(), plane, c.bias.data(), residual ? residual->data.data() : nullptr, relu,
                         y.data.data());
    return y;
  }

  /// One BasicBlock or Bottleneck (resnet_block, backbone/resnet.hpp).
  Activation block(const Block& b, const Activation& x) {
    return resnet_block(b, x, m_spec.bottleneck,
                        [this](const Conv& c, const Activation& in, bool relu,
                               const Activation* residual) { return convolve(c, in, relu, residual); });
  }

  Exec m_exec;
  ResNetSpec m_spec;
  ResNetStage m_last;
  Index m_max_col;
  Conv m_stem;
  std::vector<std::vector<Block>> m_layers;
};

/// The backbone kernels as loops over their element bodies on the CPU backend: the executor of
/// HostResNet, which the test suite compares with the CPU ResNet.
template <class Scalar>
class HostBackboneExec {
 public:
  Backend<Scalar>& backend() const { return *cpu_backend<Scalar>(); }
  const BackendPtr<Scalar>& backend_ptr() const { return cpu_backend<Scalar>(); }

  /// Columns [n0·OH·OW, (n0 + count)·OH·OW) of the im2col matrix, `total` = rows × those columns.
  void im2col(Index total, const WindowGeometry& g, Index n0, Index count, const Scalar* x, Scalar* col) {
    for (Index i = 0; i < total; ++i) im2col_element(i, g, n0, count, x, col);
  }
  void conv_epilogue(Index total, Index plane, const Scalar* bias, const Scalar* residual, bool relu, Scalar* y) {
    for (Index i = 0; i < total; ++i) conv_epilogue_element(i, plane, bias, residual, relu, y);
  }
  void max_pool(Index total, const WindowGeometry& g, const Scalar* x, Scalar* y) {
    for (Index i = 0; i < total; ++i) max_pool_element(i, g, x, y);
  }
  void to_channel_major(Index N, Index C, Index HW, const Scalar* x, Scalar* y) {
    for (Index i = 0; i < N * C * HW; ++i) batch_to_channel_major_element(i, N, C, HW, x, y);
  }
  void to_batch_major(Index N, Index C, Index HW, const Scalar* x, Scalar* y) {
    for (Index i = 0; i < N * C * HW; ++i) channel_to_batch_major_element(i, N, C, HW, x, y);
  }
};

/// The GPU's backbone algorithm on the CPU (tests).
template <class Scalar>
using HostResNet = BackboneEngine<Scalar, HostBackboneExec<Scalar>>;

}  // namespace hgad::cuda
