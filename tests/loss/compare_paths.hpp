#pragma once
// The fused objective against the autograd reference in every gradient: the checks shared by the
// unit- and class-covariance loss tests.

#include <catch2/catch.hpp>

#include <hgad/autograd/var.hpp>
#include <hgad/loss/fused_loss.hpp>
#include <hgad/prior/gaussian_mixture_prior.hpp>

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

}  // namespace hgad_test
