// Files for every loader and writer in resq: one place that turns a path into bytes or an IoError,
// and the durable-write primitives (fsync, atomic and no-replace renames, stale temporaries).
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace resq {

// Closes a file descriptor on scope exit unless closed earlier.
class FdGuard {
 public:
  explicit FdGuard(int fd) : fd_(fd) {}
  ~FdGuard() {
    if (fd_ >= 0) ::close(fd_);
  }
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;
  int get() const { return fd_; }
  // Closes now and reports the result (close errors matter for written files).
  int close_now() {
    const int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

// Default bound of read_file: text, JSON and tokenizer files are far smaller; a bigger one is refused
// rather than read into memory.
constexpr uint64_t kMaxReadFileBytes = uint64_t{1} << 30;  // 1 GiB

// Reads the regular file at `path` into a string, bytes verbatim (an empty file gives ""). `what`
// says what the file is for the message (name the flag when a flag gave the path). Directories,
// FIFOs, devices (/dev/zero) and sockets are refused before anything is read (opening never blocks),
// and so is a file over `max_bytes`. Throws IoError naming the path and the reason, e.g.
//   "configs/x.json: cannot open recipe file: No such file or directory"
//   "model/: cannot read model config: Is a directory"
//   "/dev/zero: cannot read --data text file: not a regular file (a character device)"
std::string read_file(const std::string& path, const std::string& what = "file", uint64_t max_bytes = kMaxReadFileBytes);

// The system's text for an errno value ("No such file or directory").
std::string errno_text(int errnum);

// Writes all bytes to `fd` (short writes, EINTR) or throws IoError naming `path`.
void write_all_fd(int fd, const void* data, size_t nbytes, const std::string& path);

// `base` + ".tmp." + this process's id: the name every temporary file or directory of resq has, so
// that remove_stale_temporaries can tell whose it is.
std::string temporary_path(const std::string& base);

// Removes the `<base>.tmp.<pid>` files and directories beside `base` whose process no longer exists
// (what a killed or crashed run left behind); returns the paths removed. Best effort: entries that
// cannot be removed are left.
std::vector<std::string> remove_stale_temporaries(const std::string& base);

// Writes `path` atomically and durably: `write(fd, tmp_path)` fills temporary_path(path), which is
// fsynced, renamed over `path`, and the directory fsynced; the temporary file is removed on any
// failure. `what` names the file in messages (reports, HTML, JSON, checkpoint metadata). Throws
// IoError naming the path and the system's reason.
void write_file_atomically(const std::string& path, const std::function<void(int fd, const std::string& tmp_path)>& write,
                           const std::string& what);
void write_file_atomically(const std::string& path, const std::string& bytes, const std::string& what = "file");

// fsyncs the file or directory at `path` (IoError naming it). Directories on filesystems that do not
// support fsync on them (EINVAL) are accepted.
void fsync_path(const std::string& path);

// Renames `from` to `to` unless `to` exists: renameat2(RENAME_NOREPLACE) where the filesystem
// supports it, else link + unlink for a file and, for a directory, rename(2) (which still refuses a
// non-empty target). Returns false when `to` exists, throws IoError for any other failure.
bool rename_no_replace(const std::string& from, const std::string& to);

// Checks, before any work starts, that the file `path` (given by `flag`) can be written: an
// existing `path` must be a regular file, and a probe file created and removed beside it proves the
// directory accepts new files. Throws UsageError naming the flag, the path and the reason.
void check_output_file_writable(const std::string& path, const std::string& flag);

// Checks that the directory `path` (given by `flag`) does not exist and can be created (a probe
// directory is created and removed beside it). Throws UsageError naming the flag.
void check_output_dir_creatable(const std::string& path, const std::string& flag);

}  // namespace resq
