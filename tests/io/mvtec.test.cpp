#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <hgad/io/mvtec.hpp>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "io/temp_dir.hpp"

namespace mvtec_test {

namespace fs = std::filesystem;

namespace {

// A gray test image of height x width whose pixel (y, x) is ((7y + 3x + seed) mod 256) / 255.
hgad::Tensor<float> gray_image(hgad::Index height, hgad::Index width, int seed) {
  hgad::Tensor<float> t({1, height, width});
  for (hgad::Index y = 0; y < height; ++y)
    for (hgad::Index x = 0; x < width; ++x)
      t(0, y, x) = float((7 * y + 3 * x + seed) % 256) / 255.0f;
  return t;
}

// A mask whose byte values cycle through 0, 100, 128, 255 so that thresholds 0 and 127 differ.
hgad::Tensor<float> mask_image(hgad::Index height, hgad::Index width) {
  const float levels[4] = {0.0f, 100.0f / 255.0f, 128.0f / 255.0f, 1.0f};
  hgad::Tensor<float> t({1, height, width});
  for (hgad::Index y = 0; y < height; ++y)
    for (hgad::Index x = 0; x < width; ++x) t(0, y, x) = levels[(y + x) % 4];
  return t;
}

void write_png(const fs::path& path, const hgad::Tensor<float>& image) {
  fs::create_directories(path.parent_path());
  hgad::save_png(path.string(), image);
}

// Two classes, 'widget' (created first) and 'alpha': sorted order puts alpha first.
//   widget: train/good 3 images 6x10; test/good 2; test/crack 2 (+ masks); test/scratch 1 (+ mask)
//   alpha:  train/good 2 images 5x5;  test/good 1; test/hole 1 (+ mask)
void build_layout(const fs::path& root) {
  for (int i = 0; i < 3; ++i)
    write_png(root / "widget/train/good" / ("00" + std::to_string(i) + ".png"),
              gray_image(6, 10, i));
  write_png(root / "widget/test/good/000.png", gray_image(6, 10, 10));
  write_png(root / "widget/test/good/001.png", gray_image(6, 10, 11));
  write_png(root / "widget/test/crack/000.png", gray_image(6, 10, 20));
  write_png(root / "widget/test/crack/001.png", gray_image(6, 10, 21));
  write_png(root / "widget/ground_truth/crack/000_mask.png", mask_image(6, 10));
  write_png(root / "widget/ground_truth/crack/001_mask.png", mask_image(6, 10));
  write_png(root / "widget/test/scratch/000.png", gray_image(6, 10, 30));
  write_png(root / "widget/ground_truth/scratch/000_mask.png", mask_image(6, 10));
  for (int i = 0; i < 2; ++i)
    write_png(root / "alpha/train/good" / ("a" + std::to_string(i) + ".png"), gray_image(5, 5, i));
  write_png(root / "alpha/test/good/g.png", gray_image(5, 5, 40));
  write_png(root / "alpha/test/hole/h.png", gray_image(5, 5, 50));
  write_png(root / "alpha/ground_truth/hole/h_mask.png", mask_image(5, 5));
  // Not samples: a readme at the root and in a folder, a hidden file, a folder without train/ or
  // test/.
  std::ofstream(root / "README.md") << "notes";
  std::ofstream(root / "widget/test/good/notes.txt") << "notes";
  std::ofstream(root / "widget/train/good/.hidden.png") << "x";
  fs::create_directories(root / "docs");
}

std::string error_of_listing(const fs::path& root, hgad::Split split,
                             hgad::MvtecOptions options = {}) {
  try {
    hgad::MvtecDataset d(root.string(), split, options);
  } catch (const hgad::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("MvtecDataset lists an MVTec layout in class, defect and file order without decoding",
          "[io]") {
  hgad_test::TempDir dir("mvtec_list");
  build_layout(dir.path());
  const std::string root = dir.path().string();

  const hgad::MvtecDataset train(root, hgad::Split::train);
  REQUIRE(train.class_names() == std::vector<std::string>{"alpha", "widget"});
  REQUIRE(train.size() == 5);
  REQUIRE(fs::path(train[0].image_path).filename() == "a0.png");
  REQUIRE(train[0].class_index == 0);
  REQUIRE(train[4].class_name == "widget");
  REQUIRE(train[4].class_index == 1);
  for (const auto& s : train.samples()) {
    REQUIRE(s.label == 0);
    REQUIRE(s.defect_type == "good");
    REQUIRE(s.mask_path.empty());
  }

  const hgad::MvtecDataset test(root, hgad::Split::test);
  REQUIRE(test.size() == 7);
  std::vector<std::tuple<std::string, std::string, std::string, int, bool>> listed;
  for (const auto& s : test.samples())
    listed.emplace_back(s.class_name, s.defect_type, fs::path(s.image_path).filename().string(),
                        s.label, !s.mask_path.empty());
  const std::vector<std::tuple<std::string, std::string, std::string, int, bool>> expected = {
      {"alpha", "good", "g.png", 0, false},      {"alpha", "hole", "h.png", 1, true},
      {"widget", "crack", "000.png", 1, true},   {"widget", "crack", "001.png", 1, true},
      {"widget", "good", "000.png", 0, false},   {"widget", "good", "001.png", 0, false},
      {"widget", "scratch", "000.png", 1, true},
  };
  REQUIRE(listed == expected);
  REQUIRE(test[2].mask_path == (dir.path() / "widget/ground_truth/crack/000_mask.png").string());
  REQUIRE(test.counts().at({"widget", "crack"}) == 2);
  REQUIRE(test.counts().at({"widget", "good"}) == 2);
  REQUIRE(test.indices_of_class(0) == std::vector<hgad::Index>{0, 1});
  REQUIRE(test.class_index("widget") == 1);
  REQUIRE_THROWS_WITH(test.class_index("gadget"), Catch::Contains("gadget"));
  REQUIRE_THROWS_AS(test[7], hgad::Error);
  test.validate();

  // Given classes define the indices in their order; a subset reads only those.
  hgad::MvtecOptions given;
  given.classes = {"widget", "alpha"};
  const hgad::MvtecDataset reordered(root, hgad::Split::test, given);
  REQUIRE(reordered[0].class_name == "widget");
  REQUIRE(reordered[0].class_index == 0);
  REQUIRE(reordered[6].class_index == 1);
  given.classes = {"alpha"};
  REQUIRE(hgad::MvtecDataset(root, hgad::Split::train, given).size() == 2);
}

TEST_CASE(
    "load_sample binarises masks, gives normal images zero masks and follows the preprocessing",
    "[io]") {
  hgad_test::TempDir dir("mvtec_load");
  build_layout(dir.path());
  const hgad::MvtecDataset test(dir.path().string(), hgad::Split::test);

  // A 5x5 image stretched to 5x5 is unchanged, so the mask is the binarised file (byte > 127 is 1)
  // and the image the gray file replicated to 3 channels.
  hgad::Preprocess pre;
  pre.image_size = 5;
  pre.mask_size = 5;
  pre.normalize = false;
  const auto hole = test.load<double>(1, pre);
  REQUIRE(hole.label == 1);
  REQUIRE(hole.has_mask);
  REQUIRE(hole.class_index == 0);
  REQUIRE(hole.original_height == 5);
  REQUIRE(hole.original_width == 5);
  REQUIRE(hole.image.shape() == hgad::Shape({3, 5, 5}));
  REQUIRE(hole.mask.shape() == hgad::Shape({1, 5, 5}));
  for (hgad::Index y = 0; y < 5; ++y)
    for (hgad::Index x = 0; x < 5; ++x) {
      const int level = int((y + x) % 4);  // bytes 0, 100, 128, 255
      REQUIRE(hole.mask(0, y, x) == (level >= 2 ? 1.0 : 0.0));
      const double gray = double((7 * y + 3 * x + 50) % 256) / 255.0;
      for (int k = 0; k < 3; ++k) REQUIRE(hole.image(k, y, x) == Approx(gray).margin(1e-12));
    }
  pre.mask_threshold = 0;  // HGAD's "any non-zero pixel"
  const auto any = test.load<float>(1, pre);
  REQUIRE(any.mask(0, 0, 1) == 1.0f);  // byte 100
  REQUIRE(any.mask(0, 0, 0) == 0.0f);

  // Normal image: an all-zero mask of mask_size.
  pre.mask_size = 7;
  const auto good = test.load<float>(0, pre);
  REQUIRE(good.label == 0);
  REQUIRE(good.has_mask);
  REQUIRE(good.mask.shape() == hgad::Shape({1, 7, 7}));
  for (float v : good.mask.to_vector()) REQUIRE(v == 0.0f);

  // Default preprocessing of a 6x10 image: 256x256 stretch, PIL bilinear, ImageNet normalisation.
  const auto crack = test.load<float>(2);
  REQUIRE(crack.image.shape() == hgad::Shape({3, 256, 256}));
  REQUIRE(crack.mask.shape() == hgad::Shape({1, 256, 256}));
  const auto reference = hgad::normalize_imagenet(
      hgad::resize_bilinear_antialias(hgad::load_image<float>(test[2].image_path), 256, 256));
  REQUIRE(crack.image.to_vector() == reference.to_vector());
  for (float v : crack.mask.to_vector()) REQUIRE((v == 0.0f || v == 1.0f));

  // Shorter side + centre crop: 6x10 -> shorter side 4 gives 4x6, centre crop 4x4 keeps
  // columns 1..4.
  hgad::Preprocess crop;
  crop.mode = hgad::ResizeMode::shorter_side_then_center_crop;
  crop.image_size = 4;
  crop.mask_size = 3;
  crop.mask_resize_size = 6;
  crop.normalize = false;
  const auto cropped = test.load<float>(2, crop);
  REQUIRE(cropped.image.shape() == hgad::Shape({3, 4, 4}));
  REQUIRE(cropped.mask.shape() == hgad::Shape({1, 3, 3}));
  // Mask: 6x10 at shorter side 6 is unchanged; the 3x3 centre crop starts at row round(1.5) = 2,
  // column round(3.5) = 4.
  for (hgad::Index y = 0; y < 3; ++y)
    for (hgad::Index x = 0; x < 3; ++x)
      REQUIRE(cropped.mask(0, y, x) == (((y + 2 + x + 4) % 4) >= 2 ? 1.0f : 0.0f));
}

TEST_CASE("load_batch decodes samples in parallel into one batch and rethrows the first error",
          "[io]") {
  hgad_test::TempDir dir("mvtec_batch");
  build_layout(dir.path());
  const hgad::MvtecDataset test(dir.path().string(), hgad::Split::test);
  hgad::Preprocess pre;
  pre.image_size = 8;
  pre.mask_size = 4;
  const auto batch = test.load_batch<float>(0, test.size(), pre);
  REQUIRE(batch.images.shape() == hgad::Shape({7, 3, 8, 8}));
  REQUIRE(batch.masks.shape() == hgad::Shape({7, 1, 4, 4}));
  REQUIRE(batch.labels == std::vector<int>{0, 1, 1, 1, 0, 0, 1});
  REQUIRE(batch.class_indices == std::vector<hgad::Index>{0, 0, 1, 1, 1, 1, 1});
  for (hgad::Index i = 0; i < test.size(); ++i) {
    const auto one = test.load<float>(i, pre);
    REQUIRE(batch.images.slice(i, i + 1).to_vector() == one.image.to_vector());
    REQUIRE(batch.masks.slice(i, i + 1).to_vector() == one.mask.to_vector());
  }
  hgad_test::write_bytes(test[3].image_path, {'n', 'o', 'p', 'e'});
  REQUIRE_THROWS_WITH(test.load_batch<float>(0, test.size(), pre),
                      Catch::Contains(test[3].image_path));
  REQUIRE_THROWS_AS(test.load_batch<float>(2, 8, pre), hgad::Error);
}

TEST_CASE("MvtecDataset reports every layout error with the offending path", "[io]") {
  hgad_test::TempDir dir("mvtec_errors");
  const fs::path root = dir.path();
  build_layout(root);

  SECTION("a missing mask for an anomalous image, unless image-level-only") {
    fs::remove(root / "widget/ground_truth/crack/001_mask.png");
    const std::string message = error_of_listing(root, hgad::Split::test);
    REQUIRE_THAT(message,
                 Catch::Contains((root / "widget/test/crack/001.png").string()) &&
                     Catch::Contains((root / "widget/ground_truth/crack/001_mask.png").string()) &&
                     Catch::Contains("ground_truth folder"));
    REQUIRE(error_of_listing(root, hgad::Split::train).empty());
    hgad::MvtecOptions image_level;
    image_level.mask_mode = hgad::MaskMode::image_level_only;
    const hgad::MvtecDataset test(root.string(), hgad::Split::test, image_level);
    REQUIRE(test.size() == 7);
    for (const auto& s : test.samples()) REQUIRE(s.mask_path.empty());
    const auto crack = test.load<float>(3);
    REQUIRE(crack.label == 1);
    REQUIRE_FALSE(crack.has_mask);
    REQUIRE(crack.mask.numel() == 0);
    const auto batch = test.load_batch<float>(0, 7);
    REQUIRE(batch.has_mask == std::vector<bool>{true, false, false, false, true, true, false});
  }
  SECTION("when_present: a class without ground_truth has image-level labels only") {
    const hgad::MvtecOptions when_present{{}, hgad::MaskMode::when_present};
    fs::remove_all(root / "widget/ground_truth");
    const hgad::MvtecDataset test(root.string(), hgad::Split::test, when_present);
    const hgad::Index widget = test.class_index("widget");
    REQUIRE_FALSE(test.has_masks(widget));
    for (hgad::Index c = 0; c < test.n_classes(); ++c)
      if (c != widget) REQUIRE(test.has_masks(c));
    for (const auto& s : test.samples())
      if (s.class_index == widget) REQUIRE(s.mask_path.empty());
    // A class that has the folder still needs every mask.
    fs::create_directories(root / "widget/ground_truth/crack");
    REQUIRE_THROWS_WITH(hgad::MvtecDataset(root.string(), hgad::Split::test, when_present),
                        Catch::Contains("ground_truth folder"));
  }
  SECTION("a TIFF image is named, not skipped") {
    std::ofstream(root / "widget/train/good/003.TIF") << "II*";
    REQUIRE_THAT(error_of_listing(root, hgad::Split::train),
                 Catch::Contains("003.TIF") && Catch::Contains("convert"));
  }
  SECTION("a layout folder in other letter case is named, not skipped") {
    fs::rename(root / "alpha/train", root / "alpha/Train");
    const std::string message = error_of_listing(root, hgad::Split::train);
    REQUIRE_THAT(message, Catch::Contains((root / "alpha/Train").string()) &&
                              Catch::Contains("rename it to 'train'"));
    fs::rename(root / "alpha/Train", root / "alpha/train");
    fs::rename(root / "widget/test/good", root / "widget/test/Good");
    REQUIRE_THAT(error_of_listing(root, hgad::Split::test),
                 Catch::Contains("Good") && Catch::Contains("'good'"));
  }
  SECTION("a mask of another size than its image") {
    write_png(root / "widget/ground_truth/scratch/000_mask.png", mask_image(6, 9));
    const hgad::MvtecDataset test(root.string(), hgad::Split::test);
    const std::string mask = (root / "widget/ground_truth/scratch/000_mask.png").string();
    REQUIRE_THROWS_WITH(test.load<float>(6),
                        Catch::Contains(mask) && Catch::Contains("9x6") && Catch::Contains("10x6"));
    REQUIRE_THROWS_WITH(test.validate(), Catch::Contains(mask));
  }
  SECTION("an unreadable image") {
    hgad_test::write_bytes((root / "alpha/test/hole/h.png").string(),
                           {'<', 'h', 't', 'm', 'l', '>'});
    const hgad::MvtecDataset test(root.string(), hgad::Split::test);
    const std::string image = (root / "alpha/test/hole/h.png").string();
    REQUIRE_THROWS_WITH(test.load<float>(1),
                        Catch::Contains(image) && Catch::Contains("unknown image type"));
    REQUIRE_THROWS_WITH(test.validate(), Catch::Contains(image));
  }
  SECTION("an unreadable mask") {
    hgad_test::write_bytes((root / "alpha/ground_truth/hole/h_mask.png").string(),
                           {0x89, 'P', 'N', 'G'});
    const hgad::MvtecDataset test(root.string(), hgad::Split::test);
    REQUIRE_THROWS_WITH(test.load<float>(1), Catch::Contains("h_mask.png"));
  }
  SECTION("an empty class folder") {
    for (const auto& e : fs::directory_iterator(root / "alpha/train/good")) fs::remove(e.path());
    REQUIRE_THAT(
        error_of_listing(root, hgad::Split::train),
        Catch::Contains((root / "alpha/train/good").string()) && Catch::Contains("no image"));
  }
  SECTION("an empty defect folder") {
    fs::remove(root / "widget/test/scratch/000.png");
    REQUIRE_THAT(error_of_listing(root, hgad::Split::test),
                 Catch::Contains((root / "widget/test/scratch").string()));
  }
  SECTION("a class without the split's folder") {
    fs::remove_all(root / "alpha/test");
    REQUIRE_THAT(error_of_listing(root, hgad::Split::test),
                 Catch::Contains((root / "alpha/test").string()));
    fs::remove_all(root / "widget/train");
    REQUIRE_THAT(error_of_listing(root, hgad::Split::train),
                 Catch::Contains((root / "widget/train/good").string()));
  }
  SECTION("an unknown class name") {
    hgad::MvtecOptions options;
    options.classes = {"alpha", "gadget"};
    REQUIRE_THAT(
        error_of_listing(root, hgad::Split::train, options),
        Catch::Contains("unknown class 'gadget'") && Catch::Contains("alpha, docs, widget"));
    options.classes = {"../alpha"};
    REQUIRE_THAT(error_of_listing(root, hgad::Split::train, options),
                 Catch::Contains("unknown class"));
    options.classes = {"alpha", "alpha"};
    REQUIRE_THAT(error_of_listing(root, hgad::Split::train, options), Catch::Contains("twice"));
  }
  SECTION("a mask without its image") {
    write_png(root / "widget/ground_truth/crack/007_mask.png", mask_image(6, 10));
    REQUIRE_THAT(error_of_listing(root, hgad::Split::test),
                 Catch::Contains((root / "widget/ground_truth/crack/007_mask.png").string()));
  }
  SECTION("an anomalous folder under train") {
    write_png(root / "alpha/train/bad/x.png", gray_image(5, 5, 0));
    REQUIRE_THAT(error_of_listing(root, hgad::Split::train),
                 Catch::Contains((root / "alpha/train/bad").string()));
  }
  SECTION("two images sharing one stem") {
    write_png(root / "widget/test/good/000.bmp", gray_image(6, 10, 0));
    REQUIRE_THAT(error_of_listing(root, hgad::Split::test),
                 Catch::Contains("share the stem '000'"));
  }
  SECTION("a missing root or a root without classes") {
    REQUIRE_THAT(error_of_listing(root / "nope", hgad::Split::train),
                 Catch::Contains((root / "nope").string()));
    fs::create_directories(root / "empty");
    REQUIRE_THAT(error_of_listing(root / "empty", hgad::Split::train),
                 Catch::Contains("no class folder"));
  }
}

TEST_CASE("The industrial-mini dataset lists the counts of its README and its manifest", "[io]") {
  const std::string root = std::string(HGAD_SHARED_DIR) + "/datasets/industrial-mini";
  if (!fs::exists(root + "/manifest.csv")) {
    WARN("skipped: " << root << " is absent");
    return;
  }
  const hgad::MvtecDataset train(root, hgad::Split::train);
  const hgad::MvtecDataset test(root, hgad::Split::test);
  REQUIRE(train.class_names() ==
          std::vector<std::string>{"kolektor", "magnetic_tile", "pcb1", "pcb2", "pcb3"});
  REQUIRE(train.size() == 1431);
  REQUIRE(test.size() == 614 + 670);
  const std::map<std::string, hgad::Index> train_counts = {
      {"magnetic_tile", 666}, {"kolektor", 233}, {"pcb1", 226}, {"pcb2", 155}, {"pcb3", 151}};
  for (const auto& [name, n] : train_counts)
    REQUIRE(static_cast<hgad::Index>(train.indices_of_class(train.class_index(name)).size()) == n);
  const std::map<std::pair<std::string, std::string>, hgad::Index> test_counts = {
      {{"magnetic_tile", "good"}, 286}, {{"magnetic_tile", "blowhole"}, 115},
      {{"magnetic_tile", "break"}, 85}, {{"magnetic_tile", "crack"}, 57},
      {{"magnetic_tile", "fray"}, 32},  {{"magnetic_tile", "uneven"}, 103},
      {{"kolektor", "good"}, 100},      {{"kolektor", "crack"}, 50},
      {{"pcb1", "good"}, 97},           {{"pcb1", "defect"}, 97},
      {{"pcb2", "good"}, 66},           {{"pcb2", "defect"}, 66},
      {{"pcb3", "good"}, 65},           {{"pcb3", "defect"}, 65}};
  REQUIRE(test.counts() == test_counts);

  // Every listed sample is a manifest row with the same split, defect type, mask and label.
  std::ifstream manifest(root + "/manifest.csv");
  std::string line;
  std::getline(manifest, line);
  std::set<std::string> rows;
  while (std::getline(manifest, line)) rows.insert(line);
  REQUIRE(rows.size() == 2715);
  const auto relative = [&](const std::string& p) {
    return p.empty() ? p : fs::path(p).lexically_relative(root).string();
  };
  for (const hgad::MvtecDataset* d : {&train, &test})
    for (const auto& s : d->samples()) {
      const std::string row = s.class_name + "," +
                              (d->split() == hgad::Split::train ? "train" : "test") + "," +
                              s.defect_type + "," + relative(s.image_path) + "," +
                              relative(s.mask_path) + "," + std::to_string(s.label);
      CAPTURE(row);
      REQUIRE(rows.count(row) == 1);
    }

  // One image and mask per class decode to the protocol's shapes with binary masks.
  for (hgad::Index c = 0; c < test.n_classes(); ++c) {
    const auto indices = test.indices_of_class(c);
    const hgad::Index last =
        indices.back();  // a defect image: 'good' sorts before most defect names
    const auto s = test.load<float>(last);
    REQUIRE(s.image.shape() == hgad::Shape({3, 256, 256}));
    REQUIRE(s.mask.shape() == hgad::Shape({1, 256, 256}));
    for (float v : s.image.to_vector()) REQUIRE(std::isfinite(v));
    for (float v : s.mask.to_vector()) REQUIRE((v == 0.0f || v == 1.0f));
  }
#ifndef HGAD_SANITIZED
  test.validate();
#endif
}

}  // namespace mvtec_test
