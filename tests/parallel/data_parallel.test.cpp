// Data-parallel fit (FitOptions::communicator) over the in-process transport: R ranks as threads
// train the same model as one process with the same global batch, on the CPU's levels and on the
// device levels' engine (HostLevel registered as the CUDA level: the GPU's step and its flat
// gradient hook, run on the CPU).
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <hgad/detail/parallel.hpp>
#include <hgad/model/hgad_model.hpp>
#include <hgad/parallel/communicator.hpp>

#include "detail/thread_count.hpp"
#include "model/host_level_as_cuda.hpp"
#include "model/parameters.hpp"
#include "model/synthetic.hpp"
#include "parallel/ranks.hpp"

namespace data_parallel_test {

using hgad::Index;

namespace {

// 15 images (5 per class) in batches of 7: two steps per pass, and shards of 3 + 4 (R = 2) and
// 2 + 2 + 3 (R = 3) images, so the weights of the parts differ. Four meta-epochs reach stage 2.
hgad::ModelConfig parallel_config() {
  hgad::ModelConfig c = hgad_test::synthetic_config();
  c.batch_size = 7;
  c.meta_epochs = 4;
  c.sub_epochs = 1;
  c.warmup_meta_epochs = 1;
  c.stage1_meta_epochs = 2;
  return c;
}

template <class Scalar>
struct RankResult {
  std::vector<Scalar> parameters;
  std::vector<hgad::LossTerms<Scalar>> final_terms;
  int on_step_calls = 0;
  int on_epoch_calls = 0;
  int device_sums = 0;  // gradient buffers summed by SumsOnDevice
};

// A rank's communicator that sums buffers "in the memory of" the CPU itself, as NcclCommunicator
// does in a GPU's (Communicator::all_reduce_sum_on), by the host's rank-order sum; it counts the
// buffers it summed so. Everything else goes to the rank's own communicator.
class SumsOnDevice final : public hgad::ForwardingCommunicator {
 public:
  explicit SumsOnDevice(hgad::Communicator& inner) : ForwardingCommunicator(inner) {}
  int device_sums = 0;

 protected:
  bool device_all_reduce_sum(hgad::Device device, float* data, Index n) override {
    return sum(device, data, n);
  }
  bool device_all_reduce_sum(hgad::Device device, double* data, Index n) override {
    return sum(device, data, n);
  }

