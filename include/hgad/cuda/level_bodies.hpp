#pragma once
/// \file
/// The level kernels' share of work (one HGAD level trained on the GPU): what one thread does for
/// one element, or what one lane of a warp does for one row, expressed through the formula bodies
/// that the CPU paths call too (flow/coupling_element.hpp, flow/all_in_one_options.hpp,
/// prior/prior_row.hpp, nn/adam_element.hpp, detail/element_ops.hpp). This compiles as plain C++;
/// HostLevelExec (level_engine.hpp) runs these in loops on the CPU, so the whole GPU training step,
/// from the GEMM layouts to the coefficient matrices, is tested in CI without a device. The CUDA
/// kernels (level_kernels.cuh) only map threads and lanes onto them.
///
/// A "lane" function handles the elements lane, lane + n_lanes, ... of a row; its partial sums are
/// combined by the caller (warp shuffles on the GPU, a loop on the host).
///
/// Shapes: N rows, D = n1 + n2 channels, H hidden units, P condition channels, Nc condition rows
/// (row n uses condition row n mod Nc), K classes, M intra-class centres.

#include <cstdint>

#include "../backend.hpp"
#include "../detail/element_ops.hpp"
#include "../detail/host_device.hpp"
#include "../flow/all_in_one_options.hpp"
#include "../flow/coupling_element.hpp"
#include "../nn/adam_element.hpp"
#include "../prior/prior_row.hpp"

