// libFuzzer target: the MVTec-layout reader on a small folder tree built from the fuzz bytes in a
// temporary directory: class, defect and file names, images that are valid, truncated or garbage,
// masks that are missing, of the right or a wrong size, or garbage, orphan masks, and random
// reader options. Listing, validating and loading must either succeed with consistent results or
// raise hgad::Error; any other exception, a crash or a broken invariant is a bug.

#include <unistd.h>

#include <fuzzer/FuzzedDataProvider.h>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <hgad/io/mvtec.hpp>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

void require(bool condition) {
  if (!condition) std::abort();
}

const fs::path& scratch_root() {
  static const fs::path root = [] {
    const fs::path p =
        fs::temp_directory_path() / ("hgad_fuzz_mvtec_" + std::to_string(::getpid()));
    std::atexit([] {
      std::error_code ignored;
      fs::remove_all(fs::temp_directory_path() / ("hgad_fuzz_mvtec_" + std::to_string(::getpid())),
                     ignored);
    });
    return p;
  }();
  return root;
}

void write_file(const fs::path& path, const std::vector<std::uint8_t>& bytes) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

std::vector<std::uint8_t> encoded(FuzzedDataProvider& fdp, int height, int width,
                                  bool binary_values) {
  // PNG gray (0), PNG RGB (1), BMP (2, 3), truncated PNG (4). JPEG decoding is fuzzed by
  // fuzz_image; stb_image_write's JPEG encoder shifts negative ints, which UBSan reports.
  const int kind = fdp.ConsumeIntegralInRange<int>(0, 4);
  const int channels = kind == 1 ? 3 : 1;
  std::vector<std::uint8_t> pixels(static_cast<std::size_t>(height * width * channels));
  for (auto& p : pixels) {
    const auto v = fdp.ConsumeIntegral<std::uint8_t>();
    p = binary_values ? (v & 1 ? 255 : 0) : v;
  }
  std::vector<std::uint8_t> out;
  if (kind <= 1 || kind == 4) {
    stbi_write_png_to_func(hgad::detail::image::append_bytes, &out, width, height, channels,
                           pixels.data(), width * channels);
  } else {
    stbi_write_bmp_to_func(hgad::detail::image::append_bytes, &out, width, height, channels,
                           pixels.data());
  }
  if (kind == 4) out.resize(fdp.ConsumeIntegralInRange<std::size_t>(0, out.size()));  // truncated
  return out;
}

std::vector<std::uint8_t> image_bytes(FuzzedDataProvider& fdp, int height, int width,
                                      bool binary_values) {
  if (fdp.ConsumeIntegralInRange<int>(0, 7) == 0)
    return fdp.ConsumeBytes<std::uint8_t>(fdp.ConsumeIntegralInRange<int>(0, 64));
  return encoded(fdp, height, width, binary_values);
}

void build_tree(FuzzedDataProvider& fdp, const fs::path& root) {
  static const char* class_names[] = {"a", "b", "c", "d"};
  static const char* defect_names[] = {"good", "crack", "hole", "good"};
  static const char* extensions[] = {".png", ".jpg", ".bmp", ".PNG", ".txt", ".jpeg"};
  const int n_classes = fdp.ConsumeIntegralInRange<int>(0, 3);
  for (int c = 0; c < n_classes; ++c) {
    const fs::path cls = root / class_names[fdp.ConsumeIntegralInRange<int>(0, 3)];
    const int height = fdp.ConsumeIntegralInRange<int>(1, 8),
              width = fdp.ConsumeIntegralInRange<int>(1, 8);
    const int n_train = fdp.ConsumeIntegralInRange<int>(-1, 3);  // -1: no train folder at all
    if (n_train >= 0) fs::create_directories(cls / "train/good");
    for (int i = 0; i < n_train; ++i)
      write_file(cls / "train/good" /
                     (std::to_string(i) + extensions[fdp.ConsumeIntegralInRange<int>(0, 5)]),
                 image_bytes(fdp, height, width, false));
    if (fdp.ConsumeIntegralInRange<int>(0, 15) == 0)
      write_file(cls / "train/bad/x.png", image_bytes(fdp, height, width, false));
    const int n_defects = fdp.ConsumeIntegralInRange<int>(-1, 3);
    if (n_defects >= 0) fs::create_directories(cls / "test");
    for (int d = 0; d < n_defects; ++d) {
      const std::string defect = defect_names[fdp.ConsumeIntegralInRange<int>(0, 3)];
      fs::create_directories(cls / "test" / defect);
      const int n_images = fdp.ConsumeIntegralInRange<int>(0, 2);
      for (int i = 0; i < n_images; ++i) {
        const std::string stem = std::to_string(fdp.ConsumeIntegralInRange<int>(0, 2));
        write_file(
            cls / "test" / defect / (stem + extensions[fdp.ConsumeIntegralInRange<int>(0, 5)]),
            image_bytes(fdp, height, width, false));
        const int mask = fdp.ConsumeIntegralInRange<int>(
            0, 4);  // 0: none, 1-2: right size, 3: other size, 4: garbage
        const fs::path mask_path = cls / "ground_truth" / defect / (stem + "_mask.png");
        if (mask == 1 || mask == 2) write_file(mask_path, encoded(fdp, height, width, mask == 1));
        if (mask == 3) write_file(mask_path, encoded(fdp, height + 1, width, true));
        if (mask == 4)
          write_file(mask_path,
                     fdp.ConsumeBytes<std::uint8_t>(fdp.ConsumeIntegralInRange<int>(0, 32)));
      }
    }
    if (fdp.ConsumeIntegralInRange<int>(0, 7) == 0)
      write_file(cls / "ground_truth/crack/9_mask.png", encoded(fdp, height, width, true));
  }
  if (fdp.ConsumeBool()) write_file(root / "README.md", {'x'});
}

