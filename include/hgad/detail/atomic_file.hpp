#pragma once
/// \file
/// Writing a file so that it is either complete under its final name or not there at all.
///
/// A regular file (or a name not yet taken) is replaced atomically: the bytes go to a temporary
/// file beside it, which is flushed, synced and renamed over the name. A symbolic link is
/// followed and its final target replaced, so the link survives. Anything that is not a regular
/// file -- a terminal, a pipe or FIFO, a device such as /dev/null, a socket -- is opened and
/// written in place: renaming a file over it would replace the node itself (as root,
/// `/dev/stdout` or `/dev/full` would become a plain file). A name of one of the process's own
/// descriptors (/dev/stdout, /dev/fd/N) is written through that descriptor.
///
/// A program can have SIGINT and SIGTERM remove the temporary files of writes in progress:
///
///     int main() {
///       hgad::detail::remove_temporaries_on_signals();   // once, before any write
///       ...
///       model.save(path);   // Ctrl-C here leaves neither path nor path.tmp.PID half-written
///     }

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>

#include "check.hpp"

namespace hgad::detail {

/// One temporary file of an atomic write in progress, readable from a signal handler.
struct PendingTemporary {
  std::atomic<int> state{0};  // 0 free, 1 being claimed, 2 `path` names a temporary file
  char path[4096] = {};
};
/// Slots for concurrent atomic writes; a write that finds none free simply goes unregistered.
inline PendingTemporary pending_temporaries[8];

/// Registers a temporary file for remove_pending_temporaries while it lives.
class PendingTemporaryGuard {
 public:
  explicit PendingTemporaryGuard(const std::string& path) {
    if (path.size() >= sizeof(PendingTemporary::path)) return;
    for (PendingTemporary& slot : pending_temporaries) {
      int expected = 0;
      if (slot.state.compare_exchange_strong(expected, 1)) {
        std::memcpy(slot.path, path.c_str(), path.size() + 1);
        slot.state.store(2);
        m_slot = &slot;
        return;
      }
    }
  }
  ~PendingTemporaryGuard() {
    if (m_slot) m_slot->state.store(0);
  }
  PendingTemporaryGuard(const PendingTemporaryGuard&) = delete;
  PendingTemporaryGuard& operator=(const PendingTemporaryGuard&) = delete;