namespace hgad::cuda {

using LevelIndex = std::int64_t;

/// g_j, dg_j/dgamma_j of one channel; returns ln g_j (summed into the block's log-det).
template <class Scalar>
HGAD_HOST_DEVICE Scalar global_affine_element(Scalar gamma, GlobalAffineType type, Scalar* g,
                                              Scalar* g_derivative) {
  const Scalar v = hgad::detail::global_affine_scale(gamma, type);
  *g = v;
  *g_derivative = hgad::detail::global_affine_scale_derivative(gamma, type);
  return hgad::detail::hd_log(v);
}

/// Columns first, first + step, ... of row n of the hidden layer:
/// h[n, j] <- ReLU(h[n, j] + cond_part[n mod Nc, j] + b1[j]); cond_part may be null (P = 0).
template <class Scalar>
HGAD_HOST_DEVICE void hidden_row(LevelIndex n, LevelIndex H, LevelIndex Nc, Scalar* h,
                                 const Scalar* cond_part, const Scalar* b1, LevelIndex first,
                                 LevelIndex step) {
  Scalar* hn = h + n * H;
  const Scalar* cn = cond_part != nullptr ? cond_part + (n % Nc) * H : nullptr;
  for (LevelIndex j = first; j < H; j += step)
    hn[j] = hgad::detail::unary_op(UnaryOp::relu,
                                   hn[j] + (cn != nullptr ? cn[j] : Scalar(0)) + b1[j], Scalar(0));
}

/// One lane of the coupling forward of row n: st (N, 2 n2) holds the raw subnet output h W2^T
/// and receives [s | t]; u_affine (N, D) receives u' = g [x1 ; x2 e^s + t] + b. Returns the lane's
/// share of sum_k s_k.
template <class Scalar>
HGAD_HOST_DEVICE Scalar coupling_forward_lane(LevelIndex n, int lane, int n_lanes, LevelIndex n1,
                                              LevelIndex n2, const Scalar* x, Scalar* st,
                                              const Scalar* b2, const Scalar* g,
                                              const Scalar* offset, Scalar alpha, SoftClamp mode,
                                              Scalar* u_affine) {
  const LevelIndex D = n1 + n2;
  const Scalar* xn = x + n * D;
  Scalar* sn = st + n * 2 * n2;
  Scalar* un = u_affine + n * D;
  Scalar s_sum = 0;
  for (LevelIndex k = lane; k < n2; k += n_lanes) {
    const Scalar s = coupling_log_scale(sn[k] + b2[k], alpha, mode);
    const Scalar t = coupling_shift<Scalar>(sn[n2 + k] + b2[n2 + k]);
    sn[k] = s;
    sn[n2 + k] = t;
    un[n1 + k] =
        coupling_active_output(xn[n1 + k], hgad::detail::hd_exp(s), t) * g[n1 + k] + offset[n1 + k];
    s_sum += s;
  }
  for (LevelIndex j = lane; j < n1; j += n_lanes) un[j] = g[j] * xn[j] + offset[j];
  return s_sum;
}

/// The block's log-det of row n: sum_k s_k + sum_j ln g_j, set or added to log_jac_det[n].
template <class Scalar>
HGAD_HOST_DEVICE void coupling_forward_finish(LevelIndex n, Scalar s_sum, Scalar sum_log_g,
                                              Scalar* log_jac_det, bool accumulate) {
  const Scalar total = s_sum + sum_log_g;
  log_jac_det[n] = accumulate ? log_jac_det[n] + total : total;
}

/// Element (n, j) of the coupling backward. In: x (N, D), st (N, 2 n2) = [s | t], gu (N, 2D)
/// whose first D columns hold dL/du' (= dL/dy R), g (D,), g_ld (N,). Out: gu[n, D + j] =
/// dL/du'_j u_j (for dL/dgamma); gx[n, j] = dL/dx_j through the coupling (the subnet's share of
/// dL/dx1 is added by a GEMM); for an active j = n1 + k, ga[n, k] and ga[n, n2 + k] = dL/d of the
/// raw subnet outputs (coupling_active_backward). u = [x1 ; x2 e^s + t], dL/du = g dL/du'.
template <class Scalar>
HGAD_HOST_DEVICE void coupling_backward_element(LevelIndex n, LevelIndex j, LevelIndex n1,
                                                LevelIndex n2, const Scalar* x, const Scalar* st,
                                                Scalar* gu, const Scalar* g,
                                                const Scalar* g_log_jac_det, Scalar alpha,
                                                SoftClamp mode, Scalar* gx, Scalar* ga) {
  const LevelIndex D = n1 + n2;
  const Scalar* xn = x + n * D;
  Scalar* gun = gu + n * 2 * D;
  const Scalar gup = gun[j];
  if (j < n1) {
    gun[D + j] = gup * xn[j];
    gx[n * D + j] = gup * g[j];
    return;
  }
  const LevelIndex k = j - n1;
  const Scalar* sn = st + n * 2 * n2;
  const Scalar s = sn[k], t = sn[n2 + k], x2 = xn[j];
  const Scalar exp_s = hgad::detail::hd_exp(s);
  gun[D + j] = gup * coupling_active_output(x2, exp_s, t);
  Scalar gx2, ga_s, ga_t;
  coupling_active_backward(x2, s, exp_s, gup * g[j], g_log_jac_det[n], alpha, mode, gx2, ga_s,
                           ga_t);
  gx[n * D + j] = gx2;
  ga[n * 2 * n2 + k] = ga_s;
  ga[n * 2 * n2 + n2 + k] = ga_t;
}

/// Element i = p H + j of (Nc, H): through the ReLU, gh[n, j] <- gh[n, j] [h[n, j] > 0]
/// (d/dpre ReLU = [pre > 0] = [h > 0]) for every row n = b Nc + p, and gh_sum[p, j] (when non-null)
/// = sum_b of them, the gradient of the condition part c W1c^T of condition row p.
template <class Scalar>
HGAD_HOST_DEVICE void relu_backward_repeat_element(LevelIndex i, LevelIndex N, LevelIndex H,
                                                   LevelIndex Nc, const Scalar* h, Scalar* gh,
                                                   Scalar* gh_sum) {
  Scalar sum = 0;
  for (LevelIndex o = i; o < N * H; o += Nc * H) {
    const Scalar v = hgad::detail::binary_op(BinaryOp::relu_backward, h[o], gh[o], Scalar(0));
    gh[o] = v;
    sum += v;
  }
  if (gh_sum != nullptr) gh_sum[i] = sum;
}

/// The global affine's parameter gradients of channel j from the column sums cs (2D,) of
/// [dL/du' | dL/du' u]: dL/db_j += cs_j;  dL/dgamma_j += (cs_{D+j} + sum_n dL/dld_n / g_j) g'_j
/// (u' = g u + b, and log|det J| contains sum_j ln g_j).
template <class Scalar>
HGAD_HOST_DEVICE void affine_grad_element(LevelIndex j, LevelIndex D, const Scalar* cs,
                                          const Scalar* g, const Scalar* g_derivative,
                                          Scalar sum_g_ld, Scalar* grad_gamma,
                                          Scalar* grad_offset) {
  grad_offset[j] += cs[j];
  grad_gamma[j] += (cs[D + j] + sum_g_ld / g[j]) * g_derivative[j];
}

/// Element i of the intra-class centres m (K, M, D): m_{y,0} = mu_y, m_{y,k} = mu_y + delta_{y,k-1}
/// (docs/algorithm.md §3.1).
template <class Scalar>
HGAD_HOST_DEVICE void intra_center_element(LevelIndex i, LevelIndex M, LevelIndex D,
                                           const Scalar* mu, const Scalar* delta, Scalar* centers) {
  const LevelIndex j = i % D, k = (i / D) % M, y = i / (D * M);
  const Scalar m = mu[y * D + j];
  centers[i] = k == 0 ? m : m + delta[(y * (M - 1) + k - 1) * D + j];
}

/// One lane's share of |z - c|^2 over the elements lane, lane + n_lanes, ... of D.
template <class Scalar>
HGAD_HOST_DEVICE Scalar squared_distance_lane(const Scalar* z, const Scalar* c, LevelIndex D,
                                              int lane, int n_lanes) {
  Scalar partial = 0;
  for (LevelIndex j = lane; j < D; j += n_lanes) {
    const Scalar diff = z[j] - c[j];
    partial += diff * diff;
  }
  return partial;
}

/// The per-row scratch of the prior and score kernels: z and the per-row vectors of prior_row.
template <class Scalar>
struct PriorRowScratch {
  Scalar* z;            ///< (D,)
  Scalar* d;            ///< (K,) then e (M,) right after it
  Scalar* e;            ///< (M,)
  Scalar* grad_d;       ///< (K,)
  Scalar* grad_e;       ///< (M,)
  Scalar* grad_log_pi;  ///< (K,)
  Scalar* grad_log_w;   ///< (M,)
  Scalar* terms;        ///< (PriorTerm::count,)
  Scalar* g_ld;         ///< (1,)

