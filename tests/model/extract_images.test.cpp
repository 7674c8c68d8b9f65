// extract_images runs each batch whole on one thread: its features, masks, order and progress must
// be those of one thread reading every image in one backbone call.

#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include <hgad/io/image.hpp>
#include <hgad/model/pipeline.hpp>

#include "detail/thread_count.hpp"
#include "io/temp_dir.hpp"

using hgad_test::ThreadCount;

TEST_CASE(
    "extract_images gives the same features, masks and order on any number of threads and "
    "in batches of any size",
    "[model][backbone]") {
  namespace fs = std::filesystem;
  const std::string weights = std::string(HGAD_SHARED_DIR) + "/weights/resnet18-imagenet";
  if (!fs::exists(weights)) {
    WARN("skipped: " << weights << " is absent");
    return;
  }
  // Two classes of test images, two good and two defective each; class a has the masks of its
  // defective images, class b none (image-level labels: a set with its defective images has no
  // masks, has_masks false).
  hgad_test::TempDir dir("extract_images");
  for (const char* cls : {"a", "b"}) {
    for (int k = 0; k < 4; ++k) {
      hgad::Tensor<float> image({3, 48, 48});
      for (hgad::Index i = 0; i < image.numel(); ++i)
        image.data()[i] = float(0.2 + 0.6 * ((i / 48 / (4 + k) + i % 48 / 6 + (*cls == 'b')) % 2));
      const std::string kind = k < 2 ? "good" : "bad";
      fs::create_directories(dir.path() / cls / "test" / kind);
      hgad::save_png(
          dir.file(std::string(cls) + "/test/" + kind + "/i" + std::to_string(k) + ".png"), image);
      if (kind == "bad" && *cls == 'a') {
        hgad::Tensor<float> mask({1, 48, 48});
        for (hgad::Index i = 0; i < 48 * 48; ++i) mask.data()[i] = float((i % 48) < 8 * k);
        fs::create_directories(dir.path() / cls / "ground_truth" / kind);
        hgad::save_png(dir.file(std::string(cls) + "/ground_truth/" + kind + "/i" +
                                std::to_string(k) + "_mask.png"),
                       mask);
      }
    }
  }
  hgad::MvtecOptions options;
  options.mask_mode = hgad::MaskMode::when_present;
  const hgad::MvtecDataset data(dir.path().string(), hgad::Split::test, options);
  REQUIRE(data.size() == 8);
  hgad::FeatureSettings settings;
  settings.image_size = 48;
  settings.mask_size = 24;
  settings.layers = {"layer1", "layer2"};
  auto fx = hgad::make_extractor<float>(settings, weights);
  const std::vector<hgad::Index> order = {5, 0, 7, 2, 3, 6, 1};  // not the data set's order

  hgad::ExtractedImages<float> reference;
  {
    ThreadCount one(1);
    reference = hgad::extract_images(data, order, *fx, settings, true, 8);
  }
  REQUIRE(reference.size() == 7);
  CHECK_FALSE(reference.has_masks);
  for (std::size_t i = 0; i < order.size(); ++i) {
    CHECK(reference.paths[i] == data[order[i]].image_path);
    CHECK(reference.classes[i] == data[order[i]].class_index);
    CHECK(reference.labels[i] == data[order[i]].label);
  }
  for (const int threads : {1, 2, 3}) {
    for (const hgad::Index batch : {1, 2, 3, 8}) {
      INFO("threads " << threads << ", batch " << batch);
      ThreadCount count(threads);
      std::vector<hgad::Index> progress;
      const auto set = hgad::extract_images(data, order, *fx, settings, true, batch,
                                            [&](hgad::Index done, hgad::Index total) {
                                              CHECK(total == 7);
                                              progress.push_back(done);
                                            });
      REQUIRE(set.features.size() == 2);
      for (std::size_t l = 0; l < 2; ++l)
        CHECK(set.features[l].to_vector() == reference.features[l].to_vector());
      CHECK(set.masks.to_vector() == reference.masks.to_vector());
      CHECK(set.has_masks == reference.has_masks);
      CHECK(set.paths == reference.paths);
      CHECK(set.classes == reference.classes);
      CHECK(set.labels == reference.labels);
      std::vector<hgad::Index> expected;
      for (hgad::Index done = std::min<hgad::Index>(batch, 7); done < 7; done += batch)
        expected.push_back(done);
      expected.push_back(7);
      CHECK(progress == expected);
    }
  }
  // Class a's images alone (bad/i2, bad/i3, good/i0, good/i1 in the data set's order) have every
  // mask: has_masks holds on any number of threads, and a defective image's mask is its file's
  // (the columns below 8 k set, at half the size).
  for (const int threads : {1, 2}) {
    ThreadCount count(threads);
    const auto masked = hgad::extract_images(data, {3, 0, 1}, *fx, settings, true, 1);
    REQUIRE(masked.size() == 3);
    CHECK(masked.has_masks);
    CHECK(masked.labels == std::vector<int>{0, 1, 1});
    for (hgad::Index i = 0; i < 24 * 24; ++i) {
      CHECK(masked.masks.data()[i] == 0.0f);                                // good/i1
      CHECK(masked.masks.data()[24 * 24 + i] == float((i % 24) < 8));       // bad/i2
      CHECK(masked.masks.data()[2 * 24 * 24 + i] == float((i % 24) < 12));  // bad/i3
    }
  }
}
