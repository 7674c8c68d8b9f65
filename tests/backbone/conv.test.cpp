#include <catch2/catch.hpp>

#include <hgad/backbone/conv.hpp>

#include "backbone/naive.hpp"
#include "detail/thread_count.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace conv_test {

namespace {

using hgad::Index;
using hgad_test::max_abs_diff;
using hgad_test::naive_conv2d;
using hgad_test::ThreadCount;

/// (relu, algorithm) pairs to test: im2col always, the packed kernel for float when built in.
template <class T>
std::vector<std::pair<bool, hgad::ConvAlgorithm>> algorithms() {
  std::vector<std::pair<bool, hgad::ConvAlgorithm>> out;
  for (bool relu : {false, true}) {
    out.emplace_back(relu, hgad::ConvAlgorithm::im2col);
    if (std::is_same<T, float>::value && hgad::packed_conv_available()) {
      out.emplace_back(relu, hgad::ConvAlgorithm::packed);
    }
  }
  return out;
}

template <class T>
double tolerance() {
  return std::is_same<T, float>::value ? 2e-5 : 1e-12;
}

}  // namespace

TEMPLATE_TEST_CASE("conv2d matches a naive 7-loop convolution", "[backbone]", float, double) {
  struct Case {
    Index n, c, h, w, o, k, stride, pad;
  };
  // Odd sizes, 1x1 / 3x3 / 7x7 kernels, stride 1 and 2, padding 0 to 3, one image and several.
  const Case cases[] = {
      {2, 3, 13, 11, 5, 7, 2, 3}, {3, 4, 9, 10, 6, 3, 1, 1}, {2, 5, 11, 9, 7, 3, 2, 1},
      {2, 6, 7, 9, 5, 1, 1, 0},   {3, 6, 9, 7, 4, 1, 2, 0},  {1, 2, 5, 5, 3, 3, 1, 0},
      {1, 3, 4, 6, 2, 5, 3, 2},   {2, 17, 6, 5, 9, 3, 1, 2}, {1, 3, 37, 71, 8, 7, 2, 3},
      {2, 5, 9, 67, 9, 3, 2, 1},  {1, 4, 6, 70, 3, 1, 2, 0}};
  hgad::Rng rng(11);
  for (const Case& t : cases) {
    CAPTURE(t.n, t.c, t.h, t.w, t.o, t.k, t.stride, t.pad);
    auto x = hgad::Tensor<TestType>::randn({t.n, t.c, t.h, t.w}, rng);
    auto w = hgad::Tensor<TestType>::randn({t.o, t.c, t.k, t.k}, rng, 0, 0.3);
    auto b = hgad::Tensor<TestType>::randn({t.o}, rng);
    for (auto [relu, algorithm] : algorithms<TestType>()) {
      CAPTURE(relu, int(algorithm));
      const hgad::Conv2dOptions opt{t.stride, t.pad, relu, algorithm};
      auto y = hgad::conv2d(x, w, b, opt);
      auto ref = naive_conv2d(x, w, b, t.stride, t.pad, relu, nullptr);
      CHECK(max_abs_diff(y, ref) <= tolerance<TestType>());
      auto r = hgad::Tensor<TestType>::randn(y.shape(), rng);
      auto y_res = hgad::conv2d(x, w, b, opt, &r);
      auto ref_res = naive_conv2d(x, w, b, t.stride, t.pad, relu, &r);
      CHECK(max_abs_diff(y_res, ref_res) <= tolerance<TestType>());
    }
    auto no_bias = hgad::conv2d(x, w, hgad::Tensor<TestType>({0}), {t.stride, t.pad, false});
    CHECK(max_abs_diff(no_bias, naive_conv2d(x, w, hgad::Tensor<TestType>({0}), t.stride, t.pad,
                                             false, nullptr)) <= tolerance<TestType>());
  }
}

