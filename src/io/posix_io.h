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

using resq::FdGuard;  // common/file.h

}  // namespace resq::io_detail
