#pragma once
/// \file
/// Connected-component labelling of binary 2-D masks, as scipy.ndimage.label and
/// skimage.measure.label: the regions whose per-region overlap AUPRO averages (docs/algorithm.md §6).
///
///     // 1 1 0 0
///     // 0 0 1 0      8-connectivity: one component (the diagonal joins them);
///     // 0 0 0 0      4-connectivity: two.
///     std::vector<std::uint8_t> mask = {1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0};
///     hgad::ComponentLabels c = hgad::label_connected_components(mask.data(), 3, 4);
///     // c.n_components == 1, c.sizes == {3}, c.labels[6] == 1

#include <cstdint>
#include <vector>

#include "../detail/check.hpp"
#include "../tensor.hpp"

namespace hgad {

/// Which neighbours join a pixel to a region.
enum class Connectivity {
  four = 4,   ///< edge neighbours only
  eight = 8,  ///< edge and corner neighbours (AUPRO's regions; skimage.measure.label's default)
};

/// The components of one height x width mask.
struct ComponentLabels {
  Index height = 0;
  Index width = 0;
  Index n_components = 0;
  /// (height, width) row-major: 0 on background, 1..n_components on foreground, numbered in the
  /// raster order of each component's first pixel (as scipy.ndimage.label).
  std::vector<std::int32_t> labels;
  /// (n_components,) pixels of component k + 1 at sizes[k].
  std::vector<Index> sizes;
};

/// Labels the connected foreground regions (mask != 0) of a row-major height x width mask.
/// requires: height, width >= 0, mask holds height * width elements.
/// ensures: every foreground pixel has a label in [1, n_components]; two foreground pixels share a
///          label exactly when a path of foreground neighbours (under `connectivity`) joins them.
template <class T>
ComponentLabels label_connected_components(const T* mask, Index height, Index width,
                                           Connectivity connectivity = Connectivity::eight) {
  check(height >= 0 && width >= 0, "label_connected_components: negative size ", height, " x ",
        width);
  check(height * width < (Index(1) << 31), "label_connected_components: ", height, " x ", width,
        " pixels exceed the int32 labels");
  ComponentLabels out;
  out.height = height;
  out.width = width;
  out.labels.assign(static_cast<std::size_t>(height * width), 0);
  const bool diagonal = connectivity == Connectivity::eight;
  std::vector<Index> stack;
  for (Index start = 0; start < height * width; ++start) {
    if (mask[start] == T(0) || out.labels[std::size_t(start)] != 0) continue;
    const auto label = static_cast<std::int32_t>(++out.n_components);
    Index size = 0;
    out.labels[std::size_t(start)] = label;
    stack.push_back(start);
    while (!stack.empty()) {
      const Index p = stack.back();
      stack.pop_back();
      ++size;
      const Index y = p / width;
      const Index x = p % width;
      for (Index dy = -1; dy <= 1; ++dy) {
        for (Index dx = -1; dx <= 1; ++dx) {
          if ((dy == 0 && dx == 0) || (!diagonal && dy != 0 && dx != 0)) continue;
          const Index ny = y + dy;
          const Index nx = x + dx;
          if (ny < 0 || ny >= height || nx < 0 || nx >= width) continue;
          const Index q = ny * width + nx;
          if (mask[q] == T(0) || out.labels[std::size_t(q)] != 0) continue;
          out.labels[std::size_t(q)] = label;
          stack.push_back(q);
        }
      }
    }
    out.sizes.push_back(size);
  }
  return out;
}

/// label_connected_components of a (height, width) tensor; foreground is mask != 0.
template <class Scalar>
ComponentLabels label_connected_components(const Tensor<Scalar>& mask,
                                           Connectivity connectivity = Connectivity::eight) {
  check(mask.rank() == 2,
        "label_connected_components: the mask must be (height, width), got shape ",
        mask.shape());
  const Tensor<Scalar> host = mask.cpu();
  return label_connected_components(host.data(), host.dim(0), host.dim(1), connectivity);
}

}  // namespace hgad
