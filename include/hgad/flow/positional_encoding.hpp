#pragma once
/// \file
/// The 2-D sin/cos positional encoding that conditions HGAD's flows (docs/algorithm.md §1.4, CFlow-AD's
/// `positionalencoding2d`).

#include <cmath>

#include "../detail/check.hpp"
#include "../tensor.hpp"

namespace hgad {

/// The 2-D sin/cos encoding of an h x w feature map, one row per position, rows in the row-major
/// order of the map (row n = i·w + j for map row i and column j).
///
/// With half = P/2 and ω_k = exp(−2k·ln(10⁴)/half), k = 0 .. P/4 − 1, and the integer column
/// x = j and row y = i (docs/algorithm.md §1.4):
///
///     channel 2k          = sin(x·ω_k)      channel half + 2k     = sin(y·ω_k)
///     channel 2k + 1      = cos(x·ω_k)      channel half + 2k + 1 = cos(y·ω_k)
///
/// It is computed in double and rounded once to `Scalar`. For a batch of B maps, repeat the
/// (h·w, P) block B times (HGAD flattens n = b·h·w + i·w + j, §1.3).
///
/// requires: P > 0 and P a multiple of 4; h, w >= 0.
/// ensures: the result has shape (h·w, P).
///
///     auto pos = hgad::positional_encoding_2d<float>(256, 64, 64);   // (4096, 256)
template <class Scalar>
Tensor<Scalar> positional_encoding_2d(Index P, Index h, Index w) {
  check(P > 0 && P % 4 == 0, "positional_encoding_2d: the dimension P = ", P,
        " must be a positive multiple of 4 (sin and cos of both axes)");
  check(h >= 0 && w >= 0, "positional_encoding_2d: negative map size ", h, " x ", w);
  const Index half = P / 2;
  Tensor<Scalar> pe(Shape{h * w, P});
  Scalar* out = pe.data();
  for (Index k = 0; k < P / 4; ++k) {
    // 10^4: the wavelength base of the Transformer encoding that CFlow-AD adopts.
    const double omega = std::exp(-static_cast<double>(2 * k) * std::log(1e4) / static_cast<double>(half));
    for (Index i = 0; i < h; ++i) {
      const double sy = std::sin(static_cast<double>(i) * omega);
      const double cy = std::cos(static_cast<double>(i) * omega);
      for (Index j = 0; j < w; ++j) {
        Scalar* row = out + (i * w + j) * P;
        row[2 * k] = static_cast<Scalar>(std::sin(static_cast<double>(j) * omega));
        row[2 * k + 1] = static_cast<Scalar>(std::cos(static_cast<double>(j) * omega));
        row[half + 2 * k] = static_cast<Scalar>(sy);
        row[half + 2 * k + 1] = static_cast<Scalar>(cy);
      }
    }
  }
  return pe;
}

}  // namespace hgad
