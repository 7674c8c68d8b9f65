// CudaResNet, the ResNet backbone on the GPU, against the CPU ResNet: every stage of ResNet-18
// and of ResNet-50, and the real ImageNet weights of ../shared/weights on one 256 x 256 image.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include <hgad/backbone/resnet.hpp>
#include <hgad/cuda/cuda_resnet.cuh>

#include "cuda_test_util.cuh"

namespace {

using hgad::Index;
using hgad::ResNetArch;
using hgad::ResNetStage;

template <class Scalar>
void check_cuda_resnet(ResNetArch arch, ResNetStage last, const std::map<std::string, hgad::Tensor<Scalar>>& weights,
                       const hgad::Tensor<Scalar>& images, Index max_col_elements) {
  const hgad::ResNet<Scalar> cpu(arch, weights, last);
  hgad::cuda::CudaResNet<Scalar> gpu(arch, weights, last, hgad::cuda::CudaBackboneExec<Scalar>(hgad_test::gpu<Scalar>()),
                                     max_col_elements);
  std::vector<ResNetStage> stages;
  for (int s = 0; s <= static_cast<int>(last); ++s) stages.push_back(static_cast<ResNetStage>(s));
  const auto want = cpu.forward(images, stages);
  const auto got = gpu.forward(images, stages);
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    INFO(hgad::to_string(stages[i]) << " " << want[i].shape().to_string());
    REQUIRE(got[i].shape() == want[i].shape());
    // Each output sums up to 2,304 products per layer over a dozen layers, so an element that
    // cancels to near zero carries the rounding of its large terms: the floor is 10 % of the
    // largest magnitude (float: |got − want| <= 1e-4 (|want| + 0.1 max|want|)).
    const auto c = hgad_test::compare(got[i].cpu().to_vector(), want[i].to_vector(), hgad_test::parity_rel<Scalar>(),
                                      0.1);
    INFO(c.message);
    CHECK(c.ok);
  }
}

}  // namespace

TEMPLATE_TEST_CASE("CudaResNet matches the CPU ResNet at every stage", "[cuda]", float, double) {
  HGAD_SKIP_WITHOUT_CUDA_DEVICE();
  hgad::Rng rng(11);
  SECTION("ResNet-18 to layer3, odd sizes, the whole batch in one im2col") {
    const auto w = hgad::ResNet<TestType>::random_weights(ResNetArch::resnet18, ResNetStage::layer3, rng);
    check_cuda_resnet<TestType>(ResNetArch::resnet18, ResNetStage::layer3, w,
                                hgad::Tensor<TestType>::randn({2, 3, 69, 57}, rng), Index(1) << 28);
  }
  SECTION("ResNet-18 to layer2, im2col one image at a time") {
    const auto w = hgad::ResNet<TestType>::random_weights(ResNetArch::resnet18, ResNetStage::layer2, rng);
    check_cuda_resnet<TestType>(ResNetArch::resnet18, ResNetStage::layer2, w,
                                hgad::Tensor<TestType>::randn({3, 3, 40, 48}, rng), 1);
  }
  SECTION("ResNet-50 (Bottlenecks) to layer3") {
    const auto w = hgad::ResNet<TestType>::random_weights(ResNetArch::resnet50, ResNetStage::layer3, rng);
    check_cuda_resnet<TestType>(ResNetArch::resnet50, ResNetStage::layer3, w,
                                hgad::Tensor<TestType>::randn({2, 3, 64, 64}, rng), Index(1) << 28);
  }
}

TEST_CASE("CudaResNet with the ImageNet ResNet-18 weights matches the CPU ResNet on a 256 x 256 image", "[cuda]") {
  HGAD_SKIP_WITHOUT_CUDA_DEVICE();
  const std::string dir = std::string(HGAD_SHARED_DIR) + "/weights/resnet18-imagenet";
  if (!std::ifstream(dir + "/conv1.weight.npy").good()) {
    WARN("skipped: no weights in " << dir);
    return;
  }
  const auto weights = hgad::load_resnet_weights<float>(ResNetArch::resnet18, dir, ResNetStage::layer3);
  hgad::Rng rng(3);
  check_cuda_resnet<float>(ResNetArch::resnet18, ResNetStage::layer3, weights,
                           hgad::Tensor<float>::randn({1, 3, 256, 256}, rng), Index(1) << 28);
}