template <class Scalar>
void check_loaded(const hgad::LoadedSample<Scalar>& s, const hgad::MvtecSample& listed,
                  const hgad::Preprocess& pre) {
  require(s.image.shape() == hgad::Shape({3, pre.image_size, pre.image_size}));
  for (Scalar v : s.image.to_vector()) require(std::isfinite(v));
  require(s.label == listed.label);
  require(s.has_mask == (listed.label == 0 || !listed.mask_path.empty()));
  if (s.has_mask) {
    require(s.mask.shape() == hgad::Shape({1, pre.mask_size, pre.mask_size}));
    for (Scalar v : s.mask.to_vector())
      require(v == Scalar(0) || (v == Scalar(1) && listed.label == 1));
  } else {
    require(s.mask.numel() == 0);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider fdp(data, size);
  const fs::path root = scratch_root();
  fs::remove_all(root);
  fs::create_directories(root);
  build_tree(fdp, root);

  hgad::MvtecOptions options;
  if (fdp.ConsumeBool()) {
    static const char* names[] = {"a", "b", "c", "zz", "..", ""};
    const int n = fdp.ConsumeIntegralInRange<int>(1, 3);
    for (int i = 0; i < n; ++i)
      options.classes.push_back(names[fdp.ConsumeIntegralInRange<int>(0, 5)]);
  }
  if (fdp.ConsumeBool()) options.mask_mode = hgad::MaskMode::image_level_only;
  hgad::Preprocess pre;
  pre.image_size = fdp.ConsumeIntegralInRange<int>(1, 9);
  pre.mask_size = fdp.ConsumeIntegralInRange<int>(1, 9);
  pre.mode = fdp.ConsumeBool() ? hgad::ResizeMode::stretch
                               : hgad::ResizeMode::shorter_side_then_center_crop;
  pre.resize_size = fdp.ConsumeIntegralInRange<int>(0, 12);
  pre.mask_resize_size = fdp.ConsumeIntegralInRange<int>(0, 12);
  pre.image_filter = static_cast<hgad::Interpolation>(fdp.ConsumeIntegralInRange<int>(0, 3));
  pre.normalize = fdp.ConsumeBool();
  pre.mask_threshold = fdp.ConsumeIntegralInRange<int>(0, 254);
  pre.max_image_pixels = 1 << 16;

  for (hgad::Split split : {hgad::Split::train, hgad::Split::test}) {
    try {
      const hgad::MvtecDataset d(root.string(), split, options);
      require(d.size() > 0);
      for (const auto& s : d.samples()) {
        require(s.class_index >= 0 && s.class_index < d.n_classes());
        require(d.class_names()[static_cast<std::size_t>(s.class_index)] == s.class_name);
        require(s.label == (s.defect_type == "good" ? 0 : 1));
        require(split == hgad::Split::test || s.label == 0);
        if (s.label == 1 && options.mask_mode == hgad::MaskMode::required)
          require(fs::is_regular_file(s.mask_path));
        if (options.mask_mode == hgad::MaskMode::image_level_only) require(s.mask_path.empty());
      }
      try {
        d.validate();
      } catch (const hgad::Error&) {
      }
      for (hgad::Index i = 0; i < d.size(); ++i) {
        try {
          check_loaded(d.load<float>(i, pre), d[i], pre);
        } catch (const hgad::Error&) {
        }
      }
      try {
        const auto batch = d.load_batch<double>(0, d.size(), pre);
        require(batch.images.dim(0) == d.size());
      } catch (const hgad::Error&) {
      }
    } catch (const hgad::Error&) {
    }
  }
  return 0;
}
