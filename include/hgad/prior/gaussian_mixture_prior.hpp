#pragma once
/// \file
/// The hierarchical Gaussian-mixture prior of HGAD (docs/algorithm.md §3.1, §3.2): K unit-variance class
/// Gaussians N(mu_y, I) weighted by pi = softmax(phi_inter), and inside class y a mixture of M
/// unit-variance Gaussians with centres sg(mu_y), sg(mu_y) + delta_{y,1..M-1}, weighted by
/// w_y = softmax(phi_intra[y]).
///
///     hgad::Rng rng(0);
///     hgad::GaussianMixturePrior<float> prior(15, 10, 200, rng);   // K = 15, M = 10, D = 200
///     auto d = hgad::inter_class_sqdist(z, prior.mu());            // (N, K) with autograd
///
/// The autograd compositions below (distances, log-weights) are the reference path of the losses;
/// the fused CPU path is in loss/fused_loss.hpp.

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../autograd/ops.hpp"
#include "../autograd/var.hpp"
#include "../detail/check.hpp"
#include "../detail/scalar_math.hpp"
#include "../rng.hpp"
#include "../tensor.hpp"

namespace hgad {

/// The scale of the identity blocks of the class-centre initialisation (docs/algorithm.md §3.1):
/// init_scale = 5 / sqrt(floor(2 D / K)), so that |mu_y|^2 is about 12.5 and the centres are 5 apart.
///   requires: 1 <= n_classes <= 2 dim.
inline double class_center_init_scale(Index n_classes, Index dim) {
  check(n_classes >= 1 && dim >= 1, "class_center_init_scale: need n_classes >= 1 and dim >= 1, got K = ",
        n_classes, ", D = ", dim);
  check(n_classes <= 2 * dim, "class_center_init_scale: floor(2 D / K) is 0 for K = ", n_classes,
        " > 2 D = ", 2 * dim, "; the scaled-identity initialisation needs K <= 2 D");
  // 5 / sqrt(floor(2 D / K)): HGAD's class-centre initialisation (docs/algorithm.md §3.1).
  return 5.0 / std::sqrt(static_cast<double>((2 * dim) / n_classes));
}

/// The initial class centres mu (K, D) of docs/algorithm.md §3.1: zero, then for b = 0 .. floor(D/K) - 1
/// the columns [b K, (b + 1) K) hold init_scale * I_K; leftover columns stay zero. The centres are
/// mutually orthogonal with |mu_y|^2 = floor(D/K) init_scale^2.
///   requires: 1 <= n_classes <= 2 dim.
template <class Scalar>
Tensor<Scalar> class_center_init(Index n_classes, Index dim) {
  const double scale = class_center_init_scale(n_classes, dim);
  Tensor<Scalar> mu({n_classes, dim});
  for (Index block = 0; block < dim / n_classes; ++block) {
    for (Index y = 0; y < n_classes; ++y) mu(y, block * n_classes + y) = Scalar(scale);
  }
  return mu;
}

/// The learnable prior of one feature level: mu (K, D), delta (K, M-1, D), phi_intra (K, M),
/// phi_inter (K,), all `Var::parameter` leaves.
template <class Scalar>
class GaussianMixturePrior {
 public:
  /// The initialisation of docs/algorithm.md §3.1: mu from class_center_init, delta i.i.d. N(0, 1) drawn
  /// from `rng` in row-major order, phi_intra = 0 and phi_inter = 0 (uniform weights).
  ///   requires: n_classes >= 1, n_centers >= 1 (M, the intra-class centres including sg(mu_y)),
  ///             1 <= n_classes <= 2 dim.
  GaussianMixturePrior(Index n_classes, Index n_centers, Index dim, Rng& rng)
      : GaussianMixturePrior(class_center_init<Scalar>(n_classes, dim),
                             Tensor<Scalar>::randn({n_classes, check_centers(n_centers) - 1, dim}, rng),
                             Tensor<Scalar>({n_classes, n_centers}), Tensor<Scalar>({n_classes})) {}

