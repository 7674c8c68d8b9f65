#pragma once
/// \file
/// The seam of data-parallel training: a group of `size()` ranks that exchange buffers, behind one
/// small interface, so that fit() is written once whichever transport joins the ranks. The core
/// needs no transport library: `SingleProcess` is the group of one (nothing to exchange), and
/// `InProcessGroup` joins threads of one process through shared memory (the tests' transport, which
/// can also play a rank that fails). Open MPI's communicator lives in its own header,
/// parallel/mpi_communicator.hpp, included only by programs built with MPI.
///
///     hgad::SingleProcess one;                          // or hgad::MpiCommunicator world;
///     std::vector<double> g = local_gradient();         // this rank's part, already weighted
///     one.all_reduce_sum(g.data(), hgad::Index(g.size()));   // the sum over the ranks, rank order
///
/// Determinism: all_reduce_sum adds the ranks' buffers in rank order 0, 1, ..., R - 1, element by
/// element, so the result depends neither on the timing nor on the transport's own reduction tree,
/// and every rank holds the same bits. It is a reduce-scatter then an all-gather: rank j adds the
/// j-th of R slices of every rank's buffer, then every rank gathers the R sums, so each rank sends
/// and receives about 2 (R - 1)/R of the buffer (a ring all-reduce's traffic) rather than R - 1
/// copies. A transport provides only all_to_all_bytes, all_gather_bytes and broadcast_bytes; the
/// summation is written once, here.
///
/// Failure: a rank whose work throws calls fail(reason) before it leaves; the collectives of the
/// other ranks then throw PeerFailure naming that rank and its reason, instead of waiting forever.
/// How a transport learns of a rank that disappears without a word is its own (a timeout for
/// InProcessGroup; the MPI runtime ends the job).
///
/// Buffers in a GPU's memory: all_reduce_sum_on(device, data, n) is the same rank-order sum where
/// the transport reaches that memory itself (NcclCommunicator, cuda/nccl_communicator.cuh, runs
/// the all-to-all and the all-gather through NCCL and the additions in a kernel, with the same
/// bits); every other transport answers false and the caller copies through the host.

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../detail/check.hpp"
#include "../detail/host_device.hpp"
#include "../tensor.hpp"

namespace hgad {

/// A collective of the group could not complete because a rank failed or went silent; the message
/// names the rank and, where it said so, why.
class PeerFailure : public Error {
 public:
  explicit PeerFailure(const std::string& message) : Error(message) {}
};

namespace detail {

/// Element i of the rank-order sum of all_reduce_sum: received holds R slices of `slice` values,
/// rank r's at r · slice, and the sum is ((s_0[i] + s_1[i]) + s_2[i]) + ... The one body of the
/// host's sum and of the GPU's (cuda/nccl_communicator.cuh).
template <class T>
HGAD_HOST_DEVICE inline T rank_order_sum(const T* received, std::size_t slice, std::size_t ranks,
                                         std::size_t i) {
  T sum = received[i];
  for (std::size_t r = 1; r < ranks; ++r) sum += received[r * slice + i];
  return sum;
}

}  // namespace detail

/// Rows [begin, end) of a range of n rows.
struct RowRange {
  Index begin = 0;
  Index end = 0;
  Index size() const { return end - begin; }
};

/// Rank `rank`'s contiguous part of n rows split over `size` ranks: [⌊n·r/R⌋, ⌊n·(r+1)/R⌋), so
/// the parts differ by at most one row and cover the n rows in rank order.
///   requires: size >= 1, rank in [0, size), n >= 0.
inline RowRange shard_rows(Index n, int size, int rank) {
  check(size >= 1 && rank >= 0 && rank < size && n >= 0, "shard_rows: rank ", rank, " of ", size,
        " ranks over ", n, " rows");
  return {n * rank / size, n * (rank + 1) / size};
}

/// A group of ranks, each holding one Communicator; every collective is called by every rank in the
/// same order with the same sizes.
class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;  ///< this rank, in [0, size())
  virtual int size() const = 0;  ///< the number of ranks, >= 1

