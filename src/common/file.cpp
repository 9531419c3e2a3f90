// Whole-file reading (regular files only, bounded) and the durable-write primitives: fsync, atomic
// and no-replace renames, temporary names that a later run can recognize and clean, output probes.
#include "resq/common/file.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "resq/common/error.h"
#include "resq/common/log.h"

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)  // <linux/fs.h>
#endif

namespace resq {
namespace fs = std::filesystem;

namespace {

// strerror_r is the XSI one (int) or the GNU one (char*) depending on the C library's feature
// macros; these overloads accept either.
[[maybe_unused]] const char* strerror_result(int rc, const char* buffer) {
  return rc == 0 ? buffer : "unknown error";
}
[[maybe_unused]] const char* strerror_result(const char* text, const char*) { return text; }


const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

std::string strip_trailing_slashes(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

std::string parent_of(const std::string& path) {
  const fs::path parent = fs::path(strip_trailing_slashes(path)).parent_path();
  return parent.empty() ? "." : parent.string();
}

// The pid of a `<base>.tmp.<pid>` name, or -1 when `name` is not one.
long long temporary_owner(const std::string& name, const std::string& prefix) {
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return -1;
  const std::string digits = name.substr(prefix.size());
  if (digits.size() > 10) return -1;
  for (char ch : digits)
    if (ch < '0' || ch > '9') return -1;
  return std::stoll(digits);
}

}  // namespace

std::string errno_text(int errnum) {
  char buffer[256] = {0};
  return strerror_result(::strerror_r(errnum, buffer, sizeof(buffer)), buffer);
}

std::string read_file(const std::string& path, const std::string& what, uint64_t max_bytes) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below).
  FdGuard fd(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
  if (fd.get() < 0) throw IoError(path + ": cannot open " + what + ": " + errno_text(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw IoError(path + ": cannot stat " + what + ": " + errno_text(errno));
  if (S_ISDIR(st.st_mode)) throw IoError(path + ": cannot read " + what + ": " + errno_text(EISDIR));
  if (!S_ISREG(st.st_mode)) {
    throw IoError(path + ": cannot read " + what + ": not a regular file (" + file_kind(st.st_mode) + ")");
  }
  const auto too_big = [&](uint64_t size) {
    return IoError(path + ": cannot read " + what + ": " + std::to_string(size) + " bytes or more, over the limit of " +
                   std::to_string(max_bytes) + " bytes");
  };
  if (static_cast<uint64_t>(st.st_size) > max_bytes) throw too_big(static_cast<uint64_t>(st.st_size));
  std::string bytes;
  // st_size is a hint only: files under /proc report 0, and a file may grow while it is read.
  if (st.st_size > 0) bytes.reserve(static_cast<size_t>(st.st_size));
  char chunk[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd.get(), chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw IoError(path + ": cannot read " + what + ": " + errno_text(errno));
    if (n == 0) break;
    if (bytes.size() + static_cast<size_t>(n) > max_bytes) throw too_big(bytes.size() + static_cast<size_t>(n));
    bytes.append(chunk, static_cast<size_t>(n));
  }
  return bytes;
}

void write_all_fd(int fd, const void* data, size_t nbytes, const std::string& path) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (nbytes > 0) {
    const ssize_t n = ::write(fd, p, nbytes < (size_t{1} << 30) ? nbytes : (size_t{1} << 30));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw IoError(path + ": write failed: " + errno_text(n < 0 ? errno : EIO));
    p += n;
    nbytes -= static_cast<size_t>(n);
  }
}

std::string temporary_path(const std::string& base) {
  return strip_trailing_slashes(base) + ".tmp." + std::to_string(::getpid());
}

std::vector<std::string> remove_stale_temporaries(const std::string& base) {
  const fs::path b(strip_trailing_slashes(base));
  const std::string prefix = b.filename().string() + ".tmp.";
  const std::string parent = parent_of(base);
  std::vector<std::string> removed;
  DIR* dir = ::opendir(parent.c_str());
  if (!dir) return removed;
  std::vector<std::pair<std::string, long long>> candidates;
  while (const dirent* e = ::readdir(dir)) {
    const long long pid = temporary_owner(e->d_name, prefix);
    if (pid > 0) candidates.emplace_back((fs::path(parent) / e->d_name).string(), pid);
  }
  ::closedir(dir);
  for (const auto& [path, pid] : candidates) {
    // Ours (a name this process is about to use) or a process that no longer exists. EPERM: the
    // process exists under another user: leave its files alone.
    const bool gone = pid == ::getpid() || (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH);
    if (!gone) continue;
    std::error_code ec;
    fs::remove_all(path, ec);
    if (ec) continue;
    if (pid != ::getpid()) log::warn("removed " + path + ", left behind by an interrupted run (process " + std::to_string(pid) + ")");
    removed.push_back(path);
  }
  return removed;
}

void fsync_path(const std::string& path) {
  FdGuard fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) throw IoError(path + ": cannot open to fsync: " + errno_text(errno));
  if (::fsync(fd.get()) != 0 && errno != EINVAL) throw IoError(path + ": fsync failed: " + errno_text(errno));
}

void write_file_atomically(const std::string& path, const std::function<void(int fd, const std::string& tmp_path)>& write,
                           const std::string& what) {
  remove_stale_temporaries(path);
  const std::string tmp = temporary_path(path);
  FdGuard fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) throw IoError(tmp + ": cannot create temporary file for " + path + " (" + what + "): " + errno_text(errno));
  try {
    write(fd.get(), tmp);
    if (::fsync(fd.get()) != 0) throw IoError(tmp + ": fsync failed: " + errno_text(errno));
    if (fd.close_now() != 0) throw IoError(tmp + ": close failed: " + errno_text(errno));
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      throw IoError(path + ": cannot rename " + tmp + " into place: " + errno_text(errno));
    }
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  fsync_path(parent_of(path));  // the rename itself
}

