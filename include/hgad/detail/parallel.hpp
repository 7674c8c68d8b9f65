#pragma once
/// \file
/// OpenMP loops that degrade to plain loops when OpenMP is off, and thread-count control.

#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace hgad {

/// Number of threads the parallel loops use (1 without OpenMP).
inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// Sets the number of threads of hgad's parallel loops (and Eigen's, which uses OpenMP too).
inline void set_num_threads(int n_threads) {
#ifdef _OPENMP
  omp_set_num_threads(n_threads < 1 ? 1 : n_threads);
#else
  (void)n_threads;
#endif
}

namespace detail {

/// Work below this many scalar operations runs on one thread: a parallel region costs a few
/// microseconds, which small tensors cannot repay.
inline constexpr std::int64_t parallel_grain = 32768;

/// Calls body(i) for i in [0, n), split statically over the threads when `work` (the total number
/// of scalar operations) is large enough.
template <class Body>
void parallel_for(std::int64_t n, std::int64_t work, Body&& body) {
#ifdef _OPENMP
  if (work >= parallel_grain && n > 1 && omp_get_max_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) body(i);
    return;
  }
#else
  (void)work;
#endif
  for (std::int64_t i = 0; i < n; ++i) body(i);
}

}  // namespace detail
}  // namespace hgad
