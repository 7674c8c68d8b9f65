#pragma once
/// \file
/// The per-element bodies of the ResNet backbone's CUDA kernels, as `__host__ __device__`
/// functions (HGAD_HOST_DEVICE, detail/host_device.hpp): the kernels of backbone_kernels.cuh give
/// one thread per output element, HostBackboneExec (backbone_engine.hpp) loops over the same bodies
/// on the CPU, and the test suite checks that loop against the CPU ResNet.
///
/// Activations are channel-major, (C, N, H, W), as in the CPU ResNet (resnet.hpp): a convolution
/// of the whole batch is then the single GEMM
///
///     Y (O, N·OH·OW) = W (O, C·k·k) · X_col (C·k·k, N·OH·OW),
///
/// with X_col the im2col matrix of the batch: row (c, ky, kx), column (n, oy, ox) holds
/// x[c][n][oy·s + ky − p][ox·s + kx − p], or 0 outside the image (zero padding).

#include "../backend.hpp"
#include "../detail/host_device.hpp"

namespace hgad::cuda {

/// The geometry of one convolution or pooling window over a (C, N, H, W) activation.
struct WindowGeometry {
  Index channels = 0, batch = 0, height = 0, width = 0;  ///< the input (C, N, H, W)
  Index kernel = 1, stride = 1, padding = 0;
  Index out_height = 0, out_width = 0;

  /// Columns of the im2col matrix and elements of one output channel: N·OH·OW.
  HGAD_HOST_DEVICE Index out_plane() const { return batch * out_height * out_width; }
  /// Rows of the im2col matrix: C·k·k.
  HGAD_HOST_DEVICE Index col_rows() const { return channels * kernel * kernel; }
};

/// Element i of the im2col matrix of images [n0, n0 + count): row-major, C·k·k rows of
/// count·OH·OW columns; column (n − n0, oy, ox).
template <class Scalar>
HGAD_HOST_DEVICE void im2col_element(Index i, const WindowGeometry& g, Index n0, Index count,
                                     const Scalar* x, Scalar* col) {
  const Index per_image = g.out_height * g.out_width, columns = count * per_image;
  const Index row = i / columns, column = i % columns;
  const Index kx = row % g.kernel, ky = (row / g.kernel) % g.kernel, c = row / (g.kernel * g.kernel);
  const Index ox = column % g.out_width, oy = (column / g.out_width) % g.out_height, n = n0 + column / per_image;
  const Index iy = oy * g.stride + ky - g.padding, ix = ox * g.stride + kx - g.padding;
  const bool inside = iy >= 0 && iy < g.height && ix >= 0 && ix < g.width;
  col[i] = inside ? x[((c * g.batch + n) * g.height + iy) * g.width + ix] : Scalar(0);
}

/// Element i of a convolution's output (O, plane) after its GEMM: y ← y + bias[o], plus the
/// residual element when `residual` is non-null, then the ReLU when `relu`.
template <class Scalar>
HGAD_HOST_DEVICE void conv_epilogue_element(Index i, Index plane, const Scalar* bias,
                                            const Scalar* residual, bool relu, Scalar* y) {
  Scalar v = y[i] + bias[i / plane];
  if (residual) v += residual[i];
  y[i] = relu && v < Scalar(0) ? Scalar(0) : v;
}

/// Element i of a max-pool output (C, N, OH, OW): the maximum over the window, padding excluded
/// (PyTorch's MaxPool2d pads with −∞).
template <class Scalar>
HGAD_HOST_DEVICE void max_pool_element(Index i, const WindowGeometry& g, const Scalar* x,
                                       Scalar* y) {
  const Index ox = i % g.out_width, oy = (i / g.out_width) % g.out_height;
  const Index cn = i / (g.out_width * g.out_height);  // c·N + n: the (c, n) plane of x
  const Scalar* plane = x + cn * g.height * g.width;
  Scalar best = -hgad::detail::hd_infinity<Scalar>();
  for (Index ky = 0; ky < g.kernel; ++ky) {
    const Index iy = oy * g.stride + ky - g.padding;
    if (iy < 0 || iy >= g.height) continue;
    for (Index kx = 0; kx < g.kernel; ++kx) {
      const Index ix = ox * g.stride + kx - g.padding;
      if (ix < 0 || ix >= g.width) continue;
      const Scalar v = plane[iy * g.width + ix];
      if (v > best || hgad::detail::hd_isnan(v)) best = v;
    }
  }
  y[i] = best;
}

/// Element i of the (C, N, HW) copy of an (N, C, HW) tensor (images in, channel-major inside).
template <class Scalar>
HGAD_HOST_DEVICE void batch_to_channel_major_element(Index i, Index N, Index C, Index HW,
                                                     const Scalar* x, Scalar* y) {
  const Index p = i % HW, n = (i / HW) % N, c = i / (HW * N);
  y[i] = x[(n * C + c) * HW + p];
}

/// Element i of the (N, C, HW) copy of a (C, N, HW) tensor (features out, in PyTorch's layout).
template <class Scalar>
HGAD_HOST_DEVICE void channel_to_batch_major_element(Index i, Index N, Index C, Index HW,
                                                     const Scalar* x, Scalar* y) {
  const Index p = i % HW, c = (i / HW) % C, n = i / (HW * C);
  y[i] = x[(c * N + n) * HW + p];
}

}  // namespace hgad::cuda
