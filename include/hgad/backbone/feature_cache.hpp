#pragma once
/// \file
/// Features of a training set computed once and reused in every epoch.
///
/// HGAD trains without augmentation (docs/algorithm.md §1.1), so the frozen backbone sees the same
/// images each epoch: their feature maps can be computed once. The cache holds, for each level,
/// an (n_images, C, h, w) block. Below a memory budget it lives in ordinary memory; above it, in
/// a memory-mapped temporary file (POSIX mmap, MAP_SHARED, unlinked at once so nothing is left
/// behind), which the kernel pages to disk under memory pressure.
///
///     auto fx = hgad::make_feature_extractor<float>(config, weights_dir);
///     auto cache = hgad::FeatureCache<float>::build(*fx, n_train, H, W, /*batch_size=*/16,
///         [&](hgad::Index first, hgad::Index count) { return load_images(first, count); });
///     std::printf("%zu MiB, %s\n", cache.bytes() >> 20, cache.is_mapped() ? "mapped" : "in
///     memory"); auto f = cache.gather(/*level=*/0, {17, 3, 250});   // (3, C, h, w) in that order

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cerrno>
#define HGAD_HAVE_MMAP 1
#endif

#include "../detail/check.hpp"
#include "../detail/parallel.hpp"
#include "../tensor.hpp"
#include "feature_extractor.hpp"

namespace hgad {

/// Where a FeatureCache keeps its features.
enum class FeatureStorage {
  automatic,    ///< memory when bytes <= memory_budget_bytes, a mapped file above
  memory,       ///< always ordinary memory
  mapped_file,  ///< always a memory-mapped temporary file
};

struct FeatureCacheOptions {
  FeatureStorage storage = FeatureStorage::automatic;
  /// Largest cache kept in ordinary memory by FeatureStorage::automatic (default 2 GiB).
  std::size_t memory_budget_bytes = std::size_t(2) << 30;
  /// Folder of the mapped file; empty = std::filesystem::temp_directory_path().
  std::string spill_directory;
};

template <class Scalar>
class FeatureCache {
 public:
  /// An empty cache for `n_images` images whose level l has feature maps of shape level_shapes[l]
  /// = (C, h, w). Every image must be stored before it is read.
  FeatureCache(Index n_images, std::vector<Shape> level_shapes,
               const FeatureCacheOptions& options = {})
      : m_n_images(n_images),
        m_shapes(std::move(level_shapes)),
        m_stored(static_cast<std::size_t>(n_images), 0) {
    check(n_images >= 1, "FeatureCache: n_images must be >= 1, got ", n_images);
    check(!m_shapes.empty(), "FeatureCache: no level given");
    for (const Shape& s : m_shapes) {
      check(s.rank() == 3 && s.numel() >= 1, "FeatureCache: a level shape must be (C, h, w), got ",
            s);
    }
    m_bytes = bytes_needed(n_images, m_shapes);
    Index offset = 0;
    for (const Shape& s : m_shapes) {
      m_offsets.push_back(offset);
      offset += aligned(n_images * s.numel());
    }
    const bool mapped =
        options.storage == FeatureStorage::mapped_file ||
        (options.storage == FeatureStorage::automatic && m_bytes > options.memory_budget_bytes);
    if (mapped) {
      map_file(options.spill_directory);
    } else {
      m_memory.reset(new Scalar[static_cast<std::size_t>(offset)]);
      m_data = m_memory.get();
    }
  }

  FeatureCache(const FeatureCache&) = delete;
  FeatureCache& operator=(const FeatureCache&) = delete;
  FeatureCache(FeatureCache&& other) noexcept { swap(other); }
  FeatureCache& operator=(FeatureCache&& other) noexcept {
    FeatureCache moved(std::move(other));
    swap(moved);
    return *this;
  }
  ~FeatureCache() { unmap(); }

