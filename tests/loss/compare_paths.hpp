#pragma once
// The fused objective against the autograd reference in every gradient, and against itself on one
// thread and on several: the checks shared by the unit- and class-covariance loss tests.

#include <catch2/catch.hpp>

#include <hgad/autograd/var.hpp>
#include <hgad/loss/fused_loss.hpp>
#include <hgad/prior/gaussian_mixture_prior.hpp>

#include <hgad/detail/parallel.hpp>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "golden.hpp"

namespace hgad_test {

/// `got` and `fused` come from hgad_loss_fused; `z`, `ldj` and `reference` hold the gradients of the
/// autograd objective's backward() on the same inputs. In stage 1 the fused path leaves delta and
/// phi_intra without a gradient.
template <class Scalar>
void check_fused_gradients(const hgad::FusedLoss<Scalar>& got, const hgad::Var<Scalar>& z,
                           const hgad::Var<Scalar>& ldj, const hgad::GaussianMixturePrior<Scalar>& fused,
                           const hgad::GaussianMixturePrior<Scalar>& reference, int stage, double tol) {
  CHECK(hgad::test::max_rel_error(got.grad_z, z.grad()) < tol);
  CHECK(hgad::test::max_rel_error(got.grad_log_jac_det, ldj.grad()) < tol);
  CHECK(hgad::test::max_rel_error(fused.mu().grad(), reference.mu().grad()) < tol);
  CHECK(hgad::test::max_rel_error(fused.phi_inter().grad(), reference.phi_inter().grad()) < tol);
  if (stage == 2) {
    CHECK(hgad::test::max_rel_error(fused.delta().grad(), reference.delta().grad()) < tol);
    CHECK(hgad::test::max_rel_error(fused.phi_intra().grad(), reference.phi_intra().grad()) < tol);
  } else {
    CHECK_FALSE(fused.delta().has_grad());
    CHECK_FALSE(fused.phi_intra().has_grad());
  }
}

/// The stage-2 fused objective of two equal priors `a` and `b` on one thread and on at least two:
/// the same bits in the total and in every gradient.
inline void check_thread_independent(hgad::GaussianMixturePrior<float>& a,
                                     hgad::GaussianMixturePrior<float>& b,
                                     const hgad::Tensor<float>& z, const hgad::Tensor<float>& ldj,
                                     const std::vector<std::int64_t>& labels) {
  const int threads = hgad::max_threads();
  hgad::set_num_threads(1);
  const auto one = hgad::hgad_loss_fused(a, z, ldj, labels, 2);
  hgad::set_num_threads(std::max(2, threads));
  const auto many = hgad::hgad_loss_fused(b, z, ldj, labels, 2);
  hgad::set_num_threads(threads);
  CHECK(one.terms.total == many.terms.total);
  CHECK(one.grad_z.to_vector() == many.grad_z.to_vector());
  CHECK(a.mu().grad().to_vector() == b.mu().grad().to_vector());
  CHECK(a.delta().grad().to_vector() == b.delta().grad().to_vector());
  CHECK(a.phi_intra().grad().to_vector() == b.phi_intra().grad().to_vector());
}

}  // namespace hgad_test
