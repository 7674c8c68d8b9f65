#pragma once
// Sets hgad's thread count for as long as the object lives, and restores the count it found.

#include <hgad/detail/parallel.hpp>

namespace hgad_test {

class ThreadCount {
 public:
  explicit ThreadCount(int n) : m_saved(hgad::max_threads()) { hgad::set_num_threads(n); }
  ~ThreadCount() { hgad::set_num_threads(m_saved); }
  ThreadCount(const ThreadCount&) = delete;
  ThreadCount& operator=(const ThreadCount&) = delete;

 private:
  int m_saved;
};

}  // namespace hgad_test
