#pragma once
/// \file
/// The fused CPU kernels of the AllInOne coupling block (docs/algorithm.md §2.2): inference forward and
/// inverse without a graph, and a training forward that keeps only what its hand-written backward
/// needs. They work on contiguous row-major CPU buffers and do not use the autograd; AllInOneBlock
/// and SequenceFlow call them, and a test checks them against the autograd composition.
///
/// One block, for a row v = [v1 ; v2] (n1 = D − ⌊D/2⌋ passive, n2 = ⌊D/2⌋ active channels) and the
/// condition c (P channels), with W1 = [W1x | W1c] split by columns so [v1 ; c] is never built:
///
///     h  = ReLU(W1x v1 + W1c c + b1)                       (H = 2 (n1 + P))
///     a  = 0.1 (W2 h + b2),  a = [a_s ; t]                  (2 n2; coupling_prescale)
///     s  = α tanh(a_s)  (pinned)  or  α tanh(a_s / α)  (head)
///     u  = [v1 ; v2 ⊙ e^s + t],   u' = g ⊙ u + b,   y = R u'
///     log|det J| = Σ s + Σ log g
///
/// A condition of M < N rows is shared periodically (row n reads c_{n mod M}): W1c c + b1 is then
/// computed once per condition row before the tiles, and the backward gathers S_m = Σ_{n ≡ m} dh_n
/// so that dW1c = Sᵀ c costs one (H, M, P) GEMM instead of an (H, N, P) one. A caller that maps many
/// inputs under one condition keeps that projection for all of them (condition_projection,
/// forward_projected).
///
/// A block whose W2 and b2 are all zero (every coupling at the start of init = whiten,
/// docs/algorithm.md §2.5) has a = 0 for every row, so that s = t = 0 and the block is
/// y = R (g ⊙ v + b): its inference forward and inverse then skip the subnet, and give the values
/// the subnet would (its products with W2 are all +0). The training forward always computes h,
/// which the backward needs for dW2.
///
/// Rows are processed in tiles of at most `fused_tile_rows` rows, each tile by one thread from its
/// GEMMs to its element-wise pass, so a tile's intermediates stay in cache. The GEMMs are Eigen's
/// (single-threaded inside the tile loop); the element-wise work is Eigen array expressions, which
/// vectorise exp and tanh.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../detail/check.hpp"
#include "../detail/host_device.hpp"
#include "../detail/parallel.hpp"
#include "../tensor.hpp"
#include "all_in_one_options.hpp"
#include "coupling_element.hpp"

namespace hgad {

namespace detail {

/// The element-wise math of the coupling bodies (coupling_element.hpp) on Eigen arrays: Eigen's
/// vectorised exp and tanh over a whole row.
template <class T>
struct ElementMath<T, std::enable_if_t<std::is_base_of_v<Eigen::ArrayBase<T>, T>>> {
  static auto exp(const T& x) { return x.exp(); }
  static auto tanh(const T& x) { return x.tanh(); }
};

}  // namespace detail

/// The sizes of one coupling block.
struct CouplingDims {
  Index D = 0;   ///< channels of v
  Index P = 0;   ///< channels of the condition (0: unconditional)
  Index n1 = 0;  ///< passive channels, D − ⌊D/2⌋ (first)
  Index n2 = 0;  ///< active channels, ⌊D/2⌋ (second)
  Index H = 0;   ///< hidden width of the subnet, 2 (n1 + P)