  /// A prior holding the given values (for example loaded from a checkpoint).
  ///   requires: mu (K, D), delta (K, M-1, D), phi_intra (K, M), phi_inter (K,), on one device.
  GaussianMixturePrior(Tensor<Scalar> mu, Tensor<Scalar> delta, Tensor<Scalar> phi_intra,
                       Tensor<Scalar> phi_inter) {
    check(mu.rank() == 2 && mu.dim(0) >= 1 && mu.dim(1) >= 1,
          "GaussianMixturePrior: mu must be (K, D) with K, D >= 1, got ", mu.shape());
    const Index K = mu.dim(0), D = mu.dim(1);
    check(phi_intra.rank() == 2 && phi_intra.dim(0) == K && phi_intra.dim(1) >= 1,
          "GaussianMixturePrior: phi_intra must be (K, M) = (", K, ", M >= 1), got ",
          phi_intra.shape());
    const Index M = phi_intra.dim(1);
    check(delta.shape() == Shape{K, M - 1, D}, "GaussianMixturePrior: delta must be (K, M-1, D) = (", K,
          ", ", M - 1, ", ", D, "), got ", delta.shape());
    check(phi_inter.shape() == Shape{K}, "GaussianMixturePrior: phi_inter must be (K,) = (", K,
          ",), got ", phi_inter.shape());
    m_mu = Var<Scalar>::parameter(std::move(mu));
    m_delta = Var<Scalar>::parameter(std::move(delta));
    m_phi_intra = Var<Scalar>::parameter(std::move(phi_intra));
    m_phi_inter = Var<Scalar>::parameter(std::move(phi_inter));
  }

  /// K, the number of classes.
  Index n_classes() const { return m_mu.value().dim(0); }
  /// M, the intra-class centres per class (sg(mu_y) and the M-1 deltas).
  Index n_centers() const { return m_phi_intra.value().dim(1); }
  /// D, the latent dimension.
  Index dim() const { return m_mu.value().dim(1); }

  /// Class centres mu (K, D).
  Var<Scalar>& mu() { return m_mu; }
  const Var<Scalar>& mu() const { return m_mu; }
  /// Intra-class offsets delta (K, M-1, D); centre k >= 1 of class y is sg(mu_y) + delta[y][k-1].
  Var<Scalar>& delta() { return m_delta; }
  const Var<Scalar>& delta() const { return m_delta; }
  /// Intra-class weight logits phi_intra (K, M); w_y = softmax(phi_intra[y]).
  Var<Scalar>& phi_intra() { return m_phi_intra; }
  const Var<Scalar>& phi_intra() const { return m_phi_intra; }
  /// Inter-class weight logits phi_inter (K,); pi = softmax(phi_inter).
  Var<Scalar>& phi_inter() { return m_phi_inter; }
  const Var<Scalar>& phi_inter() const { return m_phi_inter; }

  /// Whether the classes carry their own covariance (docs/algorithm.md §3.1.2; not in the paper):
  /// fixed factors A (K, D, D), A_y lower triangular with a positive diagonal, so that every
  /// component of class y is N(m, Σ_y) with Σ_y⁻¹ = A_yᵀ A_y. Without them (the paper's prior)
  /// every component has the unit covariance.
  bool has_class_factors() const { return m_class_factors.numel() > 0; }
  /// The class factors A (K, D, D); empty for unit covariances. Not learnable: no Var.
  const Tensor<Scalar>& class_factors() const { return m_class_factors; }
  /// log|det A_y| = Σ_j ln A_y,jj (0 for unit covariances).
  Scalar class_log_det(Index y) const {
    return has_class_factors() ? m_class_log_det[static_cast<std::size_t>(y)] : Scalar(0);
  }
  /// Whether the class level of the prior (the components N(mu_y, Σ_y) of L_g, L_mi and L_e, the
  /// class posterior and its entropy) carries the factors too; false when only the intra-class
  /// components (L_g_intra, L_z and the likelihood score) do, and the class level keeps the
  /// paper's unit covariance (docs/algorithm.md §3.1.2). False without factors.
  bool class_level_factors() const { return has_class_factors() && m_class_level_factors; }
  /// The factors of the class level: class_factors() when class_level_factors(), else empty.
  const Tensor<Scalar>& inter_factors() const {
    return class_level_factors() ? m_class_factors : m_no_factors;
  }
  /// Gives the classes the factors A (K, D, D) (for example A_y = L_y⁻¹, L_y the Cholesky factor
  /// of class y's covariance); an empty tensor returns to unit covariances. With `class_level`
  /// false only the intra-class components take them (class_level_factors()).
  ///   requires: A (K, D, D) on the CPU, lower triangular, a positive diagonal, every value finite.
  ///   throws: hgad::Error naming the class and the entry.
  void set_class_factors(Tensor<Scalar> factors, bool class_level = true) {
    if (factors.numel() == 0) {
      m_class_log_det.clear();
      m_class_factors = Tensor<Scalar>();
      m_class_level_factors = class_level;
      return;
    }
    const Index K = n_classes(), D = dim();
    check(factors.shape() == Shape({K, D, D}),
          "GaussianMixturePrior: the class factors must be (K, D, D) = (", K, ", ", D, ", ", D,
          "), got ", factors.shape());
    factors = factors.cpu();
    std::vector<Scalar> log_dets;  // set with the factors once every class has passed
    for (Index y = 0; y < K; ++y) {
      double log_det = 0;
      for (Index j = 0; j < D; ++j) {
        for (Index k = 0; k < D; ++k) {
          const double a = double(factors(y, j, k));
          check(std::isfinite(a), "GaussianMixturePrior: the factor of class ", y, " holds ", a,
                " at (", j, ", ", k, ")");
          check(k <= j || a == 0, "GaussianMixturePrior: the factor of class ", y,
                " must be lower triangular, but (", j, ", ", k, ") holds ", a);
        }
        check(factors(y, j, j) > 0, "GaussianMixturePrior: the diagonal of the factor of class ", y,
              " must be positive, (", j, ", ", j, ") holds ", double(factors(y, j, j)));
        log_det += std::log(double(factors(y, j, j)));
      }
      log_dets.push_back(Scalar(log_det));
    }
    m_class_log_det = std::move(log_dets);
    m_class_factors = std::move(factors);
    m_class_level_factors = class_level;
  }

