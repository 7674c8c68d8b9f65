// Forward + backward of the two-layer perceptron y = relu(x W1 + b1) W2 + b2, loss = sum(y), with
// x (8192, 384), W1 (384, 768), W2 (768, 256) in float, through the autograd, against the same
// GEMMs called directly through Eigen. Issue 2 asks the autograd for >= 85% of Eigen's throughput.
//
// The GFLOP counter (a rate, shown as GFLOP/s) counts the GEMM work of the step only, identical for
// all three variants, so the ratio of two GFLOP/s figures is the ratio of their speeds. The peak
// memory of one step is measured twice: through the CPU backend's allocation counter (tensor
// storage only) and as the VmHWM of a fresh child process that runs a single step.
//
//   bench_autograd [--benchmark_filter=...]     (OMP_WAIT_POLICY=PASSIVE recommended)

#include <benchmark/benchmark.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <hgad/autograd.hpp>

namespace {

using hgad::Index;
using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

constexpr Index n_rows = 8192, n_in = 384, n_hidden = 768, n_out = 256;

// Forward: x W1 and h W2. Backward: dW2 = h^T g, dh = g W2^T, dW1 = x^T g1 (x needs no gradient).
constexpr double gemm_flops = 2.0 * n_rows * (2.0 * n_in * n_hidden + 3.0 * n_hidden * n_out);

hgad::CpuBackend<float>& cpu() {
  return dynamic_cast<hgad::CpuBackend<float>&>(*hgad::cpu_backend<float>());
}

struct Problem {
  Problem() : rng(0) {
    x = hgad::Tensor<float>::randn({n_rows, n_in}, rng);
    w1 = hgad::Var<float>::parameter(hgad::Tensor<float>::randn({n_in, n_hidden}, rng, 0.f, 0.05f));
    b1 = hgad::Var<float>::parameter(hgad::Tensor<float>::randn({n_hidden}, rng, 0.f, 0.05f));
    w2 =
        hgad::Var<float>::parameter(hgad::Tensor<float>::randn({n_hidden, n_out}, rng, 0.f, 0.05f));
    b2 = hgad::Var<float>::parameter(hgad::Tensor<float>::randn({n_out}, rng, 0.f, 0.05f));
  }
  void zero_grad() {
    for (auto* p : {&w1, &b1, &w2, &b2}) p->zero_grad();
  }
  /// The step written with the elementary ops.
  void step_ops() {
    const hgad::Var<float> input(x);
    const auto h = hgad::relu(hgad::matmul(input, w1) + b1);  // (8192, 768)
    auto loss = hgad::sum(hgad::matmul(h, w2) + b2);          // ()
    loss.backward();
  }
  /// The step written with the fused linear layer.
  void step_linear() {
    const hgad::Var<float> input(x);
    const auto h = hgad::relu(hgad::linear(input, w1, b1));  // (8192, 768)
    auto loss = hgad::sum(hgad::linear(h, w2, b2));          // ()
    loss.backward();
  }

  hgad::Rng rng;
  hgad::Tensor<float> x;
  hgad::Var<float> w1, b1, w2, b2;
};

struct EigenProblem {
  EigenProblem()
      : x(Matrix::Random(n_rows, n_in)),
        w1(Matrix::Random(n_in, n_hidden)),
        w2(Matrix::Random(n_hidden, n_out)),
        g(Matrix::Ones(n_rows, n_out)) {}
  /// The five GEMMs of the step and nothing else.
  void step() {
    h.noalias() = x * w1;
    y.noalias() = h * w2;
    dw2.noalias() = h.transpose() * g;
    dh.noalias() = g * w2.transpose();
    dw1.noalias() = x.transpose() * dh;
  }
  Matrix x, w1, w2, g, h, y, dw2, dh, dw1;
};

void set_counters(benchmark::State& state) {
  state.counters["GFLOP"] =
      benchmark::Counter(gemm_flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetItemsProcessed(state.iterations() * n_rows);
}

void BM_autograd_ops(benchmark::State& state) {
  hgad::set_num_threads(static_cast<int>(state.range(0)));
  Problem p;
  for (auto _ : state) {
    p.zero_grad();
    p.step_ops();
    benchmark::DoNotOptimize(p.w1.grad().data());
  }
  set_counters(state);
}

void BM_autograd_linear(benchmark::State& state) {
  hgad::set_num_threads(static_cast<int>(state.range(0)));
  Problem p;
  for (auto _ : state) {
    p.zero_grad();
    p.step_linear();
    benchmark::DoNotOptimize(p.w1.grad().data());
  }
  set_counters(state);
}

void BM_eigen_gemms(benchmark::State& state) {
  hgad::set_num_threads(static_cast<int>(state.range(0)));
  EigenProblem p;
  for (auto _ : state) {
    p.step();
    benchmark::DoNotOptimize(p.dw1.data());
  }
  set_counters(state);
}

BENCHMARK(BM_autograd_ops)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_autograd_linear)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_eigen_gemms)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

