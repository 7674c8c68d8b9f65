#include <catch2/catch.hpp>

#include <hgad/backbone/feature_cache.hpp>

#include <filesystem>

#include "backbone/naive.hpp"
#include "io/temp_dir.hpp"

namespace feature_cache_test {

namespace {

using hgad::Index;
using hgad::ResNetStage;

/// Image i of a deterministic synthetic training set: every pixel drawn from Rng(1000 + i).
hgad::Tensor<float> synthetic_images(Index first, Index count, Index h, Index w) {
  hgad::Tensor<float> out({count, 3, h, w});
  for (Index i = 0; i < count; ++i) {
    hgad::Rng rng(std::uint64_t(1000 + first + i));
    auto one = hgad::Tensor<float>::randn({1, 3, h, w}, rng);
    std::copy(one.data(), one.data() + one.numel(), out.data() + i * one.numel());
  }
  return out;
}

}  // namespace

TEST_CASE("FeatureCache stores and returns features in memory and in a mapped file", "[backbone]") {
  hgad_test::TempDir dir("feature_cache");
  const std::vector<hgad::Shape> shapes = {{4, 3, 5}, {6, 2, 2}};
  const Index n = 7;
  const std::size_t expected_bytes = sizeof(double) * std::size_t(n * (60 + 24));
  REQUIRE(hgad::FeatureCache<double>::bytes_needed(n, shapes) == expected_bytes);
  hgad::Rng rng(8);
  std::vector<std::vector<hgad::Tensor<double>>> batches;
  for (Index first = 0; first < n; first += 3) {
    const Index count = std::min<Index>(3, n - first);
    batches.push_back({hgad::Tensor<double>::randn({count, 4, 3, 5}, rng),
                       hgad::Tensor<double>::randn({count, 6, 2, 2}, rng)});
  }
  for (hgad::FeatureStorage storage :
       {hgad::FeatureStorage::memory, hgad::FeatureStorage::mapped_file}) {
    hgad::FeatureCacheOptions options;
    options.storage = storage;
    options.spill_directory = dir.path().string();
    hgad::FeatureCache<double> cache(n, shapes, options);
    CHECK(cache.is_mapped() == (storage == hgad::FeatureStorage::mapped_file));
    CHECK(cache.bytes() == expected_bytes);
    CHECK(cache.heap_bytes() == (cache.is_mapped() ? 0 : expected_bytes));
    // The mapped file is unlinked at once: nothing is left in the folder.
    CHECK(std::filesystem::is_empty(dir.path()));
    CHECK_THROWS_AS(cache.get(0, 0, 1), hgad::Error);  // nothing stored yet
    for (std::size_t k = 0; k < batches.size(); ++k) {
      CHECK_FALSE(cache.complete());
      cache.store(Index(3 * k), batches[k]);
    }
    CHECK(cache.complete());
    auto moved = std::move(cache);
    for (std::size_t l = 0; l < 2; ++l) {
      for (std::size_t k = 0; k < batches.size(); ++k) {
        const auto got = moved.get(l, Index(3 * k), batches[k][l].dim(0));
        CHECK(hgad_test::max_abs_diff(got, batches[k][l]) == 0.0);
      }
    }
    // gather keeps the requested order, repeats included.
    const auto g = moved.gather(1, {6, 0, 6});
    REQUIRE(g.shape() == hgad::Shape{3, 6, 2, 2});
    CHECK(g(0, 5, 1, 1) == batches[2][1](0, 5, 1, 1));
    CHECK(g(1, 2, 0, 1) == batches[0][1](0, 2, 0, 1));
    CHECK(g(2, 0, 0, 0) == batches[2][1](0, 0, 0, 0));
    CHECK(moved.data(0, 4)[7] == batches[1][0].data()[60 + 7]);
    CHECK_THROWS_AS(moved.gather(0, {7}), hgad::Error);
    CHECK_THROWS_AS(moved.gather(2, {0}), hgad::Error);
    CHECK_THROWS_AS(
        moved.store(6, {hgad::Tensor<double>({2, 4, 3, 5}), hgad::Tensor<double>({2, 6, 2, 2})}),
        hgad::Error);
    CHECK_THROWS_AS(
        moved.store(0, {hgad::Tensor<double>({1, 4, 3, 4}), hgad::Tensor<double>({1, 6, 2, 2})}),
        hgad::Error);
  }
  // Above the budget, automatic storage maps a file.
  hgad::FeatureCacheOptions small_budget;
  small_budget.memory_budget_bytes = 100;
  small_budget.spill_directory = dir.path().string();
  CHECK(hgad::FeatureCache<double>(n, shapes, small_budget).is_mapped());
  CHECK_FALSE(hgad::FeatureCache<double>(n, shapes).is_mapped());
  hgad::FeatureCacheOptions bad_dir;
  bad_dir.storage = hgad::FeatureStorage::mapped_file;
  bad_dir.spill_directory = dir.file("does/not/exist");
  CHECK_THROWS_AS(hgad::FeatureCache<double>(n, shapes, bad_dir), hgad::Error);
}

TEST_CASE("FeatureCache::build caches exactly what the extractor returns", "[backbone]") {
  hgad::Rng rng(6);
  auto net = std::make_shared<const hgad::ResNet<float>>(
      hgad::ResNetArch::resnet18,
      hgad::ResNet<float>::random_weights(hgad::ResNetArch::resnet18, ResNetStage::layer2, rng),
      ResNetStage::layer2);
  hgad::FeatureConfig config = hgad::FeatureConfig::multi_stage(
      hgad::ResNetArch::resnet18, {ResNetStage::layer1, ResNetStage::layer2});
  config.n_scales = 2;
  auto fx = hgad::make_feature_extractor<float>(config, net);
  const Index n = 5, h = 40, w = 48;
  Index calls = 0;
  hgad::FeatureCacheOptions mapped;
  mapped.storage = hgad::FeatureStorage::mapped_file;
  auto cache = hgad::FeatureCache<float>::build(
      *fx, n, h, w, 2,
      [&](Index first, Index count) {
        ++calls;
        return synthetic_images(first, count, h, w);
      },
      mapped);
  CHECK(calls == 3);
  REQUIRE(cache.n_levels() == 4);
  CHECK(cache.complete());
  CHECK(cache.level_shape(3) == hgad::Shape{128, 3, 3});
  const auto direct = fx->extract(synthetic_images(0, n, h, w));
  // Batches of 2 and of 5 block the GEMMs differently, so float sums may differ in the last bits.
  for (std::size_t l = 0; l < 4; ++l) {
    double scale = 1;
    for (Index i = 0; i < direct[l].numel(); ++i)
      scale = std::max(scale, double(std::abs(direct[l].data()[i])));
    CHECK(hgad_test::max_abs_diff(cache.get(l, 0, n), direct[l]) <= 1e-5 * scale);
  }
  CHECK_THROWS_AS(
      hgad::FeatureCache<float>::build(
          *fx, n, h, w, 2, [&](Index, Index count) { return synthetic_images(0, count, h, h); }),
      hgad::Error);
}

}  // namespace feature_cache_test
