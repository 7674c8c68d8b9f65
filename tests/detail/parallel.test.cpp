#include <catch2/catch.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "hgad/detail/parallel.hpp"

#include "detail/thread_count.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace parallel_test {

using hgad_test::ThreadCount;

TEST_CASE("parallel_items runs every item once and reports them in order", "[detail]") {
  for (const int threads : {1, 2, 4}) {
    ThreadCount count(threads);
    const std::int64_t n = 57;
    std::vector<int> runs(static_cast<std::size_t>(n), 0);
    std::vector<std::int64_t> reported;
    bool reported_before_done = false;
    hgad::detail::parallel_items(
        n, [&](std::int64_t i) { ++runs[static_cast<std::size_t>(i)]; },
        [&](std::int64_t i) {
          reported_before_done = reported_before_done || runs[static_cast<std::size_t>(i)] != 1;
          reported.push_back(i);
        });
    CAPTURE(threads);
    for (int r : runs) CHECK(r == 1);
    REQUIRE(reported.size() == static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) CHECK(reported[static_cast<std::size_t>(i)] == i);
    CHECK_FALSE(reported_before_done);
  }
}

TEST_CASE("parallel_items runs each item on one thread, nested loops serially", "[detail]") {
  ThreadCount count(2);
  const std::int64_t n = 8;
  std::vector<int> nested_in_team(static_cast<std::size_t>(n), -1);
  std::vector<int> team(static_cast<std::size_t>(n), 1);
  hgad::detail::parallel_items(
      n,
      [&](std::int64_t i) {
#ifdef _OPENMP
        team[static_cast<std::size_t>(i)] = omp_get_num_threads();
#endif
        // A parallel_for inside an item opens no region of its own: it stays on the item's thread.
        int inner_team = 0;
        hgad::detail::parallel_for(1000, 1 << 30, [&](std::int64_t) {
#ifdef _OPENMP
          if (omp_get_level() > 1) inner_team = 1;
#endif
        });
        nested_in_team[static_cast<std::size_t>(i)] = inner_team;
      },
      [](std::int64_t) {});
  for (int v : nested_in_team) CHECK(v == 0);
#ifdef _OPENMP
  for (int v : team) CHECK(v == 2);  // the items shared over the two threads
#endif
  // Inside a parallel region parallel_items is the plain loop: it opens no region of its own.
  std::vector<std::int64_t> order;
  std::vector<int> levels;
#ifdef _OPENMP
#pragma omp parallel num_threads(2)
  {
#pragma omp single
    {
      hgad::detail::parallel_items(5, [&](std::int64_t i) {
        order.push_back(i);
        levels.push_back(omp_get_level());
      });
    }
  }
  CHECK(levels == std::vector<int>(5, 1));
#else
  hgad::detail::parallel_items(5, [&](std::int64_t i) { order.push_back(i); });
#endif
  CHECK(order == std::vector<std::int64_t>{0, 1, 2, 3, 4});
}

TEST_CASE("parallel_items rethrows the exception the sequential loop throws", "[detail]") {
  for (const int threads : {1, 2, 4}) {
    ThreadCount count(threads);
    CAPTURE(threads);
    // Items 11 and 30 throw; the loop reports the first, every item before it has run and been
    // reported, and done is not called for an item at or after it.
    const std::int64_t n = 40;
    std::vector<int> runs(static_cast<std::size_t>(n), 0);
    std::vector<std::int64_t> reported;
    std::string message;
    try {
      hgad::detail::parallel_items(
          n,
          [&](std::int64_t i) {
            ++runs[static_cast<std::size_t>(i)];
            if (i == 11 || i == 30) throw std::runtime_error("item " + std::to_string(i));
          },
          [&](std::int64_t i) { reported.push_back(i); });
    } catch (const std::runtime_error& e) {
      message = e.what();
    }
    CHECK(message == "item 11");
    for (std::int64_t i = 0; i < 11; ++i) CHECK(runs[static_cast<std::size_t>(i)] == 1);
    REQUIRE(reported.size() == 11);
    for (std::int64_t i = 0; i < 11; ++i) CHECK(reported[static_cast<std::size_t>(i)] == i);

    // An exception of done(i) stops the loop the same way.
    reported.clear();
    message.clear();
    try {
      hgad::detail::parallel_items(
          n, [](std::int64_t) {},
          [&](std::int64_t i) {
            if (i == 7) throw std::runtime_error("done 7");
            reported.push_back(i);
          });
    } catch (const std::runtime_error& e) {
      message = e.what();
    }
    CHECK(message == "done 7");
    CHECK(reported == std::vector<std::int64_t>{0, 1, 2, 3, 4, 5, 6});
  }
}

TEST_CASE("on_one_thread holds OpenMP to the calling thread outside a parallel region",
          "[detail]") {
  for (const int threads : {1, 3}) {
    CAPTURE(threads);
    const ThreadCount count(threads);
    int inside = 0;
    hgad::detail::on_one_thread([&] { inside = hgad::max_threads(); });
    CHECK(inside == 1);
    CHECK(hgad::max_threads() == threads);
    CHECK_THROWS_AS(hgad::detail::on_one_thread([] { throw std::runtime_error("body"); }),
                    std::runtime_error);
    CHECK(hgad::max_threads() == threads);  // restored when the body throws
  }
#ifdef _OPENMP
  // Inside a parallel region the body runs as it is (Eigen stays on its thread there already):
  // the region's threads keep the count they inherited.
  const ThreadCount count(2);
  int team = 0, inherited = 0;
#pragma omp parallel num_threads(2)
  {
#pragma omp single
    hgad::detail::on_one_thread([&] {
      team = omp_get_num_threads();
      inherited = hgad::max_threads();
    });
  }
  CHECK(team == 2);
  CHECK(inherited == 2);
#endif
}

}  // namespace parallel_test
