#pragma once
/// \file
/// The single-precision convolution kernel behind conv2d on AVX-512 and AVX2 CPUs: a blocked
/// GEMM (the BLIS loop nest) whose right-hand operand is packed straight from the input image
/// (implicit im2col), with bias, residual add and ReLU applied as the result is stored.
///
///     out[o, p] = act(sum_k W[o, k] col[k, p] + b[o] + r[o, p]),   k = (c, ky, kx),  p = (b, y, x)
///
/// Loop nest per block of positions [p0, p0 + n): for each slice of kc reduction indices, pack
/// col[k0 .. k0 + kc, block] into micro-panels of NR positions (L2), then for each panel of MR
/// output channels (kept in L1) run the MR x NR register-tile kernel over every micro-panel.
/// The weights are packed once per layer into MR-row panels (pack_conv_weights).
/// Internal header: users call hgad::conv2d (conv.hpp).

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>
#include <vector>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

#include "../tensor.hpp"

namespace hgad {
namespace detail {

#if defined(__AVX512F__)
#define HGAD_PACKED_CONV 1
/// Register tile: 8 output channels x 48 positions = 24 zmm accumulators, 3 zmm of the packed
/// input and 1 broadcast weight (32 zmm registers on AVX-512).
inline constexpr int packed_mr = 8;
inline constexpr int packed_vl = 16;
#elif defined(__AVX2__) && defined(__FMA__)
#define HGAD_PACKED_CONV 1
/// Register tile: 4 output channels x 24 positions = 12 ymm accumulators + 3 + 1 (16 ymm
/// registers).
inline constexpr int packed_mr = 4;
inline constexpr int packed_vl = 8;
#else
inline constexpr int packed_mr = 1;
inline constexpr int packed_vl = 1;
#endif
inline constexpr int packed_nv = 3;                      ///< vectors per row of the tile
inline constexpr int packed_nr = packed_vl * packed_nv;  ///< positions per tile
/// Reduction slice: the MR x kc weight panel (8 x 512 floats = 16 KiB) stays in the 32-48 KiB L1;
/// 256 to 2304 measured within the noise (+- 5%) on the machine above.
inline constexpr Index packed_kc = 512;
/// Positions per block: 4 micro-panels. Small blocks balance two threads better; measured on a
/// 2-core slice of a Xeon (AVX-512) with ResNet-18 to layer3, batch 8, 256x256: 4 panels gave
/// 164 GFLOP/s on 2 threads against 151 for 8 and 127 for 16, the same on 1 thread (94 +- 3).
inline constexpr Index packed_nc = 4 * packed_nr;

/// True when this build has the SIMD convolution kernel (AVX-512F, or AVX2 with FMA).
inline constexpr bool packed_conv_available() {
#ifdef HGAD_PACKED_CONV
  return true;
#else
  return false;
#endif
}

/// True when the packed kernel beats im2col + Eigen: with AVX-512 (ResNet-18 convolutions at 97
/// GFLOP/s against 65 on one core of the Xeon above). The AVX2 tile (4 x 24) measured 42 against
/// Eigen's 46, so AVX2 builds use Eigen unless the packed kernel is asked for.
inline constexpr bool packed_conv_preferred() {
#if defined(HGAD_PACKED_CONV) && defined(__AVX512F__)
  return true;
#else
  return false;
#endif
}

/// 64-byte aligned float storage (std::vector<float> only guarantees 16 bytes).
class AlignedFloats {
 public:
  AlignedFloats() = default;
  explicit AlignedFloats(std::size_t n) { resize(n); }
  AlignedFloats(const AlignedFloats& o) : AlignedFloats(o.m_size) {
    if (m_size) std::memcpy(m_data, o.m_data, m_size * sizeof(float));
  }
  AlignedFloats& operator=(const AlignedFloats& o) {
    if (this != &o) {
      AlignedFloats copy(o);
      std::swap(m_data, copy.m_data);
      std::swap(m_size, copy.m_size);
      std::swap(m_capacity, copy.m_capacity);
    }
    return *this;
  }
  AlignedFloats(AlignedFloats&& o) noexcept
      : m_data(std::exchange(o.m_data, nullptr)),
        m_size(std::exchange(o.m_size, 0)),
        m_capacity(std::exchange(o.m_capacity, 0)) {}
  AlignedFloats& operator=(AlignedFloats&& o) noexcept {
    std::swap(m_data, o.m_data);
    std::swap(m_size, o.m_size);
    std::swap(m_capacity, o.m_capacity);
    return *this;
  }
  ~AlignedFloats() { std::free(m_data); }
  /// Grows (never shrinks) the buffer; the contents are not kept.
  void resize(std::size_t n) {
    if (n > m_capacity) {
      std::free(m_data);
      const std::size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
      m_data = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (!m_data) throw std::bad_alloc();
      m_capacity = n;
    }
    m_size = n;
  }
  float* data() { return m_data; }
  const float* data() const { return m_data; }
  std::size_t size() const { return m_size; }

