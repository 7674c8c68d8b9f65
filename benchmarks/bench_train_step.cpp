/// \file
/// Throughput of one HGAD level on the CPU, float, against the PyTorch peer's configurations
/// (../shared/peers/torch-reference/bench_torch_step.py):
///   d256_n8192       D = 256, P = 128,  8 blocks, K = 5,  M = 10, N = 8192 (B = 8 maps of 32 x 32)
///   hgad_d200_n8192  D = 200, P = 256, 12 blocks, K = 15, M = 10, N = 8192 (the paper's level)
/// on 1 and 2 threads:
///   train/<config>/threads:<t>  one full train_step in stage 2: fused flow forward, all five loss
///                               terms, fused backward, the finiteness checks and Adam;
///   infer/<config>/threads:<t>  flow forward + score_log_likelihood (ground-truth class) +
///                               score_neg_entropy;
///   {train,infer}/<config>/shared_pos/threads:<t>
///                               the same with the 32 x 32 positional encoding passed once, (1024, P),
///                               and shared by the B maps, as HgadModel does: the condition's part of
///                               each block's first layer is computed per position, not per vector.
///                               The plain variants tile it to (N, P), as the peer does.
/// items_per_second = vectors/s. Counters (train): flow_fwd_ms, loss_ms, flow_bwd_ms, adam_ms = the
/// phases of one step (timed separately after the run); prior_adam_share = (loss + Adam) / step;
/// non_gemm_share_est = 1 − (the step's GEMM flops at the raw SGEMM rate of the same thread count)
/// / step time, an upper bound of the time outside GEMMs (GEMMs of the flow's shapes run below the
/// raw rate); tensor_peak_MB = the largest tensor storage held during the timed steps (inputs,
/// parameters, Adam state, activations, gradients); maxrss_MB = the process's peak resident set.
///
///     cmake -B build-objective -DHGAD_BUILD_BENCHMARKS=ON && cmake --build build-objective --target bench_train_step
///     OMP_WAIT_POLICY=PASSIVE build-objective/benchmarks/bench_train_step --benchmark_min_time=2

#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <Eigen/Core>
#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "hgad/cpu_backend.hpp"
#include "hgad/detail/parallel.hpp"
#include "hgad/flow/positional_encoding.hpp"
#include "hgad/model/train_step.hpp"
#include "hgad/prior/scores.hpp"

namespace {

using hgad::Index;
using hgad::Tensor;

struct Config {
  const char* name;
  Index D, P, n_blocks, K, M, B, h, w;
  Index N() const { return B * h * w; }
};

const Config configs[] = {{"d256_n8192", 256, 128, 8, 5, 10, 8, 32, 32},
                          {"hgad_d200_n8192", 200, 256, 12, 15, 10, 8, 32, 32}};

/// GEMM flops per vector of the flow: forward (fc1, fc2, rotation) per block, and a training step
/// (forward, then dL/du' through R, dW2, dh, dW1, dx1 in the backward).
double forward_flops(const Config& c) {
  const double n2 = double(c.D / 2), n1 = double(c.D) - n2, in = n1 + double(c.P), H = 2 * in;
  return double(c.n_blocks) * (2 * in * H + 2 * H * 2 * n2 + 2 * double(c.D) * double(c.D));
}
double train_flops(const Config& c) {
  const double n2 = double(c.D / 2), n1 = double(c.D) - n2, in = n1 + double(c.P), H = 2 * in;
  const double backward = 2 * double(c.D) * double(c.D) + 2 * (2 * 2 * n2 * H) + 2 * H * in + 2 * H * n1;
  return forward_flops(c) + double(c.n_blocks) * backward;
}

double max_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return double(usage.ru_maxrss) / 1024.0;
}

hgad::CpuBackend<float>& cpu() { return static_cast<hgad::CpuBackend<float>&>(*hgad::cpu_backend<float>()); }

/// GFLOP/s of an 8192 x 512 x 1024 Eigen SGEMM on `threads` threads (best of 5), cached.
double raw_sgemm_gflops(int threads) {
  static std::map<int, double> cache;
  if (cache.count(threads)) return cache[threads];
  hgad::set_num_threads(threads);
  using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const RowMatrix a = RowMatrix::Random(8192, 512), b = RowMatrix::Random(512, 1024);
  RowMatrix c(8192, 1024);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    c.noalias() = a * b;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * 8192 * 512 * 1024 / s * 1e-9);
  }
  benchmark::DoNotOptimize(c.data());
  return cache[threads] = best;
}

