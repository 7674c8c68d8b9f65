#pragma once
/// \file
/// A dataset reader for the MVTec AD folder layout, the de-facto standard of industrial anomaly
/// detection, for any number of classes:
///
///     <root>/<class>/train/good/<stem>.<ext>
///     <root>/<class>/test/good/<stem>.<ext>                         normal, all-zero mask (no
///     file) <root>/<class>/test/<defect>/<stem>.<ext>                     anomalous
///     <root>/<class>/ground_truth/<defect>/<stem>_mask.png          one per anomalous image
///
/// Listing is cheap: the constructor walks the folders and checks that every mask file exists, but
/// decodes nothing. `load_sample` decodes and preprocesses one sample; `load_batch` many, in
/// parallel.
///
///     hgad::MvtecDataset train(root, hgad::Split::train);            // all classes, sorted by
///     name hgad::MvtecDataset test(root, hgad::Split::test, {train.class_names()});
///     hgad::Preprocess pre;                                           // 256x256 stretch, PIL
///     bilinear auto s = test.load<float>(0, pre);                              // s.image
///     (3,256,256), s.mask (1,256,256)
///
/// Every problem is an hgad::Error naming the path: an unknown class name, a class or defect folder
/// without images, a missing mask for an anomalous image (unless MaskMode::image_level_only), a
/// mask file without its image, a mask whose size differs from its image's, an unreadable image.
/// Nothing is skipped silently; files without an image extension (.png, .jpg, .jpeg, .bmp, any
/// case) and hidden entries (a leading '.') are not samples and are ignored, but a TIFF or WebP
/// image (not read) and a layout folder in other letter case (`Train/`) are errors naming them.
///
/// Masks are binarised as pixel > mask_threshold with the 8-bit value; the default 127 follows the
/// BASELINES.md protocol of industrial-mini, whose masks are exactly {0, 255}, so it agrees there
/// with HGAD's reference rule "any non-zero pixel" (docs/algorithm.md §1.1, mask_threshold = 0).

#include <algorithm>
#include <cctype>
#include <cmath>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <system_error>
#include <vector>

#include "../detail/check.hpp"
#include "../detail/parallel.hpp"
#include "../detail/text.hpp"
#include "../tensor.hpp"
#include "image.hpp"

