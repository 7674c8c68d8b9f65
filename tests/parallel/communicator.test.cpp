#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

#include <hgad/parallel/communicator.hpp>
#include <hgad/rng.hpp>

#include "parallel/ranks.hpp"

namespace communicator_test {

using hgad::Index;
using hgad_test::run_ranks;

namespace {

// Rank r's buffer of n values: large values of both signs and small ones, so that the order of
// the additions changes the rounded sum.
template <class T>
std::vector<T> rank_values(int r, Index n) {
  hgad::Rng rng(100 + static_cast<std::uint64_t>(r));
  std::vector<T> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = T(rng.normal() * std::pow(10.0, double(rng.uniform_int(8))));
  return v;
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

}  // namespace

TEMPLATE_TEST_CASE("all_reduce_sum adds the ranks' buffers in rank order on every rank",
                   "[parallel]", float, double) {
  using T = TestType;
  const Index n = 37;
  for (int R : {2, 3, 5}) {
    // The independent reference: a plain loop over the ranks in order 0, 1, ..., R - 1.
    std::vector<T> expected = rank_values<T>(0, n);
    for (int r = 1; r < R; ++r) {
      const std::vector<T> part = rank_values<T>(r, n);
      for (Index i = 0; i < n; ++i) expected[std::size_t(i)] += part[std::size_t(i)];
    }
    // The values are chosen so that the reverse order rounds differently somewhere (for R >= 3;
    // two terms add the same either way).
    std::vector<T> reverse = rank_values<T>(R - 1, n);
    for (int r = R - 2; r >= 0; --r) {
      const std::vector<T> part = rank_values<T>(r, n);
      for (Index i = 0; i < n; ++i) reverse[std::size_t(i)] += part[std::size_t(i)];
    }
    if (R >= 3) CHECK_FALSE(same_bits(expected, reverse));

    for (int trial = 0; trial < 4; ++trial) {
      hgad::InProcessGroup group(R, std::chrono::seconds(20));
      std::vector<std::vector<T>> results(static_cast<std::size_t>(R));
      const auto outcomes = run_ranks(group, [&](hgad::Communicator& comm, int r) {
        // Ranks arrive in a different order in every trial.
        std::this_thread::sleep_for(std::chrono::milliseconds(((r + trial) % R) * 3));
        std::vector<T> v = rank_values<T>(r, n);
        comm.all_reduce_sum(v.data(), n);
        results[std::size_t(r)] = v;
      });
      for (int r = 0; r < R; ++r) {
        INFO("R = " << R << ", rank " << r << ", trial " << trial);
        REQUIRE_FALSE(outcomes[std::size_t(r)].threw);
        for (T x : results[std::size_t(r)]) REQUIRE(std::isfinite(x));
        CHECK(same_bits(results[std::size_t(r)], expected));
      }
    }
  }
}

TEMPLATE_TEST_CASE("Weighted shard means all-reduce to the mean of uneven shards", "[parallel]",
                   float, double) {
  using T = TestType;
  // 7 rows of 3 values over 3 ranks: shards of 2, 2 and 3 rows. Each rank weights its own mean by
  // its share of the rows, as the data-parallel fit weights its loss and gradients.
  const Index N = 7, D = 3;
  hgad::Rng rng(5);
  std::vector<T> rows(static_cast<std::size_t>(N * D));
  for (auto& x : rows) x = T(rng.normal());
  std::vector<double> mean(static_cast<std::size_t>(D), 0.0);
  for (Index i = 0; i < N; ++i)
    for (Index d = 0; d < D; ++d)
      mean[std::size_t(d)] += double(rows[std::size_t(i * D + d)]) / double(N);

  const int R = 3;
  CHECK(hgad::shard_rows(N, R, 0).size() == 2);
  CHECK(hgad::shard_rows(N, R, 1).size() == 2);
  CHECK(hgad::shard_rows(N, R, 2).size() == 3);
  CHECK(hgad::shard_rows(N, R, 2).end == N);
  hgad::InProcessGroup group(R, std::chrono::seconds(20));
  std::vector<std::vector<T>> results(static_cast<std::size_t>(R));
  const auto outcomes = run_ranks(group, [&](hgad::Communicator& comm, int r) {
    const hgad::RowRange part = hgad::shard_rows(N, comm.size(), comm.rank());
    std::vector<T> v(static_cast<std::size_t>(D), T(0));
    for (Index i = part.begin; i < part.end; ++i)
      for (Index d = 0; d < D; ++d)
        v[std::size_t(d)] += rows[std::size_t(i * D + d)] / T(part.size());
    const T weight = T(part.size()) / T(N);
    for (auto& x : v) x *= weight;
    comm.all_reduce_sum(v.data(), D);
    results[std::size_t(r)] = v;
  });
  const double tolerance = std::is_same_v<T, float> ? 1e-6 : 1e-14;
  for (int r = 0; r < R; ++r) {
    REQUIRE_FALSE(outcomes[std::size_t(r)].threw);
    for (Index d = 0; d < D; ++d) {
      REQUIRE(std::isfinite(results[std::size_t(r)][std::size_t(d)]));
      CHECK(std::abs(double(results[std::size_t(r)][std::size_t(d)]) - mean[std::size_t(d)]) <=
            tolerance);
    }
    CHECK(same_bits(results[std::size_t(r)], results[0]));
  }
  // A shard split covers every row once, also with more ranks than rows and none.
  for (Index n : {0, 1, 5, 8}) {
    Index covered = 0;
    for (int r = 0; r < 3; ++r) {
      const hgad::RowRange p = hgad::shard_rows(n, 3, r);
      CHECK(p.begin == covered);
      covered = p.end;
    }
    CHECK(covered == n);
  }
  CHECK_THROWS_AS(hgad::shard_rows(4, 2, 2), hgad::Error);
}

TEST_CASE("broadcast and all_gather give every rank the same values", "[parallel]") {
  const int R = 3;
  hgad::InProcessGroup group(R, std::chrono::seconds(20));
  std::vector<std::vector<double>> got(R);
  std::vector<std::vector<Index>> gathered(R);
  const auto outcomes = run_ranks(group, [&](hgad::Communicator& comm, int r) {
    std::vector<double> v{double(r), -1.5 * r, 1e300 * r};
    comm.broadcast(v.data(), Index(v.size()), 2);
    got[std::size_t(r)] = v;
    gathered[std::size_t(r)] = comm.all_gather(Index(10 * r + 1));
  });
  for (int r = 0; r < R; ++r) {
    REQUIRE_FALSE(outcomes[std::size_t(r)].threw);
    CHECK(got[std::size_t(r)] == std::vector<double>{2.0, -3.0, 2e300});
    CHECK(gathered[std::size_t(r)] == std::vector<Index>{1, 11, 21});
  }

  hgad::SingleProcess one;
  std::vector<float> v{1.0f, 2.0f};
  one.all_reduce_sum(v.data(), 2);
  one.broadcast(v.data(), 2, 0);
  CHECK(v == std::vector<float>{1.0f, 2.0f});
  CHECK(one.all_gather(7) == std::vector<int>{7});
  CHECK_THROWS_AS(one.broadcast(v.data(), 2, 1), hgad::Error);
}

TEST_CASE("all_gather_rows gives every rank all rows of uneven shards, in rounds, bit for bit",
          "[parallel]") {
  for (const int R : {2, 3}) {
    for (const Index n : {Index(0), Index(1), Index(2), Index(7), Index(11)}) {
      INFO(R << " ranks, " << n << " rows");
      const Index width = 3;
      std::vector<double> want(std::size_t(n * width));
      for (std::size_t i = 0; i < want.size(); ++i) want[i] = 0.1 * double(i) - 1e-300;
      hgad::InProcessGroup group(R, std::chrono::seconds(20));
      std::vector<std::vector<double>> got{std::size_t(R)};
      const auto outcomes = run_ranks(group, [&](hgad::Communicator& comm, int r) {
        // This rank's rows only; the others hold NaN until gathered.
        std::vector<double> rows(want.size(), std::nan(""));
        const hgad::RowRange part = hgad::shard_rows(n, comm.size(), comm.rank());
        for (Index i = part.begin * width; i < part.end * width; ++i)
          rows[std::size_t(i)] = want[std::size_t(i)];
        // Rounds of two rows (48 bytes), so that most gathers take several rounds.
        comm.all_gather_rows(rows.data(), n, width, 2 * width * sizeof(double));
        got[std::size_t(r)] = rows;
      });
      for (int r = 0; r < R; ++r) {
        REQUIRE_FALSE(outcomes[std::size_t(r)].threw);
        CHECK(got[std::size_t(r)] == want);
      }
    }
  }
  hgad::SingleProcess one;
  std::vector<int> v{4, 5, 6};
  one.all_gather_rows(v.data(), 3, 1);
  CHECK(v == std::vector<int>{4, 5, 6});
}

TEST_CASE("A failing rank ends the collectives of the others with a PeerFailure naming it",
          "[parallel]") {
  const int R = 3;
  hgad::InProcessGroup group(R, std::chrono::seconds(30));
  const auto start = std::chrono::steady_clock::now();
  const auto outcomes = run_ranks(group, [&](hgad::Communicator& comm, int r) {
    std::vector<float> v(4, float(r));
    comm.all_reduce_sum(v.data(), 4);  // one collective that succeeds
    if (r == 1) {
      comm.fail("the loss of level 0 is NaN");
      return;
    }
    for (int i = 0; i < 3; ++i) comm.all_reduce_sum(v.data(), 4);
  });
  // Well before the 30 s timeout: the failure is announced, not waited out.
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(10));
  CHECK_FALSE(outcomes[1].threw);
  for (int r : {0, 2}) {
    INFO(outcomes[std::size_t(r)].message);
    CHECK(outcomes[std::size_t(r)].peer_failure);
    CHECK_THAT(outcomes[std::size_t(r)].message,
               Catch::Contains("rank 1 failed: the loss of level 0 is NaN"));
  }
}

TEST_CASE("A rank that goes silent ends the others' collectives after the timeout", "[parallel]") {
  const int R = 2;
  hgad::InProcessGroup group(R, std::chrono::milliseconds(300));
  const auto start = std::chrono::steady_clock::now();
  const auto outcomes = run_ranks(group, [&](hgad::Communicator& comm, int r) {
    if (r == 1) return;  // leaves without a word
    double x = 1;
    comm.all_reduce_sum(&x, 1);
  });
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(10));
  CHECK_FALSE(outcomes[1].threw);
  INFO(outcomes[0].message);
  CHECK(outcomes[0].peer_failure);
  CHECK_THAT(outcomes[0].message, Catch::Contains("rank 1 did not reach the collective"));
  CHECK_THAT(outcomes[0].message, Catch::Contains("300 ms"));
}

TEST_CASE("Ranks whose collectives do not match stop at once with a message", "[parallel]") {
  hgad::InProcessGroup group(2, std::chrono::seconds(30));
  const auto start = std::chrono::steady_clock::now();
  const auto outcomes = run_ranks(group, [&](hgad::Communicator& comm, int r) {
    std::vector<double> v(std::size_t(4 + r), 1.0);  // 4 values on rank 0, 5 on rank 1
    comm.all_reduce_sum(v.data(), Index(v.size()));
  });
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(10));
  for (const auto& o : outcomes) {
    INFO(o.message);
    CHECK(o.threw);
    CHECK_THAT(o.message, Catch::Contains("collectives out of step"));
  }
}

}  // namespace communicator_test
