// The evaluation of one product class at the size of industrial-mini's largest test set
// (magnetic_tile: 678 images of 256 x 256, 44M pixels) and of a typical one (400 images, 26M):
// pixel AUROC/AP/F1 (one radix sort), AUPRO@0.3 (one binning pass), and the §5.4 post-processing
// (three levels 64/32/16 -> 256 x 256, σ = 4 blur) for the same number of images.
//
//   bench_metrics [--benchmark_filter=...]     (OMP_WAIT_POLICY=PASSIVE recommended)

#include <benchmark/benchmark.h>

#include <vector>

#include <hgad/metrics.hpp>
#include <hgad/model/anomaly_map.hpp>

namespace {

using hgad::Index;

struct ClassData {
  explicit ClassData(Index n_images) : rng(0) {
    maps = hgad::Tensor<float>::uniform({n_images, 256, 256}, rng, 0, 1);
    masks = hgad::Tensor<float>({n_images, 256, 256});
    for (Index i = 0; i < n_images / 2; ++i) {
      for (Index y = 100; y < 140; ++y) {
        for (Index x = 60 + i % 50; x < 100 + i % 50; ++x) {
          masks(i, y, x) = 1;
          maps(i, y, x) += 0.3f;
        }
      }
    }
  }
  hgad::Rng rng;
  hgad::Tensor<float> maps;
  hgad::Tensor<float> masks;
};

void BM_PixelRankingMetrics(benchmark::State& state) {
  const ClassData data(state.range(0));
  for (auto _ : state) benchmark::DoNotOptimize(hgad::ranking_metrics(data.masks, data.maps));
  state.SetItemsProcessed(state.iterations() * data.maps.numel());
}
BENCHMARK(BM_PixelRankingMetrics)->Arg(400)->Arg(678)->Unit(benchmark::kMillisecond);

void BM_Aupro(benchmark::State& state) {
  const ClassData data(state.range(0));
  for (auto _ : state) benchmark::DoNotOptimize(hgad::aupro(data.masks, data.maps));
  state.SetItemsProcessed(state.iterations() * data.maps.numel());
}
BENCHMARK(BM_Aupro)->Arg(400)->Arg(678)->Unit(benchmark::kMillisecond);

void BM_TransductiveAnomalyMap(benchmark::State& state) {
  hgad::Rng rng(1);
  const Index n = state.range(0);
  const std::vector<hgad::Tensor<float>> levels = {hgad::Tensor<float>::randn({n, 64, 64}, rng),
                                                   hgad::Tensor<float>::randn({n, 32, 32}, rng),
                                                   hgad::Tensor<float>::randn({n, 16, 16}, rng)};
  for (auto _ : state) benchmark::DoNotOptimize(hgad::transductive_anomaly_map(levels));
  state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK(BM_TransductiveAnomalyMap)->Arg(400)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