  /// recv (size() · bytes) receives every rank's `bytes` of send, rank r's at offset r · bytes.
  ///   throws: PeerFailure when a rank failed or did not answer.
  virtual void all_gather_bytes(const void* send, std::size_t bytes, void* recv) = 0;

  /// send (size() · bytes) holds one block of `bytes` for every rank, rank j's at offset j · bytes;
  /// recv (size() · bytes) receives the block meant for this rank from every rank, rank i's at
  /// offset i · bytes (MPI_Alltoall).
  ///   throws: PeerFailure when a rank failed or did not answer.
  virtual void all_to_all_bytes(const void* send, std::size_t bytes, void* recv) = 0;

  /// The `bytes` of data on rank `root` are copied into data on every rank.
  ///   throws: PeerFailure when a rank failed or did not answer.
  virtual void broadcast_bytes(void* data, std::size_t bytes, int root) = 0;

  /// Tells the other ranks that this one fails, and why: their next (or pending) collective throws
  /// PeerFailure with `reason`. Never throws; a transport that cannot tell its peers ends the job.
  virtual void fail(const std::string& reason) noexcept = 0;

  /// data (n,) becomes Σ_r data_r, added in rank order ((data_0 + data_1) + data_2) + ... on every
  /// rank, so that all ranks hold the same bits whatever the timing. A group of one leaves data as
  /// it is.
  ///   requires: every rank passes the same n.
  template <class T>
  void all_reduce_sum(T* data, Index n) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                  "all_reduce_sum adds float or double buffers");
    check(n >= 0, "Communicator::all_reduce_sum: n must be >= 0, got ", n);
    const int R = size();
    if (R == 1 || n == 0) return;
    const std::size_t count = static_cast<std::size_t>(n), ranks = static_cast<std::size_t>(R);
    const std::size_t slice = (count + ranks - 1) / ranks;  // slice j: data[j slice, (j + 1) slice)
    auto& [send, received] = buffers<T>();
    // The buffer, zero-padded to R slices, is the send buffer of the all-to-all as it stands.
    send.assign(ranks * slice, T(0));
    std::copy(data, data + count, send.begin());
    received.resize(ranks * slice);
    all_to_all_bytes(send.data(), slice * sizeof(T), received.data());
    // This rank's slice summed over the ranks in rank order, then every rank's sums gathered.
    for (std::size_t i = 0; i < slice; ++i)
      send[i] = detail::rank_order_sum(received.data(), slice, ranks, i);
    all_gather_bytes(send.data(), slice * sizeof(T), received.data());
    std::copy(received.begin(), received.begin() + static_cast<std::ptrdiff_t>(count), data);
  }

  /// all_reduce_sum of n values in the memory of `device`, when this transport reaches it: the
  /// same rank-order sums, the same bits, and true. False, with data untouched, when it does not
  /// (every transport but NcclCommunicator, and that one for memory other than its GPU's); the
  /// caller then copies the buffer through the host.
  ///   requires: every rank passes the same device and n.
  template <class T>
  bool all_reduce_sum_on(Device device, T* data, Index n) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                  "all_reduce_sum_on adds float or double buffers");
    check(n >= 0, "Communicator::all_reduce_sum_on: n must be >= 0, got ", n);
    return device_all_reduce_sum(device, data, n);
  }

  /// data (n,) on every rank becomes rank root's.
  template <class T>
  void broadcast(T* data, Index n, int root = 0) {
    static_assert(std::is_trivially_copyable_v<T>, "broadcast copies plain values");
    check(n >= 0 && root >= 0 && root < size(), "Communicator::broadcast: n = ", n,
          ", root = ", root, " for ", size(), " ranks");
    if (size() == 1 || n == 0) return;
    broadcast_bytes(data, static_cast<std::size_t>(n) * sizeof(T), root);
  }

  /// The n_rows rows of data (row_size values each) split over the ranks as shard_rows splits
  /// them: on entry each rank holds its own part, rows shard_rows(n_rows, size(), rank()), and on
  /// return every rank holds all n_rows, copied (not added), so every rank has the same bits. The
  /// rows move in rounds of at most round_bytes per rank (MPI counts are ints).
  ///   requires: every rank passes the same n_rows and row_size.
  template <class T>
  void all_gather_rows(T* data, Index n_rows, Index row_size,
                       std::size_t round_bytes = std::size_t(64) << 20) {
    static_assert(std::is_trivially_copyable_v<T>, "all_gather_rows copies plain values");
    check(n_rows >= 0 && row_size >= 0, "Communicator::all_gather_rows: n_rows = ", n_rows,
          ", row_size = ", row_size);
    const int R = size();
    if (R == 1 || n_rows == 0 || row_size == 0) return;
    const std::size_t row_bytes = static_cast<std::size_t>(row_size) * sizeof(T);
    const Index per_round = std::max<Index>(1, static_cast<Index>(round_bytes / row_bytes));
    const Index most = (n_rows + R - 1) / R;  // the largest part (shard_rows: ⌈n / R⌉)
    const RowRange mine = shard_rows(n_rows, R, rank());
    std::vector<unsigned char> send(static_cast<std::size_t>(per_round) * row_bytes);
    std::vector<unsigned char> received(static_cast<std::size_t>(R) * send.size());
    for (Index first = 0; first < most; first += per_round) {
      const Index count = std::min(per_round, most - first);  // rows per rank this round
      const std::size_t block = static_cast<std::size_t>(count) * row_bytes;
      const Index own = std::max<Index>(0, std::min(count, mine.size() - first));
      if (own > 0)
        std::memcpy(send.data(), data + (mine.begin + first) * row_size,
                    static_cast<std::size_t>(own) * row_bytes);
      all_gather_bytes(send.data(), block, received.data());
      for (int r = 0; r < R; ++r) {
        const RowRange part = shard_rows(n_rows, R, r);
        const Index rows = std::max<Index>(0, std::min(count, part.size() - first));
        if (r == rank() || rows == 0) continue;
        std::memcpy(data + (part.begin + first) * row_size,
                    received.data() + static_cast<std::size_t>(r) * block,
                    static_cast<std::size_t>(rows) * row_bytes);
      }
    }
  }

  /// Every rank's value, in rank order.
  template <class T>
  std::vector<T> all_gather(const T& value) {
    static_assert(std::is_trivially_copyable_v<T>, "all_gather copies plain values");
    std::vector<T> out(static_cast<std::size_t>(size()));
    if (size() == 1) {
      out[0] = value;
      return out;
    }
    all_gather_bytes(&value, sizeof(T), out.data());
    return out;
  }

 protected:
  /// all_reduce_sum_on's transport: false unless it sums buffers in `device`'s memory itself.
  virtual bool device_all_reduce_sum(Device, float*, Index) { return false; }
  virtual bool device_all_reduce_sum(Device, double*, Index) { return false; }

 private:
  // all_reduce_sum's send and receive buffers of each element type, reused across calls.
  template <class T>
  std::pair<std::vector<T>, std::vector<T>>& buffers() {
    if constexpr (std::is_same_v<T, float>)
      return m_float;
    else
      return m_double;
  }
  std::pair<std::vector<float>, std::vector<float>> m_float;
  std::pair<std::vector<double>, std::vector<double>> m_double;
};