namespace hgad {

/// Which part of an MVTec-layout dataset to list.
enum class Split {
  train,  ///< <class>/train/good
  test,   ///< <class>/test/<defect or good>
};

/// How the reader treats ground-truth masks of anomalous test images.
enum class MaskMode {
  required,          ///< every anomalous image has its mask; masks without an image are errors too
  image_level_only,  ///< masks are neither looked up nor read; only image-level labels exist
  /// A class with a ground_truth/ folder is read as in `required`; a class without one has
  /// image-level labels only (MvtecDataset::has_masks tells which). Most users' own data sets
  /// have no masks at all.
  when_present,
};

/// One listed image: where it is and what it is. Nothing is decoded.
struct MvtecSample {
  std::string image_path;
  std::string mask_path;  ///< empty for normal images and in MaskMode::image_level_only
  Index class_index = 0;
  std::string class_name;
  std::string defect_type;  ///< "good" for normal images
  int label = 0;            ///< 0 normal, 1 anomalous
};

/// Options of the folder walk.
struct MvtecOptions {
  /// Classes to read, in the order that defines their indices; empty: every sub-folder of the root
  /// that holds a `train` or `test` folder, in sorted order of the names.
  std::vector<std::string> classes;
  MaskMode mask_mode = MaskMode::required;
  /// The mask of image `<stem>.<ext>` is `ground_truth/<defect>/<stem><mask_suffix>` (MVTec AD
  /// naming).
  std::string mask_suffix = "_mask.png";
};

/// How images are brought to the network's input size.
enum class ResizeMode {
  /// Resize to size x size ignoring the aspect ratio (industrial-mini BASELINES.md protocol).
  stretch,
  /// torchvision Resize(resize_size) on the shorter side, then CenterCrop(size) (docs/algorithm.md
  /// §1.1).
  shorter_side_then_center_crop,
};

/// Preprocessing of one sample, image and mask.
struct Preprocess {
  Index image_size = 256;  ///< output height and width of the image
  Index mask_size = 256;   ///< output height and width of the mask
  ResizeMode mode = ResizeMode::stretch;
  /// Shorter side before the centre crop in shorter_side_then_center_crop mode; 0 means image_size
  /// (and mask_size for the mask), as in HGAD where both are 1024 (docs/algorithm.md §1.1).
  Index resize_size = 0;
  Index mask_resize_size = 0;
  /// Image filter: Pillow BILINEAR by default (BASELINES.md). HGAD's reference uses Pillow LANCZOS,
  /// which is not implemented; bilinear_antialias is the closest filter here. Masks always use
  /// nearest (Pillow NEAREST, half-pixel centres).
  Interpolation image_filter = Interpolation::bilinear_antialias;
  bool normalize = true;     ///< apply ImageNet normalisation (imagenet_mean, imagenet_std)
  int mask_threshold = 127;  ///< a mask pixel with 8-bit value > mask_threshold is anomalous
  /// Largest image (width x height) decoded; larger files are errors (see hgad::decode_image).
  std::int64_t max_image_pixels = default_max_image_pixels;
};

/// A decoded and preprocessed sample.
template <class Scalar>
struct LoadedSample {
  Tensor<Scalar> image;  ///< (3, image_size, image_size)
  Tensor<Scalar> mask;   ///< (1, mask_size, mask_size) in {0, 1}; all zero for normal images; empty
                         ///< (shape (0)) without has_mask
  bool has_mask = false;  ///< false only for anomalous images in MaskMode::image_level_only
  int label = 0;
  Index class_index = 0;
  Index original_height = 0;  ///< of the image file
  Index original_width = 0;
};

/// A batch of decoded samples.
template <class Scalar>
struct LoadedBatch {
  Tensor<Scalar> images;  ///< (N, 3, image_size, image_size)
  Tensor<Scalar> masks;   ///< (N, 1, mask_size, mask_size); zeros where has_mask is false
  std::vector<bool> has_mask;
  std::vector<int> labels;
  std::vector<Index> class_indices;
};

namespace detail::mvtec {

inline bool is_hidden(const std::filesystem::path& p) {
  const std::string name = p.filename().string();
  return !name.empty() && name[0] == '.';
}

/// The lower-case text of `s`.
inline std::string lower_case(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return char(std::tolower(c)); });
  return s;
}

inline bool has_image_extension(const std::filesystem::path& p) {
  const std::string ext = lower_case(p.extension().string());
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp";
}

inline bool path_is_directory(const std::filesystem::path& p) {
  std::error_code ec;
  return std::filesystem::is_directory(p, ec);
}

inline bool path_is_file(const std::filesystem::path& p) {
  std::error_code ec;
  return std::filesystem::is_regular_file(p, ec);
}

/// Entries of `dir` (not hidden) that satisfy `keep`, sorted by file name (byte order).
template <class Keep>
std::vector<std::filesystem::path> list_sorted(const std::filesystem::path& dir, Keep&& keep) {
  std::error_code ec;
  std::filesystem::directory_iterator it(dir, ec);
  check(!ec, "mvtec: cannot list '", dir.string(), "' (", ec.message(), ")");
  std::vector<std::filesystem::path> out;
  for (; it != std::filesystem::directory_iterator(); it.increment(ec)) {
    check(!ec, "mvtec: cannot list '", dir.string(), "' (", ec.message(), ")");
    const std::filesystem::path p = it->path();
    if (!is_hidden(p) && keep(p)) out.push_back(p);
  }
  check(!ec, "mvtec: cannot list '", dir.string(), "' (", ec.message(), ")");
  std::sort(out.begin(), out.end(),
            [](const std::filesystem::path& a, const std::filesystem::path& b) {
              return a.filename().string() < b.filename().string();
            });
  return out;
}