 private:
  PendingTemporary* m_slot = nullptr;
};

/// Removes the temporary files of the atomic writes in progress. Async-signal-safe (lock-free
/// atomics and unlink only). A file already renamed into place is not touched: its temporary name
/// no longer exists.
inline void remove_pending_temporaries() noexcept {
  for (PendingTemporary& slot : pending_temporaries)
    if (slot.state.load() == 2) ::unlink(slot.path);
}

/// The handler remove_temporaries_on_signals installs: removes the temporaries, then ends the
/// process by the signal's default action (SA_RESETHAND restored it), so the exit status still
/// says which signal ended the program.
inline void remove_temporaries_and_reraise(int signal_number) {
  remove_pending_temporaries();
  ::raise(signal_number);
}

/// Installs, for SIGINT and SIGTERM, a handler that removes the temporary files of atomic writes
/// in progress and then ends the process as the signal would have. For programs: the library never
/// changes signal handling by itself. A signal the program ignores (nohup, a background job) or
/// already handles is left as it is.
inline void remove_temporaries_on_signals() {
  for (const int signal_number : {SIGINT, SIGTERM}) {
    struct sigaction current {};
    if (::sigaction(signal_number, nullptr, &current) != 0 || current.sa_handler != SIG_DFL)
      continue;
    struct sigaction action {};
    action.sa_handler = &remove_temporaries_and_reraise;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESETHAND;
    ::sigaction(signal_number, &action, nullptr);
  }
}

/// Where write_file_atomically puts the bytes meant for a path.
struct WriteTarget {
  std::string path;       ///< the file replaced (a link's final target) or written in place
  bool in_place = false;  ///< not a regular file: opened and written, never renamed over
  int descriptor = -1;    ///< >= 0: this process's open descriptor to write to (/dev/stdout)
};

/// The descriptor N a name of this process's open descriptors designates (/dev/fd/N,
/// /proc/self/fd/N, /proc/<own pid>/fd/N), or -1.
inline int own_descriptor(const std::string& path) {
  for (const std::string& prefix : {std::string("/dev/fd/"), std::string("/proc/self/fd/"),
                                    "/proc/" + std::to_string(::getpid()) + "/fd/"}) {
    if (path.size() <= prefix.size() || path.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string digits = path.substr(prefix.size());
    if (digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos) return -1;
    return std::stoi(digits);
  }
  return -1;
}

/// How write_file_atomically treats `path`. Its symbolic links are followed by name (a relative
/// target is taken from the link's folder, up to 40 links as the kernel does), and:
///   - a name of one of this process's open descriptors (/dev/stdout -> /proc/self/fd/1,
///     /dev/fd/N) is written through that descriptor, so the text lands where the process's own
///     output goes (a file that standard output is redirected to is appended to, not replaced);
///   - any other link under /proc names some process's open file, whatever its text says: opened
///     and written in place;
///   - an existing file that is not a regular one (device, FIFO, socket) is written in place;
///   - otherwise the final target of the links (existing or not) is replaced atomically.
inline WriteTarget write_target(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path current = path;
  bool through_proc = false;
  for (int hop = 0;; ++hop) {
    check(hop <= 40, "cannot write '", path, "': more than 40 levels of symbolic links");
    const int descriptor = own_descriptor(current.string());
    if (descriptor >= 0) return {path, true, descriptor};
    if (!fs::is_symlink(fs::symlink_status(current, ec))) break;
    const fs::path folder = fs::weakly_canonical(fs::absolute(current, ec).parent_path(), ec);
    if (folder.string().rfind("/proc/", 0) == 0) through_proc = true;
    const fs::path target = fs::read_symlink(current, ec);
    check(!ec, "cannot write '", path, "': cannot read the symbolic link '", current.string(),
          "': ", ec.message());
    current = target.is_absolute() ? target : current.parent_path() / target;
  }
  const fs::file_status status = fs::status(path, ec);
  if (through_proc || (fs::exists(status) && !fs::is_regular_file(status))) return {path, true};
  return {current.string(), false};
}

/// Writes all of `bytes` to an open descriptor, across short writes and interruptions.
inline bool write_all(int fd, const void* bytes, std::size_t size) {
  const char* p = static_cast<const char*>(bytes);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

/// Throws hgad::Error when write_file_atomically(path, ...) could not create its temporary file
/// (a missing folder, no permission, a read-only file system): found in advance by creating and
/// removing that file, so that a long computation does not end in a write that fails. Targets
/// written in place are not probed (opening a FIFO would wait for its reader).
inline void check_writable(const std::string& path) {
  const WriteTarget target = write_target(path);
  if (target.in_place) return;
  const std::string temporary = target.path + ".tmp." + std::to_string(::getpid());
  PendingTemporaryGuard guard(temporary);
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_NONBLOCK | O_CLOEXEC, 0600);
  const int err = errno;
  if (fd >= 0) {
    ::close(fd);
    ::unlink(temporary.c_str());
    return;
  }
  const std::string folder = std::filesystem::path(target.path).parent_path().string();
  throw Error("cannot write '" + path + "': cannot create a file in the folder '" +
              (folder.empty() ? "." : folder) + "' (" + std::strerror(err) + ")");
}

/// Writes `size` bytes to `path`. A regular file or a new name is written atomically: into a
/// temporary file beside it (`<name>.tmp.<pid>`), flushed and synced, then renamed over it; on
/// failure the temporary file is removed, an existing file is left untouched. A symbolic link is
/// followed and its target replaced. What is not a regular file (device, FIFO, socket, terminal)
/// is opened and written in place. Errors are hgad::Error naming the file and the reason.
inline void write_file_atomically(const std::string& path, const void* bytes, std::size_t size) {
  const WriteTarget target = write_target(path);
  if (target.descriptor >= 0) {
    const bool ok = write_all(target.descriptor, bytes, size);
    check(ok, "cannot write '", path, "': ", std::strerror(errno));
    return;
  }
  if (target.in_place) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_NOCTTY | O_CLOEXEC);
    check(fd >= 0, "cannot write '", path, "': ", std::strerror(errno));
    const bool ok = write_all(fd, bytes, size);
    const int err = errno;
    const bool closed = ::close(fd) == 0;
    check(ok, "cannot write '", path, "': ", std::strerror(err));
    check(closed, "cannot write '", path, "': ", std::strerror(errno));
    return;
  }
  const std::string temporary = target.path + ".tmp." + std::to_string(::getpid());
  PendingTemporaryGuard guard(temporary);
  std::FILE* file = std::fopen(temporary.c_str(), "wb");
  check(file != nullptr, "cannot write '", path, "': cannot create the temporary file '", temporary,
        "' (", std::strerror(errno), ")");
  bool ok = size == 0 || std::fwrite(bytes, 1, size, file) == size;
  ok = std::fflush(file) == 0 && ok;
  ok = ::fsync(::fileno(file)) == 0 && ok;
  ok = std::fclose(file) == 0 && ok;
  if (!ok) {
    std::remove(temporary.c_str());
    throw Error("cannot write '" + path + "': writing the temporary file failed (disk full?)");
  }
  if (std::rename(temporary.c_str(), target.path.c_str()) != 0) {
    std::remove(temporary.c_str());
    throw Error("cannot write '" + path + "': renaming the temporary file into place failed");
  }
}

}  // namespace hgad::detail
