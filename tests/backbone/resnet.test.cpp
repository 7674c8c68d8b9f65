#include <catch2/catch.hpp>

#include <hgad/backbone/resnet.hpp>
#include <hgad/io/npy.hpp>

#include <filesystem>
#include <fstream>
#include <string>

#include "backbone/naive.hpp"
#include "io/temp_dir.hpp"

namespace resnet_test {

namespace {

using hgad::Index;
using hgad::ResNetStage;

std::string resnet18_dir() {
#ifdef HGAD_SHARED_DIR
  return std::string(HGAD_SHARED_DIR) + "/weights/resnet18-imagenet";
#else
  return "";
#endif
}

/// |out - golden| <= 1e-4 + 1e-4 |golden| element-wise (the tolerance of the weights' README).
void check_golden(const hgad::Tensor<float>& out, const std::string& file) {
  const auto golden = hgad::load_npy<float>(file);
  REQUIRE(out.numel() == golden.numel());
  REQUIRE(out.dim(0) == 1);
  REQUIRE(hgad::Shape{out.dim(1), out.dim(2), out.dim(3)} == golden.shape());
  double worst = 0, max_err = 0;
  Index non_finite = 0;
  for (Index i = 0; i < out.numel(); ++i) {
    const double o = out.data()[i], g = golden.data()[i];
    non_finite += !std::isfinite(o);
    const double err = std::abs(o - g);
    max_err = std::max(max_err, err);
    worst = std::max(worst, err / (1e-4 + 1e-4 * std::abs(g)));
  }
  INFO(file << ": max |out - golden| = " << max_err);
  REQUIRE(non_finite == 0);
  CHECK(worst <= 1.0);
}

/// The naive reference of one torchvision block (BasicBlock or Bottleneck), from the weights.
template <class T>
hgad::Tensor<T> naive_block(const hgad::Tensor<T>& x,
                            const std::map<std::string, hgad::Tensor<T>>& w, const std::string& p,
                            bool bottleneck, Index stride) {
  auto conv = [&](const hgad::Tensor<T>& in, const std::string& name, Index s, bool relu,
                  const hgad::Tensor<T>* res) {
    const auto& k = w.at(p + name + ".weight");
    return hgad_test::naive_conv2d(in, k, w.at(p + name + ".bias"), s, k.dim(2) / 2, relu, res);
  };
  const bool has_ds = w.count(p + "downsample.0.weight") > 0;
  const hgad::Tensor<T> shortcut = has_ds ? conv(x, "downsample.0", stride, false, nullptr) : x;
  if (bottleneck) {
    auto t = conv(x, "conv1", 1, true, nullptr);
    t = conv(t, "conv2", stride, true, nullptr);
    return conv(t, "conv3", 1, true, &shortcut);
  }
  auto t = conv(x, "conv1", stride, true, nullptr);
  return conv(t, "conv2", 1, true, &shortcut);
}

template <class T>
void write_weights(const std::map<std::string, hgad::Tensor<T>>& weights, const std::string& dir) {
  for (const auto& [name, tensor] : weights) hgad::save_npy(dir + "/" + name + ".npy", tensor);
}

}  // namespace

TEST_CASE("ResNet-18 stem and layer1-3 match the golden activations of the cat crop",
          "[backbone]") {
  const std::string dir = resnet18_dir();
  if (dir.empty() || !std::filesystem::exists(dir + "/conv1.weight.npy")) {
    WARN("skipped: the shared ResNet-18 weights are not at '" << dir << "'");
    return;
  }
  hgad::ResNet<float> net(hgad::ResNetArch::resnet18, dir);
  const auto input = hgad::load_npy<float>(dir + "/golden/cat_crop224_input_chw.npy");
  REQUIRE(input.shape() == hgad::Shape{3, 224, 224});
  const auto images = input.reshape({1, 3, 224, 224});
  const auto out = net.forward(
      images, {ResNetStage::stem, ResNetStage::layer1, ResNetStage::layer2, ResNetStage::layer3});
  REQUIRE(out.size() == 4);
  check_golden(out[0], dir + "/golden/cat_crop224_stem_out_chw.npy");
  check_golden(out[1], dir + "/golden/cat_crop224_layer1_out_chw.npy");
  check_golden(out[2], dir + "/golden/cat_crop224_layer2_out_chw.npy");
  check_golden(out[3], dir + "/golden/cat_crop224_layer3_out_chw.npy");

  // A batch of three (the crop between two other images) gives the same result for the crop, and
  // the requested order is kept.
  hgad::Rng rng(4);
  hgad::Tensor<float> batch({3, 3, 224, 224});
  auto noise = hgad::Tensor<float>::randn({2, 3, 224, 224}, rng);
  std::copy(noise.data(), noise.data() + 3 * 224 * 224, batch.data());
  std::copy(input.data(), input.data() + input.numel(), batch.data() + 3 * 224 * 224);
  std::copy(noise.data() + 3 * 224 * 224, noise.data() + noise.numel(),
            batch.data() + 6 * 224 * 224);
  const auto batched = net.forward(batch, {ResNetStage::layer3, ResNetStage::layer1});
  REQUIRE(batched[0].shape() == hgad::Shape{3, 256, 14, 14});
  REQUIRE(batched[1].shape() == hgad::Shape{3, 64, 56, 56});
  check_golden(batched[0].slice(1, 2), dir + "/golden/cat_crop224_layer3_out_chw.npy");
  check_golden(batched[1].slice(1, 2), dir + "/golden/cat_crop224_layer1_out_chw.npy");
}

TEMPLATE_TEST_CASE(
    "ResNet Bottleneck and BasicBlock networks match a naive composition of their layers",
    "[backbone]", float, double) {
  struct Case {
    hgad::ResNetArch arch;
    ResNetStage last;
    Index h, w;
  };
  // Odd sizes: 37 -> 19 -> 10 (stem) -> 5 (layer2) -> 3 (layer3).
  const Case cases[] = {{hgad::ResNetArch::resnet50, ResNetStage::layer2, 37, 41},
                        {hgad::ResNetArch::wide_resnet50_2, ResNetStage::layer1, 29, 24},
#ifdef HGAD_SANITIZED
                        {hgad::ResNetArch::resnet34, ResNetStage::layer2, 21, 19}};
#else
                        {hgad::ResNetArch::resnet34, ResNetStage::layer3, 37, 33}};
#endif
  for (const Case& c : cases) {
    CAPTURE(hgad::to_string(c.arch));
    hgad::Rng rng(21);
    const auto weights = hgad::ResNet<TestType>::random_weights(c.arch, c.last, rng);
    hgad::ResNet<TestType> net(c.arch, weights, c.last);
    const auto spec = hgad::ResNetSpec::of(c.arch);
    auto x = hgad::Tensor<TestType>::randn({2, 3, c.h, c.w}, rng);

    std::vector<ResNetStage> stages;
    for (int l = 0; l <= static_cast<int>(c.last); ++l)
      stages.push_back(static_cast<ResNetStage>(l));
    const auto out = net.forward(x, stages);

    auto ref = hgad_test::naive_conv2d(x, weights.at("conv1.weight"), weights.at("conv1.bias"), 2,
                                       3, true);
    ref = hgad_test::naive_max_pool2d(ref, 3, 2, 1);
    const double tol = std::is_same<TestType, float>::value ? 2e-4 : 1e-10;
    CHECK(hgad_test::max_abs_diff(out[0], ref) <= tol);
    for (int l = 1; l <= static_cast<int>(c.last); ++l) {
      for (int i = 0; i < spec.n_blocks[std::size_t(l - 1)]; ++i) {
        const std::string p = "layer" + std::to_string(l) + "." + std::to_string(i) + ".";
        ref = naive_block(ref, weights, p, spec.bottleneck, (i == 0 && l > 1) ? 2 : 1);
      }
      const auto stage = static_cast<ResNetStage>(l);
      REQUIRE(out[std::size_t(l)].shape() ==
              hgad::Shape{2, spec.channels(stage), hgad::ResNet<TestType>::output_size(c.h, stage),
                          hgad::ResNet<TestType>::output_size(c.w, stage)});
      // Relative to the scale of the activations, which grows with depth under random weights.
      double scale = 1;
      for (Index k = 0; k < ref.numel(); ++k)
        scale = std::max(scale, std::abs(double(ref.data()[k])));
      CHECK(hgad_test::max_abs_diff(out[std::size_t(l)], ref) <= tol * scale);
    }
  }
}

