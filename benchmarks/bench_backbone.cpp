// ResNet-18 up to layer3 on a batch of 8 RGB 256x256 images (float), on 1 and 2 threads, next to
// the raw Eigen SGEMM rate of the same machine measured in the same program.
//
// FLOP count (2 x multiply-adds of the convolutions; bias, ReLU, residual adds and the max-pool
// excluded), per 256x256 image:
//   conv1 7x7/2      2 * 64 * 3*49 * 128*128                       =   308,281,344
//   layer1 4 convs   4 * 2 * 64 * 64*9 * 64*64                     = 1,207,959,552
//   layer2           2*128*64*9*32*32 + 3 * 2*128*128*9*32*32
//                    + 2*128*64*32*32 (downsample)                 = 1,073,741,824
//   layer3           2*256*128*9*16*16 + 3 * 2*256*256*9*16*16
//                    + 2*256*128*16*16 (downsample)                = 1,073,741,824
//   total                                                          = 3,663,724,544 (3.66 GFLOP)
// ResNet<float>::flops(256, 256, layer3) returns this number; the test suite checks it.
//
// Counters: images_per_s, GFLOP_per_s (network), sgemm_GFLOP_per_s (Eigen, same thread count,
// (256 x 2304) x (2304 x 1024), the shape of a layer3 convolution of a batch of 4), and
// fraction_of_sgemm = GFLOP_per_s / sgemm_GFLOP_per_s.
//
// Weights: $HGAD_SHARED_DIR/weights/resnet18-imagenet when present, random ones of the same shapes
// otherwise (the speed does not depend on the values).

#include <benchmark/benchmark.h>

#include <hgad/backbone/resnet.hpp>

#include <Eigen/Core>
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>

namespace {

using hgad::Index;

const hgad::ResNet<float>& resnet18() {
  static std::unique_ptr<hgad::ResNet<float>> net = [] {
    const std::string dir = std::string(HGAD_SHARED_DIR) + "/weights/resnet18-imagenet";
    if (std::filesystem::exists(dir + "/conv1.weight.npy")) {
      return std::make_unique<hgad::ResNet<float>>(hgad::ResNetArch::resnet18, dir);
    }
    hgad::Rng rng(0);
    return std::make_unique<hgad::ResNet<float>>(
        hgad::ResNetArch::resnet18,
        hgad::ResNet<float>::random_weights(hgad::ResNetArch::resnet18, hgad::ResNetStage::layer3,
                                            rng));
  }();
  return *net;
}

/// Eigen's single-precision GEMM rate on `threads` threads, in GFLOP/s (best of a few runs).
double sgemm_rate(int threads) {
  static std::map<int, double> cache;
  if (cache.count(threads)) return cache[threads];
  using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Index m = 256, k = 2304, n = 1024;
  hgad::set_num_threads(threads);
  Matrix a = Matrix::Random(m, k), b = Matrix::Random(k, n), c(m, n);
  c.noalias() = a * b;
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 4; ++i) c.noalias() = a * b;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 4 * 2.0 * double(m) * double(n) * double(k) / s / 1e9);
  }
  benchmark::DoNotOptimize(c.data());
  return cache[threads] = best;
}

void BM_EigenSgemm(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Index m = 256, k = 2304, n = 1024;
  hgad::set_num_threads(threads);
  Matrix a = Matrix::Random(m, k), b = Matrix::Random(k, n), c(m, n);
  for (auto _ : state) {
    c.noalias() = a * b;
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOP_per_s"] = benchmark::Counter(2.0 * double(m) * double(n) * double(k) / 1e9,
                                                     benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_EigenSgemm)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_ResNet18Layer3(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  const Index batch = 8, size = 256;
  const double sgemm = sgemm_rate(threads);
  const auto& net = resnet18();
  hgad::set_num_threads(threads);
  hgad::Rng rng(1);
  const auto images = hgad::Tensor<float>::randn({batch, 3, size, size}, rng);
  const double flops = double(net.flops(size, size, hgad::ResNetStage::layer3)) * double(batch);
  for (auto _ : state) {
    auto out = net.forward(images, {hgad::ResNetStage::layer2, hgad::ResNetStage::layer3});
    benchmark::DoNotOptimize(out[1].data());
  }
  state.counters["images_per_s"] =
      benchmark::Counter(double(batch), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP_per_s"] =
      benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["sgemm_GFLOP_per_s"] = sgemm;
  state.counters["fraction_of_sgemm"] =
      benchmark::Counter(flops / 1e9 / sgemm, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_ResNet18Layer3)
    ->Arg(1)
    ->Arg(2)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0);

/// One 3x3 convolution of layer3 (256 -> 256 channels, 16x16, batch 8, NCHW) through each
/// algorithm: arg 0 = threads, arg 1 = 0 for im2col + Eigen, 1 for the packed kernel.
void BM_Conv3x3Layer3(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  const auto algorithm = state.range(1) ? hgad::ConvAlgorithm::packed : hgad::ConvAlgorithm::im2col;
  if (algorithm == hgad::ConvAlgorithm::packed && !hgad::packed_conv_available()) {
    state.SkipWithError("the packed kernel needs an AVX-512 or AVX2+FMA build");
    return;
  }
  hgad::set_num_threads(threads);
  hgad::Rng rng(2);
  const auto x = hgad::Tensor<float>::randn({8, 256, 16, 16}, rng);
  const auto w = hgad::Tensor<float>::randn({256, 256, 3, 3}, rng, 0, 0.02f);
  const auto b = hgad::Tensor<float>::randn({256}, rng);
  for (auto _ : state) {
    auto y = hgad::conv2d(x, w, b, {1, 1, true, algorithm});
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GFLOP_per_s"] = benchmark::Counter(2.0 * 256 * 256 * 9 * 256 * 8 / 1e9,
                                                     benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Conv3x3Layer3)
    ->Args({1, 0})
    ->Args({1, 1})
    ->Args({2, 0})
    ->Args({2, 1})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
