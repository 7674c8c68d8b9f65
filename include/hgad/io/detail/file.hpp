#pragma once
/// \file
/// Whole-file reads and atomic whole-file writes shared by the readers and writers in io/.

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
