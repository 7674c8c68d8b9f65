#pragma once
// Runs R ranks of an InProcessGroup as threads and collects what each threw.
#include <exception>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <hgad/parallel/communicator.hpp>

namespace hgad_test {

/// The message of what rank r threw, or "" when it returned normally.
struct RankOutcome {
  bool threw = false;
  bool peer_failure = false;  // the exception was an hgad::PeerFailure
  std::string message;
};

/// Runs work(communicator, rank) on R threads, one per rank of `group`, and waits for all.
inline std::vector<RankOutcome> run_ranks(
    hgad::InProcessGroup& group, const std::function<void(hgad::Communicator&, int)>& work) {
  const int R = group.size();
  std::vector<RankOutcome> out(static_cast<std::size_t>(R));
  std::vector<std::thread> threads;
  for (int r = 0; r < R; ++r)
    threads.emplace_back([&, r] {
      RankOutcome& o = out[static_cast<std::size_t>(r)];
      try {
        work(group.communicator(r), r);
      } catch (const hgad::PeerFailure& e) {
        o = {true, true, e.what()};
      } catch (const std::exception& e) {
        o = {true, false, e.what()};
      }
    });
  for (auto& t : threads) t.join();
  return out;
}

}  // namespace hgad_test
