#pragma once
/// \file
/// Whole-file reads and atomic whole-file writes shared by the readers and writers in io/.

#include <sys/stat.h>

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "../../detail/atomic_file.hpp"
#include "../../detail/check.hpp"

namespace hgad::detail::io {

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

/// What identifies the contents of the file at `path` without reading it: "<size> <mtime> <ctime>",
/// the times in nanoseconds -- the stat data git's index trusts to tell a changed file. The size
/// and mtime change with every ordinary edit; the ctime is set by the kernel on every write,
/// rename or replacement and cannot be set back, so it also catches a file replaced by a tool that
/// restores the old mtime (cp -p, tar, rsync -t). One stat, no read: cheap on a data set of
/// thousands of images, where hashing would read every byte on every run. Copying or touching
/// files gives a new identity (a harmless recomputation). "-" for an empty path, "absent" for a
/// file that cannot be stat'ed.
inline std::string file_identity(const std::string& path) {
  if (path.empty()) return "-";
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return "absent";
  const auto nanoseconds = [](const struct timespec& t) {
    return static_cast<long long>(t.tv_sec) * 1000000000LL + static_cast<long long>(t.tv_nsec);
  };
#ifdef __APPLE__
  const struct timespec &modified = st.st_mtimespec, &changed = st.st_ctimespec;
#else
  const struct timespec &modified = st.st_mtim, &changed = st.st_ctim;
#endif
  return std::to_string(static_cast<long long>(st.st_size)) + " " +
         std::to_string(nanoseconds(modified)) + " " + std::to_string(nanoseconds(changed));
}

/// Writes `bytes` to `path` atomically (detail::write_file_atomically: temporary file, fsync,
/// rename); errors name `what` and the path.
inline void write_bytes_atomically(const std::string& path, const char* what,
                                   const std::vector<std::uint8_t>& bytes) {
  try {
    write_file_atomically(path, bytes.data(), bytes.size());
  } catch (const Error& e) {
    throw Error(concat(what, ": ", e.what()));
  }
}

}  // namespace hgad::detail::io
