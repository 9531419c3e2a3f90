// Typed exceptions for resq library code. Library code throws; only tools/main.cpp logs and
// chooses the exit code. Messages name the file, tensor or flag and what was expected.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

namespace resq {

// Base class of every error resq throws on purpose.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// A file could not be opened, read, mapped, written or renamed.
class IoError : public Error {
 public:
  using Error::Error;
};

// A file's content is malformed (bad JSON, bad header, out-of-range offsets, wrong sizes...).
class FormatError : public Error {
 public:
  using Error::Error;
};

// A configuration (config.json, recipe JSON, tokenizer.json) is invalid or unsupported.
class ConfigError : public Error {
 public:
  using Error::Error;
};

// Tensor shapes or dtypes do not match what an operation expects.
class ShapeError : public Error {
 public:
  using Error::Error;
};

// A command-line flag or argument combination is invalid.
class UsageError : public Error {
 public:
  using Error::Error;
};

// A computation produced a non-finite value (NaN or infinity) where a finite one is required, e.g.
// the loss of `resq eval` on a model whose weights overflow.
class NumericError : public Error {
 public:
  using Error::Error;
};

// The user interrupted the run (SIGINT / SIGTERM, see common/interrupt.h). Thrown at a safe point so
// that unwinding removes temporary files; tools/main.cpp exits with 128 + signal_number().
class InterruptedError : public Error {
 public:
  InterruptedError(const std::string& what, int signal_number) : Error(what), signal_(signal_number) {}
  int signal_number() const { return signal_; }

 private:
  int signal_;
};

// A resource ran out (e.g. device memory during `quantize --device cuda`); the message says what
// was asked, what is available and what to change.
class ResourceError : public Error {
 public:
  using Error::Error;
};

// A feature is recognized but not (yet) supported.
class UnsupportedError : public Error {
 public:
  using Error::Error;
};

}  // namespace resq

// Throws `ExceptionType(message)` when `condition` is false. The message is only built on failure.
#define RESQ_CHECK_OR_THROW(condition, ExceptionType, message) \
  do {                                                         \
    if (!(condition)) throw ExceptionType(message);            \
  } while (0)