  static CouplingDims make(Index D, Index P) {
    check(D >= 2, "AllInOneBlock: dimension D = ", D, " must be >= 2 (one passive and one active channel)");
    check(P >= 0, "AllInOneBlock: negative condition dimension ", P);
    CouplingDims d;
    d.D = D;
    d.P = P;
    d.n2 = D / 2;
    d.n1 = D - d.n2;
    d.H = 2 * (d.n1 + P);  // hidden width = 2 x input width (HGAD's subnet_fc, docs/algorithm.md §2.2)
    return d;
  }
};

/// Read-only views of one block's parameters for the fused kernels (the tensors share storage
/// with the block's parameters).
template <class Scalar>
struct CouplingWeights {
  Tensor<Scalar> fc1_weight;          ///< (H, n1 + P), PyTorch (out, in) layout
  Tensor<Scalar> fc1_bias;            ///< (H,)
  Tensor<Scalar> fc2_weight;          ///< (2 n2, H)
  Tensor<Scalar> fc2_bias;            ///< (2 n2,)
  Tensor<Scalar> gamma;               ///< (D,) global-scale pre-activation γ
  Tensor<Scalar> offset;              ///< (D,) global offset b
  Tensor<Scalar> rotation;            ///< (D, D) fixed R; y = R u'
  std::vector<Index> permutation;     ///< p with R[i][p[i]] = 1 when R is a permutation, else empty
};

/// Where the fused backward adds (+=) the parameter gradients; a null pointer skips that parameter.
template <class Scalar>
struct CouplingGradients {
  Tensor<Scalar>* fc1_weight = nullptr;
  Tensor<Scalar>* fc1_bias = nullptr;
  Tensor<Scalar>* fc2_weight = nullptr;
  Tensor<Scalar>* fc2_bias = nullptr;
  Tensor<Scalar>* gamma = nullptr;
  Tensor<Scalar>* offset = nullptr;
};

/// The activations one block's fused backward needs, written by its training forward:
/// the block input x (a reference to the caller's tensor, not a copy), the condition (a
/// reference), the hidden layer ReLU(fc1([x1 ; c])) (N, H) and [s | t] (N, 2 n2).
/// Memory owned: N (H + 2 n2) scalars; x is owned by the caller (or the SequenceFlow cache).
template <class Scalar>
struct CouplingCache {
  Tensor<Scalar> x;       ///< (N, D) block input (shared storage)
  Tensor<Scalar> cond;    ///< (N, P) or shared (M, P) condition (shared storage)
  Tensor<Scalar> hidden;  ///< (N, H) ReLU(W1x x1 + W1c c + b1)
  Tensor<Scalar> s_t;     ///< (N, 2 n2) the log-scale s and the shift t
  Index rows = 0;

  /// Bytes of the activations this cache owns (hidden and s_t).
  Index owned_bytes() const {
    return static_cast<Index>(sizeof(Scalar)) * (hidden.numel() + s_t.numel());
  }
};

/// The largest tile of rows one thread processes at a time in the fused kernels.
inline constexpr Index fused_tile_rows = 256;

namespace detail {

/// Tile height for N rows on n_threads threads: about four tiles per thread so the static split
/// balances, a multiple of 8 rows, at most fused_tile_rows.
inline Index fused_tile_height(Index N, int n_threads) {
  const Index per = (N + 4 * n_threads - 1) / (4 * static_cast<Index>(n_threads));
  const Index rounded = std::max<Index>(8, (per + 7) / 8 * 8);
  return std::min(fused_tile_rows, rounded);
}

/// Calls body(thread, r0, r1) for consecutive row tiles [r0, r1) of [0, N), the tiles split
/// statically over the threads (each thread a contiguous range of tiles), and init(thread) once on
/// each thread before its first tile.
template <class Init, class Body>
void for_each_tile(Index N, Index tile, int n_threads, Init&& init, Body&& body) {
  const Index n_tiles = (N + tile - 1) / tile;
  const auto run = [&](int thread, int threads) {
    const Index first = n_tiles * thread / threads, last = n_tiles * (thread + 1) / threads;
    if (first >= last) return;
    init(thread);
    for (Index t = first; t < last; ++t) body(thread, t * tile, std::min(N, (t + 1) * tile));
  };
#ifdef _OPENMP
  if (n_threads > 1) {
#pragma omp parallel num_threads(n_threads)
    run(omp_get_thread_num(), omp_get_num_threads());
    return;
  }
#else
  (void)n_threads;
#endif
  run(0, 1);
}

/// Threads for a fused pass: all of hgad's threads when there is more than one tile and the
/// caller is not already inside a parallel region.
inline int fused_threads(Index N) {
#ifdef _OPENMP
  if (omp_in_parallel()) return 1;
#endif
  const int n = max_threads();
  return static_cast<int>(std::max<Index>(1, std::min<Index>(n, (N + 7) / 8)));
}

/// The fused coupling kernels for one block with fixed parameters.
template <class Scalar>
class FusedCoupling {
 public:
  using RowMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using RowVector = Eigen::Matrix<Scalar, 1, Eigen::Dynamic>;
  using Stride = Eigen::OuterStride<>;
  using Map = Eigen::Map<RowMatrix, Eigen::Unaligned, Stride>;
  using ConstMap = Eigen::Map<const RowMatrix, Eigen::Unaligned, Stride>;
  using ConstRow = Eigen::Map<const RowVector>;
  using RowArray = Eigen::Array<Scalar, 1, Eigen::Dynamic>;
  using RowArrayMap = Eigen::Map<RowArray>;
  using ConstRowArrayMap = Eigen::Map<const RowArray>;

