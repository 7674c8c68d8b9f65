// Data-parallel training over Open MPI (parallel/mpi_communicator.hpp), run by mpi_check.sh under
// `mpirun -np R`:
//   hgad_mpi_fit compare          R ranks train the synthetic problem twice; rank 0 also trains it
//                                 alone. Exit 0 when every rank holds rank 0's bits, the two runs
//                                 agree bit for bit and the model is the one process's to float
//                                 reduction-order tolerance, in float and double.
//   hgad_mpi_fit die FILE         a long training that checkpoints to FILE every pass; rank 1
//                                 kills itself (SIGKILL) once FILE exists. Never ends normally.
//   hgad_mpi_fit check FILE       (one process) FILE loads as a checkpoint of passes done >= 1.
//   hgad_mpi_fit time             a measurement, not a test: the seconds of a small training (the
//                                 same global batches whatever R) and of one all-reduce of a
//                                 level's gradients; run alone with OMP_NUM_THREADS=2 or under
//                                 mpirun -np 2 with OMP_NUM_THREADS=1 (docs/results.md §6).
#include <signal.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <hgad/detail/atomic_file.hpp>
#include <hgad/detail/parallel.hpp>
#include <hgad/model/hgad_model.hpp>
#include <hgad/parallel/mpi_communicator.hpp>

#include "model/parameters.hpp"
#include "model/synthetic.hpp"