/// The group of one: every collective is the identity.
class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_gather_bytes(const void* send, std::size_t bytes, void* recv) override {
    if (bytes > 0) std::memmove(recv, send, bytes);
  }
  void all_to_all_bytes(const void* send, std::size_t bytes, void* recv) override {
    if (bytes > 0) std::memmove(recv, send, bytes);
  }
  void broadcast_bytes(void*, std::size_t, int root) override {
    check(root == 0, "SingleProcess::broadcast_bytes: root ", root, " of 1 rank");
  }
  void fail(const std::string&) noexcept override {}
};

/// A communicator that passes its ranks and every collective to `inner`: the base of a transport
/// that does one thing its own way and leaves the rest to another (NcclCommunicator sums GPU
/// buffers itself, over MPI's ranks). `inner` must outlive it.
class ForwardingCommunicator : public Communicator {
 public:
  explicit ForwardingCommunicator(Communicator& inner) : m_inner(inner) {}
  int rank() const override { return m_inner.rank(); }
  int size() const override { return m_inner.size(); }
  void all_gather_bytes(const void* send, std::size_t bytes, void* recv) override {
    m_inner.all_gather_bytes(send, bytes, recv);
  }
  void all_to_all_bytes(const void* send, std::size_t bytes, void* recv) override {
    m_inner.all_to_all_bytes(send, bytes, recv);
  }
  void broadcast_bytes(void* data, std::size_t bytes, int root) override {
    m_inner.broadcast_bytes(data, bytes, root);
  }
  void fail(const std::string& reason) noexcept override { m_inner.fail(reason); }