  /// The learnable leaves, in the order of parameter_names().
  std::vector<Var<Scalar>> parameters() const { return {m_mu, m_delta, m_phi_intra, m_phi_inter}; }
  /// "mu", "delta", "phi_intra", "phi_inter" (the names of the golden files).
  static std::vector<std::string> parameter_names() { return {"mu", "delta", "phi_intra", "phi_inter"}; }

  /// Drops every gradient (has_grad() becomes false).
  void zero_grad() {
    for (auto& p : parameters()) p.zero_grad();
  }

  /// log pi = log_softmax(phi_inter), (K,), the current values (no graph); CPU only.
  Tensor<Scalar> log_pi_values() const {
    require_cpu("log_pi_values");
    Tensor<Scalar> out({n_classes()});
    log_softmax_row(m_phi_inter.value().data(), out.data(), n_classes());
    return out;
  }
  /// log w_y = log_softmax(phi_intra[y]) for every class, (K, M), the current values; CPU only.
  Tensor<Scalar> log_w_values() const {
    require_cpu("log_w_values");
    const Index K = n_classes(), M = n_centers();
    Tensor<Scalar> out({K, M});
    for (Index y = 0; y < K; ++y) log_softmax_row(m_phi_intra.value().data() + y * M, out.data() + y * M, M);
    return out;
  }
  /// The intra-class centres (K, M, D): m_{y,0} = mu_y and m_{y,k} = mu_y + delta_{y,k-1}
  /// (docs/algorithm.md §3.1), the current values; CPU only.
  Tensor<Scalar> intra_center_values() const {
    const Index K = n_classes(), M = n_centers(), D = dim();
    const Tensor<Scalar>& mu = m_mu.value();
    const Tensor<Scalar>& delta = m_delta.value();
    require_cpu("intra_center_values");
    Tensor<Scalar> out({K, M, D});
    for (Index y = 0; y < K; ++y) {
      const Scalar* mu_y = mu.data() + y * D;
      for (Index k = 0; k < M; ++k) {
        Scalar* m = out.data() + (y * M + k) * D;
        if (k == 0) {
          for (Index j = 0; j < D; ++j) m[j] = mu_y[j];
        } else {
          const Scalar* delta_yk = delta.data() + (y * (M - 1) + k - 1) * D;
          for (Index j = 0; j < D; ++j) m[j] = mu_y[j] + delta_yk[j];
        }
      }
    }
    return out;
  }

 private:
  void require_cpu(const char* where) const {
    for (const auto& p : parameters()) {
      check(p.value().device() == Device::cpu, "GaussianMixturePrior::", where,
            ": the parameters live on ", to_string(p.value().device()), ", not the CPU");
    }
  }

  /// out = x - LSE(x) over n contiguous values.
  static void log_softmax_row(const Scalar* x, Scalar* out, Index n) {
    const Scalar lse = detail::logsumexp(x, static_cast<long>(n));
    for (Index j = 0; j < n; ++j) out[j] = x[j] - lse;
  }

  static Index check_centers(Index n_centers) {
    check(n_centers >= 1, "GaussianMixturePrior: n_centers (M) must be >= 1, got ", n_centers);
    return n_centers;
  }