/// Prints the console report and remembers each benchmark's GFLOP/s: the median over repetitions
/// when --benchmark_repetitions is given, else the single run.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) {
      if (run.run_type == Run::RT_Aggregate && run.aggregate_name != "median") continue;
      const auto it = run.counters.find("GFLOP");
      if (!run.error_occurred && it != run.counters.end())
        gflops[run.run_name.str()] = it->second.value;
    }
    ConsoleReporter::ReportRuns(runs);
  }
  std::map<std::string, double> gflops;
};

double vm_hwm_mib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return -1;
}

/// VmHWM (MiB) of a fresh child process that runs `body` once, or -1 when it cannot be measured.
double child_peak_mib(const std::function<void()>& body) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  const pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    close(fds[0]);
    body();
    const double peak = vm_hwm_mib();
    const ssize_t written = write(fds[1], &peak, sizeof peak);
    _exit(written == sizeof peak ? 0 : 1);
  }
  close(fds[1]);
  double peak = -1;
  if (read(fds[0], &peak, sizeof peak) != sizeof peak) peak = -1;
  close(fds[0]);
  waitpid(pid, nullptr, 0);
  return peak;
}

void report_memory() {
  const double mib = 1.0 / (1024.0 * 1024.0);
  hgad::set_num_threads(1);
  // The children run first, while this process holds no tensors: a child starts from its parent's
  // resident memory, and the CPU backend keeps freed blocks for reuse.
  const double baseline = child_peak_mib([] {});
  const double ops = child_peak_mib([] {
    Problem p;
    p.step_ops();
  });
  const double linear = child_peak_mib([] {
    Problem p;
    p.step_linear();
  });
  const double eigen = child_peak_mib([] {
    EigenProblem p;
    p.step();
  });
  std::printf(
      "process VmHWM of one step in a fresh child: ops %.1f MiB, linear %.1f MiB, raw Eigen "
      "%.1f MiB (an idle child: %.1f MiB)\n",
      ops, linear, eigen, baseline);
  const double eigen_bytes =
      4.0 * (n_rows * n_in + n_in * n_hidden + n_hidden * n_out + n_rows * n_out +
             2.0 * n_rows * n_hidden + n_rows * n_out + n_hidden * n_out + n_in * n_hidden);
  std::printf("matrices of the raw Eigen step: %.1f MiB\n", eigen_bytes * mib);
  Problem p;
  const Index inputs = cpu().bytes_in_use();
  for (int variant = 0; variant < 2; ++variant) {
    p.step_ops();  // Gradients exist, as they do in a training loop.
    cpu().reset_peak_bytes();
    const Index before = cpu().bytes_in_use();
    p.zero_grad();
    variant == 0 ? p.step_ops() : p.step_linear();
    std::printf(
        "peak tensor memory of one step (%s): %.1f MiB (inputs and parameters %.1f MiB, "
        "gradients %.1f MiB, graph and intermediates at most %.1f MiB)\n",
        variant == 0 ? "ops" : "linear", cpu().peak_bytes() * mib, inputs * mib,
        (before - inputs) * mib, (cpu().peak_bytes() - before) * mib);
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Defaults (a flag given on the command line comes later and wins): five repetitions in random
  // order, so a drift of the machine's speed during the run biases no variant, reported as
  // median, mean and spread.
  std::vector<char*> args{argv[0]};
  std::string defaults[] = {"--benchmark_repetitions=5",
                            "--benchmark_enable_random_interleaving=true",
                            "--benchmark_report_aggregates_only=true", "--benchmark_min_time=0.5"};
  for (std::string& flag : defaults) args.push_back(flag.data());
  for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
  int n_args = static_cast<int>(args.size());
  argv = args.data();
  argc = n_args;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  report_memory();
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  for (const char* threads : {"1", "2"}) {
    const auto eigen =
        reporter.gflops.find(std::string("BM_eigen_gemms/") + threads + "/real_time");
    if (eigen == reporter.gflops.end()) continue;
    for (const char* variant : {"ops", "linear"}) {
      const auto it = reporter.gflops.find(std::string("BM_autograd_") + variant + "/" + threads +
                                           "/real_time");
      if (it == reporter.gflops.end()) continue;
      std::printf(
          "autograd (%s) / raw Eigen throughput at %s thread(s): %.1f / %.1f GFLOP/s = %.1f%% "
          "(target >= 85%%)\n",
          variant, threads, it->second, eigen->second, 100.0 * it->second / eigen->second);
    }
  }
  benchmark::Shutdown();
  return 0;
}