 protected:
  Communicator& inner() { return m_inner; }

 private:
  Communicator& m_inner;
};

/// R ranks as threads of one process, exchanging through shared memory: the transport of the
/// tests. Each thread takes its rank's communicator (communicator(r)) and calls the collectives as
/// MPI ranks would. A rank that waits longer than `timeout` for the others throws PeerFailure
/// naming the ranks it waited for, so that a test of a silent rank ends instead of hanging.
///
///     hgad::InProcessGroup group(3);
///     std::vector<std::thread> ranks;
///     for (int r = 0; r < 3; ++r) ranks.emplace_back([&, r] { work(group.communicator(r)); });
///     for (auto& t : ranks) t.join();
class InProcessGroup {
 public:
  /// requires: n_ranks >= 1, timeout > 0.
  explicit InProcessGroup(int n_ranks, std::chrono::milliseconds timeout = std::chrono::seconds(60))
      : m_timeout(timeout), m_slots(static_cast<std::size_t>(std::max(n_ranks, 1))) {
    check(n_ranks >= 1, "InProcessGroup: n_ranks must be >= 1, got ", n_ranks);
    check(timeout.count() > 0, "InProcessGroup: the timeout must be > 0 ms, got ", timeout.count());
    for (int r = 0; r < n_ranks; ++r) m_members.push_back(std::make_unique<Member>(*this, r));
  }
  InProcessGroup(const InProcessGroup&) = delete;
  InProcessGroup& operator=(const InProcessGroup&) = delete;

  int size() const { return static_cast<int>(m_members.size()); }

  /// Rank r's communicator, for the one thread that plays rank r.
  Communicator& communicator(int r) {
    check(r >= 0 && r < size(), "InProcessGroup::communicator: rank ", r, " of ", size());
    return *m_members[static_cast<std::size_t>(r)];
  }

 private:
  class Member final : public Communicator {
   public:
    Member(InProcessGroup& group, int rank) : m_group(group), m_rank(rank) {}
    int rank() const override { return m_rank; }
    int size() const override { return m_group.size(); }
    void all_gather_bytes(const void* send, std::size_t bytes, void* recv) override {
      m_group.exchange(
          m_rank, send, bytes, [&](const std::vector<std::vector<unsigned char>>& slots) {
            for (std::size_t r = 0; r < slots.size(); ++r) {
              check(slots[r].size() == bytes, "InProcessGroup: rank ", r, " gathered ",
                    slots[r].size(), " bytes, rank ", m_rank, " ", bytes,
                    " (collectives out of step)");
              if (bytes > 0)
                std::memcpy(static_cast<unsigned char*>(recv) + r * bytes, slots[r].data(), bytes);
            }
          });
    }
    void all_to_all_bytes(const void* send, std::size_t bytes, void* recv) override {
      const std::size_t ranks = static_cast<std::size_t>(size());
      m_group.exchange(
          m_rank, send, ranks * bytes, [&](const std::vector<std::vector<unsigned char>>& slots) {
            for (std::size_t r = 0; r < slots.size(); ++r) {
              check(slots[r].size() == ranks * bytes, "InProcessGroup: rank ", r, " sent ",
                    slots[r].size(), " bytes to all, rank ", m_rank, " ", ranks * bytes,
                    " (collectives out of step)");
              if (bytes > 0)
                std::memcpy(static_cast<unsigned char*>(recv) + r * bytes,
                            slots[r].data() + static_cast<std::size_t>(m_rank) * bytes, bytes);
            }
          });
    }
    void broadcast_bytes(void* data, std::size_t bytes, int root) override {
      check(root >= 0 && root < size(), "InProcessGroup::broadcast_bytes: root ", root, " of ",
            size(), " ranks");
      m_group.exchange(m_rank, m_rank == root ? data : nullptr, m_rank == root ? bytes : 0,
                       [&](const std::vector<std::vector<unsigned char>>& slots) {
                         const auto& from = slots[static_cast<std::size_t>(root)];
                         check(from.size() == bytes, "InProcessGroup: rank ", root, " broadcast ",
                               from.size(), " bytes, rank ", m_rank, " expected ", bytes,
                               " (collectives out of step)");
                         if (bytes > 0) std::memcpy(data, from.data(), bytes);
                       });
    }
    void fail(const std::string& reason) noexcept override { m_group.mark_failed(m_rank, reason); }