  Var<Scalar> m_mu;         // (K, D)
  Var<Scalar> m_delta;      // (K, M-1, D)
  Var<Scalar> m_phi_intra;  // (K, M)
  Var<Scalar> m_phi_inter;  // (K,)
  Tensor<Scalar> m_class_factors;      // (K, D, D) or empty: unit covariances
  bool m_class_level_factors = true;   // whether the class level reads m_class_factors
  Tensor<Scalar> m_no_factors;         // empty: inter_factors() of a unit class level
  std::vector<Scalar> m_class_log_det;  // log|det A_y| (K,) when m_class_factors is set
};

namespace detail {

inline void check_labels(const std::vector<std::int64_t>& labels, Index n_rows, Index n_classes,
                         const char* where) {
  check(static_cast<Index>(labels.size()) == n_rows, where, ": ", labels.size(), " labels for ", n_rows,
        " rows");
  for (std::size_t n = 0; n < labels.size(); ++n) {
    check(labels[n] >= 0 && labels[n] < n_classes, where, ": label ", labels[n], " of row ", n,
          " is outside [0, ", n_classes, ")");
  }
}

}  // namespace detail

namespace detail {

/// The factor A_y (D, D) of class y of the class factors A (K, D, D), as a constant of a graph.
template <class Scalar>
Var<Scalar> class_factor(const Tensor<Scalar>& factors, Index y) {
  const Index D = factors.dim(1);
  return Var<Scalar>(factors.slice(y, y + 1).reshape(Shape{D, D}));
}

/// 2 log|det A_y| = 2 Σ_j ln A_y,jj, formed from the diagonal.
template <class Scalar>
Scalar twice_class_log_det(const Tensor<Scalar>& factors, Index y) {
  double log_det = 0;
  for (Index j = 0; j < factors.dim(1); ++j) log_det += std::log(double(factors(y, j, j)));
  return Scalar(2 * log_det);
}

/// |A (z_n - c_n)|^2 - 2 log|det A| for the rows of diff = z - c (N, D) and one factor: the
/// squared distance of a component with the covariance (Aᵀ A)⁻¹ (docs/algorithm.md §3.1.2).
template <class Scalar>
Var<Scalar> factor_sqdist(const Var<Scalar>& diff, const Tensor<Scalar>& factors, Index y) {
  const Var<Scalar> u = matmul(diff, class_factor(factors, y), Transpose::no, Transpose::yes);
  return add(sum_rows(square(u)), -twice_class_log_det(factors, y));
}

template <class Scalar>
void check_class_factors(const Tensor<Scalar>& factors, Index n_classes, Index dim, const char* where) {
  check(factors.numel() == 0 || factors.shape() == Shape({n_classes, dim, dim}), where,
        ": the class factors must be empty or (K, D, D) = (", n_classes, ", ", dim, ", ", dim,
        "), got ", factors.shape());
}

}  // namespace detail

/// Squared distances to the class centres, d_{n,y} = |z_n - mu_y|^2 (docs/algorithm.md §3.2), computed
/// by direct differences (not |z|^2 - 2 z.mu + |mu|^2, which cancels badly when z is near mu_y).
/// With class factors A (K, D, D) (docs/algorithm.md §3.1.2): d_{n,y} = |A_y (z_n - mu_y)|^2 -
/// 2 log|det A_y|, so that -d / 2 is the log-density of N(mu_y, (A_yᵀ A_y)⁻¹) up to D c0.
///   requires: z (N, D), mu (K, D), class_factors empty or (K, D, D).   ensures: (N, K).
template <class Scalar>
Var<Scalar> inter_class_sqdist(const Var<Scalar>& z, const Var<Scalar>& mu,
                               const Tensor<Scalar>& class_factors = Tensor<Scalar>()) {
  check(z.value().rank() == 2 && mu.value().rank() == 2 && z.cols() == mu.cols(),
        "inter_class_sqdist: z must be (N, D) and mu (K, D), got ", z.shape(), " and ",
        mu.shape());
  detail::check_class_factors(class_factors, mu.rows(), mu.cols(), "inter_class_sqdist");
  std::vector<Var<Scalar>> columns;
  columns.reserve(static_cast<std::size_t>(mu.rows()));
  for (Index y = 0; y < mu.rows(); ++y) {
    const Var<Scalar> diff = sub(z, gather_rows(mu, std::vector<std::int64_t>{y}));  // (N, D)
    const Var<Scalar> d = class_factors.numel() == 0
                              ? sum_rows(square(diff))
                              : detail::factor_sqdist(diff, class_factors, y);
    columns.push_back(reshape(d, Shape{z.rows(), 1}));
  }
  return concat_cols(columns);
}

/// Squared distances to the intra-class centres of each row's class (docs/algorithm.md §3.1, §3.2):
/// e_{n,0} = |z_n - sg(mu_{c_n})|^2 and e_{n,k} = |z_n - (sg(mu_{c_n}) + delta_{c_n,k})|^2;
/// with class factors, |A_{c_n} (z_n - m)|^2 - 2 log|det A_{c_n}| as in inter_class_sqdist.
/// mu is detached, so it gets no gradient from here.
///   requires: z (N, D), mu (K, D), delta (K, M-1, D), classes[n] in [0, K), class_factors empty
///             or (K, D, D).   ensures: (N, M).
template <class Scalar>
Var<Scalar> intra_class_sqdist(const Var<Scalar>& z, const Var<Scalar>& mu, const Var<Scalar>& delta,
                               const std::vector<std::int64_t>& classes,
                               const Tensor<Scalar>& class_factors = Tensor<Scalar>()) {
  check(z.value().rank() == 2 && mu.value().rank() == 2 && delta.value().rank() == 3 &&
            z.cols() == mu.cols() && delta.value().dim(0) == mu.rows() && delta.value().dim(2) == mu.cols(),
        "intra_class_sqdist: need z (N, D), mu (K, D), delta (K, M-1, D), got ", z.shape(), ", ",
        mu.shape(), ", ", delta.shape());
  detail::check_labels(classes, z.rows(), mu.rows(), "intra_class_sqdist");
  detail::check_class_factors(class_factors, mu.rows(), mu.cols(), "intra_class_sqdist");
  const Index D = z.cols(), K = mu.rows(), n_deltas = delta.value().dim(1);
  // Each row's distance under its own class's factor: every row under every factor, then the
  // row's own picked by a 0/1 mask (a reference, not a fast path).
  auto sqdist = [&](const Var<Scalar>& diff) {
    if (class_factors.numel() == 0) return sum_rows(square(diff));
    Var<Scalar> picked;
    for (Index y = 0; y < K; ++y) {
      Tensor<Scalar> mask({z.rows()});
      for (Index n = 0; n < z.rows(); ++n)
        mask(n) = classes[static_cast<std::size_t>(n)] == y ? Scalar(1) : Scalar(0);
      const Var<Scalar> part = mul(detail::factor_sqdist(diff, class_factors, y), Var<Scalar>(mask));
      picked = y == 0 ? part : add(picked, part);
    }
    return picked;
  };
  const Var<Scalar> center0 = gather_rows(detach(mu), classes);  // (N, D) sg(mu_{c_n})
  std::vector<Var<Scalar>> columns;
  columns.push_back(reshape(sqdist(sub(z, center0)), Shape{z.rows(), 1}));
  if (n_deltas > 0) {
    const Var<Scalar> delta_rows =
        gather_rows(reshape(delta, Shape{mu.rows(), n_deltas * D}), classes);  // (N, (M-1) D)
    for (Index k = 0; k < n_deltas; ++k) {
      const Var<Scalar> center = add(center0, slice_cols(delta_rows, k * D, (k + 1) * D));  // (N, D)
      columns.push_back(reshape(sqdist(sub(z, center)), Shape{z.rows(), 1}));
    }
  }
  return concat_cols(columns);
}

/// log pi = log_softmax(phi_inter), as a (1, K) row that broadcasts over the rows of an (N, K) matrix.
template <class Scalar>
Var<Scalar> log_class_weights(const Var<Scalar>& phi_inter) {
  check(phi_inter.value().rank() == 1, "log_class_weights: phi_inter must be (K,), got ",
        phi_inter.shape());
  return log_softmax_rows(reshape(phi_inter, Shape{1, phi_inter.value().dim(0)}));
}

/// log w_{c_n,k} = log_softmax_k(phi_intra[c_n]) for each row's class.   ensures: (N, M).
template <class Scalar>
Var<Scalar> log_intra_weights(const Var<Scalar>& phi_intra, const std::vector<std::int64_t>& classes) {
  check(phi_intra.value().rank() == 2, "log_intra_weights: phi_intra must be (K, M), got ",
        phi_intra.shape());
  detail::check_labels(classes, static_cast<Index>(classes.size()), phi_intra.rows(), "log_intra_weights");
  return gather_rows(log_softmax_rows(phi_intra), classes);
}

}  // namespace hgad