/// One level with the peer's inputs: x ~ N(0, 1), the 32 x 32 positional encoding (pe) and tiled over
/// the B maps (pos), one random class per map.
struct Level {
  explicit Level(const Config& c)
      : rng(0),
        flow(c.D, c.P, c.n_blocks, hgad::AllInOneOptions::hgad(), rng),
        prior(c.K, c.M, c.D, rng),
        adam(hgad::make_hgad_adam(flow, prior)),
        x(Tensor<float>::randn({c.N(), c.D}, rng)),
        pe(hgad::positional_encoding_2d<float>(c.P, c.h, c.w)),
        pos({c.N(), c.P}) {
    const Index hw = c.h * c.w;
    for (Index b = 0; b < c.B; ++b) {
      std::copy(pe.data(), pe.data() + hw * c.P, pos.data() + b * hw * c.P);
      const auto label = std::int64_t(rng.uniform_int(std::uint64_t(c.K)));
      labels.insert(labels.end(), std::size_t(hw), label);
    }
  }
  hgad::Rng rng;
  hgad::SequenceFlow<float> flow;
  hgad::GaussianMixturePrior<float> prior;
  hgad::Adam<float> adam;
  Tensor<float> x, pe, pos;
  const Tensor<float>& condition(bool shared) const { return shared ? pe : pos; }
  std::vector<std::int64_t> labels;
  hgad::SequenceFlowCache<float> cache;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void train(benchmark::State& state, const Config& c, int threads, bool shared_pos) {
  const double sgemm = raw_sgemm_gflops(threads);
  hgad::set_num_threads(threads);
  Level level(c);
  const hgad::LossOptions options;
  level.adam.set_lr(2e-4);
  std::int64_t step = 0;
  // One untimed step allocates the cache and Adam's moments: the timed steps are the steady state.
  hgad::train_step(level.flow, level.prior, level.adam, level.x, level.condition(shared_pos), level.labels, 2, options, {0, step++},
                   level.cache);
  cpu().reset_peak_bytes();
  double seconds = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    auto terms = hgad::train_step(level.flow, level.prior, level.adam, level.x, level.condition(shared_pos), level.labels, 2, options,
                                  {0, step++}, level.cache);
    seconds += seconds_since(t0);
    benchmark::DoNotOptimize(terms.total);
  }
  state.counters["tensor_peak_MB"] = double(cpu().peak_bytes()) / 1e6;
  state.SetItemsProcessed(state.iterations() * c.N());

  // The phases of train_step, timed one by one (best of 3).
  double phase[4] = {1e30, 1e30, 1e30, 1e30};
  for (int rep = 0; rep < 3; ++rep) {
    level.adam.zero_grad();
    auto t0 = std::chrono::steady_clock::now();
    const auto r = level.flow.forward_train(level.x, level.condition(shared_pos), level.cache);
    phase[0] = std::min(phase[0], seconds_since(t0));
    t0 = std::chrono::steady_clock::now();
    const auto loss = hgad::objective_loss_fused(level.prior, r.out, r.log_jac_det, level.labels, 2, options);
    phase[1] = std::min(phase[1], seconds_since(t0));
    t0 = std::chrono::steady_clock::now();
    level.flow.backward(level.cache, loss.grad_z, loss.grad_log_jac_det);
    phase[2] = std::min(phase[2], seconds_since(t0));
    t0 = std::chrono::steady_clock::now();
    hgad::detail::check_finite_gradients(level.flow, level.prior, {0, step}, "bench");
    level.adam.step();
    phase[3] = std::min(phase[3], seconds_since(t0));
  }
  const double step_seconds = seconds / double(state.iterations());
  state.counters["flow_fwd_ms"] = phase[0] * 1e3;
  state.counters["loss_ms"] = phase[1] * 1e3;
  state.counters["flow_bwd_ms"] = phase[2] * 1e3;
  state.counters["adam_ms"] = phase[3] * 1e3;
  state.counters["prior_adam_share"] = (phase[1] + phase[3]) / step_seconds;
  state.counters["non_gemm_share_est"] = 1.0 - train_flops(c) * double(c.N()) / (sgemm * 1e9) / step_seconds;
  state.counters["sgemm_GFLOP/s"] = sgemm;
  state.counters["maxrss_MB"] = max_rss_mb();
}

void infer(benchmark::State& state, const Config& c, int threads, bool shared_pos) {
  const double sgemm = raw_sgemm_gflops(threads);
  hgad::set_num_threads(threads);
  Level level(c);
  double seconds = 0, score_seconds = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = level.flow.forward(level.x, level.condition(shared_pos));
    const auto t1 = std::chrono::steady_clock::now();
    const auto logp = hgad::score_log_likelihood(level.prior, r.out, r.log_jac_det, level.labels);
    const auto neg_h = hgad::score_neg_entropy(level.prior, r.out);
    score_seconds += seconds_since(t1);
    seconds += seconds_since(t0);
    benchmark::DoNotOptimize(logp.data());
    benchmark::DoNotOptimize(neg_h.data());
  }
  state.SetItemsProcessed(state.iterations() * c.N());
  state.counters["scores_share"] = score_seconds / seconds;
  state.counters["non_gemm_share_est"] =
      1.0 - forward_flops(c) * double(c.N()) * double(state.iterations()) / (sgemm * 1e9) / seconds;
  state.counters["maxrss_MB"] = max_rss_mb();
}

const bool registered = [] {
  for (const Config& c : configs) {
    for (bool shared_pos : {false, true}) {
      for (int threads : {1, 2}) {
        const std::string suffix = std::string(c.name) + (shared_pos ? "/shared_pos" : "") +
                                   "/threads:" + std::to_string(threads);
        benchmark::RegisterBenchmark(("train/" + suffix).c_str(), train, c, threads, shared_pos)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
        benchmark::RegisterBenchmark(("infer/" + suffix).c_str(), infer, c, threads, shared_pos)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
      }
    }
  }
  return true;
}();

}  // namespace

BENCHMARK_MAIN();