  FusedCoupling(const CouplingDims& dims, Scalar alpha, SoftClamp clamp, GlobalAffineType affine_type,
                const CouplingWeights<Scalar>& w)
      : m_dims(dims), m_alpha(alpha), m_clamp(clamp), m_w(w) {
    const Index D = dims.D;
    m_g.resize(D);
    m_g_derivative.resize(D);
    m_sum_log_g = 0;
    for (Index j = 0; j < D; ++j) {
      const Scalar gamma = w.gamma.data()[j];
      m_g[j] = global_affine_scale(gamma, affine_type);
      m_g_derivative[j] = global_affine_scale_derivative(gamma, affine_type);
      m_sum_log_g += std::log(m_g[j]);
    }
    const auto zero = [](const Tensor<Scalar>& t) {
      return std::all_of(t.data(), t.data() + t.numel(), [](Scalar v) { return v == Scalar(0); });
    };
    m_silent_subnet = zero(w.fc2_weight) && zero(w.fc2_bias);
  }

  /// Inference or training forward of rows [0, N).
  /// x (N, D); cond (M, P) with N a multiple of M (row n is conditioned on cond row n mod M; M = N
  /// is the plain case), or null when P = 0; out (N, D), which may be x itself (each tile reads its
  /// rows of x before it writes them); log_jac_det (N,) is set, or added to when `accumulate`.
  /// With `hidden` (N, H) and `s_t` (N, 2 n2) non-null the activations are kept there (training).
  void forward(Index N, const Scalar* x, const Scalar* cond, Index cond_rows, Scalar* out, Scalar* log_jac_det,
               bool accumulate, Scalar* hidden, Scalar* s_t) const {
    const RowMatrix cond_proj = project_condition(N, cond, cond_rows);
    forward_rows(N, x, cond_proj.size() ? nullptr : cond, cond_proj, out, log_jac_det, accumulate, hidden, s_t);
  }

  /// W1c c + b1 for the M rows of a condition (M, P): (M, H), the start of each row's hidden layer.
  /// A caller that maps many inputs under one condition (the scores: every image of a level has the
  /// same positional encoding) makes it once and passes it to forward_projected.
  RowMatrix condition_projection(const Scalar* cond, Index cond_rows) const {
    check(m_dims.P > 0 && cond != nullptr && cond_rows > 0,
          "FusedCoupling::condition_projection: needs a condition of at least one row (P = ", m_dims.P, ")");
    RowMatrix cond_proj(cond_rows, m_dims.H);
    cond_proj.rowwise() = ConstRow(m_w.fc1_bias.data(), m_dims.H);
    cond_proj.noalias() += ConstMap(cond, cond_rows, m_dims.P, Stride(m_dims.P)) * w1c().transpose();
    return cond_proj;
  }

  /// The inference forward of rows [0, N) under a condition given by its condition_projection
  /// (M, H), N a multiple of M (row n reads projection row n mod M); as forward() otherwise.
  void forward_projected(Index N, const Scalar* x, const RowMatrix& cond_proj, Scalar* out, Scalar* log_jac_det,
                         bool accumulate) const {
    check(cond_proj.rows() > 0 && cond_proj.cols() == m_dims.H && N % cond_proj.rows() == 0,
          "FusedCoupling::forward_projected: a projection of ", cond_proj.rows(), " x ", cond_proj.cols(),
          " for ", N, " rows of hidden width ", m_dims.H);
    forward_rows(N, x, nullptr, cond_proj, out, log_jac_det, accumulate, nullptr, nullptr);
  }

