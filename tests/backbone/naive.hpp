#pragma once
// Independent reference loops for the backbone tests: the textbook convolution and max-pool.

#include <catch2/catch.hpp>

#include <hgad/tensor.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

namespace hgad_test {

/// The 7-loop convolution, NCHW / OIHW, zero padding, accumulated in double, plus bias (may be
/// empty), residual (may be null) and ReLU.
template <class T>
hgad::Tensor<T> naive_conv2d(
    const hgad::Tensor<T>& x, const hgad::Tensor<T>& w, const hgad::Tensor<T>& b,
    hgad::Index stride, hgad::Index pad, bool relu,
    const typename std::common_type<hgad::Tensor<T>>::type* residual = nullptr) {
  using hgad::Index;
  const Index N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  const Index O = w.dim(0), KH = w.dim(2), KW = w.dim(3);
  const Index OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
  hgad::Tensor<T> y({N, O, OH, OW});
  const T* xd = x.data();
  const T* wd = w.data();
  for (Index n = 0; n < N; ++n)
    for (Index o = 0; o < O; ++o)
      for (Index i = 0; i < OH; ++i)
        for (Index j = 0; j < OW; ++j) {
          double acc = b.numel() ? double(b.data()[o]) : 0.0;
          for (Index c = 0; c < C; ++c)
            for (Index u = 0; u < KH; ++u)
              for (Index v = 0; v < KW; ++v) {
                const Index yy = i * stride - pad + u, xx = j * stride - pad + v;
                if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
                acc += double(wd[((o * C + c) * KH + u) * KW + v]) *
                       double(xd[((n * C + c) * H + yy) * W + xx]);
              }
          if (residual) acc += double(residual->data()[((n * O + o) * OH + i) * OW + j]);
          if (relu) acc = std::max(acc, 0.0);
          y.data()[((n * O + o) * OH + i) * OW + j] = T(acc);
        }
  return y;
}

/// Max over each k x k window, positions outside the image skipped (-inf padding).
template <class T>
hgad::Tensor<T> naive_max_pool2d(const hgad::Tensor<T>& x, hgad::Index k, hgad::Index s,
                                 hgad::Index p) {
  using hgad::Index;
  const Index N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  const Index OH = (H + 2 * p - k) / s + 1, OW = (W + 2 * p - k) / s + 1;
  hgad::Tensor<T> y({N, C, OH, OW});
  for (Index n = 0; n < N; ++n)
    for (Index c = 0; c < C; ++c)
      for (Index i = 0; i < OH; ++i)
        for (Index j = 0; j < OW; ++j) {
          T m = -std::numeric_limits<T>::infinity();
          for (Index u = 0; u < k; ++u)
            for (Index v = 0; v < k; ++v) {
              const Index yy = i * s - p + u, xx = j * s - p + v;
              if (yy >= 0 && yy < H && xx >= 0 && xx < W) m = std::max(m, x(n, c, yy, xx));
            }
          y(n, c, i, j) = m;
        }
  return y;
}

/// Largest |a - b| over all elements; fails the test on a shape mismatch or a non-finite element.
template <class T>
double max_abs_diff(const hgad::Tensor<T>& a, const hgad::Tensor<T>& b) {
  REQUIRE(a.shape() == b.shape());
  double m = 0;
  hgad::Index non_finite = 0;
  for (hgad::Index i = 0; i < a.numel(); ++i) {
    const double x = double(a.data()[i]), y = double(b.data()[i]);
    non_finite += !std::isfinite(x) || !std::isfinite(y);
    m = std::max(m, std::abs(x - y));
  }
  REQUIRE(non_finite == 0);
  return m;
}

}  // namespace hgad_test