  /// Extracts the features of images [0, n_images) with `extractor`, `batch_size` images at a
  /// time. `load(first, count)` returns images [first, first + count) as a (count, 3, height,
  /// width) tensor, normalised for the backbone.
  template <class LoadBatch>
  static FeatureCache build(const FeatureExtractor<Scalar>& extractor, Index n_images, Index height,
                            Index width, Index batch_size, LoadBatch&& load,
                            const FeatureCacheOptions& options = {}) {
    check(batch_size >= 1, "FeatureCache::build: batch_size must be >= 1, got ", batch_size);
    std::vector<Shape> shapes;
    for (std::size_t l = 0; l < extractor.n_levels(); ++l)
      shapes.push_back(extractor.feature_shape(l, height, width));
    FeatureCache cache(n_images, shapes, options);
    for (Index first = 0; first < n_images; first += batch_size) {
      const Index count = std::min(batch_size, n_images - first);
      const Tensor<Scalar> images = load(first, count);
      check(images.rank() == 4 && images.dim(0) == count && images.dim(2) == height &&
                images.dim(3) == width,
            "FeatureCache::build: the loader returned ", images.shape(),
            " for images [", first, ", ", first + count, "), expected (", count, ", 3, ", height,
            ", ", width, ")");
      cache.store(first, extractor.extract(images));
    }
    return cache;
  }

  /// Bytes the features of `n_images` images take (the sum over levels of n_images C h w scalars).
  static std::size_t bytes_needed(Index n_images, const std::vector<Shape>& level_shapes) {
    std::size_t total = 0;
    for (const Shape& s : level_shapes)
      total += std::size_t(n_images) * std::size_t(s.numel()) * sizeof(Scalar);
    return total;
  }

  /// Stores the features of images [first, first + B): features[l] is (B, C_l, h_l, w_l).
  void store(Index first, const std::vector<Tensor<Scalar>>& features) {
    check(features.size() == m_shapes.size(), "FeatureCache::store: ", features.size(),
          " levels given, ", m_shapes.size(), " expected");
    const Index count = features[0].rank() == 4 ? features[0].dim(0) : -1;
    check(first >= 0 && count >= 0 && first + count <= m_n_images, "FeatureCache::store: images [",
          first, ", ", first + count, ") outside [0, ", m_n_images, ")");
    for (std::size_t l = 0; l < m_shapes.size(); ++l) {
      const Shape& s = m_shapes[l];
      check(features[l].shape() == Shape{count, s[0], s[1], s[2]}, "FeatureCache::store: level ", l,
            " has shape ", features[l].shape(), ", expected (", count, ", ", s[0], ", ",
            s[1], ", ", s[2], ")");
      const Tensor<Scalar> host = features[l].cpu();
      std::memcpy(image_data(l, first), host.data(), sizeof(Scalar) * std::size_t(host.numel()));
    }
    std::fill(m_stored.begin() + first, m_stored.begin() + first + count, char(1));
  }

  /// The features of level `level` of images [first, first + count): (count, C, h, w).
  Tensor<Scalar> get(std::size_t level, Index first, Index count) const {
    check(first >= 0 && count >= 0 && first + count <= m_n_images, "FeatureCache::get: images [",
          first, ", ", first + count, ") outside [0, ", m_n_images, ")");
    std::vector<Index> images(static_cast<std::size_t>(count));
    for (Index i = 0; i < count; ++i) images[std::size_t(i)] = first + i;
    return gather(level, images);
  }

  /// The features of level `level` of the listed images, in that order: (images.size(), C, h, w).
  Tensor<Scalar> gather(std::size_t level, const std::vector<Index>& images) const {
    check(level < m_shapes.size(), "FeatureCache: level ", level, " of ", m_shapes.size());
    const Shape& s = m_shapes[level];
    const Index n = static_cast<Index>(images.size()), per_image = s.numel();
    for (Index i : images) {
      check(i >= 0 && i < m_n_images, "FeatureCache: image ", i, " outside [0, ", m_n_images, ")");
      check(m_stored[std::size_t(i)] != 0, "FeatureCache: image ", i, " was never stored");
    }
    Tensor<Scalar> out({n, s[0], s[1], s[2]});
    detail::parallel_for(n, n * per_image, [&](Index k) {
      const Scalar* src = data(level, images[std::size_t(k)]);
      std::copy(src, src + per_image, out.data() + k * per_image);
    });
    return out;
  }