TEST_CASE("ResNet reports stage channels, strides and the FLOP count of ResNet-18", "[backbone]") {
  hgad::Rng rng(1);
  hgad::ResNet<float> net(
      hgad::ResNetArch::resnet18,
      hgad::ResNet<float>::random_weights(hgad::ResNetArch::resnet18, ResNetStage::layer3, rng));
  CHECK(net.channels(ResNetStage::layer1) == 64);
  CHECK(net.channels(ResNetStage::layer2) == 128);
  CHECK(net.channels(ResNetStage::layer3) == 256);
  CHECK(hgad::ResNetSpec::of(hgad::ResNetArch::wide_resnet50_2).channels(ResNetStage::layer3) ==
        1024);
  CHECK(net.stride(ResNetStage::layer3) == 16);
  CHECK(hgad::ResNet<float>::output_size(224, ResNetStage::layer2) == 28);
  CHECK(hgad::ResNet<float>::output_size(512, ResNetStage::layer3) == 32);
  // 2 O C k^2 H' W' summed by hand for 256x256 (see bench_backbone.cpp): conv1 308,281,344;
  // layer1 4 x 301,989,888; layer2 150,994,944 + 3 x 301,989,888 + 16,777,216;
  // layer3 the same as layer2.
  const Index layer23 = Index(150994944) + 3 * Index(301989888) + Index(16777216);
  CHECK(net.flops(256, 256, ResNetStage::layer3) ==
        Index(308281344) + 4 * Index(301989888) + 2 * layer23);
  CHECK_THROWS_AS(net.flops(256, 256, ResNetStage::layer4), hgad::Error);
  CHECK_THROWS_AS(net.forward(hgad::Tensor<float>({1, 3, 64, 64}), {ResNetStage::layer4}),
                  hgad::Error);
  CHECK_THROWS_AS(net.forward(hgad::Tensor<float>({1, 1, 64, 64}), {ResNetStage::layer1}),
                  hgad::Error);
}