void write_file_atomically(const std::string& path, const std::string& bytes, const std::string& what) {
  write_file_atomically(
      path, [&](int fd, const std::string& tmp) { write_all_fd(fd, bytes.data(), bytes.size(), tmp); }, what);
}

bool rename_no_replace(const std::string& from, const std::string& to) {
  if (::syscall(SYS_renameat2, AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return true;
  const int err = errno;
  if (err == EEXIST || err == ENOTEMPTY) return false;
  if (err != EINVAL && err != ENOSYS && err != ENOTSUP) {
    throw IoError(to + ": cannot rename " + from + " into place: " + errno_text(err));
  }
  // The filesystem has no RENAME_NOREPLACE.
  struct stat st {};
  if (::lstat(from.c_str(), &st) != 0) throw IoError(from + ": cannot rename: " + errno_text(errno));
  if (!S_ISDIR(st.st_mode) && ::link(from.c_str(), to.c_str()) == 0) {
    ::unlink(from.c_str());
    return true;
  }
  if (!S_ISDIR(st.st_mode) && errno == EEXIST) return false;
  // A directory (or a filesystem without hard links): rename(2) refuses a non-empty target; only an
  // empty directory created at `to` since this check could be replaced.
  if (::lstat(to.c_str(), &st) == 0) return false;
  if (::rename(from.c_str(), to.c_str()) == 0) return true;
  if (errno == EEXIST || errno == ENOTEMPTY) return false;
  throw IoError(to + ": cannot rename " + from + " into place: " + errno_text(errno));
}

void check_output_file_writable(const std::string& path, const std::string& flag) {
  if (path.empty()) throw UsageError(flag + ": empty file name");
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    throw UsageError(flag + ": cannot write '" + path + "': it is " + file_kind(st.st_mode) + ", expected a file name");
  }
  const std::string probe = temporary_path(path);
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw UsageError(flag + ": cannot write '" + path + "': " + errno_text(errno));
  ::close(fd);
  ::unlink(probe.c_str());
}

void check_output_dir_creatable(const std::string& path, const std::string& flag) {
  if (path.empty()) throw UsageError(flag + ": empty output directory name");
  const std::string target = strip_trailing_slashes(path);
  struct stat st {};
  if (::lstat(target.c_str(), &st) == 0) throw UsageError(flag + ": '" + path + "' already exists; choose a new directory");
  // Missing parents are created by the writer: probe the nearest ancestor that exists.
  fs::path ancestor = fs::path(parent_of(target));
  while (::stat(ancestor.c_str(), &st) != 0 && errno == ENOENT && ancestor.has_parent_path() && ancestor != ancestor.parent_path()) {
    ancestor = ancestor.parent_path();
  }
  if (::stat(ancestor.c_str(), &st) != 0) throw UsageError(flag + ": cannot create '" + path + "': " + errno_text(errno));
  if (!S_ISDIR(st.st_mode)) {
    throw UsageError(flag + ": cannot create '" + path + "': " + ancestor.string() + " is not a directory");
  }
  if (ancestor.string() == parent_of(target)) remove_stale_temporaries(target);
  const std::string probe = temporary_path((ancestor / fs::path(target).filename()).string());
  if (::mkdir(probe.c_str(), 0755) != 0) throw UsageError(flag + ": cannot create '" + path + "': " + errno_text(errno));
  ::rmdir(probe.c_str());
}

}  // namespace resq
