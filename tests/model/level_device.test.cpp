// The device seam under HgadModel (level_device.hpp): the errors of a program without CUDA, and
// HgadModel trained and scored through a registered level device. The device registered here is
// HostLevel, the GPU's level algorithm run on the CPU (cuda/level_engine.hpp), so the model's use
// of the seam (copies of the parameters, the learning rate, the stages, the scores' flows) is
// checked without a GPU; tests/cuda/model.test.cu runs the same comparison with CudaLevel.
#include <catch2/catch.hpp>

#include <memory>
#include <utility>

#include <hgad/cuda/level_engine.hpp>
#include <hgad/level_device.hpp>
#include <hgad/model/hgad_model.hpp>

#include "io/temp_dir.hpp"
#include "model/device_parity.hpp"
#include "model/host_level_as_cuda.hpp"
#include "model/synthetic.hpp"

namespace level_device_test {

namespace {

using hgad::Device;

}  // namespace

TEST_CASE("Asking for CUDA in a program without hgad's CUDA part names the build option", "[model][device]") {
  REQUIRE_FALSE(hgad::level_device_registered<float>(Device::cuda));
  hgad::HgadModel<float> model(hgad_test::synthetic_config());
  CHECK_THROWS_WITH(model.set_device(Device::cuda), Catch::Contains("HGAD_ENABLE_CUDA"));
  CHECK(model.device() == Device::cpu);
  CHECK_THROWS_WITH(hgad::make_level_device<float>(Device::cuda, model.flow(0), &model.prior(0), {}),
                    Catch::Contains("HGAD_ENABLE_CUDA"));
  CHECK(hgad::parse_device("cuda") == Device::cuda);
  CHECK(hgad::parse_device("cpu") == Device::cpu);
  CHECK_THROWS_WITH(hgad::parse_device("tpu"), Catch::Contains("'tpu'"));
}

TEST_CASE("HgadModel trained and scored through a registered level device equals the CPU model",
          "[model][device]") {
  using Scalar = double;
  hgad::ModelConfig c = hgad_test::synthetic_config();
  c.meta_epochs = 4;  // stage 1 for one meta-epoch, then stage 2 (delta and phi_intra train too)
  c.stage1_meta_epochs = 1;
  // Every position, or half of them per step: the device gets the gathered rows and encodings.
  const double fraction = GENERATE(1.0, 0.5);
  c.position_fraction = {fraction};
  INFO("position_fraction = " << fraction);
  const hgad_test::Synthetic train = hgad_test::make_synthetic(4, 0, 11);
  const hgad_test::Synthetic test = hgad_test::make_synthetic(1, 1, 12);
  const auto train_features = hgad_test::as_scalar<Scalar>(train.features), test_features = hgad_test::as_scalar<Scalar>(test.features);

  hgad::HgadModel<Scalar> cpu(c);
  cpu.fit(train_features, train.classes);
  cpu.calibrate(train_features, train.classes);

  hgad_test::HostLevelAsCuda<Scalar> registered;
  hgad::HgadModel<Scalar> device(c);
  device.set_device(Device::cuda);
  CHECK(device.device() == Device::cuda);
  const hgad::FitReport<Scalar> report = device.fit(train_features, train.classes);
  CHECK(report.steps == 8);
  device.calibrate(train_features, train.classes);

  // Training moved the parameters, and both devices moved them alike.
  hgad::HgadModel<Scalar> untrained(c);  // the start of the first step (init = whiten's)
  untrained.initialise_from_data(train_features, train.classes);
  CHECK(hgad_test::max_parameter_difference(device, untrained) > 1e-3);
  CHECK(hgad_test::max_parameter_difference(device, cpu) < 1e-9);
  CHECK(hgad_test::max_score_difference(device, cpu, test_features, test.classes) < 1e-9);
  const auto scored_device = device.score_set(test_features, test.classes, hgad::ScoreMode::calibrated);
  const auto scored_cpu = cpu.score_set(test_features, test.classes, hgad::ScoreMode::calibrated);
  REQUIRE(scored_device.size() == scored_cpu.size());
  for (std::size_t i = 0; i < scored_cpu.size(); ++i)
    CHECK(hgad_test::scaled_difference(scored_device[i].score, scored_cpu[i].score) < 1e-9);

  // The model file does not depend on the device that trained it: loaded on the CPU, it scores as
  // the device did; and a loaded model scores on the device as on the CPU.
  hgad_test::TempDir dir("level_device");
  device.save(dir.file("device.hgad"));
  const auto loaded = hgad::HgadModel<Scalar>::load(dir.file("device.hgad"));
  CHECK(loaded.device() == Device::cpu);
  CHECK(hgad_test::max_score_difference(loaded, device, test_features, test.classes) < 1e-9);
  auto loaded_on_device = hgad::HgadModel<Scalar>::load(dir.file("device.hgad"));
  loaded_on_device.set_device(Device::cuda);
  CHECK(hgad_test::max_score_difference(loaded_on_device, loaded, test_features, test.classes) < 1e-9);
}

TEST_CASE("A model with init = whiten trains on a level device as on the CPU (the whitening's "
          "log-determinant counted)",
          "[model][device]") {
  using Scalar = double;
  hgad::ModelConfig c = hgad_test::synthetic_config();
  c.init = hgad::ModelInit::whiten;
  c.meta_epochs = 3;
  c.stage1_meta_epochs = 1;
  const hgad_test::Synthetic train = hgad_test::make_synthetic(4, 0, 21);
  const hgad_test::Synthetic test = hgad_test::make_synthetic(1, 1, 22);
  const auto train_features = hgad_test::as_scalar<Scalar>(train.features), test_features = hgad_test::as_scalar<Scalar>(test.features);

  hgad::HgadModel<Scalar> cpu(c);
  const hgad::FitReport<Scalar> cpu_report = cpu.fit(train_features, train.classes);
  REQUIRE_FALSE(cpu.whitening(0).is_identity());
  REQUIRE(cpu.whitening(0).log_jac_det() != 0);

  hgad_test::HostLevelAsCuda<Scalar> registered;
  hgad::HgadModel<Scalar> device(c);
  device.set_device(Device::cuda);
  const hgad::FitReport<Scalar> device_report = device.fit(train_features, train.classes);
  // The last batch's likelihood terms hold the log-determinant: equal on both devices.
  for (std::size_t l = 0; l < cpu_report.final_terms.size(); ++l) {
    CHECK(hgad_test::scaled_difference(double(device_report.final_terms[l].l_g),
                                       double(cpu_report.final_terms[l].l_g)) < 1e-9);
    CHECK(hgad_test::scaled_difference(double(device_report.final_terms[l].l_z),
                                       double(cpu_report.final_terms[l].l_z)) < 1e-9);
  }
  CHECK(hgad_test::max_parameter_difference(device, cpu) < 1e-9);
  cpu.calibrate(train_features, train.classes);
  device.calibrate(train_features, train.classes);
  CHECK(hgad_test::max_score_difference(device, cpu, test_features, test.classes) < 1e-9);
}

TEST_CASE("A non-finite loss on a level device leaves the model at the last good step", "[model][device]") {
  using Scalar = double;
  hgad::ModelConfig c = hgad_test::synthetic_config();
  c.meta_epochs = 1;
  c.batch_size = 3;
  c.init = hgad::ModelInit::identity;  // its start reads no feature: the NaN reaches a step
  hgad_test::HostLevelAsCuda<Scalar> registered;
  hgad::HgadModel<Scalar> device(c), cpu(c);
  device.set_device(Device::cuda);
  hgad_test::Synthetic data = hgad_test::make_synthetic(2, 0, 8);
  data.features[1].data()[4 * 6 + 2] = std::nanf("");  // image 1 of level 1: the second batch fails
  const auto features = hgad_test::as_scalar<Scalar>(data.features);
  CHECK_THROWS_AS(device.fit(features, data.classes), hgad::NonFiniteError);
  CHECK_THROWS_AS(cpu.fit(features, data.classes), hgad::NonFiniteError);
  CHECK(hgad_test::max_parameter_difference(device, cpu) < 1e-9);
}

TEST_CASE("The NF baseline stays on the CPU", "[model][device]") {
  hgad_test::HostLevelAsCuda<float> registered;
  hgad::HgadModel<float> model(hgad_test::synthetic_config(hgad::Objective::nf));
  CHECK_THROWS_WITH(model.set_device(Device::cuda), Catch::Contains("NF baseline"));
  CHECK(model.device() == Device::cpu);
}

TEST_CASE("A model whose classes carry their own covariance is refused by the level devices, by name",
          "[model][device]") {
  using Scalar = double;
  hgad::ModelConfig c = hgad_test::synthetic_config();
  c.init = hgad::ModelInit::whiten;
  c.class_covariance = hgad::ClassCovariance::class_;
  const hgad_test::Synthetic train = hgad_test::make_synthetic(4, 0, 11);
  const auto features = hgad_test::as_scalar<Scalar>(train.features);
  hgad_test::HostLevelAsCuda<Scalar> registered;
  hgad::HgadModel<Scalar> device(c);
  device.set_device(Device::cuda);
  CHECK_THROWS_WITH(device.fit(features, train.classes), Catch::Contains("class_covariance = class"));
  CHECK(device.epochs_trained() == 0);
}

}  // namespace level_device_test