TEST_CASE("conv2d splits large outputs over several blocks and threads correctly", "[backbone]") {
  // 3x3 over 64 channels at 40x44: the im2col block holds fewer positions than one image.
  hgad::Rng rng(5);
  const Index n = 2, c = 64, h = 40, w = 44, o = 8;
  auto x = hgad::Tensor<float>::randn({n, c, h, w}, rng);
  auto k = hgad::Tensor<float>::randn({o, c, 3, 3}, rng, 0, 0.1);
  auto b = hgad::Tensor<float>::randn({o}, rng);
  const auto ref = naive_conv2d(x, k, b, 2, 1, true, nullptr);
  // 8 output channels of 64 x 9 = 576 reductions: more than one reduction slice of the packed
  // kernel is exercised by the 3x3 case below with 80 channels (720 > 512).
  auto x80 = hgad::Tensor<float>::randn({1, 80, 13, 50}, rng);
  auto k80 = hgad::Tensor<float>::randn({19, 80, 3, 3}, rng, 0, 0.1);
  auto b80 = hgad::Tensor<float>::randn({19}, rng);
  auto r80 = hgad::Tensor<float>::randn({1, 19, 13, 50}, rng);
  const auto ref80 = naive_conv2d(x80, k80, b80, 1, 1, true, &r80);
  for (int threads : {1, 2, 3}) {
    const ThreadCount count(threads);
    for (auto algorithm : {hgad::ConvAlgorithm::automatic, hgad::ConvAlgorithm::im2col}) {
      CAPTURE(threads, int(algorithm));
      CHECK(max_abs_diff(hgad::conv2d(x, k, b, {2, 1, true, algorithm}), ref) <= 1e-4);
      CHECK(max_abs_diff(hgad::conv2d(x80, k80, b80, {1, 1, true, algorithm}, &r80), ref80) <=
            1e-4);
    }
  }
}

TEMPLATE_TEST_CASE(
    "conv2d on channel-major batches: an image's output depends neither on the "
    "images beside it nor on the thread count",
    "[backbone]", float, double) {
  // The backbone's (C, N, H, W) layout through the im2col + Eigen path: a 3 x 3 convolution over
  // 64 channels of three 10 x 13 images (390 positions, more than one im2col block of 341 floats'
  // or 170 doubles' positions), each image's output computed inside the batch on 1, 2 and 3
  // threads and alone on one, bit for bit, and against naive loops.
  hgad::Rng rng(21);
  const Index n = 3, c = 64, h = 10, w = 13, o = 5;
  const auto x = hgad::Tensor<TestType>::randn({c, n, h, w}, rng);  // channel-major
  const auto k = hgad::Tensor<TestType>::randn({o, c, 3, 3}, rng, 0, 0.1);
  const auto b = hgad::Tensor<TestType>::randn({o}, rng);
  const auto conv = [&](const TestType* in, Index batch) {
    hgad::Tensor<TestType> y({o, batch, h, w});
    hgad::detail::conv2d_views<TestType>(hgad::detail::cnhw_view(in, c, batch, h, w), k.data(),
                                         b.data(), 3, 3, 1, 1, true, nullptr,
                                         hgad::detail::cnhw_view(y.data(), o, batch, h, w));
    return y;
  };
  for (Index i = 0; i < n; ++i) {
    CAPTURE(i);
    hgad::Tensor<TestType> alone_in({c, 1, h, w});
    for (Index ch = 0; ch < c; ++ch)
      std::copy_n(x.data() + (ch * n + i) * h * w, h * w, alone_in.data() + ch * h * w);
    hgad::Tensor<TestType> alone;
    {
      const ThreadCount one(1);
      alone = conv(alone_in.data(), 1);
    }
    for (const int threads : {1, 2, 3}) {
      CAPTURE(threads);
      const ThreadCount count(threads);
      const auto batch = conv(x.data(), n);
      bool same = true;
      for (Index oc = 0; oc < o; ++oc)
        same = same && std::equal(alone.data() + oc * h * w, alone.data() + (oc + 1) * h * w,
                                  batch.data() + (oc * n + i) * h * w);
      CHECK(same);
    }
    const auto ref = naive_conv2d(alone_in.reshape({1, c, h, w}), k, b, 1, 1, true, nullptr);
    CHECK(max_abs_diff(alone.reshape({1, o, h, w}), ref) <= tolerance<TestType>() * 10);
  }
}

