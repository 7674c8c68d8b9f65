#pragma once
/// \file
/// Data-parallel training over a Communicator (parallel/communicator.hpp): what ModelTraining::fit
/// (model/training.hpp) does with FitOptions::communicator.
///
/// Every loss term is a mean over the rows of the batch (docs/algorithm.md §3.3), so the gradient
/// of a batch of B images split into parts of n_r images is Σ_r (n_r / B) · (the gradient of part
/// r). Each rank computes its part's gradients and loss terms, weights them by n_r / B, and the
/// ranks add them in rank order (Communicator::all_reduce_sum): every rank then holds the same
/// gradients, the batch's up to the order of the float additions, and takes the same Adam step.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "../autograd/var.hpp"
#include "../detail/check.hpp"
#include "../level_device.hpp"
#include "../loss/loss_terms.hpp"
#include "../tensor.hpp"
#include "communicator.hpp"

namespace hgad {

/// The GradientHook (level_device.hpp) of one rank: its gradients and loss terms times `weight`
/// (its share n_r / B of the batch's rows), summed over the ranks in rank order, replace its own.
/// One all-reduce per level and step carries every gradient and the six loss values together.
///   requires: 0 < weight <= 1; every rank's step gives gradients to the same parameters (the
///             stage decides which) and passes the same buffer length.
template <class Scalar>
GradientHook<Scalar> all_reduce_gradient_hook(Communicator& comm, double weight) {
  check(weight > 0 && weight <= 1,
        "all_reduce_gradient_hook: the rank's share of the batch must be in (0, 1], got ", weight);
  auto buffer = std::make_shared<std::vector<Scalar>>();
  return [&comm, weight, buffer](std::vector<Var<Scalar>>& with_grad, LossTerms<Scalar>& terms) {
    const Scalar w = Scalar(weight);
    Scalar* const values[] = {&terms.l_g,       &terms.l_mi, &terms.l_e,
                              &terms.l_g_intra, &terms.l_z,  &terms.total};
    std::size_t n = std::size(values);
    for (const Var<Scalar>& p : with_grad) n += static_cast<std::size_t>(p.grad().numel());
    std::vector<Scalar>& b = *buffer;
    b.resize(n);
    std::size_t at = 0;
    for (const Var<Scalar>& p : with_grad) {
      const Tensor<Scalar>& g = p.grad();
      for (Index i = 0; i < g.numel(); ++i) b[at++] = w * g.data()[i];
    }
    for (const Scalar* v : values) b[at++] = w * *v;
    comm.all_reduce_sum(b.data(), static_cast<Index>(n));
    at = 0;
    for (Var<Scalar>& p : with_grad) {
      Tensor<Scalar>& g = p.grad();
      for (Index i = 0; i < g.numel(); ++i) g.data()[i] = b[at++];
    }
    for (Scalar* v : values) *v = b[at++];
  };
}

/// Copies rank root's value of every parameter into every rank's (the data-parallel ranks start
/// from one model, whatever each built or loaded).
template <class Scalar>
void broadcast_parameters(Communicator& comm, std::vector<Var<Scalar>> parameters, int root = 0) {
  for (Var<Scalar>& p : parameters) {  // handles: a copy shares the parameter's value
    Tensor<Scalar>& value = p.value();
    check(value.device() == Device::cpu, "broadcast_parameters: a parameter of shape ",
          value.shape().to_string(), " is not on the CPU");
    comm.broadcast(value.data(), value.numel(), root);
  }
}

/// Throws hgad::Error on every rank, naming `what` and each rank's value, unless all ranks passed
/// the same value (bit for bit).
template <class T>
void require_same_on_every_rank(Communicator& comm, const T& value, const char* what) {
  const std::vector<T> all = comm.all_gather(value);
  bool same = true;
  for (const T& v : all) same = same && std::memcmp(&v, &all[0], sizeof(T)) == 0;
  if (same) return;
  std::string values;
  for (std::size_t r = 0; r < all.size(); ++r)
    values += detail::concat(r ? ", " : "", "rank ", r, ": ", all[r]);
  throw Error(
      detail::concat("data-parallel training: the ranks disagree on ", what, " (", values,
                     "); every rank must run the same configuration on the same training data"));
}

}  // namespace hgad