TEST_CASE("ResNet names the missing weight file and the expected and found shapes", "[backbone]") {
  hgad_test::TempDir dir("resnet_weights");
  hgad::Rng rng(2);
  auto weights =
      hgad::ResNet<float>::random_weights(hgad::ResNetArch::resnet18, ResNetStage::layer2, rng);
  write_weights(weights, dir.path().string());
  CHECK_NOTHROW(
      hgad::ResNet<float>(hgad::ResNetArch::resnet18, dir.path().string(), ResNetStage::layer2));

  std::filesystem::remove(dir.file("layer2.0.downsample.0.bias.npy"));
  try {
    hgad::ResNet<float> net(hgad::ResNetArch::resnet18, dir.path().string(), ResNetStage::layer2);
    FAIL("a missing weight file was accepted");
  } catch (const hgad::Error& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("layer2.0.downsample.0.bias.npy") != std::string::npos);
    CHECK(msg.find("(128)") != std::string::npos);
  }
  // Up to layer1 that file is not needed.
  CHECK_NOTHROW(
      hgad::ResNet<float>(hgad::ResNetArch::resnet18, dir.path().string(), ResNetStage::layer1));

  hgad::save_npy(dir.file("layer2.0.downsample.0.bias.npy"),
                 weights.at("layer2.0.downsample.0.bias"));
  hgad::save_npy(dir.file("layer1.1.conv2.weight.npy"), hgad::Tensor<float>({64, 32, 3, 3}));
  try {
    hgad::ResNet<float> net(hgad::ResNetArch::resnet18, dir.path().string(), ResNetStage::layer2);
    FAIL("a wrongly shaped weight was accepted");
  } catch (const hgad::Error& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("layer1.1.conv2.weight") != std::string::npos);
    CHECK(msg.find("(64, 32, 3, 3)") != std::string::npos);
    CHECK(msg.find("(64, 64, 3, 3)") != std::string::npos);
  }

  // ResNet-50 weights are not ResNet-18 weights: the first mismatching tensor is named.
  auto bottleneck =
      hgad::ResNet<float>::random_weights(hgad::ResNetArch::resnet50, ResNetStage::layer1, rng);
  CHECK_THROWS_WITH(
      hgad::ResNet<float>(hgad::ResNetArch::resnet18, bottleneck, ResNetStage::layer1),
      Catch::Contains("layer1.0.conv1.weight") && Catch::Contains("(64, 64, 1, 1)"));
  CHECK_THROWS_AS(hgad::resnet_arch_from_string("resnet19"), hgad::Error);
  CHECK(hgad::resnet_arch_from_string("wide_resnet50_2") == hgad::ResNetArch::wide_resnet50_2);
  CHECK(hgad::resnet_stage_from_string("layer3") == ResNetStage::layer3);
}

}  // namespace resnet_test
