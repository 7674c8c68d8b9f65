#pragma once
/// \file
/// OpenMP loops that degrade to plain loops when OpenMP is off, and thread-count control.

#include <cstdint>
#include <exception>
#include <utility>
#include <vector>

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

/// Calls body() with OpenMP held to the calling thread, and so Eigen's products in it, which would
/// otherwise share a large product over the threads when called outside a parallel region, with
/// blocking sizes (and so an order of summation) that depend on their number. Inside a parallel
/// region Eigen stays on its thread already, and body() runs as it is.
template <class Body>
void on_one_thread(Body&& body) {
#ifdef _OPENMP
  const int threads = omp_get_max_threads();
  if (threads > 1 && !omp_in_parallel()) {
    struct Restore {  // the calling thread's count, also when body() throws
      int threads;
      ~Restore() { omp_set_num_threads(threads); }
    } restore{threads};
    omp_set_num_threads(1);
    body();
    return;
  }
#endif
  body();
}

/// Calls body(i) for i in [0, n), whole items shared dynamically over the threads: each item runs
/// on one thread, its own parallel loops and Eigen's products serially (parallel_for and Eigen
/// stay on one thread inside a parallel region). For many small items, such as the images of a
/// set to score, this splits the work better than parallel loops inside each item. done(i) is
/// called once per item after body(i), one call at a time and in the order i = 0, 1, ..., as soon
/// as items 0..i have all finished (a progress bar can follow it). Should body(i) or done(i)
/// throw, the items after i that have not begun are skipped, those before it still run, and the
/// exception of the lowest such i is rethrown after the loop: the one the sequential loop throws.
template <class Body, class Done>
void parallel_items(std::int64_t n, Body&& body, Done&& done) {
#ifdef _OPENMP
  if (n > 1 && omp_get_max_threads() > 1 && !omp_in_parallel()) {
    std::vector<char> finished(static_cast<std::size_t>(n), 0);
    std::int64_t reported = 0;  // items 0..reported-1 have been passed to done
    std::int64_t failed_item = n;
    std::exception_ptr failure;
#pragma omp parallel for schedule(dynamic, 1)
    for (std::int64_t i = 0; i < n; ++i) {
      bool skip;
#pragma omp critical(hgad_parallel_items)
      skip = i > failed_item;
      if (skip) continue;
      try {
        body(i);
#pragma omp critical(hgad_parallel_items)
        {
          finished[static_cast<std::size_t>(i)] = 1;
          while (reported < failed_item && finished[static_cast<std::size_t>(reported)]) {
            const std::int64_t next = reported++;
            try {
              done(next);
            } catch (...) {
              failed_item = next;
              failure = std::current_exception();
            }
          }
        }
      } catch (...) {
#pragma omp critical(hgad_parallel_items)
        if (i < failed_item) {
          failed_item = i;
          failure = std::current_exception();
        }
      }
    }
    if (failure) std::rethrow_exception(failure);
    return;
  }
#endif
  for (std::int64_t i = 0; i < n; ++i) {
    body(i);
    done(i);
  }
}

/// parallel_items with nothing to call after each item.
template <class Body>
void parallel_items(std::int64_t n, Body&& body) {
  parallel_items(n, std::forward<Body>(body), [](std::int64_t) {});
}

}  // namespace detail
}  // namespace hgad