 private:
  float* m_data = nullptr;
  std::size_t m_size = 0, m_capacity = 0;
};

/// Packs W (O x K, row-major) into ceil(O / MR) panels, panel i holding W[i MR + r, k] at
/// [i][k][r]; rows beyond O are zero.
inline AlignedFloats pack_conv_weights(const float* w, Index n_out, Index k_total) {
  const Index n_panels = (n_out + packed_mr - 1) / packed_mr;
  AlignedFloats packed(std::size_t(n_panels * packed_mr * k_total));
  float* dst = packed.data();
  for (Index i = 0; i < n_panels; ++i) {
    for (Index k = 0; k < k_total; ++k) {
      for (Index r = 0; r < packed_mr; ++r) {
        const Index o = i * packed_mr + r;
        *dst++ = o < n_out ? w[o * k_total + k] : 0.0f;
      }
    }
  }
  return packed;
}

/// Epilogue of the last reduction slice: + bias[r] (+ residual) then ReLU.
struct TileEpilogue {
  const float* bias = nullptr;      ///< MR values (null: none)
  const float* residual = nullptr;  ///< residual[r * residual_ld + j] (null: none)
  Index residual_ld = 0;
  bool relu = false;
  bool active = false;  ///< false on every slice but the last
};

#ifdef HGAD_PACKED_CONV
#if defined(__AVX512F__)
using PackedVec = __m512;
inline PackedVec vec_load(const float* p) { return _mm512_loadu_ps(p); }
inline PackedVec vec_load_aligned(const float* p) { return _mm512_load_ps(p); }
inline void vec_store(float* p, PackedVec v) { _mm512_storeu_ps(p, v); }
inline PackedVec vec_broadcast(const float* p) { return _mm512_set1_ps(*p); }
inline PackedVec vec_zero() { return _mm512_setzero_ps(); }
inline PackedVec vec_fma(PackedVec a, PackedVec b, PackedVec c) { return _mm512_fmadd_ps(a, b, c); }
inline PackedVec vec_add(PackedVec a, PackedVec b) { return _mm512_add_ps(a, b); }
inline PackedVec vec_max(PackedVec a, PackedVec b) { return _mm512_max_ps(a, b); }
#else
using PackedVec = __m256;
inline PackedVec vec_load(const float* p) { return _mm256_loadu_ps(p); }
inline PackedVec vec_load_aligned(const float* p) { return _mm256_load_ps(p); }
inline void vec_store(float* p, PackedVec v) { _mm256_storeu_ps(p, v); }
inline PackedVec vec_broadcast(const float* p) { return _mm256_broadcast_ss(p); }
inline PackedVec vec_zero() { return _mm256_setzero_ps(); }
inline PackedVec vec_fma(PackedVec a, PackedVec b, PackedVec c) { return _mm256_fmadd_ps(a, b, c); }
inline PackedVec vec_add(PackedVec a, PackedVec b) { return _mm256_add_ps(a, b); }
inline PackedVec vec_max(PackedVec a, PackedVec b) { return _mm256_max_ps(a, b); }
#endif

/// C[r, j] (+)= sum_k A[k][r] B[k][j] for the full MR x NR tile, then the epilogue.
/// a: kc x MR (packed weights), b: kc x NR (packed input, 64-byte aligned), c: row stride ldc.
inline void conv_tile(Index kc, const float* a, const float* b, float* c, Index ldc,
                      bool accumulate, const TileEpilogue& epilogue) {
  PackedVec acc[packed_mr][packed_nv];
  for (int r = 0; r < packed_mr; ++r) {
    for (int v = 0; v < packed_nv; ++v) {
      acc[r][v] = accumulate ? vec_load(c + r * ldc + v * packed_vl) : vec_zero();
    }
  }
  for (Index k = 0; k < kc; ++k) {
    PackedVec bv[packed_nv];
    for (int v = 0; v < packed_nv; ++v) bv[v] = vec_load_aligned(b + v * packed_vl);
    for (int r = 0; r < packed_mr; ++r) {
      const PackedVec ar = vec_broadcast(a + r);
      for (int v = 0; v < packed_nv; ++v) acc[r][v] = vec_fma(ar, bv[v], acc[r][v]);
    }
    a += packed_mr;
    b += packed_nr;
  }
  if (epilogue.active) {
    for (int r = 0; r < packed_mr; ++r) {
      const PackedVec bias = epilogue.bias ? vec_broadcast(epilogue.bias + r) : vec_zero();
      for (int v = 0; v < packed_nv; ++v) {
        PackedVec y = vec_add(acc[r][v], bias);
        if (epilogue.residual) {
          y = vec_add(y, vec_load(epilogue.residual + r * epilogue.residual_ld + v * packed_vl));
        }
        if (epilogue.relu) y = vec_max(y, vec_zero());
        acc[r][v] = y;
      }
    }
  }
  for (int r = 0; r < packed_mr; ++r) {
    for (int v = 0; v < packed_nv; ++v) vec_store(c + r * ldc + v * packed_vl, acc[r][v]);
  }
}
#endif

/// A run of positions of one micro-panel that lie in one output row, with the range of columns
/// whose input pixel is inside the image for each kernel column kx.
struct PackedRun {
  Index b, y, x0, n, col;
  Index first_kx;  ///< index of this run's entries in the j_lo / j_hi tables
};

/// Everything about a block of positions that does not depend on the reduction slice.
struct PackedBlockPlan {
  std::vector<PackedRun> runs;
  std::vector<Index> panel_runs;  ///< runs of micro-panel jr: [panel_runs[jr], panel_runs[jr + 1])
  std::vector<Index> j_lo, j_hi;  ///< per run and kx: input column in range for j in [j_lo, j_hi)
};

inline void plan_packed_block(Index p0, Index n_cols, Index out_h, Index out_w, Index in_w,
                              Index kw, Index stride, Index pad, PackedBlockPlan& plan) {
  plan.runs.clear();
  plan.panel_runs.clear();
  plan.j_lo.clear();
  plan.j_hi.clear();
  const Index out_hw = out_h * out_w;
  for (Index panel = 0; panel * packed_nr < n_cols; ++panel) {
    plan.panel_runs.push_back(Index(plan.runs.size()));
    const Index end = std::min(n_cols, (panel + 1) * packed_nr);
    Index q = panel * packed_nr;
    while (q < end) {
      const Index p = p0 + q;
      const Index b = p / out_hw, rem = p % out_hw;
      const Index y = rem / out_w, x0 = rem % out_w;
      const Index n = std::min(out_w - x0, end - q);
      plan.runs.push_back({b, y, x0, n, q - panel * packed_nr, Index(plan.j_lo.size())});
      for (Index kx = 0; kx < kw; ++kx) {
        // Input column (x0 + j) s - pad + kx lies in [0, in_w) for j in [lo, hi).
        const Index first = x0 * stride - pad + kx;
        Index lo = first >= 0 ? 0 : (-first + stride - 1) / stride;
        Index hi = first >= in_w ? 0 : (in_w - 1 - first) / stride + 1;
        lo = std::min(lo, n);
        hi = std::max(lo, std::min(hi, n));
        plan.j_lo.push_back(lo);
        plan.j_hi.push_back(hi);
      }
      q += n;
    }
  }
  plan.panel_runs.push_back(Index(plan.runs.size()));
}

/// Input view for the packed kernel (the PlaneView fields it needs).
struct PackedInput {
  const float* data;
  Index channels, height, width, channel_stride, batch_stride;
};

/// Packs col[k0 .. k0 + kc, block] into micro-panels: dst[panel][k - k0][j], NR floats a row.
inline void pack_conv_input(const PackedInput& in, Index kh, Index kw, Index stride, Index pad,
                            Index k0, Index kc, const PackedBlockPlan& plan, float* dst) {
  const Index n_panels = Index(plan.panel_runs.size()) - 1;
  const Index khw = kh * kw;
  for (Index panel = 0; panel < n_panels; ++panel) {
    float* panel_dst = dst + panel * kc * packed_nr;
    const Index r_begin = plan.panel_runs[std::size_t(panel)],
                r_end = plan.panel_runs[std::size_t(panel + 1)];
    const Index panel_cols =
        plan.runs[std::size_t(r_end - 1)].col + plan.runs[std::size_t(r_end - 1)].n;
    Index c = k0 / khw, ky = (k0 % khw) / kw, kx = k0 % kw;
    for (Index kk = 0; kk < kc; ++kk) {
      float* row = panel_dst + kk * packed_nr;
      const float* plane_c = in.data + c * in.channel_stride;
      for (Index r = r_begin; r < r_end; ++r) {
        const PackedRun& run = plan.runs[std::size_t(r)];
        float* d = row + run.col;
        const Index iy = run.y * stride - pad + ky;
        if (iy < 0 || iy >= in.height) {
          for (Index j = 0; j < run.n; ++j) d[j] = 0.0f;
          continue;
        }
        const Index lo = plan.j_lo[std::size_t(run.first_kx + kx)],
                    hi = plan.j_hi[std::size_t(run.first_kx + kx)];
        const float* s =
            plane_c + run.b * in.batch_stride + iy * in.width + (run.x0 * stride - pad + kx);
        for (Index j = 0; j < lo; ++j) d[j] = 0.0f;
        if (stride == 1) {
          if (hi > lo) std::memcpy(d + lo, s + lo, sizeof(float) * std::size_t(hi - lo));
        } else {
          Index j = lo;
#if defined(__AVX512F__)
          if (stride == 2) {
            // 16 outputs from 32 consecutive inputs: the even lanes of (a, b). Runs while the
            // last lane read, s[2 j + 31], precedes s[2 (hi - 1)], the last valid input.
            const __m512i even =
                _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            for (; j + 16 < hi; j += 16) {
              const __m512 lo_half = _mm512_loadu_ps(s + 2 * j),
                           hi_half = _mm512_loadu_ps(s + 2 * j + 16);
              _mm512_storeu_ps(d + j, _mm512_permutex2var_ps(lo_half, even, hi_half));
            }
          }
#endif
          for (; j < hi; ++j) d[j] = s[j * stride];
        }
        for (Index j = hi; j < run.n; ++j) d[j] = 0.0f;
      }
      for (Index j = panel_cols; j < packed_nr; ++j) row[j] = 0.0f;
      if (++kx == kw) {
        kx = 0;
        if (++ky == kh) {
          ky = 0;
          ++c;
        }
      }
    }
  }
}

/// Scratch of the calling thread: the packed input block and the block plan.
struct PackedScratch {
  AlignedFloats packed_input;
  PackedBlockPlan plan;
};
inline PackedScratch& packed_scratch() {
  static thread_local PackedScratch scratch;
  return scratch;
}

#ifdef HGAD_PACKED_CONV
/// out[o, p0 + q] for q in [0, n_cols) and all o, through the packed kernel.
/// out_base / residual_base point at channel 0, position p0; positions are consecutive in memory.
inline void packed_conv_block(const PackedInput& in, const float* packed_w, const float* bias,
                              Index n_out, Index kh, Index kw, Index stride, Index pad, Index out_h,
                              Index out_w, Index p0, Index n_cols, float* out_base, Index out_ld,
                              const float* residual_base, Index residual_ld, bool relu) {
  const Index k_total = in.channels * kh * kw;
  PackedScratch& scratch = packed_scratch();
  plan_packed_block(p0, n_cols, out_h, out_w, in.width, kw, stride, pad, scratch.plan);
  const Index n_panels = Index(scratch.plan.panel_runs.size()) - 1;
  const Index kc_max = std::min(packed_kc, k_total);
  scratch.packed_input.resize(std::size_t(n_panels * kc_max * packed_nr));
  float* bpack = scratch.packed_input.data();
  const Index n_weight_panels = (n_out + packed_mr - 1) / packed_mr;
  alignas(64) float tile[packed_mr * packed_nr];
  alignas(64) float tile_residual[packed_mr * packed_nr];
  alignas(64) float tile_bias[packed_mr];

  for (Index k0 = 0; k0 < k_total; k0 += packed_kc) {
    const Index kc = std::min(packed_kc, k_total - k0);
    const bool first = k0 == 0, last = k0 + kc == k_total;
    pack_conv_input(in, kh, kw, stride, pad, k0, kc, scratch.plan, bpack);
    for (Index wp = 0; wp < n_weight_panels; ++wp) {
      const float* a = packed_w + (wp * k_total + k0) * packed_mr;
      const Index o0 = wp * packed_mr, rows = std::min<Index>(packed_mr, n_out - o0);
      for (Index panel = 0; panel < n_panels; ++panel) {
        const Index q0 = panel * packed_nr, cols = std::min<Index>(packed_nr, n_cols - q0);
        float* c = out_base + o0 * out_ld + q0;
        const float* b = bpack + panel * kc * packed_nr;
        TileEpilogue epilogue;
        epilogue.active = last;
        epilogue.relu = relu;
        if (rows == packed_mr && cols == packed_nr) {
          epilogue.bias = bias ? bias + o0 : nullptr;
          if (residual_base) {
            epilogue.residual = residual_base + o0 * residual_ld + q0;
            epilogue.residual_ld = residual_ld;
          }
          conv_tile(kc, a, b, c, out_ld, !first, epilogue);
          continue;
        }
        // Edge tile: through a full-size copy, rows >= rows and columns >= cols discarded.
        for (Index r = 0; r < packed_mr; ++r) {
          for (Index j = 0; j < packed_nr; ++j) {
            const bool in_tile = r < rows && j < cols;
            tile[r * packed_nr + j] = (!first && in_tile) ? c[r * out_ld + j] : 0.0f;
            tile_residual[r * packed_nr + j] =
                (residual_base && in_tile) ? residual_base[(o0 + r) * residual_ld + q0 + j] : 0.0f;
          }
          tile_bias[r] = (bias && r < rows) ? bias[o0 + r] : 0.0f;
        }
        epilogue.bias = tile_bias;
        epilogue.residual = tile_residual;
        epilogue.residual_ld = packed_nr;
        conv_tile(kc, a, b, tile, packed_nr, true, epilogue);
        for (Index r = 0; r < rows; ++r) {
          std::memcpy(c + r * out_ld, tile + r * packed_nr, sizeof(float) * std::size_t(cols));
        }
      }
    }
  }
}
#endif

}  // namespace detail
}  // namespace hgad
