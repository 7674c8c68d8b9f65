#pragma once
/// \file
/// Sorting of floating-point scores through order-preserving unsigned keys, for the ranking metrics
/// that sort tens of millions of pixel scores (hgad/metrics/ranking.hpp).

#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace hgad::detail {

/// The unsigned integer of the same width as Scalar (float -> uint32, double -> uint64).
template <class Scalar>
using SortKey = std::conditional_t<sizeof(Scalar) == 4, std::uint32_t, std::uint64_t>;

/// An unsigned key whose integer order is the order of the finite values: positive numbers get the
/// sign bit set, negative numbers are bit-inverted. -0 is mapped to +0 first, so two keys are
/// equal exactly when the two values compare equal.
/// requires: x is not NaN.
template <class Scalar>
SortKey<Scalar> order_key(Scalar x) {
  static_assert(std::is_floating_point_v<Scalar> && (sizeof(Scalar) == 4 || sizeof(Scalar) == 8),
                "order_key: float or double");
  using Key = SortKey<Scalar>;
  if (x == Scalar(0)) x = Scalar(0);
  Key bits;
  std::memcpy(&bits, &x, sizeof bits);
  constexpr Key sign = Key(1) << (8 * sizeof(Key) - 1);
  return (bits & sign) ? Key(~bits) : Key(bits | sign);
}

/// The value whose order_key is `key`.
template <class Scalar>
Scalar from_order_key(SortKey<Scalar> key) {
  using Key = SortKey<Scalar>;
  constexpr Key sign = Key(1) << (8 * sizeof(Key) - 1);
  const Key bits = (key & sign) ? Key(key & ~sign) : Key(~key);
  Scalar x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

/// Sorts `keys` ascending by a least-significant-digit radix sort with 11-bit digits (3 passes for
/// 32-bit keys, 6 for 64-bit keys; a pass whose digit is the same for every key is skipped).
/// `scratch` is resized to keys.size() and used as the second buffer. O(n) time, n extra keys.
template <class Key>
void radix_sort(std::vector<Key>& keys, std::vector<Key>& scratch) {
  static_assert(std::is_unsigned_v<Key>, "radix_sort: unsigned keys");
  constexpr int digit_bits = 11;
  constexpr std::size_t n_buckets = std::size_t(1) << digit_bits;
  constexpr int n_passes = (8 * int(sizeof(Key)) + digit_bits - 1) / digit_bits;
  const std::size_t n = keys.size();
  if (n < 2) return;
  std::vector<std::array<std::size_t, n_buckets>> counts(n_passes);
  for (auto& c : counts) c.fill(0);
  for (const Key k : keys) {
    for (int pass = 0; pass < n_passes; ++pass) {
      ++counts[pass][(k >> (pass * digit_bits)) & (n_buckets - 1)];
    }
  }
  scratch.resize(n);
  Key* source = keys.data();
  Key* target = scratch.data();
  for (int pass = 0; pass < n_passes; ++pass) {
    auto& count = counts[pass];
    const int shift = pass * digit_bits;
    if (count[(source[0] >> shift) & (n_buckets - 1)] == n) continue;
    std::size_t offset = 0;
    for (auto& c : count) {
      const std::size_t bucket_size = c;
      c = offset;
      offset += bucket_size;
    }
    for (std::size_t i = 0; i < n; ++i) {
      const Key k = source[i];
      target[count[(k >> shift) & (n_buckets - 1)]++] = k;
    }
    std::swap(source, target);
  }
  if (source != keys.data()) keys.swap(scratch);
}

}  // namespace hgad::detail
