#pragma once
/// \file
/// Mergeable row accumulators: the bodies of the CUDA backend's reductions (sum, max, log-sum-exp
/// of a row or a buffer). A warp kernel lets lane l push the elements l, l + 32, l + 64, ... of a
/// row and then merges the lanes pairwise (offsets 16, 8, 4, 2, 1); lane_tree_reduce replays that
/// order on the host, and the tests compare it with the CPU backend's sequential reductions.

#include <cstdint>

#include "host_device.hpp"

namespace hgad::detail {

/// Running sum.
template <class Scalar>
struct SumAccumulator {
  Scalar sum = Scalar(0);
  HGAD_HOST_DEVICE void push(Scalar x) { sum += x; }
  HGAD_HOST_DEVICE void merge(const SumAccumulator& other) { sum += other.sum; }
  HGAD_HOST_DEVICE Scalar result() const { return sum; }
};

/// Running maximum that propagates NaN (as the CPU backend's Reduce::max); -inf when empty.
template <class Scalar>
struct MaxAccumulator {
  Scalar max = -hd_infinity<Scalar>();
  HGAD_HOST_DEVICE void push(Scalar x) {
    if (x > max || hd_isnan(x)) max = hd_isnan(max) ? max : x;
  }
  HGAD_HOST_DEVICE void merge(const MaxAccumulator& other) { push(other.max); }
  HGAD_HOST_DEVICE Scalar result() const { return max; }
};

/// Online log-sum-exp: the pair (m, s) stands for m + ln s, with m the largest element so far,
/// so no exponent ever overflows. -inf for an empty or all -inf input, NaN if any input is NaN.
/// (A row that one thread reads whole uses the two-pass detail::logsumexp instead, which needs no
/// rescaling; this form exists because two lanes' partial results must merge.)
template <class Scalar>
struct LogSumExpAccumulator {
  Scalar max = -hd_infinity<Scalar>();
  Scalar sum = Scalar(0);
  HGAD_HOST_DEVICE void push(Scalar x) { merge_pair(x, Scalar(1)); }
  HGAD_HOST_DEVICE void merge(const LogSumExpAccumulator& other) {
    merge_pair(other.max, other.sum);
  }
  HGAD_HOST_DEVICE Scalar result() const {
    if (hd_isnan(max) || hd_isnan(sum)) return max + sum;
    if (!(max > -hd_infinity<Scalar>())) return max;
    return max + hd_log(sum);
  }

 private:
  /// Adds e^m2 s2: rescales the smaller side by e^(min - max).
  HGAD_HOST_DEVICE void merge_pair(Scalar m2, Scalar s2) {
    if (hd_isnan(max)) return;
    if (hd_isnan(m2)) {
      max = m2;
      return;
    }
    if (!(m2 > -hd_infinity<Scalar>())) return;
    if (!(max > -hd_infinity<Scalar>())) {
      max = m2;
      sum = s2;
    } else if (m2 > max) {
      sum = sum * hd_exp(max - m2) + s2;
      max = m2;
    } else {
      sum += s2 * hd_exp(m2 - max);
    }
  }
};

/// Reduces x[0..n) with the accumulator `Acc` in the order of a `n_lanes`-lane warp kernel:
/// lane l pushes x[l], x[l + n_lanes], ...; then lanes merge at offsets n_lanes/2, ..., 1.
/// This is the host model of the warp reductions; `n_lanes` must be a power of two <= 32.
template <class Acc, class Scalar>
Acc lane_tree_reduce(const Scalar* x, std::int64_t n, int n_lanes = 32) {
  Acc lanes[32];
  for (int l = 0; l < n_lanes; ++l)
    for (std::int64_t j = l; j < n; j += n_lanes) lanes[l].push(x[j]);
  for (int offset = n_lanes / 2; offset > 0; offset /= 2)
    for (int l = 0; l < offset; ++l) lanes[l].merge(lanes[l + offset]);
  return lanes[0];
}

}  // namespace hgad::detail
