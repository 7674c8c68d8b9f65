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

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../autograd/var.hpp"
#include "../backend.hpp"
#include "../detail/check.hpp"
#include "../loss/loss_terms.hpp"
#include "../tensor.hpp"
#include "communicator.hpp"

namespace hgad {

/// What the CPU level's training step (model/train_step.hpp) calls between its gradients and its
/// optimiser step: `with_grad` holds the level's parameters that have a gradient this step, in a
/// fixed order (the flow's, then the prior's), and `terms` the step's loss terms; the hook may
/// change both gradients and terms. The NaN check of the gradients runs after the hook, on what
/// the optimiser will use.
template <class Scalar>
using GradientHook =
    std::function<void(std::vector<Var<Scalar>>& with_grad, LossTerms<Scalar>& terms)>;

/// The same seam for a level that keeps every gradient in one flat buffer of n values in its
/// device's memory (LevelEngine, cuda/level_engine.hpp): grads, then the loss terms.
template <class Scalar>
using FlatGradientHook = std::function<void(Scalar* grads, Index n, LossTerms<Scalar>& terms)>;

namespace detail {

/// The loss values a data-parallel step sums over the ranks, in the order they travel.
template <class Scalar>
std::array<Scalar*, 6> summed_terms(LossTerms<Scalar>& terms) {
  return {&terms.l_g, &terms.l_mi, &terms.l_e, &terms.l_g_intra, &terms.l_z, &terms.total};
}

inline void check_share(double weight) {
  check(weight > 0 && weight <= 1,
        "data-parallel training: the rank's share of the batch must be in (0, 1], got ", weight);
}

}  // namespace detail

/// The GradientHook of one rank: its gradients and loss terms times `weight` (its share n_r / B of
/// the batch's rows), summed over the ranks in rank order, replace its own. One all-reduce per
/// level and step carries every gradient and the six loss values together.
///   requires: 0 < weight <= 1; every rank's step gives gradients to the same parameters (the
///             stage decides which) and passes the same buffer length.
template <class Scalar>
GradientHook<Scalar> all_reduce_gradient_hook(Communicator& comm, double weight) {
  detail::check_share(weight);
  auto buffer = std::make_shared<std::vector<Scalar>>();
  return [&comm, weight, buffer](std::vector<Var<Scalar>>& with_grad, LossTerms<Scalar>& terms) {
    const Scalar w = Scalar(weight);
    const auto values = detail::summed_terms(terms);
    std::size_t n = values.size();
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

/// The FlatGradientHook of one rank of a level whose gradients live in `backend`'s memory: the
/// same weighted rank-order sums as all_reduce_gradient_hook. Where the communicator reaches that
/// memory (all_reduce_sum_on: NCCL on a GPU) the gradients are weighted and summed there and only
/// the six loss values go through the host; otherwise the gradients are copied to the host,
/// weighted, summed with the loss values in one all-reduce and copied back. Either way the sums
/// have the bits of all_reduce_sum's.
///   requires: 0 < weight <= 1; backend outlives the hook; every rank passes the same n.
template <class Scalar>
FlatGradientHook<Scalar> all_reduce_flat_gradient_hook(Communicator& comm, double weight,
                                                       Backend<Scalar>& backend) {
  detail::check_share(weight);
  auto buffer = std::make_shared<std::vector<Scalar>>();
  return [&comm, &backend, weight, buffer](Scalar* grads, Index n, LossTerms<Scalar>& terms) {
    const Scalar w = Scalar(weight);
    const auto values = detail::summed_terms(terms);
    std::vector<Scalar>& b = *buffer;
    backend.unary(UnaryOp::scale, n, grads, grads, w);
    // Summed where they live, the gradients leave only the loss values to the host's all-reduce;
    // otherwise they travel with them, ahead of them in one buffer.
    const bool in_place = comm.all_reduce_sum_on(backend.device(), grads, n);
    const std::size_t at = in_place ? 0 : static_cast<std::size_t>(n);
    b.resize(at + values.size());
    if (!in_place) backend.copy_to_host(grads, b.data(), n);
    for (std::size_t i = 0; i < values.size(); ++i) b[at + i] = w * *values[i];
    comm.all_reduce_sum(b.data(), static_cast<Index>(b.size()));
    if (!in_place) backend.copy_from_host(b.data(), grads, n);
    for (std::size_t i = 0; i < values.size(); ++i) *values[i] = b[at + i];
  };
}

/// Copies rank root's value of every parameter into every rank's (the data-parallel ranks start
/// from one model, whatever each built or loaded).
template <class Scalar>
void broadcast_parameters(Communicator& comm, std::vector<Var<Scalar>> parameters, int root = 0) {
  for (Var<Scalar>& p : parameters) {  // handles: a copy shares the parameter's value
    Tensor<Scalar>& value = p.value();
    check(value.device() == Device::cpu, "broadcast_parameters: a parameter of shape ",
          value.shape(), " is not on the CPU");
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