   private:
    InProcessGroup& m_group;
    int m_rank;
  };

  /// One collective: every rank deposits its bytes, waits until all have, reads, and waits until
  /// all have read (so the slots may be reused by the next collective).
  template <class Read>
  void exchange(int rank, const void* send, std::size_t bytes, Read&& read) {
    std::unique_lock<std::mutex> lock(m_mutex);
    throw_if_failed(rank);
    auto& slot = m_slots[static_cast<std::size_t>(rank)];
    slot.assign(static_cast<const unsigned char*>(send),
                static_cast<const unsigned char*>(send) + bytes);
    arrive(lock, rank, "deposit");
    try {
      read(m_slots);
    } catch (const std::exception& e) {  // the others would wait for this rank's read in vain
      mark_failed_locked(rank, e.what());
      throw;
    }
    arrive(lock, rank, "read");
  }

  /// A barrier over all ranks; throws PeerFailure when a rank failed or the wait exceeds the
  /// timeout.
  void arrive(std::unique_lock<std::mutex>& lock, int rank, const char* phase) {
    const std::uint64_t generation = m_generation;
    m_arrived.push_back(rank);
    if (static_cast<int>(m_arrived.size()) == size()) {
      m_arrived.clear();
      ++m_generation;
      m_changed.notify_all();
      return;
    }
    m_changed.wait_for(lock, m_timeout, [&] { return m_generation != generation || m_failed; });
    if (m_generation != generation) return;
    throw_if_failed(rank);
    std::vector<int> missing;
    for (int r = 0; r < size(); ++r)
      if (std::find(m_arrived.begin(), m_arrived.end(), r) == m_arrived.end()) missing.push_back(r);
    const std::string who =
        detail::concat(missing.size() == 1 ? "rank " : "ranks ", join_ranks(missing));
    mark_failed_locked(rank, detail::concat("waited ", m_timeout.count(), " ms for ", who));
    throw PeerFailure(detail::concat("rank ", rank, ": ", who, " did not reach the collective (",
                                     phase, ") within ", m_timeout.count(),
                                     " ms; the group stops"));
  }

  void throw_if_failed(int rank) const {
    if (!m_failed) return;
    throw PeerFailure(
        detail::concat("rank ", rank, ": rank ", m_failed_rank, " failed: ", m_failed_reason));
  }

  void mark_failed(int rank, const std::string& reason) noexcept {
    try {
      std::lock_guard<std::mutex> lock(m_mutex);
      mark_failed_locked(rank, reason);
    } catch (...) {  // a failure being reported must not throw; the timeout still ends the group
    }
  }

  void mark_failed_locked(int rank, const std::string& reason) {
    if (m_failed) return;  // the first failure is the one to report
    m_failed = true;
    m_failed_rank = rank;
    m_failed_reason = reason;
    m_changed.notify_all();
  }

  static std::string join_ranks(const std::vector<int>& ranks) {
    std::string out;
    for (std::size_t i = 0; i < ranks.size(); ++i)
      out += (i ? ", " : "") + std::to_string(ranks[i]);
    return out;
  }

  std::chrono::milliseconds m_timeout;
  std::vector<std::unique_ptr<Member>> m_members;
  std::mutex m_mutex;
  std::condition_variable m_changed;
  std::vector<std::vector<unsigned char>> m_slots;  // per rank, the bytes of the current collective
  std::vector<int> m_arrived;
  std::uint64_t m_generation = 0;
  bool m_failed = false;
  int m_failed_rank = -1;
  std::string m_failed_reason;
};

}  // namespace hgad