namespace {

using hgad::Index;

hgad::ModelConfig parallel_config() {
  hgad::ModelConfig c = hgad_test::synthetic_config();
  c.batch_size = 7;  // shards of 3 and 4 images on 2 ranks
  c.meta_epochs = 4;
  c.sub_epochs = 1;
  c.warmup_meta_epochs = 1;
  c.stage1_meta_epochs = 2;
  return c;
}

template <class Scalar>
std::vector<Scalar> fit_parameters(const hgad::ModelConfig& c, const hgad_test::Synthetic& data,
                                   hgad::Communicator* comm) {
  hgad::HgadModel<Scalar> model(c);
  hgad::FitOptions<Scalar> options;
  options.communicator = comm;
  model.fit(hgad_test::as_scalar<Scalar>(data.features), data.classes, options);
  return hgad_test::all_parameters(model);
}

// Whether every check of one scalar type passes on this rank (rank 0 also compares with one
// process).
template <class Scalar>
bool compare(hgad::MpiCommunicator& world, const hgad_test::Synthetic& data, double tolerance) {
  const char* type = sizeof(Scalar) == 4 ? "float" : "double";
  const hgad::ModelConfig c = parallel_config();
  const std::vector<Scalar> first = fit_parameters<Scalar>(c, data, &world);
  const std::vector<Scalar> second = fit_parameters<Scalar>(c, data, &world);
  bool ok = first.size() == second.size() &&
            std::memcmp(first.data(), second.data(), first.size() * sizeof(Scalar)) == 0;
  if (!ok) std::fprintf(stderr, "rank %d (%s): two runs differ\n", world.rank(), type);
  std::vector<Scalar> rank0 = first;
  world.broadcast(rank0.data(), Index(rank0.size()), 0);
  if (std::memcmp(rank0.data(), first.data(), first.size() * sizeof(Scalar)) != 0) {
    std::fprintf(stderr, "rank %d (%s): parameters differ from rank 0's\n", world.rank(), type);
    ok = false;
  }
  if (world.rank() == 0) {
    const std::vector<Scalar> alone = fit_parameters<Scalar>(c, data, nullptr);
    double worst = 0, moved = 0;
    hgad::HgadModel<Scalar> initial(c);  // the start before the first step (init = whiten's)
    initial.initialise_from_data(hgad_test::as_scalar<Scalar>(data.features), data.classes);
    const std::vector<Scalar> start = hgad_test::all_parameters(initial);
    for (std::size_t i = 0; i < alone.size(); ++i) {
      worst = std::max(worst, hgad_test::scaled_difference(double(first[i]), double(alone[i])));
      moved = std::max(moved, std::abs(double(alone[i]) - double(start[i])));
    }
    std::printf(
        "%s: %d ranks against one process: largest relative difference %.3g (tolerance %.3g), "
        "training moved the parameters by up to %.3g\n",
        type, world.size(), worst, tolerance, moved);
    if (!(worst <= tolerance) || !(moved > 1e-2)) ok = false;
  }
  return ok;
}

int run_compare(int argc, char** argv) {
  hgad::MpiCommunicator world(&argc, &argv);
  hgad::set_num_threads(1);
  const hgad_test::Synthetic data = hgad_test::make_synthetic(5, 0, 31);
  // Both run on every rank whatever the first found: the ranks must call the same collectives.
  const bool float_ok = compare<float>(world, data, 1e-5);
  const bool double_ok = compare<double>(world, data, 1e-12);
  const bool ok = float_ok && double_ok;
  // The job passes when every rank passed.
  const std::vector<int> all = world.all_gather(int(ok));
  for (int v : all)
    if (!v) return 1;
  if (world.rank() == 0) std::printf("compare: passed on %d ranks\n", world.size());
  return 0;
}

int run_die(int argc, char** argv, const std::string& file) {
  hgad::detail::remove_temporaries_on_signals();
  hgad::MpiCommunicator world(&argc, &argv);
  hgad::set_num_threads(1);
  if (world.rank() == 1) {
    std::thread([file] {
      while (!std::filesystem::exists(file))
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      std::fprintf(stderr, "rank 1: the checkpoint exists; killing myself\n");
      ::raise(SIGKILL);
    }).detach();
  }
  hgad::ModelConfig c = parallel_config();
  c.meta_epochs = 100000;  // long enough to be interrupted
  const hgad_test::Synthetic data = hgad_test::make_synthetic(5, 0, 31);
  hgad::HgadModel<float> model(c);
  hgad::FitOptions<float> options;
  options.communicator = &world;
  options.checkpoint_every = 1;
  options.on_checkpoint = [&](const hgad::HgadModel<float>& m,
                              const hgad::TrainingState<float>& state) {
    m.save_checkpoint(file, state);
  };
  model.fit(data.features, data.classes, options);
  std::fprintf(stderr, "rank %d: the training ended although rank 1 died\n", world.rank());
  return 1;
}

int run_time(int argc, char** argv) {
  std::unique_ptr<hgad::MpiCommunicator> world;
  if (hgad::MpiCommunicator::launched())
    world = std::make_unique<hgad::MpiCommunicator>(&argc, &argv);
  const int R = world ? world->size() : 1;
  hgad::ModelConfig c = hgad_test::synthetic_config();
  c.levels = {{64, 16, 16}, {128, 8, 8}};
  c.pos_dim = 32;
  c.n_blocks = 4;
  c.batch_size = 8;
  c.meta_epochs = 6;
  c.sub_epochs = 1;
  const Index N = 64;  // 8 steps per pass, 48 steps
  hgad::Rng rng(3);
  const std::vector<hgad::Tensor<float>> features = {
      hgad::Tensor<float>::randn({N, 16, 16, 64}, rng),
      hgad::Tensor<float>::randn({N, 8, 8, 128}, rng)};
  std::vector<std::int64_t> labels;
  for (Index i = 0; i < N; ++i) labels.push_back(i % 3);
  hgad::HgadModel<float> model(c);
  hgad::FitOptions<float> options;
  options.communicator = world.get();
  const auto start = std::chrono::steady_clock::now();
  const hgad::FitReport<float> report = model.fit(features, labels, options);
  const double fit_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // One all-reduce of the largest level's gradients and six loss values, as the hook sends it.
  Index largest = 0;
  for (Index l = 0; l < model.n_levels(); ++l) {
    Index n = 6;
    for (const auto& p : model.flow(l).parameters()) n += p.value().numel();
    for (const auto& p : model.prior(l).parameters()) n += p.value().numel();
    largest = std::max(largest, n);
  }
  // Seconds of one all-reduce of n floats (0 without MPI).
  const auto time_all_reduce = [&](Index n, int repeats) {
    if (!world) return 0.0;
    std::vector<float> buffer(static_cast<std::size_t>(n), 1.0f);
    world->all_reduce_sum(buffer.data(), n);  // warm-up
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < repeats; ++i) world->all_reduce_sum(buffer.data(), n);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / repeats;
  };
  const double reduce_seconds = time_all_reduce(largest, 200);
  // One level of the paper's flows (scripts/paper.cfg: D = 256, P = 256, 12 blocks) with K = 30
  // classes of M = 10 centres (Real-IAD): hgad::parameter_count of that level, and the six losses.
  hgad::ModelConfig paper;
  paper.levels = {{256, 16, 16}};
  paper.class_names.assign(30, "c");
  const auto paper_level = static_cast<Index>(hgad::parameter_count(paper)) + 6;
  const double paper_seconds = time_all_reduce(paper_level, 5);
  if (!world || world->rank() == 0)
    std::printf(
        "ranks %d, threads per rank %d: %lld steps in %.3f s (%.2f ms per step, %.0f vectors/s); "
        "all-reduce of %lld floats: %.1f us\n",
        R, hgad::max_threads(), static_cast<long long>(report.steps), fit_seconds,
        1e3 * fit_seconds / double(report.steps),
        double(report.steps) * double(c.batch_size) * (16 * 16 + 8 * 8) / fit_seconds,
        static_cast<long long>(largest), 1e6 * reduce_seconds);
  if (world && world->rank() == 0)
    std::printf("all-reduce of one level of the paper's size, %lld floats: %.2f ms\n",
                static_cast<long long>(paper_level), 1e3 * paper_seconds);
  return 0;
}

int run_check(const std::string& file) {
  const auto [model, state] = hgad::HgadModel<float>::load_checkpoint(file);
  std::printf("%s: a checkpoint of %lld passes, %lld steps\n", file.c_str(),
              static_cast<long long>(state.passes_done), static_cast<long long>(state.steps_done));
  return state.passes_done >= 1 && model.n_levels() == 2 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc >= 2 ? argv[1] : "";
  try {
    if (mode == "compare") return run_compare(argc, argv);
    if (mode == "die" && argc == 3) return run_die(argc, argv, argv[2]);
    if (mode == "check" && argc == 3) return run_check(argv[2]);
    if (mode == "time") return run_time(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hgad_mpi_fit %s: %s\n", mode.c_str(), e.what());
    return 1;
  }
  std::fprintf(stderr, "usage: hgad_mpi_fit compare | die FILE | check FILE | time\n");
  return 2;
}