  /// Inverse of rows [0, N): x = f⁻¹(z); out (N, D) may be z itself; log_jac_det (N,) receives
  /// −(Σ s + Σ log g), set or added when `accumulate`.
  void inverse(Index N, const Scalar* z, const Scalar* cond, Index cond_rows, Scalar* out, Scalar* log_jac_det,
               bool accumulate) const {
    const CouplingDims& d = m_dims;
    const int n_threads = fused_threads(N);
    const Index tile = fused_tile_height(N, n_threads);
    const RowMatrix cond_proj = project_condition(N, cond, cond_rows);
    const Scalar* tile_cond = cond_proj.size() ? nullptr : cond;
    std::vector<Workspace> ws(static_cast<std::size_t>(n_threads));
    for_each_tile(
        N, tile, n_threads, [&](int t) { ws[static_cast<std::size_t>(t)].forward(d, tile, false); },
        [&](int t, Index r0, Index r1) {
          Workspace& w = ws[static_cast<std::size_t>(t)];
          inverse_tile(r1 - r0, r0, z + r0 * d.D, tile_cond ? tile_cond + r0 * d.P : nullptr, cond_proj,
                       w.hidden.data(), w.a.data(), w.u.data(), out + r0 * d.D, log_jac_det + r0, accumulate);
        });
  }

  /// Backward of rows [0, N) from the activations of the training forward.
  /// grad_out = dL/dy (N, D); grad_log_jac_det = dL/d log|det J| (N,) or null (zero);
  /// grad_x (N, D) receives dL/dx (set, not added) and may be grad_out itself; grad_cond (M, P),
  /// when non-null, receives dL/dc added (+=), summed over the rows that share a condition row.
  /// Parameter gradients are added into `grads`.
  void backward(Index N, const Scalar* x, const Scalar* cond, Index cond_rows, const Scalar* hidden,
                const Scalar* s_t, const Scalar* grad_out, const Scalar* grad_log_jac_det, Scalar* grad_x,
                Scalar* grad_cond, const CouplingGradients<Scalar>& grads) const {
    const CouplingDims& d = m_dims;
    const int n_threads = fused_threads(N);
    const Index tile = fused_tile_height(N, n_threads);
    const bool shared = shares_condition(N, cond, cond_rows);
    std::vector<Workspace> ws(static_cast<std::size_t>(n_threads));
    for_each_tile(
        N, tile, n_threads,
        [&](int t) { ws[static_cast<std::size_t>(t)].backward(d, tile, shared ? cond_rows : 0); },
        [&](int t, Index r0, Index r1) {
          Workspace& w = ws[static_cast<std::size_t>(t)];
          backward_tile(r1 - r0, r0, x + r0 * d.D, cond && !shared ? cond + r0 * d.P : nullptr, hidden + r0 * d.H,
                        s_t + r0 * 2 * d.n2, grad_out + r0 * d.D,
                        grad_log_jac_det ? grad_log_jac_det + r0 : nullptr, grad_x + r0 * d.D,
                        grad_cond && !shared ? grad_cond + r0 * d.P : nullptr, w);
        });

    // Reduce the per-thread partial sums in a fixed order.
    const Index in1 = d.n1 + d.P;
    RowMatrix dW1 = RowMatrix::Zero(d.H, in1), dW2 = RowMatrix::Zero(2 * d.n2, d.H);
    RowVector db1 = RowVector::Zero(d.H), db2 = RowVector::Zero(2 * d.n2);
    RowVector du_u = RowVector::Zero(d.D), du_sum = RowVector::Zero(d.D);
    Scalar sum_grad_ld = 0;
    for (const Workspace& w : ws) {
      if (w.dW1.size() == 0) continue;
      dW1 += w.dW1;
      dW2 += w.dW2;
      db1 += w.db1;
      db2 += w.db2;
      du_u += w.du_u;
      du_sum += w.du_sum;
    }
    if (shared) {
      // Rows n ≡ m (mod M) share c_m: dW1c = Σ_n dh_nᵀ c_{n mod M} = Σ_m S_mᵀ c_m with
      // S_m = Σ_{n ≡ m} dh_n, and dL/dc_m = S_m W1c.
      RowMatrix S = RowMatrix::Zero(cond_rows, d.H);
      for (const Workspace& w : ws) {
        if (w.dcond_proj.size()) S += w.dcond_proj;
      }
      const ConstMap C(cond, cond_rows, d.P, Stride(d.P));
      dW1.rightCols(d.P).noalias() += S.transpose() * C;
      if (grad_cond) Map(grad_cond, cond_rows, d.P, Stride(d.P)).noalias() += S * w1c();
    }
    if (grad_log_jac_det) {
      for (Index r = 0; r < N; ++r) sum_grad_ld += grad_log_jac_det[r];
    }
    add_into(grads.fc1_weight, dW1.data(), dW1.size());
    add_into(grads.fc1_bias, db1.data(), db1.size());
    add_into(grads.fc2_weight, dW2.data(), dW2.size());
    add_into(grads.fc2_bias, db2.data(), db2.size());
    add_into(grads.offset, du_sum.data(), du_sum.size());
    if (grads.gamma) {
      // dL/dg_j = Σ_n dL/du'_nj u_nj + Σ_n dL/dld_n / g_j   (u' = g u + b, ld ∋ Σ log g);
      // dL/dγ_j = dL/dg_j · dg/dγ_j.
      Scalar* gg = grads.gamma->data();
      for (Index j = 0; j < d.D; ++j) gg[j] += (du_u[j] + sum_grad_ld / m_g[j]) * m_g_derivative[j];
    }
  }

