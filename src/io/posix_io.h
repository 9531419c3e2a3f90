// Small POSIX helpers shared by the safetensors reader and writer (private to src/io).
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <string>

#include "resq/common/error.h"
#include "resq/common/file.h"

namespace resq::io_detail {

inline std::string in_quotes(const std::string& s) { return "'" + s + "'"; }

// Checked a * b for sizes; false on overflow.
inline bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_mul_overflow(a, b, out); }

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
    int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

}  // namespace resq::io_detail
