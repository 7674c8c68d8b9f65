/// \file
/// Throughput of the fused flow (SequenceFlow of AllInOne blocks) on the CPU, float:
/// forward only (inference) and forward + backward of L = Σ z²/2 − Σ log|det J| (training), for
///   (a) D = 256, P = 128,  8 blocks, N = 8192
///   (b) D = 200, P = 256, 12 blocks, N = 8192 (the HGAD paper configuration),
/// each with an (N, P) condition (config 0, 1) and with the (h·w, P) = (1024, P) encoding shared
/// over 8 maps of 32 x 32 (config 2, 3; the condition's GEMMs run on 1024 rows, so GFLOP/s counts
/// the flops actually executed and vectors/s is the figure to compare), and the four levels of the
/// demo (config 4 to 7: D = 64, 128, 256, 256, P = 64, 8 blocks, N = 8192, 2048, 512, 128),
/// on 1 and 2 threads, against the raw Eigen SGEMM rate (8192 x 512 x 1024) on the same thread count,
/// measured between the timed passes for as long as they ran (InterleavedSgemm). Counters:
/// items_per_second = vectors/s; GFLOP/s counts the GEMM flops only; sgemm_GFLOP/s = the
/// interleaved SGEMM rate; sgemm_ratio = GFLOP/s / sgemm_GFLOP/s; activations_MB = what the backward keeps
/// (SequenceFlowCache::activation_bytes); peak_MB = the tensor storage one pass needs beyond its
/// inputs and the parameters: for forward + backward the activations plus the peak of what the pass
/// allocates on top of them (z, log-det, the gradient buffer); Eigen's per-thread tile scratch and
/// gradient partial sums (a few MB) are not counted;
/// maxrss_MB = the process's peak resident set so far.
///
///     cmake -B build-flow -DHGAD_BUILD_BENCHMARKS=ON && cmake --build build-flow --target bench_flow
///     OMP_WAIT_POLICY=PASSIVE build-flow/benchmarks/bench_flow --benchmark_min_time=2

#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <Eigen/Core>
#include <chrono>

#include "hgad/cpu_backend.hpp"
#include "hgad/detail/parallel.hpp"
#include "hgad/flow.hpp"

namespace {

using hgad::Index;
using hgad::Tensor;

/// M: rows of the condition; M = N gives every row its own (N, P) condition, M < N shares an
/// (M, P) encoding over N / M images (AllInOneBlock's shared condition).
struct FlowConfig {
  Index D, P, n_blocks, N, M;
};

const FlowConfig configs[] = {
    {256, 128, 8, 8192, 8192},   // (a), per-row (N, P) condition
    {200, 256, 12, 8192, 8192},  // (b), per-row (N, P) condition
    {256, 128, 8, 8192, 1024},   // (a) with the (h·w, P) encoding of 8 maps of 32 x 32 shared
    {200, 256, 12, 8192, 1024},  // (b) likewise: HGAD's second level, batch 8 (docs/algorithm.md §4)
    // The four levels of scripts/demo.cfg before its thirty-second round (docs/results.md §1.1): 8
    // blocks, P = 64, a quarter of the positions of 8 maps of 64², 32², 16² and 8² (each row with
    // its own condition, where the demo shares one per position over the batch).
    {64, 64, 8, 8192, 8192},
    {128, 64, 8, 2048, 2048},
    {256, 64, 8, 512, 512},
    {256, 64, 8, 128, 128},
};

/// GEMM flops per vector of one block: forward, and backward without dL/dcond. With a shared
/// condition the condition's GEMMs run on M rows instead of N.
double forward_flops(const FlowConfig& c) {
  const double n2 = double(c.D / 2), n1 = double(c.D) - n2, P = double(c.P), H = 2 * (n1 + P);
  const double share = double(c.M) / double(c.N);
  return 2 * n1 * H + 2 * P * H * share + 2 * H * 2 * n2 + 2 * double(c.D) * double(c.D);
}
double backward_flops(const FlowConfig& c) {
  const double n2 = double(c.D / 2), n1 = double(c.D) - n2, P = double(c.P), H = 2 * (n1 + P);
  const double share = double(c.M) / double(c.N);
  // du' = dy R; dW2 and dh; dW1 (x1 and condition columns); dx1.
  return 2 * double(c.D) * double(c.D) + 2 * (2 * 2 * n2 * H) + 2 * H * n1 + 2 * H * P * share + 2 * H * n1;
}

double max_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return double(usage.ru_maxrss) / 1024.0;
}

hgad::CpuBackend<float>& cpu() { return static_cast<hgad::CpuBackend<float>&>(*hgad::cpu_backend<float>()); }

/// The raw Eigen SGEMM reference, 8192 x 512 x 1024. BM_RawSgemm times it alone; the flow
/// benchmarks run it between their timed passes (run()) so that it sees the same machine
/// conditions as the flow: on a shared machine a reference measured once, at another moment, can
/// be off by 20% either way. After each flow pass it runs for about as long as that pass (at least
/// one product), outside the benchmark's timed region.
class InterleavedSgemm {
 public:
  using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  static constexpr double flops = 2.0 * 8192 * 512 * 1024;  ///< of one product

  InterleavedSgemm() : m_a(RowMatrix::Random(8192, 512)), m_b(RowMatrix::Random(512, 1024)), m_c(8192, 1024) {}

  /// One product.
  void product() {
    m_c.noalias() = m_a * m_b;
    benchmark::DoNotOptimize(m_c.data());
    benchmark::ClobberMemory();
  }