  const CouplingDims& dims() const { return m_dims; }
  Scalar sum_log_g() const { return m_sum_log_g; }

 private:
  /// Per-thread scratch, sized for one tile; the backward's gradient partial sums live here too.
  struct Workspace {
    RowMatrix hidden, a, u, du, e, dout, dhidden;
    RowMatrix dW1, dW2, dcond_proj;
    RowVector db1, db2, du_u, du_sum;

    void forward(const CouplingDims& d, Index tile, bool keep) {
      if (!keep) {
        hidden.resize(tile, d.H);
        a.resize(tile, 2 * d.n2);
      }
      u.resize(tile, d.D);
    }
    void backward(const CouplingDims& d, Index tile, Index shared_cond_rows) {
      if (shared_cond_rows > 0) dcond_proj = RowMatrix::Zero(shared_cond_rows, d.H);
      du.resize(tile, d.D);
      e.resize(1, d.n2);
      dout.resize(tile, 2 * d.n2);
      dhidden.resize(tile, d.H);
      dW1 = RowMatrix::Zero(d.H, d.n1 + d.P);
      dW2 = RowMatrix::Zero(2 * d.n2, d.H);
      db1 = RowVector::Zero(d.H);
      db2 = RowVector::Zero(2 * d.n2);
      du_u = RowVector::Zero(d.D);
      du_sum = RowVector::Zero(d.D);
    }
  };

  /// The body of forward and forward_projected: each tile's rows start from cond_proj when it is
  /// non-empty, else from b1 plus their rows of tile_cond times W1cᵀ.
  void forward_rows(Index N, const Scalar* x, const Scalar* tile_cond, const RowMatrix& cond_proj, Scalar* out,
                    Scalar* log_jac_det, bool accumulate, Scalar* hidden, Scalar* s_t) const {
    const CouplingDims& d = m_dims;
    const int n_threads = fused_threads(N);
    const Index tile = fused_tile_height(N, n_threads);
    const bool keep = hidden != nullptr;
    std::vector<Workspace> ws(static_cast<std::size_t>(n_threads));
    for_each_tile(
        N, tile, n_threads,
        [&](int t) { ws[static_cast<std::size_t>(t)].forward(d, tile, keep); },
        [&](int t, Index r0, Index r1) {
          Workspace& w = ws[static_cast<std::size_t>(t)];
          const Index T = r1 - r0;
          Scalar* h = keep ? hidden + r0 * d.H : w.hidden.data();
          Scalar* a = keep ? s_t + r0 * 2 * d.n2 : w.a.data();
          forward_tile(T, r0, x + r0 * d.D, tile_cond ? tile_cond + r0 * d.P : nullptr, cond_proj,
                       h, a, w.u.data(), out + r0 * d.D, log_jac_det + r0, accumulate, keep);
        });
  }

  bool shares_condition(Index N, const Scalar* cond, Index cond_rows) const {
    return m_dims.P > 0 && cond != nullptr && cond_rows < N;
  }

