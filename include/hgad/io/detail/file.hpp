#pragma once
/// \file
/// Whole-file reads and atomic whole-file writes shared by the readers and writers in io/.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "../../detail/check.hpp"

namespace hgad::detail {

/// The bytes of the file at `path`; throws hgad::Error naming `what` and the path when it cannot be
/// read.
inline std::vector<std::uint8_t> read_file_bytes(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  check(static_cast<bool>(in), what, ": cannot open '", path, "'");
  in.seekg(0, std::ios::end);
  const std::streamoff end = in.tellg();
  check(end >= 0, what, ": cannot determine the size of '", path, "'");
  in.seekg(0, std::ios::beg);
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(end));
  if (!bytes.empty()) in.read(reinterpret_cast<char*>(bytes.data()), end);
  check(static_cast<bool>(in) && in.gcount() == end, what, ": read error on '", path, "'");
  return bytes;
}

/// A temporary name beside `path`, unique within this process and unlikely to clash across
/// processes.
inline std::string temporary_path_for(const std::string& path) {
  static std::atomic<std::uint64_t> counter{0};
  const auto tick =
      static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  const auto thread =
      static_cast<std::uint64_t>(std::hash<std::thread::id>{}(std::this_thread::get_id()));
  return path + ".tmp." + std::to_string(tick ^ thread) + "." +
         std::to_string(counter.fetch_add(1));
}

/// Writes a file by calling `write(FILE*)` on a temporary file beside `path`, then renames it over
/// `path`, so readers never see a partial file. `write` returns false on failure.
///
/// ensures: on failure the temporary file is removed, `path` is untouched, and hgad::Error is
/// thrown.
template <class Writer>
void write_file_atomically(const std::string& path, const char* what, Writer&& write) {
  const std::string temporary = temporary_path_for(path);
  std::FILE* file = std::fopen(temporary.c_str(), "wb");
  check(file != nullptr, what, ": cannot create '", temporary, "' to write '", path, "'");
  bool ok = false;
  try {
    ok = write(file);
  } catch (...) {
    std::fclose(file);
    std::remove(temporary.c_str());
    throw;
  }
  ok = (std::fflush(file) == 0) && ok;
  ok = (std::fclose(file) == 0) && ok;
  if (!ok) {
    std::remove(temporary.c_str());
    throw Error(concat(what, ": write error on '", temporary, "' (for '", path, "')"));
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    std::remove(temporary.c_str());
    throw Error(concat(what, ": cannot rename '", temporary, "' to '", path, "'"));
  }
}

/// Writes `bytes` to `path` atomically (see write_file_atomically).
inline void write_bytes_atomically(const std::string& path, const char* what,
                                   const std::vector<std::uint8_t>& bytes) {
  write_file_atomically(path, what, [&](std::FILE* file) {
    return bytes.empty() || std::fwrite(bytes.data(), 1, bytes.size(), file) == bytes.size();
  });
}

}  // namespace hgad::detail
