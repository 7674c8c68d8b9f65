#pragma once
/// \file
/// HGAD's learning-rate schedule (docs/algorithm.md §4, from CFlow-AD): cosine decay set once per
/// meta-epoch, and a linear warm-up per iteration during the first meta-epochs.
///
///     hgad::LrSchedule schedule;                        // lr 2e-4, 25 meta-epochs, 2 warm-up
///     adam.set_lr(schedule.lr_at(meta_epoch, iteration_in_meta_epoch, iterations_per_meta_epoch));

#include <cmath>
#include <cstdint>

#include "../detail/check.hpp"

namespace hgad {

/// The schedule's settings; the defaults are HGAD's (`lr`, `meta_epochs`, `lr_warm_epochs`,
/// `lr_decay_rate`, `lr_cosine`, `lr_warm`, docs/algorithm.md §4).
struct LrSchedule {
  double lr = 2e-4;           ///< base learning rate
  int meta_epochs = 25;       ///< length of the cosine period in meta-epochs
  int warm_up_meta_epochs = 2;  ///< meta-epochs of linear warm-up
  double decay_rate = 0.1;    ///< eta_min = lr decay_rate^3
  bool warm_up = true;        ///< linear warm-up on (`lr_warm`)

  /// eta_min = lr decay_rate^3 (CFlow's cosine floor).
  double eta_min() const { return lr * decay_rate * decay_rate * decay_rate; }

  /// The cosine value of a meta-epoch e: eta_min + (lr - eta_min) (1 + cos(pi e / meta_epochs)) / 2.
  /// With the defaults: e = 0: 2e-4, e = 2: 1.96861e-4, e = 12: 1.06373e-4, e = 24: 9.877e-7.
  double cosine_lr(int meta_epoch) const {
    check(meta_epoch >= 0, "LrSchedule::cosine_lr: meta_epoch must be >= 0, got ", meta_epoch);
    check(meta_epochs >= 1, "LrSchedule::cosine_lr: meta_epochs must be >= 1, got ", meta_epochs);
    const double pi = 3.14159265358979323846;
    return eta_min() + (lr - eta_min()) * (1.0 + std::cos(pi * meta_epoch / meta_epochs)) / 2.0;
  }

  /// The learning rate of iteration `iteration` (0-based, counted over the whole meta-epoch, i.e.
  /// over all its sub-epochs) of meta-epoch e, with `iterations_per_meta_epoch` iterations per
  /// meta-epoch. During warm-up (e < warm_up_meta_epochs):
  ///   p = (iteration + e T) / (warm_up_meta_epochs T),   lr_t = lr/10 + p (cosine_lr(warm_up_meta_epochs) - lr/10),
  /// so it rises linearly from lr/10 to the cosine value at the end of warm-up (1.9686146e-4);
  /// afterwards it is cosine_lr(e).
  double lr_at(int meta_epoch, std::int64_t iteration = 0, std::int64_t iterations_per_meta_epoch = 1) const {
    check(meta_epoch >= 0 && iteration >= 0 && iterations_per_meta_epoch >= 1, "LrSchedule::lr_at: need "
          "meta_epoch >= 0, iteration >= 0 and iterations_per_meta_epoch >= 1, got ", meta_epoch, ", ", iteration,
          " and ", iterations_per_meta_epoch);
    if (warm_up && meta_epoch < warm_up_meta_epochs) {
      const double target = cosine_lr(warm_up_meta_epochs);
      const double start = lr / 10.0;  // CFlow's warm-up start, lr / 10
      const double T = double(iterations_per_meta_epoch);
      const double p = (double(iteration) + double(meta_epoch) * T) / (double(warm_up_meta_epochs) * T);
      return start + p * (target - start);
    }
    return cosine_lr(meta_epoch);
  }
};

}  // namespace hgad
