#pragma once
/// \file
/// 2-D convolution (bias, residual add and ReLU fused) and max-pooling for the CNN backbones.
///
/// A convolution is one matrix product per block of output positions (im2col):
///
///     out[o, p] = sum_{c, ky, kx} W[o, c, ky, kx] * x[c, y(p) s - pad + ky, x(p) s - pad + kx] +
///     b[o]
///               = (W_(O x C kh kw) * col_(C kh kw x P))[o, p] + b[o]
///
/// where col holds, for each output position p, the input patch it sees (zero outside the image).
/// The GEMM is Eigen's; the positions are cut into blocks whose im2col buffer stays in the cache,
/// and the blocks are spread over the OpenMP threads. Tensors are NCHW; the networks keep their
/// activations channel-major (C, N, H, W) instead, so that the packed kernel's blocks run over the
/// whole batch. The Eigen path cuts each image on its own into blocks that the sizes alone set, so
/// that an image's result depends neither on the other images of its batch nor on the thread count.
///
///     auto y = hgad::conv2d(x, w, b, {/*stride=*/2, /*padding=*/3, /*relu=*/true});   // (N, O,
///     H', W') auto z = hgad::max_pool2d(y, 3, 2, 1);

#include <Eigen/Core>
#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "../detail/check.hpp"
#include "../detail/parallel.hpp"
#include "../tensor.hpp"
#include "conv_kernel.hpp"

namespace hgad {

/// How conv2d computes.
enum class ConvAlgorithm {
  automatic,  ///< `packed` for float in AVX-512 builds (packed_conv_preferred()), `im2col`
              ///< otherwise
  im2col,     ///< explicit im2col buffer + Eigen GEMM (any Scalar, any CPU)
  packed,     ///< float only: the AVX-512 / AVX2 kernel of conv_kernel.hpp (implicit im2col)
};

/// True when this build has the packed float kernel (compiled with AVX-512F, or AVX2 and FMA).
inline constexpr bool packed_conv_available() { return detail::packed_conv_available(); }

/// True when ConvAlgorithm::automatic picks the packed kernel for float (AVX-512 builds).
inline constexpr bool packed_conv_preferred() { return detail::packed_conv_preferred(); }

/// Hyper-parameters of a 2-D convolution (zero padding on all four sides, no dilation, no groups).
struct Conv2dOptions {
  Index stride = 1;
  Index padding = 0;
  /// Apply max(0, .) after the bias and the residual.
  bool relu = false;
  ConvAlgorithm algorithm = ConvAlgorithm::automatic;
};

/// Output size of a convolution or pooling window along one axis: floor((n + 2 pad - k) / s) + 1.
inline Index conv_output_size(Index size, Index kernel, Index stride, Index padding) {
  check(stride >= 1 && padding >= 0 && kernel >= 1, "conv_output_size: kernel ", kernel,
        ", stride ", stride, ", padding ", padding, " are invalid");
  check(size + 2 * padding >= kernel, "conv_output_size: input size ", size, " with padding ",
        padding, " is smaller than the kernel ", kernel);
  return (size + 2 * padding - kernel) / stride + 1;
}

namespace detail {

/// A batch of feature maps addressed by strides: element (c, b, y, x) lives at
/// data[c * channel_stride + b * batch_stride + y * width + x].
/// NCHW: channel_stride = H W, batch_stride = C H W. Channel-major (C, N, H, W): channel_stride =
/// N H W, batch_stride = H W, so the positions (b, y, x) of one channel form a single run.
template <class Scalar>
struct PlaneView {
  Scalar* data = nullptr;
  Index channels = 0, batch = 0, height = 0, width = 0;
  Index channel_stride = 0, batch_stride = 0;