 private:
  template <class T>
  bool sum(hgad::Device device, T* data, Index n) {
    if (device != hgad::Device::cpu) return false;
    inner().all_reduce_sum(data, n);
    ++device_sums;
    return true;
  }
};

// How the ranks train: on the CPU's levels, or on the device levels' engine (HostLevel as the
// CUDA level; the caller registers it) with the host's sums or with SumsOnDevice's.
enum class Levels { cpu, engine, engine_summing_on_device };

// Trains parallel_config() on R ranks (threads, one OpenMP thread each).
template <class Scalar>
std::vector<RankResult<Scalar>> fit_on_ranks(
    int R, const std::vector<hgad::Tensor<Scalar>>& features,
    const std::vector<std::int64_t>& classes,
    std::vector<hgad_test::RankOutcome>* outcomes = nullptr,
    const hgad::ModelConfig& c = parallel_config(), Levels levels = Levels::cpu) {
  hgad::InProcessGroup group(R, std::chrono::seconds(60));
  std::vector<RankResult<Scalar>> results(static_cast<std::size_t>(R));
  const auto out = hgad_test::run_ranks(group, [&](hgad::Communicator& comm, int r) {
    hgad::set_num_threads(1);  // this thread's OpenMP setting: one thread per rank
    hgad::HgadModel<Scalar> model(c);
    if (levels != Levels::cpu) model.set_device(hgad::Device::cuda);
    SumsOnDevice summing(comm);
    RankResult<Scalar>& result = results[std::size_t(r)];
    hgad::FitOptions<Scalar> options;
    options.communicator = levels == Levels::engine_summing_on_device
                               ? static_cast<hgad::Communicator*>(&summing)
                               : &comm;
    options.on_step = [&](const hgad::FitProgress<Scalar>&) { ++result.on_step_calls; };
    options.on_epoch = [&](const hgad::HgadModel<Scalar>&, Index) { ++result.on_epoch_calls; };
    result.final_terms = model.fit(features, classes, options).final_terms;
    result.parameters = hgad_test::all_parameters(model);
    result.device_sums = summing.device_sums;
  });
  if (outcomes != nullptr) *outcomes = out;
  if (outcomes == nullptr)
    for (const auto& o : out) {
      INFO(o.message);
      REQUIRE_FALSE(o.threw);
    }
  return results;
}

}  // namespace

TEMPLATE_TEST_CASE(
    "Data-parallel fit on 2 and 3 ranks trains the model of one process with the same batch",
    "[parallel]", float, double) {
  using Scalar = TestType;
  const hgad_test::Synthetic data = hgad_test::make_synthetic(5, 0, 31);
  const auto features = hgad_test::as_scalar<Scalar>(data.features);
  hgad::ModelConfig c = parallel_config();
  // Every position, or a share drawn per step (docs/algorithm.md §4.1), the same on every rank.
  const double fraction = GENERATE(1.0, 0.5);
  c.position_fraction = {fraction};
  // Noise on the flow's input (§4.2), drawn per image's place in the batch: every rank adds to its
  // images what one process adds to them.
  c.feature_noise = GENERATE(0.0, 0.2);
  INFO("position_fraction = " << fraction << ", feature_noise = " << c.feature_noise);

  std::vector<Scalar> reference;
  std::vector<hgad::LossTerms<Scalar>> reference_terms;
  {
    const hgad_test::ThreadCount one_thread(1);
    hgad::HgadModel<Scalar> model(c);
    const std::vector<Scalar> initial = hgad_test::all_parameters(model);
    reference_terms = model.fit(features, data.classes).final_terms;
    reference = hgad_test::all_parameters(model);
    // The training moved the parameters well beyond the tolerance below.
    REQUIRE(hgad_test::largest_difference(reference, initial) > 1e-2);
  }
  // The parts' sums and their weighted sum round differently from the one batch's sum, and 8 Adam
  // steps carry the difference on: measured 5e-8 in float and 2e-16 in double (R = 2 and 3).
  const double tolerance = std::is_same_v<Scalar, float> ? 1e-5 : 1e-12;
  for (int R : {2, 3}) {
    INFO("R = " << R);
    const auto results = fit_on_ranks<Scalar>(R, features, data.classes, nullptr, c);
    for (int r = 0; r < R; ++r) {
      INFO("rank " << r);
      const RankResult<Scalar>& got = results[std::size_t(r)];
      CHECK(hgad_test::largest_difference(got.parameters, reference) <= tolerance);
      // Every rank holds the same bits.
      REQUIRE(got.parameters.size() == results[0].parameters.size());
      CHECK(std::memcmp(got.parameters.data(), results[0].parameters.data(),
                        got.parameters.size() * sizeof(Scalar)) == 0);
      // The reported loss terms are the batch's, reduced the same way.
      REQUIRE(got.final_terms.size() == reference_terms.size());
      for (std::size_t l = 0; l < reference_terms.size(); ++l)
        for (std::size_t k = 0; k < reference_terms[l].named().size(); ++k) {
          const auto [name, expected] = reference_terms[l].named()[k];
          const Scalar value = got.final_terms[l].named()[k].second;
          INFO("level " << l << ", " << name);
          REQUIRE(std::isfinite(double(value)));
          CHECK(std::abs(double(value) - double(expected)) <=
                tolerance * (1 + std::abs(double(expected))) * 10);
        }
      // Only rank 0 runs the callbacks: 4 passes of 2 steps.
      CHECK(got.on_step_calls == (r == 0 ? 8 : 0));
      CHECK(got.on_epoch_calls == (r == 0 ? 4 : 0));
    }
  }
}

TEMPLATE_TEST_CASE(
    "Data-parallel fit on the device levels' engine trains the engine's model of one process, "
    "through the host or summing where the gradients live",
    "[parallel][device]", float, double) {
  using Scalar = TestType;
  const hgad_test::HostLevelAsCuda<Scalar> registered;
  const hgad_test::Synthetic data = hgad_test::make_synthetic(5, 0, 35);
  const auto features = hgad_test::as_scalar<Scalar>(data.features);
  const hgad::ModelConfig c = parallel_config();

  std::vector<Scalar> reference, initial;
  {
    const hgad_test::ThreadCount one_thread(1);
    hgad::HgadModel<Scalar> model(c);
    model.set_device(hgad::Device::cuda);
    initial = hgad_test::all_parameters(model);
    model.fit(features, data.classes);
    reference = hgad_test::all_parameters(model);
    REQUIRE(hgad_test::largest_difference(reference, initial) > 1e-2);
  }
  // As on the CPU's levels: the parts' weighted sums round differently from the batch's sum.
  const double tolerance = std::is_same_v<Scalar, float> ? 1e-5 : 1e-12;
  for (int R : {2, 3}) {
    INFO("R = " << R);
    const auto through_host = fit_on_ranks<Scalar>(R, features, data.classes, nullptr, c, Levels::engine);
    const auto on_device =
        fit_on_ranks<Scalar>(R, features, data.classes, nullptr, c, Levels::engine_summing_on_device);
    for (int r = 0; r < R; ++r) {
      INFO("rank " << r);
      const RankResult<Scalar>& host = through_host[std::size_t(r)];
      const RankResult<Scalar>& device = on_device[std::size_t(r)];
      CHECK(hgad_test::largest_difference(host.parameters, reference) <= tolerance);
      REQUIRE(host.parameters.size() == through_host[0].parameters.size());
      CHECK(std::memcmp(host.parameters.data(), through_host[0].parameters.data(),
                        host.parameters.size() * sizeof(Scalar)) == 0);
      // Summing the gradients where they live takes the same rank-order sums: the same bits.
      CHECK(host.device_sums == 0);
      CHECK(device.device_sums == 16);  // 8 steps, 2 levels
      REQUIRE(device.parameters.size() == host.parameters.size());
      CHECK(std::memcmp(device.parameters.data(), host.parameters.data(),
                        host.parameters.size() * sizeof(Scalar)) == 0);
      REQUIRE(device.final_terms.size() == host.final_terms.size());
      for (std::size_t l = 0; l < host.final_terms.size(); ++l)
        for (std::size_t k = 0; k < host.final_terms[l].named().size(); ++k) {
          INFO("level " << l << ", " << host.final_terms[l].named()[k].first);
          CHECK(device.final_terms[l].named()[k].second == host.final_terms[l].named()[k].second);
        }
    }
  }
}

TEST_CASE("Two data-parallel fits on 2 ranks give the same parameters bit for bit", "[parallel]") {
  const hgad_test::Synthetic data = hgad_test::make_synthetic(5, 0, 32);
  const auto first = fit_on_ranks<float>(2, data.features, data.classes);
  const auto second = fit_on_ranks<float>(2, data.features, data.classes);
  for (int r = 0; r < 2; ++r) {
    REQUIRE(first[std::size_t(r)].parameters.size() == second[std::size_t(r)].parameters.size());
    for (float v : first[std::size_t(r)].parameters) REQUIRE(std::isfinite(v));
    CHECK(std::memcmp(first[std::size_t(r)].parameters.data(),
                      second[std::size_t(r)].parameters.data(),
                      first[std::size_t(r)].parameters.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("A data-parallel fit stops on every rank, naming the cause, when one rank fails",
          "[parallel]") {
  const hgad_test::Synthetic data = hgad_test::make_synthetic(5, 0, 33);

  std::vector<hgad::Tensor<float>> with_nan;  // Tensor copies share their values: clone
  for (const auto& f : data.features) with_nan.push_back(f.clone());
  with_nan[0].data()[0] = std::numeric_limits<float>::quiet_NaN();  // image 0, level 0

  SECTION("a NaN in one image stops the rank that trains it, and the others hear of it") {
    // The paper's start, which reads no feature before the steps: the NaN reaches the training
    // step of the rank whose share of the batch holds image 0.
    hgad::ModelConfig c = parallel_config();
    c.init = hgad::ModelInit::identity;
    std::vector<hgad_test::RankOutcome> outcomes;
    const auto start = std::chrono::steady_clock::now();
    fit_on_ranks<float>(2, with_nan, data.classes, &outcomes, c);
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(30));
    int non_finite = 0, peers = 0;
    for (const auto& o : outcomes) {
      INFO(o.message);
      REQUIRE(o.threw);
      if (o.peer_failure) {
        ++peers;
        CHECK_THAT(o.message, Catch::Contains("failed:") && Catch::Contains("is nan at level 0"));
      } else {
        ++non_finite;
        CHECK_THAT(o.message, Catch::Contains("is nan at level 0"));
      }
    }
    CHECK(non_finite == 1);
    CHECK(peers == 1);
  }

  SECTION("with the data-dependent start every rank refuses a NaN before the first step") {
    // init = whiten estimates the whitening from all N images on every rank alike.
    std::vector<hgad_test::RankOutcome> outcomes;
    const auto results = fit_on_ranks<float>(2, with_nan, data.classes, &outcomes);
    for (std::size_t r = 0; r < outcomes.size(); ++r) {
      INFO(outcomes[r].message);
      REQUIRE(outcomes[r].threw);
      CHECK_THAT(outcomes[r].message, Catch::Contains("level 0") &&
                                          Catch::Contains("non-finite value (nan) at vector 0"));
      CHECK(results[r].on_step_calls == 0);
    }
  }

  SECTION("ranks with different training data refuse to start") {
    hgad::InProcessGroup group(2, std::chrono::seconds(30));
    const auto outcomes = hgad_test::run_ranks(group, [&](hgad::Communicator& comm, int r) {
      hgad::set_num_threads(1);
      std::vector<hgad::Tensor<float>> features;
      for (const auto& f : data.features) features.push_back(f.clone());
      if (r == 1) features[1].data()[5] += 1.0f;
      hgad::HgadModel<float> model(parallel_config());
      hgad::FitOptions<float> options;
      options.communicator = &comm;
      model.fit(features, data.classes, options);
    });
    for (const auto& o : outcomes) {
      INFO(o.message);
      CHECK(o.threw);
      CHECK_THAT(o.message, Catch::Contains("the ranks disagree on the training data"));
    }
  }

  SECTION("a batch smaller than the number of ranks is refused") {
    hgad::ModelConfig c = parallel_config();
    c.batch_size = 2;
    std::vector<hgad_test::RankOutcome> outcomes;
    fit_on_ranks<float>(3, data.features, data.classes, &outcomes, c);
    for (const auto& o : outcomes) {
      INFO(o.message);
      CHECK(o.threw);
      CHECK_THAT(o.message, Catch::Contains("a batch of 2 images cannot be split over 3 ranks"));
    }
  }
}

TEST_CASE(
    "A data-parallel fit resumed from rank 0's checkpoint ends where the uninterrupted one does, "
    "bit for bit",
    "[parallel][resume]") {
  const hgad_test::Synthetic data = hgad_test::make_synthetic(5, 0, 34);
  const auto through = fit_on_ranks<float>(2, data.features, data.classes);

  // The same run, its state kept at the checkpoint after pass 2 (rank 0's callback), then stopped.
  struct Stop {};  // not a std::exception: fit() tells the other rank all the same
  hgad::TrainingState<float> saved;
  hgad::Checkpoint saved_model;
  std::vector<int> stopped(2, 0);
  {
    hgad::InProcessGroup group(2, std::chrono::seconds(60));
    const auto outcomes = hgad_test::run_ranks(group, [&](hgad::Communicator& comm, int r) {
      hgad::set_num_threads(1);
      hgad::HgadModel<float> model(parallel_config());
      hgad::FitOptions<float> options;
      options.communicator = &comm;
      options.checkpoint_every = 2;
      options.on_checkpoint = [&](const hgad::HgadModel<float>& m,
                                  const hgad::TrainingState<float>& state) {
        saved = state;
        saved_model = m.to_checkpoint();
        throw Stop{};
      };
      try {
        model.fit(data.features, data.classes, options);
      } catch (const Stop&) {
        stopped[std::size_t(r)] = 1;
      }
    });
    CHECK(stopped == std::vector<int>{1, 0});
    CHECK_FALSE(outcomes[0].threw);
    CHECK(outcomes[1].peer_failure);  // rank 1 hears of rank 0's stop
    CHECK_THAT(outcomes[1].message, Catch::Contains("rank 0 failed"));
  }
  REQUIRE(saved.passes_done == 2);

  // Both ranks continue from rank 0's state and model (its parameters and the whitening of the
  // start), as hgad train --resume loads one file.
  hgad::InProcessGroup group(2, std::chrono::seconds(60));
  std::vector<std::vector<float>> resumed(2);
  const auto outcomes = hgad_test::run_ranks(group, [&](hgad::Communicator& comm, int r) {
    hgad::set_num_threads(1);
    hgad::HgadModel<float> model =
        hgad::HgadModel<float>::from_checkpoint(saved_model, "rank 0's checkpoint");
    hgad::FitOptions<float> options;
    options.communicator = &comm;
    options.resume = &saved;
    model.fit(data.features, data.classes, options);
    resumed[std::size_t(r)] = hgad_test::all_parameters(model);
  });
  for (int r = 0; r < 2; ++r) {
    INFO(outcomes[std::size_t(r)].message);
    REQUIRE_FALSE(outcomes[std::size_t(r)].threw);
    REQUIRE(resumed[std::size_t(r)].size() == through[std::size_t(r)].parameters.size());
    for (float v : resumed[std::size_t(r)]) REQUIRE(std::isfinite(v));
    CHECK(std::memcmp(resumed[std::size_t(r)].data(), through[std::size_t(r)].parameters.data(),
                      resumed[std::size_t(r)].size() * sizeof(float)) == 0);
  }
}

TEMPLATE_TEST_CASE(
    "Calibration split over 2 and 3 ranks stores the calibration of one process on every rank, "
    "bit for bit",
    "[parallel][calibration]", float, double) {
  using Scalar = TestType;
  const hgad_test::Synthetic data = hgad_test::make_synthetic(5, 0, 36);
  const auto features = hgad_test::as_scalar<Scalar>(data.features);
  for (int variant = 0; variant < 2; ++variant) {
    hgad::ModelConfig c = parallel_config();
    if (variant == 1) {  // per-position baselines, and a subset of each class's images
      c.calibration_baseline = hgad::CalibrationBaseline::position;
      c.calibration_images = 4;
    }
    INFO("variant " << variant);
    std::vector<hgad::ClassCalibration> reference;
    {
      const hgad_test::ThreadCount one_thread(1);
      hgad::HgadModel<Scalar> model(c);
      model.calibrate(features, data.classes);
      for (Index k = 0; k <= model.n_classes(); ++k) reference.push_back(model.calibration(k));
    }
    const Index images = variant == 1 ? 12 : 15;  // 3 classes of 5 images, at most 4 each
    for (int R : {2, 3}) {
      INFO("R = " << R);
      hgad::InProcessGroup group(R, std::chrono::seconds(60));
      std::vector<std::vector<hgad::ClassCalibration>> got(static_cast<std::size_t>(R));
      std::vector<Index> scored(static_cast<std::size_t>(R), 0);
      const auto outcomes = hgad_test::run_ranks(group, [&](hgad::Communicator& comm, int r) {
        hgad::set_num_threads(1);
        hgad::HgadModel<Scalar> model(c);
        model.calibrate(
            features, data.classes, [&](Index, Index) { ++scored[std::size_t(r)]; }, &comm);
        for (Index k = 0; k <= model.n_classes(); ++k)
          got[std::size_t(r)].push_back(model.calibration(k));
      });
      for (int r = 0; r < R; ++r) {
        INFO("rank " << r << ": " << outcomes[std::size_t(r)].message);
        REQUIRE_FALSE(outcomes[std::size_t(r)].threw);
        CHECK(scored[std::size_t(r)] == hgad::shard_rows(images, R, r).size());  // its part alone
        REQUIRE(got[std::size_t(r)].size() == reference.size());
        for (std::size_t k = 0; k < reference.size(); ++k) {
          INFO("entry " << k);
          const hgad::ClassCalibration& a = got[std::size_t(r)][k];
          const hgad::ClassCalibration& b = reference[k];
          CHECK(a.log_likelihood.level_max == b.log_likelihood.level_max);
          CHECK(a.log_likelihood.sum_max == b.log_likelihood.sum_max);
          CHECK(a.neg_entropy.level_max == b.neg_entropy.level_max);
          CHECK(a.neg_entropy.sum_max == b.neg_entropy.sum_max);
          CHECK(a.train_score_max == b.train_score_max);
          CHECK(a.threshold == b.threshold);
          CHECK(a.log_likelihood_baseline == b.log_likelihood_baseline);
          CHECK(a.neg_entropy_baseline == b.neg_entropy_baseline);
          CHECK(a.class_posterior == b.class_posterior);
          CHECK(std::isfinite(a.threshold));
        }
      }
    }
  }
}

}  // namespace data_parallel_test
