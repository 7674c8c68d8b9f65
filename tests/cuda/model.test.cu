// HgadModel on the GPU (set_device(Device::cuda) through hgad/cuda/model_device.cuh) against the
// same model on the CPU: training in double to 1e-8, and in both precisions a model trained on the
// GPU scoring on the CPU as on the GPU once saved and loaded (the model file does not depend on the
// device). tests/model/level_device.test.cpp runs the same comparisons with HostLevel, no GPU.
#include <memory>

#include <hgad/cuda/model_device.cuh>
#include <hgad/model/hgad_model.hpp>

#include "cuda_test_util.cuh"
#include "io/temp_dir.hpp"
#include "model/device_parity.hpp"
#include "model/synthetic.hpp"

namespace {

hgad::ModelConfig gpu_config() {
  hgad::ModelConfig c = hgad_test::synthetic_config();
  c.meta_epochs = 4;  // stage 1 for one meta-epoch, then stage 2
  c.stage1_meta_epochs = 1;
  return c;
}

}  // namespace

TEST_CASE("HgadModel trains and scores on the GPU as on the CPU (double)", "[cuda][model]") {
  HGAD_SKIP_WITHOUT_CUDA_DEVICE();
  hgad::cuda::register_model_devices();
  using Scalar = double;
  const hgad::ModelConfig c = gpu_config();
  const hgad_test::Synthetic train = hgad_test::make_synthetic(4, 0, 11);
  const hgad_test::Synthetic test = hgad_test::make_synthetic(1, 1, 12);
  const auto train_features = hgad_test::as_scalar<Scalar>(train.features), test_features = hgad_test::as_scalar<Scalar>(test.features);

  hgad::HgadModel<Scalar> cpu(c), gpu(c);
  cpu.fit(train_features, train.classes);
  gpu.set_device(hgad::Device::cuda);
  gpu.fit(train_features, train.classes);
  hgad::HgadModel<Scalar> untrained(c);  // the start of the first step (init = whiten's)
  untrained.initialise_from_data(train_features, train.classes);
  CHECK(hgad_test::max_parameter_difference(gpu, untrained) > 1e-3);
  const double params = hgad_test::max_parameter_difference(gpu, cpu);
  const double scores = hgad_test::max_score_difference(gpu, cpu, test_features, test.classes);
  WARN("HgadModel<double> GPU vs CPU after 8 steps: parameters " << params << ", raw scores " << scores);
  CHECK(params < 1e-8);
  CHECK(scores < 1e-8);
}

TEMPLATE_TEST_CASE("A model trained on the GPU scores on the CPU as on the GPU", "[cuda][model]", float, double) {
  HGAD_SKIP_WITHOUT_CUDA_DEVICE();
  hgad::cuda::register_model_devices();
  using Scalar = TestType;
  const double tolerance = std::is_same_v<Scalar, float> ? 1e-4 : 1e-10;
  const hgad::ModelConfig c = gpu_config();
  const hgad_test::Synthetic train = hgad_test::make_synthetic(4, 0, 13);
  const hgad_test::Synthetic test = hgad_test::make_synthetic(1, 1, 14);
  const auto train_features = hgad_test::as_scalar<Scalar>(train.features), test_features = hgad_test::as_scalar<Scalar>(test.features);

  hgad::HgadModel<Scalar> gpu(c);
  gpu.set_device(hgad::Device::cuda);
  gpu.fit(train_features, train.classes);
  gpu.calibrate(train_features, train.classes);
  hgad_test::TempDir dir("gpu_model");
  gpu.save(dir.file("gpu.hgad"));
  const auto cpu = hgad::HgadModel<Scalar>::load(dir.file("gpu.hgad"));
  const double raw = hgad_test::max_score_difference(gpu, cpu, test_features, test.classes);
  WARN("scores of a GPU-trained model, GPU vs CPU after loading: " << raw);
  CHECK(raw < tolerance);
  const auto on_gpu = gpu.score_set(test_features, test.classes, hgad::ScoreMode::calibrated);
  const auto on_cpu = cpu.score_set(test_features, test.classes, hgad::ScoreMode::calibrated);
  REQUIRE(on_gpu.size() == on_cpu.size());
  for (std::size_t i = 0; i < on_cpu.size(); ++i)
    CHECK(hgad_test::scaled_difference(on_gpu[i].score, on_cpu[i].score) < 10 * tolerance);
}

TEST_CASE("A GPU training stopped after a checkpoint and resumed ends where the uninterrupted one does",
          "[cuda][model]") {
  HGAD_SKIP_WITHOUT_CUDA_DEVICE();
  hgad::cuda::register_model_devices();
  hgad::ModelConfig c = gpu_config();
  c.sub_epochs = 2;
  const hgad_test::Synthetic train = hgad_test::make_synthetic(4, 0, 15);
  hgad_test::TempDir dir("gpu_resume");
  const std::string file = dir.file("run.checkpoint");

  hgad::HgadModel<float> through(c);
  through.set_device(hgad::Device::cuda);
  through.fit(train.features, train.classes);

  struct Stop {};
  hgad::HgadModel<float> stopped(c);
  stopped.set_device(hgad::Device::cuda);
  hgad::FitOptions<float> options;
  options.checkpoint_every = 1;
  options.on_checkpoint = [&](const hgad::HgadModel<float>& m, const hgad::TrainingState<float>& state) {
    m.save_checkpoint(file, state);
  };
  options.on_epoch = [](const hgad::HgadModel<float>&, hgad::Index epoch) {
    if (epoch == 4) throw Stop();
  };
  CHECK_THROWS_AS(stopped.fit(train.features, train.classes, options), Stop);

  auto [resumed, state] = hgad::HgadModel<float>::load_checkpoint(file);
  CHECK(state.passes_done == 5);
  resumed.set_device(hgad::Device::cuda);
  hgad::FitOptions<float> resume;
  resume.resume = &state;
  resumed.fit(train.features, train.classes, resume);
  const double difference = hgad_test::max_parameter_difference(resumed, through);
  WARN("GPU run resumed after 5 of 8 passes vs uninterrupted: parameters differ by " << difference);
  CHECK(difference < 1e-5);
}
