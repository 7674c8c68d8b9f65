/// \file
/// Scoring throughput of an HgadModel on the CPU, float, at the demo's three levels (ResNet-18
/// layer1-3 of a 256-pixel image: 64 x 64 x 64, 32 x 32 x 128, 16 x 16 x 256; 4 blocks, a 64-d
/// positional encoding, three classes, maps of 256 x 256 blurred with sigma 6), on 32 random images:
///   one_by_one  HgadModel::score on each image in turn: every image alone, the parallel loops
///               inside its flow passes and maps sharing it over the threads;
///   score_set   HgadModel::score_set on the 32 at once: whole images shared over the threads
///               (detail::parallel_items), each image's arithmetic that of one_by_one;
///   calibrate   HgadModel::calibrate on the 32 (their raw scores, then the constants, baselines
///               and thresholds of each class and of all).
/// on 1 and 2 threads. items_per_second = images/s.
///
///     cmake -B build-bench -DHGAD_BUILD_BENCHMARKS=ON && cmake --build build-bench --target bench_scoring
///     OMP_WAIT_POLICY=PASSIVE build-bench/benchmarks/bench_scoring --benchmark_repetitions=3

#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "hgad/detail/parallel.hpp"
#include "hgad/model/hgad_model.hpp"

namespace {

using hgad::Index;
using hgad::Tensor;

constexpr Index n_images = 32;

struct Scoring {
  std::vector<Tensor<float>> features;
  std::vector<std::int64_t> classes;
  hgad::HgadModel<float> model;

  static hgad::ModelConfig config() {
    hgad::ModelConfig c;
    c.levels = {{64, 64, 64}, {32, 32, 128}, {16, 16, 256}};
    c.class_names = {"a", "b", "c"};
    c.features.backbone = "none";
    c.features.mask_size = 256;
    c.pos_dim = 64;
    c.n_blocks = 4;
    c.map_sigma = 6;
    c.image_score_fraction = 0.01;
    c.calibration_baseline = hgad::CalibrationBaseline::position;
    return c;
  }

  Scoring() : model(config()) {
    hgad::Rng rng(7);
    for (const hgad::LevelSpec& s : model.config().levels)
      features.push_back(Tensor<float>::randn({n_images, s.height, s.width, s.dim}, rng));
    for (Index i = 0; i < n_images; ++i) classes.push_back(i % 3);
    model.calibrate(features, classes);
  }
};

Scoring& scoring() {
  static Scoring s;
  return s;
}

void BM_OneByOne(benchmark::State& state) {
  hgad::set_num_threads(static_cast<int>(state.range(0)));
  Scoring& s = scoring();
  for (auto _ : state)
    for (Index i = 0; i < n_images; ++i)
      benchmark::DoNotOptimize(s.model.score(hgad::HgadModel<float>::image_view(s.features, i),
                                             s.classes[static_cast<std::size_t>(i)],
                                             hgad::ScoreMode::calibrated));
  state.SetItemsProcessed(state.iterations() * n_images);
}

void BM_ScoreSet(benchmark::State& state) {
  hgad::set_num_threads(static_cast<int>(state.range(0)));
  Scoring& s = scoring();
  for (auto _ : state)
    benchmark::DoNotOptimize(s.model.score_set(s.features, s.classes, hgad::ScoreMode::calibrated));
  state.SetItemsProcessed(state.iterations() * n_images);
}

void BM_Calibrate(benchmark::State& state) {
  hgad::set_num_threads(static_cast<int>(state.range(0)));
  Scoring& s = scoring();
  for (auto _ : state) s.model.calibrate(s.features, s.classes);
  state.SetItemsProcessed(state.iterations() * n_images);
}

}  // namespace

BENCHMARK(BM_OneByOne)->Name("one_by_one")->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ScoreSet)->Name("score_set")->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Calibrate)->Name("calibrate")->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