  /// Runs products for about `budget_seconds` (at least one) and adds them to the totals.
  void run(double budget_seconds) {
    const auto t0 = std::chrono::steady_clock::now();
    double elapsed = 0;
    do {
      product();
      ++m_products;
      elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    } while (elapsed < budget_seconds);
    m_seconds += elapsed;
  }

  double gflops() const { return m_seconds > 0 ? flops * double(m_products) / m_seconds * 1e-9 : 0; }

 private:
  RowMatrix m_a, m_b, m_c;
  long m_products = 0;
  double m_seconds = 0;
};

/// Times `pass` once per benchmark iteration and the SGEMM reference after it (untimed), and sets
/// the counters that compare the two: GFLOP/s of the pass, sgemm_GFLOP/s of the interleaved
/// reference and their ratio.
template <class Pass>
void time_against_sgemm(benchmark::State& state, double flops_per_pass, Pass&& pass) {
  InterleavedSgemm sgemm;
  double pass_seconds = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    pass();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    pass_seconds += s;
    state.PauseTiming();
    sgemm.run(s);
    state.ResumeTiming();
  }
  const double rate = flops_per_pass * double(state.iterations()) / pass_seconds * 1e-9;
  state.counters["GFLOP/s"] = rate;
  state.counters["sgemm_GFLOP/s"] = sgemm.gflops();
  state.counters["sgemm_ratio"] = rate / sgemm.gflops();
}

void BM_RawSgemm(benchmark::State& state) {
  hgad::set_num_threads(int(state.range(0)));
  InterleavedSgemm sgemm;
  for (auto _ : state) sgemm.product();
  state.counters["GFLOP/s"] =
      benchmark::Counter(InterleavedSgemm::flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

struct FlowFixture {
  explicit FlowFixture(const FlowConfig& c)
      : rng(0), flow(c.D, c.P, c.n_blocks, hgad::AllInOneOptions::hgad(), rng),
        x(Tensor<float>::randn({c.N, c.D}, rng)), cond({c.M, c.P}) {
    // The positional encoding of 32 x 32 maps, repeated over the M rows as HGAD flattens a batch (§1.3).
    const Index per = 32 * 32;
    const auto pe = hgad::positional_encoding_2d<float>(c.P, 32, 32);
    for (Index n = 0; n < c.M; ++n) {
      std::copy(pe.data() + (n % per) * c.P, pe.data() + (n % per + 1) * c.P, cond.data() + n * c.P);
    }
  }
  hgad::Rng rng;
  hgad::SequenceFlow<float> flow;
  Tensor<float> x, cond;
};

void BM_FlowForward(benchmark::State& state) {
  const FlowConfig& c = configs[state.range(0)];
  const int threads = int(state.range(1));
  hgad::set_num_threads(threads);
  FlowFixture f(c);
  cpu().reset_peak_bytes();
  const Index base = cpu().bytes_in_use();
  const double flops = forward_flops(c) * double(c.n_blocks) * double(c.N);
  time_against_sgemm(state, flops, [&] {
    auto r = f.flow.forward(f.x, f.cond);
    benchmark::DoNotOptimize(r.out.data());
  });
  state.SetItemsProcessed(state.iterations() * c.N);
  state.counters["peak_MB"] = double(cpu().peak_bytes() - base) / 1e6;
  state.counters["maxrss_MB"] = max_rss_mb();
}

void BM_FlowForwardBackward(benchmark::State& state) {
  const FlowConfig& c = configs[state.range(0)];
  const int threads = int(state.range(1));
  hgad::set_num_threads(threads);
  FlowFixture f(c);
  hgad::SequenceFlowCache<float> cache;
  Tensor<float> grad_ld = Tensor<float>::full({c.N}, -1.0f);
  // One untimed step so the cache buffers exist: the peak below is the steady state of training.
  {
    auto r = f.flow.forward_train(f.x, f.cond, cache);
    f.flow.backward(cache, r.out, grad_ld);
  }
  cpu().reset_peak_bytes();
  const Index base = cpu().bytes_in_use();
  const double flops = (forward_flops(c) + backward_flops(c)) * double(c.n_blocks) * double(c.N);
  time_against_sgemm(state, flops, [&] {
    // L = Σ z²/2 − Σ log|det J|: dL/dz = z, dL/dlog|det J| = −1.
    auto r = f.flow.forward_train(f.x, f.cond, cache);
    auto grad_x = f.flow.backward(cache, r.out, grad_ld);
    benchmark::DoNotOptimize(grad_x.data());
  });
  state.SetItemsProcessed(state.iterations() * c.N);
  state.counters["activations_MB"] = double(cache.activation_bytes()) / 1e6;
  // The memory of one training step beyond the inputs and parameters: the activations plus the
  // peak of what the step allocates on top of them (outputs, gradient buffers).
  state.counters["peak_MB"] = double(cpu().peak_bytes() - base + cache.activation_bytes()) / 1e6;
  state.counters["maxrss_MB"] = max_rss_mb();
}

}  // namespace

BENCHMARK(BM_RawSgemm)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_FlowForward)
    ->ArgNames({"config", "threads"})
    ->ArgsProduct({{0, 1, 2, 3, 4, 5, 6, 7}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_FlowForwardBackward)
    ->ArgNames({"config", "threads"})
    ->ArgsProduct({{0, 1, 2, 3, 4, 5, 6, 7}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

BENCHMARK_MAIN();