  /// W1c c_m + b1 for the M rows of a shared condition, (M, H); empty when the condition is not
  /// shared (M = N), where the tiles multiply their own condition rows.
  RowMatrix project_condition(Index N, const Scalar* cond, Index cond_rows) const {
    RowMatrix cond_proj;
    if (!shares_condition(N, cond, cond_rows)) return cond_proj;
    check(cond_rows > 0 && N % cond_rows == 0, "FusedCoupling: ", N, " rows cannot share a condition of ",
          cond_rows, " rows");
    return condition_projection(cond, cond_rows);
  }

  static void add_into(Tensor<Scalar>* target, const Scalar* values, Index n) {
    if (!target) return;
    check(target->numel() == n, "FusedCoupling::backward: gradient buffer of shape ", target->shape(),
          " for ", n, " values");
    Scalar* p = target->data();
    for (Index i = 0; i < n; ++i) p[i] += values[i];
  }

  ConstMap w1x() const {
    const Index in1 = m_dims.n1 + m_dims.P;
    return ConstMap(m_w.fc1_weight.data(), m_dims.H, m_dims.n1, Stride(in1));
  }
  ConstMap w1c() const {
    const Index in1 = m_dims.n1 + m_dims.P;
    return ConstMap(m_w.fc1_weight.data() + m_dims.n1, m_dims.H, m_dims.P, Stride(in1));
  }
  ConstMap w2() const { return ConstMap(m_w.fc2_weight.data(), 2 * m_dims.n2, m_dims.H, Stride(m_dims.H)); }
  ConstMap rot() const { return ConstMap(m_w.rotation.data(), m_dims.D, m_dims.D, Stride(m_dims.D)); }

  /// h (T, H) = ReLU(x1 W1xᵀ + c W1cᵀ + b1) and the subnet output a (T, 2 n2) = h W2ᵀ + b2 (before
  /// the 0.1 scale). The biases are written first and the GEMMs accumulate onto them.
  /// With a shared condition (cond_proj non-empty), row r0 + r starts from the precomputed
  /// cond_proj row (r0 + r) mod M = W1c c + b1 instead.
  void subnet_tile(Index T, Index r0, const Scalar* x1, Index x1_stride, const Scalar* c,
                   const RowMatrix& cond_proj, Scalar* h, Scalar* a) const {
    const CouplingDims& d = m_dims;
    Map H(h, T, d.H, Stride(d.H));
    Map A(a, T, 2 * d.n2, Stride(2 * d.n2));
    if (cond_proj.size()) {
      const Index M = cond_proj.rows();
      for (Index r = 0; r < T; ++r) H.row(r) = cond_proj.row((r0 + r) % M);
    } else {
      H.rowwise() = ConstRow(m_w.fc1_bias.data(), d.H);
      if (c) H.noalias() += ConstMap(c, T, d.P, Stride(d.P)) * w1c().transpose();
    }
    H.noalias() += ConstMap(x1, T, d.n1, Stride(x1_stride)) * w1x().transpose();
    for (Index r = 0; r < T; ++r) RowArrayMap(h + r * d.H, d.H) = RowArrayMap(h + r * d.H, d.H).max(Scalar(0));
    A.rowwise() = ConstRow(m_w.fc2_bias.data(), 2 * d.n2);
    A.noalias() += H * w2().transpose();
  }

  /// In place on one row a = [r_s | r_t] of the subnet output: r_s ← s = clamp(0.1 r_s),
  /// r_t ← t = 0.1 r_t (coupling_log_scale, coupling_shift).
  void clamp_row(Scalar* a) const {
    const Index n2 = m_dims.n2;
    RowArrayMap as(a, n2), at(a + n2, n2);
    at = coupling_shift<Scalar>(at);
    as = coupling_log_scale(as, m_alpha, m_clamp);
  }

  /// The subnet output a of T rows (subnet_tile), or zeros when W2 and b2 are and h is not kept.
  void subnet_output(Index T, Index r0, const Scalar* x1, const Scalar* c,
                     const RowMatrix& cond_proj, Scalar* h, Scalar* a, bool keep_hidden) const {
    if (m_silent_subnet && !keep_hidden)
      std::fill(a, a + T * 2 * m_dims.n2, Scalar(0));
    else
      subnet_tile(T, r0, x1, m_dims.D, c, cond_proj, h, a);
  }