  /// True when the positions of all images of one channel are consecutive in memory.
  bool batch_contiguous() const { return batch == 1 || batch_stride == height * width; }
  Scalar* plane(Index c, Index b) const { return data + c * channel_stride + b * batch_stride; }
};

template <class Scalar>
PlaneView<Scalar> nchw_view(Scalar* data, Index n, Index c, Index h, Index w) {
  return {data, c, n, h, w, h * w, c * h * w};
}
template <class Scalar>
PlaneView<Scalar> cnhw_view(Scalar* data, Index c, Index n, Index h, Index w) {
  return {data, c, n, h, w, n * h * w, h * w};
}
template <class Scalar>
PlaneView<const Scalar> as_const(const PlaneView<Scalar>& v) {
  return {v.data, v.channels, v.batch, v.height, v.width, v.channel_stride, v.batch_stride};
}

/// Bytes of im2col buffer per block of output positions: the block (C kh kw x n_cols) is packed
/// once more by the GEMM, so it should stay in the per-core L2 cache (1-2 MiB on current x86).
inline constexpr std::size_t conv_block_bytes = std::size_t(768) << 10;

/// A run of output positions inside one output row: image b, row y, columns [x0, x0 + n).
struct OutputRun {
  Index b, y, x0, n, col;
};

/// The runs covering the output positions [p0, p0 + n_cols) (p = b H' W' + y W' + x).
inline void output_runs(Index p0, Index n_cols, Index out_h, Index out_w,
                        std::vector<OutputRun>& runs) {
  runs.clear();
  const Index out_hw = out_h * out_w;
  Index p = p0, q = 0;
  while (q < n_cols) {
    const Index b = p / out_hw, rem = p % out_hw;
    const Index y = rem / out_w, x0 = rem % out_w;
    const Index n = std::min(out_w - x0, n_cols - q);
    runs.push_back({b, y, x0, n, q});
    p += n;
    q += n;
  }
}

/// col[(c kh + ky) kw + kx, q] = x[c, b, y s - pad + ky, x s - pad + kx] for the position of
/// column q, 0 outside the image. col is (C kh kw) x n_cols, row-major.
template <class Scalar>
void im2col(const PlaneView<const Scalar>& in, Index kh, Index kw, Index stride, Index pad,
            const std::vector<OutputRun>& runs, Index n_cols, Scalar* col) {
  const Index H = in.height, W = in.width;
  for (Index c = 0; c < in.channels; ++c) {
    for (Index ky = 0; ky < kh; ++ky) {
      for (Index kx = 0; kx < kw; ++kx) {
        Scalar* row = col + ((c * kh + ky) * kw + kx) * n_cols;
        for (const OutputRun& r : runs) {
          Scalar* dst = row + r.col;
          const Index iy = r.y * stride - pad + ky;
          if (iy < 0 || iy >= H) {
            std::fill(dst, dst + r.n, Scalar(0));
            continue;
          }
          const Scalar* src = in.plane(c, r.b) + iy * W;
          // ix(j) = (x0 + j) s - pad + kx lies in [0, W) for j in [j_lo, j_hi).
          const Index first = r.x0 * stride - pad + kx;
          Index j_lo = first >= 0 ? 0 : (-first + stride - 1) / stride;
          Index j_hi = first >= W ? 0 : (W - 1 - first) / stride + 1;
          j_lo = std::min(j_lo, r.n);
          j_hi = std::max(j_lo, std::min(j_hi, r.n));
          std::fill(dst, dst + j_lo, Scalar(0));
          if (stride == 1) {
            std::memcpy(dst + j_lo, src + first + j_lo, sizeof(Scalar) * std::size_t(j_hi - j_lo));
          } else {
            const Scalar* s = src + first;
            for (Index j = j_lo; j < j_hi; ++j) dst[j] = s[j * stride];
          }
          std::fill(dst + j_hi, dst + r.n, Scalar(0));
        }
      }
    }
  }
}

/// The im2col buffer of the calling thread, grown on demand and kept for later calls.
template <class Scalar>
Scalar* conv_scratch(std::size_t n) {
  static thread_local std::vector<Scalar> scratch;
  if (scratch.size() < n) scratch.resize(n);
  return scratch.data();
}

/// The blocks of output positions of a convolution: `n_spans` spans of `span` positions (one
/// per image, or one for the whole batch when every view keeps a channel's images in one run),
/// each cut into `per_span` blocks. With `balance_threads` the total is a multiple of the thread
/// count where possible, so that the static schedule is balanced; without it the blocks depend on
/// the sizes alone. `unit` is the granularity of a block boundary.
struct ConvBlocking {
  Index span, n_spans, per_span, unit;
  Index n_blocks() const { return n_spans * per_span; }
  /// First flat position (b H' W' + y W' + x) and size of block `task`.
  std::pair<Index, Index> block(Index task) const {
    const Index s = task / per_span, k = task % per_span;
    const Index n_units = (span + unit - 1) / unit;
    const Index begin = std::min(span, k * n_units / per_span * unit);
    const Index end = std::min(span, (k + 1) * n_units / per_span * unit);
    return {s * span + begin, end - begin};
  }
};

inline ConvBlocking conv_blocking(Index span, Index n_spans, Index target_block, Index unit,
                                  bool balance_threads) {
  const Index n_units = (span + unit - 1) / unit;
  const Index units_per_block = std::max<Index>(1, target_block / unit);
  Index per_span = (n_units + units_per_block - 1) / units_per_block;
  const Index threads = balance_threads ? max_threads() : 1;
  if (threads > 1) {
    const Index wanted = (n_spans * per_span + threads - 1) / threads * threads;
    per_span = (wanted + n_spans - 1) / n_spans;
  }
  per_span = std::max<Index>(1, std::min(per_span, n_units));
  return {span, n_spans, per_span, unit};
}

/// out = act(conv(in, weight) + bias + residual) on strided views.
/// weight: (O, C, kh, kw) contiguous; bias: O values or null; residual: a view shaped like out, or
/// null; packed_weights: pack_conv_weights(weight) to use the packed float kernel, or null for
/// im2col + Eigen. out must not alias in. Runs on all OpenMP threads, one block of positions per
/// task (Eigen's own threading is off: detail::on_one_thread).
template <class Scalar>
void conv2d_views(const PlaneView<const Scalar>& in, const Scalar* weight, const Scalar* bias,
                  Index kh, Index kw, Index stride, Index pad, bool relu,
                  const PlaneView<const Scalar>* residual, const PlaneView<Scalar>& out,
                  const float* packed_weights = nullptr) {
#ifdef HGAD_PACKED_CONV
  if constexpr (std::is_same_v<Scalar, float>) {
    if (packed_weights != nullptr) {
      const bool contiguous = out.batch_contiguous() && in.batch_contiguous() &&
                              (residual == nullptr || residual->batch_contiguous());
      const Index out_hw = out.height * out.width;
      const ConvBlocking blocks =
          conv_blocking(contiguous ? out.batch * out_hw : out_hw, contiguous ? 1 : out.batch,
                        packed_nc, packed_nr, true);
      const PackedInput packed_in{in.data,  in.channels,       in.height,
                                  in.width, in.channel_stride, in.batch_stride};
      const Index flops = 2 * out.channels * in.channels * kh * kw * out.batch * out_hw;
      parallel_for(blocks.n_blocks(), flops, [&](Index task) {
        const auto [p0, n_cols] = blocks.block(task);
        if (n_cols == 0) return;
        const Index b0 = p0 / out_hw, rem = p0 % out_hw;
        packed_conv_block(packed_in, packed_weights, bias, out.channels, kh, kw, stride, pad,
                          out.height, out.width, p0, n_cols, out.plane(0, b0) + rem,
                          out.channel_stride, residual ? residual->plane(0, b0) + rem : nullptr,
                          residual ? residual->channel_stride : 0, relu);
      });
      return;
    }
  }
#endif
  (void)packed_weights;
  using RowMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Stride = Eigen::OuterStride<>;
  const Index n_out = out.channels, K = in.channels * kh * kw;
  const Index out_h = out.height, out_w = out.width, out_hw = out_h * out_w;
  const bool direct = kh == 1 && kw == 1 && stride == 1 && pad == 0;

  // Eigen's order of summation for an output column depends on where the column falls in its
  // tiles (the packed kernel's order does not), so the blocks are cut from the sizes alone: they
  // never straddle two images, and they are the same on any number of threads. Each block's
  // product runs on its own thread, also when a single block leaves the loop serial (Eigen's own
  // threading would change its blocking sizes). An image's features then depend neither on the
  // images beside it nor on the thread count.
  const Index block =
      std::max<Index>(64, Index(conv_block_bytes / sizeof(Scalar)) / std::max<Index>(K, 1));
  const ConvBlocking blocks = conv_blocking(out_hw, out.batch, block, 16, false);
  const Index n_blocks = blocks.n_blocks();
  const Index flops = 2 * n_out * K * out.batch * out_hw;

  Eigen::Map<const RowMatrix> w(weight, n_out, K);
  parallel_for(n_blocks, flops, [&](Index task) {
    const auto [p0, n_cols] = blocks.block(task);
    if (n_cols == 0) return;
    const Index b0 = p0 / out_hw, rem = p0 % out_hw;
    Scalar* out_ptr = out.plane(0, b0) + rem;
    Eigen::Map<RowMatrix, Eigen::Unaligned, Stride> y(out_ptr, n_out, n_cols,
                                                      Stride(out.channel_stride));
    if (direct) {
      Eigen::Map<const RowMatrix, Eigen::Unaligned, Stride> x(in.plane(0, b0) + rem, K, n_cols,
                                                              Stride(in.channel_stride));
      on_one_thread([&] { y.noalias() = w * x; });
    } else {
      thread_local std::vector<OutputRun> runs;
      output_runs(p0, n_cols, out_h, out_w, runs);
      Scalar* col = conv_scratch<Scalar>(std::size_t(K * n_cols));
      im2col(in, kh, kw, stride, pad, runs, n_cols, col);
      Eigen::Map<const RowMatrix> x(col, K, n_cols);
      on_one_thread([&] { y.noalias() = w * x; });
    }
    const Scalar* res = residual ? residual->plane(0, b0) + rem : nullptr;
    for (Index o = 0; o < n_out; ++o) {
      Scalar* yo = out_ptr + o * out.channel_stride;
      const Scalar bo = bias ? bias[o] : Scalar(0);
      if (res) {
        const Scalar* ro = res + o * residual->channel_stride;
        if (relu) {
          for (Index j = 0; j < n_cols; ++j) yo[j] = std::max(yo[j] + bo + ro[j], Scalar(0));
        } else {
          for (Index j = 0; j < n_cols; ++j) yo[j] += bo + ro[j];
        }
      } else if (relu) {
        for (Index j = 0; j < n_cols; ++j) yo[j] = std::max(yo[j] + bo, Scalar(0));
      } else if (bo != Scalar(0)) {
        for (Index j = 0; j < n_cols; ++j) yo[j] += bo;
      }
    }
  });
}

/// out[c, b, y, x] = max over the k x k window at (y s - pad, x s - pad), positions outside the
/// image excluded (PyTorch pads with -inf). Every window must hold at least one input pixel.
template <class Scalar>
void max_pool_views(const PlaneView<const Scalar>& in, Index kernel, Index stride, Index pad,
                    const PlaneView<Scalar>& out) {
  const Index H = in.height, W = in.width;
  const Index n_planes = in.channels * in.batch;
  parallel_for(n_planes, n_planes * out.height * out.width * kernel * kernel, [&](Index i) {
    const Index c = i / in.batch, b = i % in.batch;
    const Scalar* src = in.plane(c, b);
    Scalar* dst = out.plane(c, b);
    for (Index oy = 0; oy < out.height; ++oy) {
      const Index y0 = std::max<Index>(oy * stride - pad, 0);
      const Index y1 = std::min<Index>(oy * stride - pad + kernel, H);
      for (Index ox = 0; ox < out.width; ++ox) {
        const Index x0 = std::max<Index>(ox * stride - pad, 0);
        const Index x1 = std::min<Index>(ox * stride - pad + kernel, W);
        Scalar m = -std::numeric_limits<Scalar>::infinity();
        for (Index yy = y0; yy < y1; ++yy) {
          const Scalar* r = src + yy * W;
          for (Index xx = x0; xx < x1; ++xx) m = std::max(m, r[xx]);
        }
        dst[oy * out.width + ox] = m;
      }
    }
  });
}

/// Copies an NCHW batch into channel-major (C, N, H, W) order, or back (`to_nchw`).
template <class Scalar>
void transpose_batch_channels(const Scalar* src, Scalar* dst, Index n, Index c, Index hw,
                              bool to_nchw) {
  parallel_for(n * c, n * c * hw, [&](Index i) {
    const Index b = i / c, ch = i % c;
    const Scalar* s = to_nchw ? src + (ch * n + b) * hw : src + i * hw;
    Scalar* d = to_nchw ? dst + i * hw : dst + (ch * n + b) * hw;
    std::copy(s, s + hw, d);
  });
}

}  // namespace detail

/// 2-D convolution of an NCHW batch: y = act(conv(x, W) + b + residual).
///
///     y[n, o, i, j] = b[o] + sum_{c, u, v} W[o, c, u, v] x[n, c, i s - p + u, j s - p + v]
///
/// requires: input (N, C, H, W); weight (O, C, kh, kw) (PyTorch's OIHW); bias (O) or empty;
///           residual null or (N, O, H', W'), H' = floor((H + 2 p - kh) / s) + 1.
/// ensures:  the result is (N, O, H', W'); with options.relu every element is >= 0.
template <class Scalar>
Tensor<Scalar> conv2d(const Tensor<Scalar>& input, const Tensor<Scalar>& weight,
                      const Tensor<Scalar>& bias, const Conv2dOptions& options = {},
                      const Tensor<Scalar>* residual = nullptr) {
  check(input.rank() == 4, "conv2d: input must be (N, C, H, W), got ", input.shape());
  check(weight.rank() == 4 && weight.dim(1) == input.dim(1), "conv2d: weight ",
        weight.shape(), " does not match input ", input.shape(),
        " (expected (O, ", input.dim(1), ", kh, kw))");
  check(bias.numel() == 0 || (bias.rank() == 1 && bias.dim(0) == weight.dim(0)), "conv2d: bias ",
        bias.shape(), " does not match ", weight.dim(0), " output channels");
  const Index n = input.dim(0), c = input.dim(1), h = input.dim(2), w = input.dim(3);
  const Index o = weight.dim(0), kh = weight.dim(2), kw = weight.dim(3);
  const Index oh = conv_output_size(h, kh, options.stride, options.padding);
  const Index ow = conv_output_size(w, kw, options.stride, options.padding);
  Tensor<Scalar> out({n, o, oh, ow});
  if (residual) {
    check(residual->shape() == out.shape(), "conv2d: residual ", residual->shape(),
          " does not match the output ", out.shape());
  }
  const auto in_view = detail::nchw_view(input.data(), n, c, h, w);
  const auto out_view = detail::nchw_view(out.data(), n, o, oh, ow);
  detail::PlaneView<const Scalar> res_view;
  if (residual) res_view = detail::nchw_view(residual->data(), n, o, oh, ow);
  const bool want_packed = options.algorithm == ConvAlgorithm::packed ||
                           (options.algorithm == ConvAlgorithm::automatic &&
                            std::is_same_v<Scalar, float> && packed_conv_preferred());
  check(!want_packed || (std::is_same_v<Scalar, float> && packed_conv_available()),
        "conv2d: ConvAlgorithm::packed needs float tensors and a build with AVX-512F or AVX2+FMA");
  detail::AlignedFloats packed;
  if constexpr (std::is_same_v<Scalar, float>) {
    if (want_packed) packed = detail::pack_conv_weights(weight.data(), o, c * kh * kw);
  }
  detail::conv2d_views(in_view, weight.data(), bias.numel() ? bias.data() : nullptr, kh, kw,
                       options.stride, options.padding, options.relu,
                       residual ? &res_view : nullptr, out_view,
                       want_packed ? packed.data() : nullptr);
  return out;
}

/// Max-pooling of an NCHW batch over k x k windows with stride s and padding p; padded positions
/// never win (PyTorch's MaxPool2d, which pads with -inf).
/// requires: input (N, C, H, W), p <= k / 2 (every window overlaps the image).
/// ensures:  the result is (N, C, floor((H + 2 p - k) / s) + 1, floor((W + 2 p - k) / s) + 1).
template <class Scalar>
Tensor<Scalar> max_pool2d(const Tensor<Scalar>& input, Index kernel, Index stride, Index padding) {
  check(input.rank() == 4, "max_pool2d: input must be (N, C, H, W), got ",
        input.shape());
  check(padding >= 0 && 2 * padding <= kernel, "max_pool2d: padding ", padding,
        " must be at most half the kernel ", kernel);
  const Index n = input.dim(0), c = input.dim(1), h = input.dim(2), w = input.dim(3);
  const Index oh = conv_output_size(h, kernel, stride, padding);
  const Index ow = conv_output_size(w, kernel, stride, padding);
  Tensor<Scalar> out({n, c, oh, ow});
  detail::max_pool_views(detail::nchw_view(input.data(), n, c, h, w), kernel, stride, padding,
                         detail::nchw_view(out.data(), n, c, oh, ow));
  return out;
}

}  // namespace hgad
