#pragma once
/// \file
/// How much memory the machine can give (Linux's MemAvailable), and a byte count in words, for the
/// checks that refuse a configuration before it allocates more than there is.

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

namespace hgad::detail {

/// The memory the kernel can give without swapping (MemAvailable of /proc/meminfo), in bytes;
/// 0 when it cannot be read (not Linux), which callers take as "unknown".
inline double available_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string name, unit;
    double kib = 0;
    if (fields >> name >> kib >> unit && name == "MemAvailable:" && unit == "kB")
      return kib * 1024.0;
  }
  return 0;
}

/// A byte count as "12.3 GB" (decimal units, three significant digits), "512 kB", "0.8 kB".
inline std::string bytes_text(double bytes) {
  const char* units[] = {"kB", "MB", "GB", "TB", "PB"};
  double v = bytes / 1e3;
  int u = 0;
  while (v >= 1000 && u < 4) {
    v /= 1e3;
    ++u;
  }
  char buffer[48];
  std::snprintf(buffer, sizeof(buffer), "%.3g %s", v, units[u]);
  return buffer;
}

}  // namespace hgad::detail
