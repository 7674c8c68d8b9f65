#pragma once
/// \file
/// An explicit, seeded random-number generator. hgad keeps no global random state: every function
/// that draws random numbers takes an `Rng&`, so a seed fixes a result on every platform.

#include <cmath>
#include <cstdint>

namespace hgad {

/// SplitMix64-seeded xoshiro256** generator with platform-independent uniform and normal draws
/// (the standard library's distributions differ between implementations).
///
///     hgad::Rng rng(42);
///     double u = rng.uniform();   // [0, 1)
///     double g = rng.normal();    // N(0, 1)
class Rng {
 public:
  explicit Rng(std::uint64_t seed = 0) { reseed(seed); }

  void reseed(std::uint64_t seed) {
    std::uint64_t x = seed;
    for (auto& word : m_state) word = splitmix64(x);
    m_has_spare = false;
  }

  /// The next 64 random bits.
  std::uint64_t next_u64() {
    const std::uint64_t result = rotl(m_state[1] * 5, 7) * 9;
    const std::uint64_t t = m_state[1] << 17;
    m_state[2] ^= m_state[0];
    m_state[3] ^= m_state[1];
    m_state[1] ^= m_state[2];
    m_state[0] ^= m_state[3];
    m_state[2] ^= t;
    m_state[3] = rotl(m_state[3], 45);
    return result;
  }

  /// Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

  /// Uniform in [lo, hi).
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

  /// Uniform integer in [0, n) (n > 0), by rejection so there is no modulo bias.
  std::uint64_t uniform_int(std::uint64_t n) {
    const std::uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    std::uint64_t x = next_u64();
    while (x >= limit) x = next_u64();
    return x % n;
  }

  /// Standard normal by the polar Box-Muller method.
  double normal() {
    if (m_has_spare) {
      m_has_spare = false;
      return m_spare;
    }
    double u, v, s;
    do {
      u = 2.0 * uniform() - 1.0;
      v = 2.0 * uniform() - 1.0;
      s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    const double factor = std::sqrt(-2.0 * std::log(s) / s);
    m_spare = v * factor;
    m_has_spare = true;
    return u * factor;
  }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  static std::uint64_t splitmix64(std::uint64_t& x) {
    std::uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }

  std::uint64_t m_state[4]{};
  double m_spare = 0.0;
  bool m_has_spare = false;
};

}  // namespace hgad