/// Image files of `dir`; a file of an image format that is not read (TIFF, WebP) is an error
/// naming it rather than a silent skip.
inline std::vector<std::filesystem::path> list_images(const std::filesystem::path& dir) {
  return list_sorted(dir, [](const std::filesystem::path& p) {
    const std::string ext = lower_case(p.extension().string());
    check(!(ext == ".tif" || ext == ".tiff" || ext == ".webp") || !path_is_file(p), "mvtec: '",
          p.string(), "': ", ext, " images are not read (only .png, .jpg, .jpeg, .bmp); convert "
          "them, e.g. to PNG");
    return has_image_extension(p) && path_is_file(p);
  });
}

/// Throws when `dir` holds a folder named `expected` but for letter case ("Train" for "train"):
/// the layout's folder names are matched exactly, so that folder would otherwise be skipped.
inline void check_no_case_variant(const std::filesystem::path& dir, const std::string& expected) {
  if (!path_is_directory(dir)) return;
  for (const std::filesystem::path& p :
       list_sorted(dir, [](const std::filesystem::path& q) { return path_is_directory(q); })) {
    const std::string name = p.filename().string();
    check(name == expected || lower_case(name) != expected, "mvtec: folder '", p.string(),
          "': the layout's folder names are lower case; rename it to '", expected, "'");
  }
}

inline std::vector<std::filesystem::path> list_directories(const std::filesystem::path& dir) {
  return list_sorted(dir, [](const std::filesystem::path& p) { return path_is_directory(p); });
}

/// The names separated by ", ", or "none".
inline std::string join_names(const std::vector<std::string>& names) {
  return names.empty() ? "none" : join(names);
}

/// Rounds a value v in [0, 1] that came from byte / 255 back to its byte.
template <class Scalar>
int to_byte(Scalar v) {
  return static_cast<int>(std::floor(double(v) * 255.0 + 0.5));
}

/// Brings a (C, H, W) image or mask to size x size with the geometry of `mode`.
template <class Scalar>
Tensor<Scalar> fit(const Tensor<Scalar>& x, Index size, Index resize_size, ResizeMode mode,
                   Interpolation filter) {
  if (mode == ResizeMode::stretch) return resize(x, size, size, filter);
  const Index shorter = resize_size > 0 ? resize_size : size;
  check(shorter >= size, "Preprocess: resize_size ", shorter, " is smaller than the crop ", size);
  return center_crop(resize_shorter_side(x, shorter, filter), size, size);
}

}  // namespace detail::mvtec

/// Decodes and preprocesses one sample: the image through `pre` (resize or resize + centre crop,
/// optional ImageNet normalisation), the mask binarised (8-bit value > pre.mask_threshold) and
/// resized with nearest neighbour in the same geometry; normal images get an all-zero mask.
///
/// Throws hgad::Error naming the path for an unreadable image or mask, or a mask whose size differs
/// from its image's.
template <class Scalar>
LoadedSample<Scalar> load_sample(const MvtecSample& sample, const Preprocess& pre = {}) {
  check(pre.image_size > 0 && pre.mask_size > 0, "load_sample: image_size ", pre.image_size,
        " and mask_size ", pre.mask_size, " must be positive");
  check(pre.mask_threshold >= 0 && pre.mask_threshold < 255, "load_sample: mask_threshold ",
        pre.mask_threshold, " must be in [0, 254]");
  LoadedSample<Scalar> out;
  out.label = sample.label;
  out.class_index = sample.class_index;
  const Tensor<Scalar> image = load_image<Scalar>(sample.image_path, 3, pre.max_image_pixels);
  out.original_height = image.dim(1);
  out.original_width = image.dim(2);
  out.image =
      detail::mvtec::fit(image, pre.image_size, pre.resize_size, pre.mode, pre.image_filter);
  if (pre.normalize) out.image = normalize_imagenet(out.image);

  if (sample.label == 0) {
    out.mask = Tensor<Scalar>::zeros({1, pre.mask_size, pre.mask_size});
    out.has_mask = true;
  } else if (sample.mask_path.empty()) {
    out.mask = Tensor<Scalar>(Shape{0});
    out.has_mask = false;
  } else {
    Tensor<Scalar> mask = load_image<Scalar>(sample.mask_path, 1, pre.max_image_pixels);
    check(mask.dim(1) == out.original_height && mask.dim(2) == out.original_width, "mvtec: mask '",
          sample.mask_path, "' is ", mask.dim(2), "x", mask.dim(1),
          " (width x height) but its image '", sample.image_path, "' is ", out.original_width, "x",
          out.original_height);
    for (Index i = 0; i < mask.numel(); ++i)
      mask.data()[i] =
          detail::mvtec::to_byte(mask.data()[i]) > pre.mask_threshold ? Scalar(1) : Scalar(0);
    out.mask = detail::mvtec::fit(mask, pre.mask_size, pre.mask_resize_size, pre.mode,
                                  Interpolation::nearest);
    out.has_mask = true;
  }
  return out;
}