  /// Scalars of one row's scratch.
  HGAD_HOST_DEVICE static LevelIndex size(LevelIndex D, LevelIndex K, LevelIndex M) {
    return D + 3 * K + 3 * M + PriorTerm::count + 1;
  }
  /// The scratch laid out in `base` (size(D, K, M) Scalars).
  HGAD_HOST_DEVICE static PriorRowScratch at(Scalar* base, LevelIndex D, LevelIndex K,
                                             LevelIndex M) {
    PriorRowScratch s;
    s.z = base;
    s.d = s.z + D;
    s.e = s.d + K;
    s.grad_d = s.e + M;
    s.grad_e = s.grad_d + K;
    s.grad_log_pi = s.grad_e + M;
    s.grad_log_w = s.grad_log_pi + K;
    s.terms = s.grad_log_w + M;
    s.g_ld = s.terms + PriorTerm::count;
    return s;
  }
};

/// Columns of the prior's coefficient matrix (N, 2K + K M):
/// [-2 dl/dd (K) | dl/dlog w in the row label's block (K M) | dl/dlog pi (K)].
HGAD_HOST_DEVICE inline LevelIndex prior_coef_cols(LevelIndex K, LevelIndex M) {
  return 2 * K + K * M;
}

/// One lane's writes of row n after prior_row has filled the scratch:
///   gz[n, j] = dl/dz_j = sum_y 2 dl/dd_y (z_j - mu_yj) + sum_k 2 dl/de_k (z_j - m_kj)   (stage 2)
///   coef[n, :] (prior_coef_cols), terms[n, :] (PriorTerm::count), g_ld[n].
/// With C the coefficient of a centre c in a row, dl/dc = C (z - c): C = -2 dl/dd_y for mu_y and
/// -2 dl/de_k = dl/dlog w_k for m_{y,k}, so one column block serves delta and phi_intra.
template <class Scalar>
HGAD_HOST_DEVICE void prior_row_write_lane(const PriorRowConfig<Scalar>& config, LevelIndex n,
                                           int lane, int n_lanes, LevelIndex D, int label,
                                           const Scalar* mu, const Scalar* m,
                                           const PriorRowScratch<Scalar>& s, Scalar* gz,
                                           Scalar* coef, Scalar* g_ld, Scalar* terms) {
  const LevelIndex K = config.n_classes, M = config.n_centers;
  Scalar* gzn = gz + n * D;
  for (LevelIndex j = lane; j < D; j += n_lanes) {
    const Scalar zj = s.z[j];
    Scalar acc = 0;
    for (LevelIndex y = 0; y < K; ++y) acc += Scalar(2) * s.grad_d[y] * (zj - mu[y * D + j]);
    if (config.stage2)
      for (LevelIndex k = 0; k < M; ++k) acc += Scalar(2) * s.grad_e[k] * (zj - m[k * D + j]);
    gzn[j] = acc;
  }
  const LevelIndex n_coef = prior_coef_cols(K, M);
  Scalar* cn = coef + n * n_coef;
  for (LevelIndex i = lane; i < n_coef; i += n_lanes) {
    Scalar v = 0;
    if (i < K) {
      v = Scalar(-2) * s.grad_d[i];
    } else if (i < K + K * M) {
      const LevelIndex block = (i - K) / M, k = (i - K) % M;
      v = config.stage2 && block == label ? s.grad_log_w[k] : Scalar(0);
    } else {
      v = s.grad_log_pi[i - K - K * M];
    }
    cn[i] = v;
  }
  for (LevelIndex t = lane; t < PriorTerm::count; t += n_lanes)
    terms[n * PriorTerm::count + t] = s.terms[t];
  if (lane == 0) g_ld[n] = *s.g_ld;
}

/// Element i of the centre gradients, from CZ = coef[:, :K + K M]^T z ((K + K M), D) and the
/// column sums cs of coef (dl/dc = sum_n C_n (z_n - c) = CZ_c - cs_c c):
///   i < K D:  dL/dmu += CZ - cs_y mu;   else (stage 2) dL/ddelta_{y,k-1} += CZ_{K+yM+k} - cs m_{y,k}.
template <class Scalar>
HGAD_HOST_DEVICE void prior_center_grad_element(LevelIndex i, LevelIndex K, LevelIndex M,
                                                LevelIndex D, const Scalar* cz, const Scalar* cs,
                                                const Scalar* mu, const Scalar* centers,
                                                Scalar* grad_mu, Scalar* grad_delta) {
  const LevelIndex n_mu = K * D;
  if (i < n_mu) {
    grad_mu[i] += cz[i] - cs[i / D] * mu[i];
    return;
  }
  const LevelIndex r = i - n_mu;
  const LevelIndex j = r % D, k = 1 + (r / D) % (M - 1), y = r / (D * (M - 1));
  const LevelIndex c = K + y * M + k;
  grad_delta[r] += cz[c * D + j] - cs[c] * centers[(y * M + k) * D + j];
}

/// Task t of the logit gradients: t < K (stage 2 only) adds dL/dphi_intra[t] from the sums of
/// dl/dlog w in cs[K + t M, +M); t == K adds dL/dphi_inter from cs[K + K M, +K).
template <class Scalar>
HGAD_HOST_DEVICE void prior_logit_grad_task(LevelIndex t, LevelIndex K, LevelIndex M, bool stage2,
                                            const Scalar* cs, const Scalar* phi_intra,
                                            const Scalar* phi_inter, Scalar* grad_phi_intra,
                                            Scalar* grad_phi_inter) {
  if (t < K && stage2) {
    hgad::detail::log_softmax_row_backward(phi_intra + t * M, static_cast<int>(M), cs + K + t * M,
                                           grad_phi_intra + t * M, true);
  } else if (t == K) {
    hgad::detail::log_softmax_row_backward(phi_inter, static_cast<int>(K), cs + K + K * M,
                                           grad_phi_inter, true);
  }
}

}  // namespace hgad::cuda