  void forward_tile(Index T, Index r0, const Scalar* x, const Scalar* c, const RowMatrix& cond_proj,
                    Scalar* h, Scalar* a, Scalar* u, Scalar* y, Scalar* ld, bool accumulate,
                    bool keep_hidden) const {
    const CouplingDims& d = m_dims;
    const Index n1 = d.n1, n2 = d.n2, D = d.D;
    subnet_output(T, r0, x, c, cond_proj, h, a, keep_hidden);
    const ConstRowArrayMap g1(m_g.data(), n1), g2(m_g.data() + n1, n2);
    const ConstRowArrayMap b1(m_w.offset.data(), n1), b2(m_w.offset.data() + n1, n2);
    for (Index r = 0; r < T; ++r) {
      Scalar* ar = a + r * 2 * n2;
      clamp_row(ar);
      const ConstRowArrayMap s(ar, n2), t(ar + n2, n2);
      const ConstRowArrayMap x1(x + r * D, n1), x2(x + r * D + n1, n2);
      // u' = g ⊙ [x1 ; x2 ⊙ e^s + t] + b
      RowArrayMap(u + r * D, n1) = x1 * g1 + b1;
      RowArrayMap(u + r * D + n1, n2) = coupling_active_output(x2, s.exp(), t) * g2 + b2;
      // log|det J| = Σ_k s_k + Σ_k log g_k
      const Scalar value = s.sum() + m_sum_log_g;
      ld[r] = accumulate ? ld[r] + value : value;
    }
    rotate_tile(T, u, y);
  }

  /// y = R u' per row: Y = U' Rᵀ, or y_i = u'_{p[i]} for a permutation.
  void rotate_tile(Index T, const Scalar* u, Scalar* y) const {
    const Index D = m_dims.D;
    if (!m_w.permutation.empty()) {
      const Index* p = m_w.permutation.data();
      for (Index r = 0; r < T; ++r) {
        for (Index i = 0; i < D; ++i) y[r * D + i] = u[r * D + p[i]];
      }
      return;
    }
    Map(y, T, D, Stride(D)).noalias() = ConstMap(u, T, D, Stride(D)) * rot().transpose();
  }

  /// u' = Rᵀ y per row: U' = Y R, or u'_{p[i]} = y_i for a permutation.
  void unrotate_tile(Index T, const Scalar* y, Scalar* u) const {
    const Index D = m_dims.D;
    if (!m_w.permutation.empty()) {
      const Index* p = m_w.permutation.data();
      for (Index r = 0; r < T; ++r) {
        for (Index i = 0; i < D; ++i) u[r * D + p[i]] = y[r * D + i];
      }
      return;
    }
    Map(u, T, D, Stride(D)).noalias() = ConstMap(y, T, D, Stride(D)) * rot();
  }

  void inverse_tile(Index T, Index r0, const Scalar* z, const Scalar* c, const RowMatrix& cond_proj, Scalar* h,
                    Scalar* a, Scalar* u, Scalar* x, Scalar* ld, bool accumulate) const {
    const CouplingDims& d = m_dims;
    const Index n1 = d.n1, n2 = d.n2, D = d.D;
    unrotate_tile(T, z, u);
    // u = (u' − b) / g; x1 = u1, then the subnet on [x1 ; c] gives s and t, x2 = (u2 − t) e^{−s}.
    const ConstRowArrayMap g(m_g.data(), D), b(m_w.offset.data(), D);
    for (Index r = 0; r < T; ++r) {
      RowArrayMap ur(u + r * D, D);
      ur = (ur - b) / g;
      RowArrayMap(x + r * D, n1) = ur.head(n1);
    }
    subnet_output(T, r0, x, c, cond_proj, h, a, false);
    for (Index r = 0; r < T; ++r) {
      Scalar* ar = a + r * 2 * n2;
      clamp_row(ar);
      const ConstRowArrayMap s(ar, n2), t(ar + n2, n2);
      RowArrayMap(x + r * D + n1, n2) = (ConstRowArrayMap(u + r * D + n1, n2) - t) * (-s).exp();
      const Scalar value = -(s.sum() + m_sum_log_g);
      ld[r] = accumulate ? ld[r] + value : value;
    }
  }

