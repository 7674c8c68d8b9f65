// HostResNet, the GPU backbone algorithm (BackboneEngine + the backbone kernel bodies) run on the
// CPU, against the CPU ResNet: every stage, BasicBlock and Bottleneck architectures, odd image
// sizes (padding at every border), and the im2col split into groups of images.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

#include <hgad/backbone/resnet.hpp>
#include <hgad/cuda/backbone_engine.hpp>

namespace backbone_engine_test {

namespace {

using hgad::Index;
using hgad::ResNetArch;
using hgad::ResNetStage;

/// max |got − want| / max |want| over all elements, which must all be finite.
template <class Scalar>
double relative_max_error(const hgad::Tensor<Scalar>& got, const hgad::Tensor<Scalar>& want) {
  REQUIRE(got.shape() == want.shape());
  double worst = 0, scale = 0;
  Index non_finite = 0;
  for (Index i = 0; i < want.numel(); ++i) {
    non_finite += std::isfinite(double(got.data()[i])) ? 0 : 1;
    worst = std::max(worst, std::abs(double(got.data()[i]) - double(want.data()[i])));
    scale = std::max(scale, std::abs(double(want.data()[i])));
  }
  REQUIRE(non_finite == 0);
  REQUIRE(scale > 0);
  return worst / scale;
}

template <class Scalar>
void check_against_cpu_resnet(ResNetArch arch, ResNetStage last, Index batch, Index height, Index width,
                              Index max_col_elements) {
  hgad::Rng rng(7);
  const auto weights = hgad::ResNet<Scalar>::random_weights(arch, last, rng);
  const hgad::ResNet<Scalar> cpu(arch, weights, last);
  hgad::cuda::HostResNet<Scalar> host(arch, weights, last, {}, max_col_elements);
  const auto images = hgad::Tensor<Scalar>::randn({batch, 3, height, width}, rng);
  std::vector<ResNetStage> stages;
  for (int s = 0; s <= static_cast<int>(last); ++s) stages.push_back(static_cast<ResNetStage>(s));
  const auto want = cpu.forward(images, stages);
  const auto got = host.forward(images, stages);
  REQUIRE(got.size() == want.size());
  const double tol = std::is_same_v<Scalar, float> ? 1e-5 : 1e-12;
  for (std::size_t i = 0; i < want.size(); ++i) {
    INFO(hgad::to_string(stages[i]) << " " << want[i].shape().to_string());
    CHECK(relative_max_error(got[i], want[i]) <= tol);
  }
}

}  // namespace

TEMPLATE_TEST_CASE("HostResNet matches the CPU ResNet at every stage", "[cuda_host]", float, double) {
  SECTION("ResNet-18 (BasicBlocks) to layer3, odd sizes, whole batch in one im2col") {
    check_against_cpu_resnet<TestType>(ResNetArch::resnet18, ResNetStage::layer3, 2, 45, 37, Index(1) << 28);
  }
  SECTION("ResNet-18, im2col one image at a time") {
    check_against_cpu_resnet<TestType>(ResNetArch::resnet18, ResNetStage::layer2, 3, 32, 29, 1);
  }
  SECTION("ResNet-50 (Bottlenecks, 1x1 convolutions without im2col) to layer2") {
    check_against_cpu_resnet<TestType>(ResNetArch::resnet50, ResNetStage::layer2, 2, 33, 40, Index(1) << 28);
  }
}

TEST_CASE("HostResNet names a missing or misshapen weight tensor", "[cuda_host]") {
  hgad::Rng rng(1);
  auto weights = hgad::ResNet<float>::random_weights(ResNetArch::resnet18, ResNetStage::layer1, rng);
  auto missing = weights;
  missing.erase("layer1.1.conv2.bias");
  CHECK_THROWS_WITH((hgad::cuda::HostResNet<float>(ResNetArch::resnet18, missing, ResNetStage::layer1)),
                    Catch::Contains("layer1.1.conv2.bias") && Catch::Contains("(64)"));
  auto misshapen = weights;
  misshapen["conv1.weight"] = hgad::Tensor<float>({64, 3, 5, 5});
  CHECK_THROWS_WITH((hgad::cuda::HostResNet<float>(ResNetArch::resnet18, misshapen, ResNetStage::layer1)),
                    Catch::Contains("conv1.weight") && Catch::Contains("(64, 3, 5, 5)") &&
                        Catch::Contains("(64, 3, 7, 7)"));
  const hgad::cuda::HostResNet<float> net(ResNetArch::resnet18, weights, ResNetStage::layer1);
  (void)net;
}

TEST_CASE("HostResNet rejects a stage beyond its weights and images without three channels", "[cuda_host]") {
  hgad::Rng rng(2);
  const auto weights = hgad::ResNet<float>::random_weights(ResNetArch::resnet18, ResNetStage::layer1, rng);
  hgad::cuda::HostResNet<float> net(ResNetArch::resnet18, weights, ResNetStage::layer1);
  CHECK_THROWS_WITH(net.forward(hgad::Tensor<float>({1, 3, 16, 16}), {ResNetStage::layer2}),
                    Catch::Contains("layer2") && Catch::Contains("layer1"));
  CHECK_THROWS_WITH(net.forward(hgad::Tensor<float>({1, 1, 16, 16}), {ResNetStage::layer1}),
                    Catch::Contains("(1, 1, 16, 16)"));
}

}  // namespace backbone_engine_test