/// The samples of an MVTec-layout dataset for one split, listed without decoding.
///
/// Order: by class index, then defect type (sorted; "good" among them), then file name.
class MvtecDataset {
 public:
  /// Lists `<root>/<class>/train/good` (Split::train) or `<root>/<class>/test/*` (Split::test).
  ///
  /// Throws hgad::Error naming the path when the root or a class folder is missing, a class name is
  /// unknown, a class or defect folder holds no image, the train folder holds anything but `good`,
  /// or (MaskMode::required) an anomalous image has no mask or a mask has no image.
  MvtecDataset(const std::string& root, Split split, MvtecOptions options = {})
      : m_root(root), m_split(split), m_options(std::move(options)) {
    namespace fs = std::filesystem;
    const fs::path base(root);
    check(detail::mvtec::path_is_directory(base), "mvtec: dataset root '", root,
          "' is not a directory");
    check(!m_options.mask_suffix.empty(), "mvtec: mask_suffix must not be empty");
    if (m_options.classes.empty()) {
      for (const fs::path& dir : detail::mvtec::list_directories(base)) {
        for (const char* split_name : {"train", "test"})
          detail::mvtec::check_no_case_variant(dir, split_name);
        if (detail::mvtec::path_is_directory(dir / "train") ||
            detail::mvtec::path_is_directory(dir / "test"))
          m_class_names.push_back(dir.filename().string());
      }
      check(!m_class_names.empty(), "mvtec: '", root,
            "' holds no class folder (a folder with train/ or test/)");
    } else {
      m_class_names = m_options.classes;
      std::vector<std::string> sorted = m_class_names;
      std::sort(sorted.begin(), sorted.end());
      const auto dup = std::adjacent_find(sorted.begin(), sorted.end());
      check(dup == sorted.end(), "mvtec: class '", dup == sorted.end() ? "" : *dup,
            "' is listed twice");
      for (const std::string& name : m_class_names) {
        if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
            !detail::mvtec::path_is_directory(base / name)) {
          std::vector<std::string> available;
          for (const fs::path& dir : detail::mvtec::list_directories(base))
            available.push_back(dir.filename().string());
          throw Error(detail::concat("mvtec: unknown class '", name, "': no folder '",
                                     (base / name).string(),
                                     "' (available: ", detail::mvtec::join_names(available), ")"));
        }
      }
    }
    for (Index c = 0; c < static_cast<Index>(m_class_names.size()); ++c) list_class(base, c);
  }

  const std::string& root() const { return m_root; }
  Split split() const { return m_split; }
  const MvtecOptions& options() const { return m_options; }

  /// Class names; a class's index is its position here.
  const std::vector<std::string>& class_names() const { return m_class_names; }
  Index n_classes() const { return static_cast<Index>(m_class_names.size()); }
  /// Whether the anomalous test images of class `class_index` have masks read (MaskMode::required,
  /// or when_present with a ground_truth/ folder); false for the train split and image_level_only.
  bool has_masks(Index class_index) const {
    check(class_index >= 0 && class_index < n_classes(), "mvtec: class index ", class_index,
          " out of range [0, ", n_classes(), ")");
    return static_cast<std::size_t>(class_index) < m_has_masks.size() &&
           m_has_masks[static_cast<std::size_t>(class_index)];
  }

  /// The index of class `name`; throws hgad::Error for an unknown name.
  Index class_index(const std::string& name) const {
    const auto it = std::find(m_class_names.begin(), m_class_names.end(), name);
    check(it != m_class_names.end(), "mvtec: unknown class '", name,
          "' (classes: ", detail::mvtec::join_names(m_class_names), ")");
    return static_cast<Index>(it - m_class_names.begin());
  }

  const std::vector<MvtecSample>& samples() const { return m_samples; }
  Index size() const { return static_cast<Index>(m_samples.size()); }
  const MvtecSample& operator[](Index i) const {
    check(i >= 0 && i < size(), "mvtec: sample ", i, " out of range [0, ", size(), ")");
    return m_samples[static_cast<std::size_t>(i)];
  }
  /// Indices of the samples of class `class_index`.
  std::vector<Index> indices_of_class(Index class_index) const {
    check(class_index >= 0 && class_index < n_classes(), "mvtec: class index ", class_index,
          " out of range [0, ", n_classes(), ")");
    std::vector<Index> out;
    for (Index i = 0; i < size(); ++i)
      if (m_samples[static_cast<std::size_t>(i)].class_index == class_index) out.push_back(i);
    return out;
  }
  /// Number of samples of each (class, defect type).
  std::map<std::pair<std::string, std::string>, Index> counts() const {
    std::map<std::pair<std::string, std::string>, Index> out;
    for (const MvtecSample& s : m_samples) ++out[{s.class_name, s.defect_type}];
    return out;
  }

  /// Decodes and preprocesses sample `i` (see hgad::load_sample).
  template <class Scalar>
  LoadedSample<Scalar> load(Index i, const Preprocess& pre = {}) const {
    return load_sample<Scalar>((*this)[i], pre);
  }

  /// Decodes and preprocesses samples [first, last) into one batch, in parallel over images.
  /// Rethrows the first error (by sample order) after all threads finish.
  template <class Scalar>
  LoadedBatch<Scalar> load_batch(Index first, Index last, const Preprocess& pre = {}) const {
    check(0 <= first && first <= last && last <= size(), "mvtec: batch [", first, ", ", last,
          ") out of range [0, ", size(), ")");
    std::vector<Index> indices;
    for (Index i = first; i < last; ++i) indices.push_back(i);
    return load_batch<Scalar>(indices, pre);
  }

  /// Decodes and preprocesses the samples `indices` into one batch, in parallel over images.
  template <class Scalar>
  LoadedBatch<Scalar> load_batch(const std::vector<Index>& indices,
                                 const Preprocess& pre = {}) const {
    for (Index i : indices) (void)(*this)[i];
    const Index n = static_cast<Index>(indices.size());
    LoadedBatch<Scalar> batch;
    batch.images = Tensor<Scalar>({n, 3, pre.image_size, pre.image_size});
    batch.masks = Tensor<Scalar>({n, 1, pre.mask_size, pre.mask_size});
    batch.has_mask.assign(static_cast<std::size_t>(n), false);
    batch.labels.assign(static_cast<std::size_t>(n), 0);
    batch.class_indices.assign(static_cast<std::size_t>(n), 0);
    std::vector<std::exception_ptr> errors(static_cast<std::size_t>(n));
    std::vector<char> has_mask(static_cast<std::size_t>(n), 0);
    const Index image_numel = 3 * pre.image_size * pre.image_size,
                mask_numel = pre.mask_size * pre.mask_size;
    // Decoding dominates; the work estimate only needs to exceed the parallel grain for n > 1.
    detail::parallel_for(n, n * detail::parallel_grain, [&](Index b) {
      const auto k = static_cast<std::size_t>(b);
      try {
        const LoadedSample<Scalar> s =
            load_sample<Scalar>(m_samples[static_cast<std::size_t>(indices[k])], pre);
        std::copy_n(s.image.data(), image_numel, batch.images.data() + b * image_numel);
        if (s.has_mask) std::copy_n(s.mask.data(), mask_numel, batch.masks.data() + b * mask_numel);
        has_mask[k] = s.has_mask ? 1 : 0;
        batch.labels[k] = s.label;
        batch.class_indices[k] = s.class_index;
      } catch (...) {
        errors[k] = std::current_exception();
      }
    });
    for (const auto& e : errors)
      if (e) std::rethrow_exception(e);
    for (std::size_t k = 0; k < has_mask.size(); ++k) batch.has_mask[k] = has_mask[k] != 0;
    return batch;
  }

  /// Reads the header of every image and mask file (no pixel decoding) and checks that each is a
  /// readable PNG/JPEG/BMP and that each mask has its image's size. Throws hgad::Error naming the
  /// first offending path.
  void validate() const {
    for (const MvtecSample& s : m_samples) {
      const ImageInfo image = read_header(s.image_path);
      if (s.mask_path.empty()) continue;
      const ImageInfo mask = read_header(s.mask_path);
      check(mask.width == image.width && mask.height == image.height, "mvtec: mask '", s.mask_path,
            "' is ", mask.width, "x", mask.height, " (width x height) but its image '",
            s.image_path, "' is ", image.width, "x", image.height);
    }
  }

 private:
  /// The header of an image file, from its first 64 KiB (the whole file when the header lies
  /// further).
  static ImageInfo read_header(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    check(static_cast<bool>(in), "image: cannot open '", path, "'");
    std::vector<std::uint8_t> head(std::size_t(1) << 16);
    in.read(reinterpret_cast<char*>(head.data()), static_cast<std::streamsize>(head.size()));
    head.resize(static_cast<std::size_t>(in.gcount()));
    if (!in.eof()) {
      try {
        return image_info_from_memory(head.data(), head.size(), path);
      } catch (const Error&) {
        return read_image_info(path);
      }
    }
    return image_info_from_memory(head.data(), head.size(), path);
  }

  void add_folder(const std::filesystem::path& dir, Index class_index,
                  const std::string& defect_type, int label,
                  const std::filesystem::path& mask_dir, bool read_masks) {
    const std::vector<std::filesystem::path> images = detail::mvtec::list_images(dir);
    check(!images.empty(), "mvtec: '", dir.string(),
          "' holds no image (.png, .jpg, .jpeg or .bmp)");
    std::vector<std::string> stems;
    for (const auto& path : images) stems.push_back(path.stem().string());
    std::sort(stems.begin(), stems.end());
    const auto same = std::adjacent_find(stems.begin(), stems.end());
    check(same == stems.end(), "mvtec: two images in '", dir.string(), "' share the stem '",
          same == stems.end() ? "" : *same, "', so they would share one mask");
    for (const auto& path : images) {
      MvtecSample s;
      s.image_path = path.string();
      s.class_index = class_index;
      s.class_name = m_class_names[static_cast<std::size_t>(class_index)];
      s.defect_type = defect_type;
      s.label = label;
      if (label == 1 && read_masks) {
        const std::filesystem::path mask =
            mask_dir / (path.stem().string() + m_options.mask_suffix);
        check(detail::mvtec::path_is_file(mask), "mvtec: anomalous image '", s.image_path,
              "' has no mask '", mask.string(),
              "' (with a ground_truth folder every anomalous image needs its mask; a class "
              "without one is evaluated on image-level labels only, MaskMode::when_present)");
        s.mask_path = mask.string();
      }
      m_samples.push_back(std::move(s));
    }
  }

  void list_class(const std::filesystem::path& base, Index class_index) {
    namespace fs = std::filesystem;
    const std::string& name = m_class_names[static_cast<std::size_t>(class_index)];
    const fs::path class_dir = base / name;
    for (const char* folder : {"train", "test", "ground_truth"})
      detail::mvtec::check_no_case_variant(class_dir, folder);
    detail::mvtec::check_no_case_variant(class_dir / (m_split == Split::train ? "train" : "test"),
                                         "good");
    if (m_split == Split::train) {
      const fs::path train = class_dir / "train";
      check(detail::mvtec::path_is_directory(train / "good"), "mvtec: class '", name,
            "' has no folder '", (train / "good").string(), "'");
      for (const fs::path& dir : detail::mvtec::list_directories(train))
        check(dir.filename() == "good", "mvtec: unexpected folder '", dir.string(),
              "': the train split holds only normal images in train/good");
      add_folder(train / "good", class_index, "good", 0, {}, false);
      return;
    }
    const fs::path test = class_dir / "test";
    check(detail::mvtec::path_is_directory(test), "mvtec: class '", name, "' has no folder '",
          test.string(), "'");
    const std::vector<fs::path> defect_dirs = detail::mvtec::list_directories(test);
    check(!defect_dirs.empty(), "mvtec: '", test.string(),
          "' holds no folder (expected good/ and <defect>/ folders)");
    const fs::path truth = class_dir / "ground_truth";
    const bool read_masks =
        m_options.mask_mode == MaskMode::required ||
        (m_options.mask_mode == MaskMode::when_present && detail::mvtec::path_is_directory(truth));
    if (m_has_masks.size() <= static_cast<std::size_t>(class_index))
      m_has_masks.resize(static_cast<std::size_t>(class_index) + 1, false);
    m_has_masks[static_cast<std::size_t>(class_index)] = read_masks;
    for (const fs::path& dir : defect_dirs) {
      const std::string defect = dir.filename().string();
      add_folder(dir, class_index, defect, defect == "good" ? 0 : 1, truth / defect, read_masks);
    }
    if (read_masks && detail::mvtec::path_is_directory(truth)) check_orphan_masks(truth, test);
  }

  /// Every mask under ground_truth/<defect>/ (other than good/) must belong to an image of
  /// test/<defect>/.
  void check_orphan_masks(const std::filesystem::path& truth,
                          const std::filesystem::path& test) const {
    namespace fs = std::filesystem;
    const std::string& suffix = m_options.mask_suffix;
    for (const fs::path& dir : detail::mvtec::list_directories(truth)) {
      const std::string defect = dir.filename().string();
      if (defect == "good") continue;
      std::vector<std::string> stems;
      if (detail::mvtec::path_is_directory(test / defect))
        for (const fs::path& image : detail::mvtec::list_images(test / defect))
          stems.push_back(image.stem().string());
      std::sort(stems.begin(), stems.end());
      for (const fs::path& mask : detail::mvtec::list_sorted(
               dir, [](const fs::path& p) { return detail::mvtec::path_is_file(p); })) {
        const std::string file = mask.filename().string();
        if (file.size() <= suffix.size() ||
            file.compare(file.size() - suffix.size(), suffix.size(), suffix) != 0)
          continue;
        const std::string stem = file.substr(0, file.size() - suffix.size());
        check(std::binary_search(stems.begin(), stems.end(), stem), "mvtec: mask '", mask.string(),
              "' has no image '", (test / defect / stem).string(), ".<ext>'");
      }
    }
  }

  std::string m_root;
  Split m_split;
  MvtecOptions m_options;
  std::vector<std::string> m_class_names;
  std::vector<MvtecSample> m_samples;
  std::vector<bool> m_has_masks;  // per class, test split: its anomalous images have masks
};

}  // namespace hgad