TEMPLATE_TEST_CASE(
    "conv2d of one image in a single block gives the same bits on any number of "
    "threads",
    "[backbone]", float, double) {
  // One 8 x 8 image through the im2col + Eigen path: its 64 positions are one block, so no
  // parallel region is opened around the product, which Eigen would then share over the threads
  // itself, with blocking sizes (and an order of summation) that depend on their number.
  hgad::Rng rng(22);
  const Index c = 100, o = 37, h = 8, w = 8;
  const auto x = hgad::Tensor<TestType>::randn({c, 1, h, w}, rng);
  const auto k = hgad::Tensor<TestType>::randn({o, c, 3, 3}, rng, 0, 0.1);
  const auto b = hgad::Tensor<TestType>::randn({o}, rng);
  const auto conv = [&] {
    hgad::Tensor<TestType> y({o, 1, h, w});
    hgad::detail::conv2d_views<TestType>(
        hgad::detail::cnhw_view(static_cast<const TestType*>(x.data()), c, 1, h, w), k.data(),
        b.data(), 3, 3, 1, 1, false, nullptr, hgad::detail::cnhw_view(y.data(), o, 1, h, w));
    return y;
  };
  hgad::Tensor<TestType> one;
  {
    const ThreadCount count(1);
    one = conv();
  }
  for (const int threads : {2, 3}) {
    CAPTURE(threads);
    const ThreadCount count(threads);
    const auto y = conv();
    CHECK(std::equal(one.data(), one.data() + one.numel(), y.data()));
    CHECK(hgad::max_threads() == threads);  // and the thread count is as it was
  }
  const auto ref = naive_conv2d(x.reshape({1, c, h, w}), k, b, 1, 1, false, nullptr);
  CHECK(max_abs_diff(one.reshape({1, o, h, w}), ref) <= tolerance<TestType>() * 10);
}

TEMPLATE_TEST_CASE("max_pool2d matches naive loops with -inf padding", "[backbone]", float,
                   double) {
  hgad::Rng rng(7);
  struct Case {
    Index h, w, k, s, p;
  };
  for (const Case& t :
       {Case{9, 11, 3, 2, 1}, Case{8, 8, 3, 2, 1}, Case{7, 5, 2, 2, 0}, Case{6, 9, 3, 1, 1}}) {
    CAPTURE(t.h, t.w, t.k, t.s, t.p);
    // All inputs negative: a zero-padded pool would return 0 at the borders.
    auto x = hgad::Tensor<TestType>::uniform({2, 3, t.h, t.w}, rng, -5, -0.1);
    auto y = hgad::max_pool2d(x, t.k, t.s, t.p);
    const Index oh = (t.h + 2 * t.p - t.k) / t.s + 1, ow = (t.w + 2 * t.p - t.k) / t.s + 1;
    REQUIRE(y.shape() == hgad::Shape{2, 3, oh, ow});
    auto ref = hgad_test::naive_max_pool2d(x, t.k, t.s, t.p);
    CHECK(max_abs_diff(y, ref) == 0.0);
  }
}

TEST_CASE("conv2d and max_pool2d reject mismatched shapes", "[backbone]") {
  hgad::Tensor<float> x({1, 3, 8, 8});
  CHECK_THROWS_AS(hgad::conv2d(x, hgad::Tensor<float>({4, 2, 3, 3}), hgad::Tensor<float>({4})),
                  hgad::Error);
  CHECK_THROWS_AS(hgad::conv2d(x, hgad::Tensor<float>({4, 3, 3, 3}), hgad::Tensor<float>({5})),
                  hgad::Error);
  CHECK_THROWS_AS(hgad::conv2d(x, hgad::Tensor<float>({4, 3, 11, 11}), hgad::Tensor<float>({4})),
                  hgad::Error);
  CHECK_THROWS_AS(hgad::conv2d(hgad::Tensor<float>({3, 8, 8}), hgad::Tensor<float>({4, 3, 3, 3}),
                               hgad::Tensor<float>({4})),
                  hgad::Error);
  hgad::Tensor<float> wrong_residual({1, 4, 7, 8});
  CHECK_THROWS_AS(hgad::conv2d(x, hgad::Tensor<float>({4, 3, 3, 3}), hgad::Tensor<float>({4}),
                               {1, 1, false}, &wrong_residual),
                  hgad::Error);
  CHECK_THROWS_AS(hgad::max_pool2d(x, 3, 2, 2), hgad::Error);
  hgad::Tensor<double> xd({1, 3, 8, 8});
  CHECK_THROWS_AS(hgad::conv2d(xd, hgad::Tensor<double>({4, 3, 3, 3}), hgad::Tensor<double>({4}),
                               {1, 1, false, hgad::ConvAlgorithm::packed}),
                  hgad::Error);
}

}  // namespace conv_test
