#include <catch2/catch.hpp>

#include <hgad/backbone/resnet.hpp>
#include <hgad/io/npy.hpp>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "io/temp_dir.hpp"

namespace torch_export_test {

namespace {

using hgad::Index;
using hgad::ResNetStage;

bool torch_available() {
  return std::system("/usr/bin/python3 -c \"import torch, torchvision, numpy\" > /dev/null 2>&1") ==
         0;
}

}  // namespace

TEST_CASE("Exported torchvision ResNet-50 (random weights and BN statistics) matches PyTorch",
          "[backbone]") {
#ifndef HGAD_SOURCE_DIR
  WARN("skipped: HGAD_SOURCE_DIR is not defined, the exporter cannot be found");
  return;
#else
  if (!torch_available()) {
    WARN(
        "skipped: /usr/bin/python3 cannot import torch and torchvision "
        "(Debian: apt-get install python3-torch python3-torchvision)");
    return;
  }
  hgad_test::TempDir dir("torch_export");
  hgad::Rng rng(17);
  // Odd size: 61x75 -> stem 16x19 -> layer4 2x3.
  const auto x = hgad::Tensor<float>::randn({2, 3, 61, 75}, rng);
  hgad::save_npy(dir.file("x.npy"), x);
  const std::string command =
      std::string("/usr/bin/python3 ") + HGAD_SOURCE_DIR +
      "/tools/export_torchvision_resnet.py --arch resnet50 --random --seed 3 --random-bn"
      " --out " +
      dir.file("weights") + " --reference-input " + dir.file("x.npy") + " --reference-dir " +
      dir.file("reference") + " > " + dir.file("log.txt") + " 2>&1";
  const int status = std::system(command.c_str());
  INFO(command);
  const std::vector<unsigned char> log = hgad_test::read_bytes(dir.file("log.txt"));
  INFO(std::string(log.begin(), log.end()));
  REQUIRE(status == 0);

  hgad::ResNet<float> net(hgad::ResNetArch::resnet50, dir.file("weights"), ResNetStage::layer4);
  const std::vector<ResNetStage> stages = {ResNetStage::stem, ResNetStage::layer1,
                                           ResNetStage::layer2, ResNetStage::layer3,
                                           ResNetStage::layer4};
  const auto out = net.forward(x, stages);
  for (std::size_t s = 0; s < stages.size(); ++s) {
    const std::string name = hgad::to_string(stages[s]);
    const auto ref = hgad::load_npy<float>(dir.file("reference/" + name + ".npy"));
    REQUIRE(out[s].shape() == ref.shape());
    // PyTorch ran in float64; ours is float32 with BN folded. The activations grow with depth
    // (max |layer4| ~ 1e3 here), so the bound is relative to the stage's largest value.
    double scale = 0, err = 0;
    Index non_finite = 0;
    for (Index i = 0; i < ref.numel(); ++i) {
      non_finite += !std::isfinite(out[s].data()[i]);
      scale = std::max(scale, double(std::abs(ref.data()[i])));
      err = std::max(err, double(std::abs(out[s].data()[i] - ref.data()[i])));
    }
    INFO(name << ": max |out - torch| = " << err << ", max |torch| = " << scale);
    REQUIRE(non_finite == 0);
    CHECK(scale > 0.1);
    CHECK(err <= 1e-5 * scale + 1e-5);
  }
#endif
}

}  // namespace torch_export_test