  /// The (C, h, w) features of one image, read in place (valid while the cache lives).
  const Scalar* data(std::size_t level, Index image) const {
    check(level < m_shapes.size() && image >= 0 && image < m_n_images, "FeatureCache::data: level ",
          level, ", image ", image, " out of range");
    return m_data + m_offsets[level] + image * m_shapes[level].numel();
  }

  Index n_images() const { return m_n_images; }
  std::size_t n_levels() const { return m_shapes.size(); }
  /// (C, h, w) of a level.
  const Shape& level_shape(std::size_t level) const { return m_shapes.at(level); }
  /// Bytes of features held (memory or file).
  std::size_t bytes() const { return m_bytes; }
  /// Bytes held in ordinary (heap) memory: bytes() in memory, 0 when mapped.
  std::size_t heap_bytes() const { return m_memory ? m_bytes : 0; }
  /// True when the features live in a memory-mapped file.
  bool is_mapped() const { return m_mapped != nullptr; }
  /// True once every image has been stored.
  bool complete() const {
    return std::all_of(m_stored.begin(), m_stored.end(), [](char c) { return c != 0; });
  }

 private:
  /// Elements rounded up to a multiple of 64 bytes, so that every level starts on a cache line.
  static Index aligned(Index n) {
    const Index per_line = Index(64 / sizeof(Scalar));
    return (n + per_line - 1) / per_line * per_line;
  }

  Scalar* image_data(std::size_t level, Index image) {
    return m_data + m_offsets[level] + image * m_shapes[level].numel();
  }

  void map_file(const std::string& directory) {
#ifdef HGAD_HAVE_MMAP
    const std::string dir =
        directory.empty() ? std::filesystem::temp_directory_path().string() : directory;
    std::string pattern = dir + "/hgad_features_XXXXXX";
    std::vector<char> name(pattern.begin(), pattern.end());
    name.push_back('\0');
    const int fd = ::mkstemp(name.data());
    check(fd >= 0, "FeatureCache: cannot create a file in '", dir, "': ", std::strerror(errno));
    ::unlink(name.data());
    m_mapped_bytes = std::size_t(m_offsets.back() + aligned(m_n_images * m_shapes.back().numel())) *
                     sizeof(Scalar);
    if (::ftruncate(fd, static_cast<off_t>(m_mapped_bytes)) != 0) {
      const int err = errno;
      ::close(fd);
      throw Error(detail::concat("FeatureCache: cannot size the file in '", dir, "' to ",
                                 m_mapped_bytes, " bytes: ", std::strerror(err)));
    }
    void* p = ::mmap(nullptr, m_mapped_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    const int err = errno;
    ::close(fd);  // the mapping keeps the (unlinked) file alive
    check(p != MAP_FAILED, "FeatureCache: cannot map ", m_mapped_bytes, " bytes of '", dir,
          "': ", std::strerror(err));
    m_mapped = p;
    m_data = static_cast<Scalar*>(p);
#else
    (void)directory;
    throw Error("FeatureCache: memory-mapped storage needs POSIX mmap, which this platform lacks");
#endif
  }

  void unmap() {
#ifdef HGAD_HAVE_MMAP
    if (m_mapped) ::munmap(m_mapped, m_mapped_bytes);
#endif
    m_mapped = nullptr;
  }

  void swap(FeatureCache& o) noexcept {
    std::swap(m_n_images, o.m_n_images);
    std::swap(m_shapes, o.m_shapes);
    std::swap(m_offsets, o.m_offsets);
    std::swap(m_stored, o.m_stored);
    std::swap(m_bytes, o.m_bytes);
    std::swap(m_memory, o.m_memory);
    std::swap(m_mapped, o.m_mapped);
    std::swap(m_mapped_bytes, o.m_mapped_bytes);
    std::swap(m_data, o.m_data);
  }

  Index m_n_images = 0;
  std::vector<Shape> m_shapes;
  std::vector<Index> m_offsets;  // element offset of each level's block
  std::vector<char> m_stored;    // 1 once an image's features are stored
  std::size_t m_bytes = 0;
  std::unique_ptr<Scalar[]> m_memory;
  void* m_mapped = nullptr;
  std::size_t m_mapped_bytes = 0;
  Scalar* m_data = nullptr;
};

}  // namespace hgad
