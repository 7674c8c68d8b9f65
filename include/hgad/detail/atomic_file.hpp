#pragma once
/// \file
/// Writing a file so that it is either complete under its final name or not there at all.

#include <cstdio>
#include <string>
#include <unistd.h>

#include "check.hpp"

namespace hgad::detail {

/// Writes `size` bytes to `path` atomically: into a temporary file beside it, flushed and synced,
/// then renamed over `path`. On failure the temporary file is removed, an existing `path` is left
/// untouched, and hgad::Error names the file and the reason.
inline void write_file_atomically(const std::string& path, const void* bytes, std::size_t size) {
  const std::string temporary = path + ".tmp." + std::to_string(::getpid());
  std::FILE* file = std::fopen(temporary.c_str(), "wb");
  check(file != nullptr, "cannot write '", path, "': cannot create the temporary file '", temporary, "'");
  bool ok = size == 0 || std::fwrite(bytes, 1, size, file) == size;
  ok = std::fflush(file) == 0 && ok;
  ok = ::fsync(::fileno(file)) == 0 && ok;
  ok = std::fclose(file) == 0 && ok;
  if (!ok) {
    std::remove(temporary.c_str());
    throw Error("cannot write '" + path + "': writing the temporary file failed (disk full?)");
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    std::remove(temporary.c_str());
    throw Error("cannot write '" + path + "': renaming the temporary file into place failed");
  }
}

}  // namespace hgad::detail
