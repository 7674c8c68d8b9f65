// Resuming a training (FitOptions::checkpoint_every / on_checkpoint / resume, save_checkpoint and
// load_checkpoint): a run stopped after a checkpoint and continued from the file ends on the model
// of the run that went through, bit for bit on one thread; also through a level device.
#include <catch2/catch.hpp>

#include <cstring>
#include <stdexcept>
#include <vector>

#include <hgad/cuda/level_engine.hpp>
#include <hgad/detail/parallel.hpp>
#include <hgad/model/hgad_model.hpp>

#include "detail/thread_count.hpp"
#include "io/temp_dir.hpp"
#include "model/device_parity.hpp"
#include "model/synthetic.hpp"

namespace resume_test {

namespace {

struct Stop : std::runtime_error {
  Stop() : std::runtime_error("stopped") {}
};

hgad::ModelConfig resume_config() {
  hgad::ModelConfig c = hgad_test::synthetic_config();
  c.meta_epochs = 3;
  c.sub_epochs = 2;  // the stop falls inside a meta-epoch
  c.warmup_meta_epochs = 1;
  c.stage1_meta_epochs = 1;
  return c;
}

}  // namespace

TEST_CASE("A training stopped after a checkpoint and resumed from it ends on the same model, bit for bit",
          "[model][resume]") {
  const hgad_test::ThreadCount one_thread(1);  // the order of every sum fixed
  hgad::ModelConfig c = resume_config();
  // Every position, or a share of them drawn per step (docs/algorithm.md §4.1): the resumed run
  // draws the positions of the steps it takes, not those of the first steps again.
  const double fraction = GENERATE(1.0, 0.5);
  c.position_fraction = {fraction};
  INFO("position_fraction = " << fraction);
  const hgad_test::Synthetic data = hgad_test::make_synthetic(4, 0, 21);
  hgad_test::TempDir dir("resume");
  const std::string file = dir.file("run.checkpoint");

  hgad::HgadModel<float> through(c);
  through.fit(data.features, data.classes);

  // Stopped in the fourth pass's on_epoch, after the checkpoint of pass 3 (meta-epoch 1, sub 0).
  hgad::HgadModel<float> stopped(c);
  hgad::FitOptions<float> options;
  options.checkpoint_every = 1;
  hgad::Index checkpoints = 0;
  options.on_checkpoint = [&](const hgad::HgadModel<float>& m, const hgad::TrainingState<float>& state) {
    ++checkpoints;
    CHECK(state.passes_done == checkpoints);
    CHECK(state.steps_done == 2 * checkpoints);  // 12 images in batches of 6
    m.save_checkpoint(file, state);
  };
  options.on_epoch = [&](const hgad::HgadModel<float>&, hgad::Index epoch) {
    if (epoch == 2) throw Stop();
  };
  CHECK_THROWS_AS(stopped.fit(data.features, data.classes, options), Stop);
  CHECK(checkpoints == 3);

  auto [resumed, state] = hgad::HgadModel<float>::load_checkpoint(file);
  CHECK(state.passes_done == 3);
  CHECK(resumed.epochs_trained() == 3);
  CHECK_FALSE(resumed.is_calibrated());
  REQUIRE(state.optimizers.size() == 2);
  CHECK(state.optimizers[0].at("prior.delta").step == 2);  // stage 2 began with meta-epoch 1
  CHECK(state.optimizers[0].at("prior.mu").step == 6);
  hgad::FitOptions<float> resume;
  resume.resume = &state;
  const hgad::FitReport<float> report = resumed.fit(data.features, data.classes, resume);
  CHECK(report.steps == 12);
  CHECK(resumed.epochs_trained() == through.epochs_trained());

  const std::vector<float> a = hgad_test::all_parameters(through), b = hgad_test::all_parameters(resumed);
  REQUIRE(a.size() == b.size());
  CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
  // The uninterrupted run moved them away from the stop's.
  const std::vector<float> at_stop = hgad_test::all_parameters(hgad::HgadModel<float>::load(file));
  CHECK(std::memcmp(a.data(), at_stop.data(), a.size() * sizeof(float)) != 0);
}

TEST_CASE("A training resumed through a level device ends where the uninterrupted one does",
          "[model][resume][device]") {
  using Scalar = double;
  using Host = hgad::EngineLevelDevice<Scalar, hgad::cuda::HostLevel<Scalar>>;
  const auto previous = hgad::register_level_device<Scalar>(
      hgad::Device::cuda, {[](hgad::SequenceFlow<Scalar>& flow, hgad::GaussianMixturePrior<Scalar>* prior,
                              const hgad::LevelTraining& training) {
                             return std::unique_ptr<hgad::LevelDevice<Scalar>>(
                                 new Host(hgad::Device::cuda, flow, prior, training));
                           },
                           {}});
  const hgad::ModelConfig c = resume_config();
  const hgad_test::Synthetic train = hgad_test::make_synthetic(4, 0, 22);
  std::vector<hgad::Tensor<Scalar>> features;
  for (const auto& f : train.features) {
    hgad::Tensor<Scalar> t(f.shape());
    for (hgad::Index i = 0; i < f.numel(); ++i) t.data()[i] = Scalar(f.data()[i]);
    features.push_back(t);
  }
  hgad_test::TempDir dir("resume_device");
  const std::string file = dir.file("run.checkpoint");

  hgad::HgadModel<Scalar> through(c);
  through.set_device(hgad::Device::cuda);
  through.fit(features, train.classes);

  hgad::HgadModel<Scalar> stopped(c);
  stopped.set_device(hgad::Device::cuda);
  hgad::FitOptions<Scalar> options;
  options.checkpoint_every = 2;
  options.on_checkpoint = [&](const hgad::HgadModel<Scalar>& m, const hgad::TrainingState<Scalar>& state) {
    m.save_checkpoint(file, state);
  };
  options.on_epoch = [&](const hgad::HgadModel<Scalar>&, hgad::Index epoch) {
    if (epoch == 3) throw Stop();
  };
  CHECK_THROWS_AS(stopped.fit(features, train.classes, options), Stop);

  auto [resumed, state] = hgad::HgadModel<Scalar>::load_checkpoint(file);
  CHECK(state.passes_done == 4);
  resumed.set_device(hgad::Device::cuda);
  hgad::FitOptions<Scalar> resume;
  resume.resume = &state;
  resumed.fit(features, train.classes, resume);
  CHECK(hgad_test::max_parameter_difference(resumed, through) < 1e-12);
  hgad::register_level_device<Scalar>(hgad::Device::cuda, previous);
}

TEST_CASE("Resuming checks that the checkpoint belongs to the run", "[model][resume]") {
  const hgad::ModelConfig c = resume_config();
  const hgad_test::Synthetic data = hgad_test::make_synthetic(4, 0, 23);
  hgad_test::TempDir dir("resume_errors");
  hgad::HgadModel<float> model(c);
  model.save(dir.file("plain.hgad"));
  CHECK_THROWS_WITH(hgad::HgadModel<float>::load_checkpoint(dir.file("plain.hgad")),
                    Catch::Contains("no training state"));

  hgad::TrainingState<float> state;
  state.passes_done = 1;
  state.steps_done = 2;
  state.optimizers.resize(2);
  hgad::FitOptions<float> options;
  options.resume = &state;
  // Other data: 2 images per class give 1 step per pass, not 2.
  CHECK_THROWS_WITH(model.fit(hgad_test::make_synthetic(2, 0, 24).features, {0, 0, 1, 1, 2, 2}, options),
                    Catch::Contains("does not belong to a run"));
  // Optimiser states that name no parameter of the model.
  CHECK_THROWS_WITH(model.fit(data.features, data.classes, options), Catch::Contains("no state for parameter"));
  state.passes_done = 7;  // more passes than the configuration has
  state.steps_done = 14;
  CHECK_THROWS_WITH(model.fit(data.features, data.classes, options), Catch::Contains("does not belong to a run"));
}

}  // namespace resume_test