  /// c and gc are null with a shared condition: its gradients are gathered in w.dcond_proj.
  void backward_tile(Index T, Index r0, const Scalar* x, const Scalar* c, const Scalar* h, const Scalar* st,
                     const Scalar* gy, const Scalar* gld, Scalar* gx, Scalar* gc, Workspace& w) const {
    const CouplingDims& d = m_dims;
    const Index n1 = d.n1, n2 = d.n2, D = d.D, H = d.H;
    // du' (T, D) = dL/dy R: y = R u' per row. gy is consumed here, so gx may be gy.
    unrotate_tile(T, gy, w.du.data());
    const ConstRowArrayMap g1(m_g.data(), n1), g2(m_g.data() + n1, n2);
    auto du_u1 = w.du_u.head(n1).array();
    auto du_u2 = w.du_u.tail(n2).array();
    auto du_sum = w.du_sum.array();
    auto db2 = w.db2.array();
    Scalar* e = w.e.data();
    for (Index r = 0; r < T; ++r) {
      RowArrayMap du1(w.du.data() + r * D, n1), du2(w.du.data() + r * D + n1, n2);
      const ConstRowArrayMap x1(x + r * D, n1), x2(x + r * D + n1, n2);
      const ConstRowArrayMap s(st + r * 2 * n2, n2), t(st + r * 2 * n2 + n2, n2);
      RowArrayMap es(e, n2);
      es = s.exp();
      // dL/dg_j partial sums Σ_n du'_nj u_nj with u = [x1 ; x2 e^s + t]; dL/db_j = Σ_n du'_nj.
      du_u1 += du1 * x1;
      du_u2 += du2 * coupling_active_output(x2, es, t);
      du_sum.head(n1) += du1;
      du_sum.tail(n2) += du2;
      // du = g ⊙ du'; then through v2' = x2 e^s + t to x2 and the raw subnet output
      // (coupling_active_backward).
      du1 *= g1;
      du2 *= g2;
      const Scalar grad_ld = gld ? gld[r] : Scalar(0);
      RowArrayMap do_s(w.dout.data() + r * 2 * n2, n2), do_t(w.dout.data() + r * 2 * n2 + n2, n2);
      coupling_active_backward(x2, s, es, du2, grad_ld, m_alpha, m_clamp,
                               RowArrayMap(gx + r * D + n1, n2), do_s, do_t);
      db2.head(n2) += do_s;
      db2.tail(n2) += do_t;
      RowArrayMap(gx + r * D, n1) = du1;
    }
    // raw = W2 h + b2:  dW2 += drawᵀ h, dh = draw W2, then through the ReLU: [h_pre > 0] = [h > 0].
    ConstMap Hm(h, T, H, Stride(H));
    ConstMap DO(w.dout.data(), T, 2 * n2, Stride(2 * n2));
    w.dW2.noalias() += DO.transpose() * Hm;
    Map DH(w.dhidden.data(), T, H, Stride(H));
    DH.noalias() = DO * w2();
    auto db1 = w.db1.array();
    const Index M = w.dcond_proj.rows();
    for (Index r = 0; r < T; ++r) {
      RowArrayMap dh(w.dhidden.data() + r * H, H);
      dh = (ConstRowArrayMap(h + r * H, H) > Scalar(0)).select(dh, Scalar(0));
      db1 += dh;
      if (M > 0) w.dcond_proj.row((r0 + r) % M).array() += dh;
    }
    // h_pre = W1x x1 + W1c c + b1:  dW1 += dhᵀ [x1 ; c], dx1 += dh W1x, dc += dh W1c.
    ConstMap X1(x, T, n1, Stride(D));
    w.dW1.leftCols(n1).noalias() += DH.transpose() * X1;
    if (c) w.dW1.rightCols(d.P).noalias() += DH.transpose() * ConstMap(c, T, d.P, Stride(d.P));
    Map(gx, T, n1, Stride(D)).noalias() += DH * w1x();
    if (gc) Map(gc, T, d.P, Stride(d.P)).noalias() += DH * w1c();
  }

  CouplingDims m_dims;
  Scalar m_alpha;
  SoftClamp m_clamp;
  const CouplingWeights<Scalar>& m_w;
  RowVector m_g, m_g_derivative;
  Scalar m_sum_log_g = 0;
  bool m_silent_subnet = false;  ///< W2 and b2 all zero: a = 0 for every row
};

}  // namespace detail
}  // namespace hgad
