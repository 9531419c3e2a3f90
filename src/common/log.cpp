// The logging facade's implementation: the only translation unit in resq that includes spdlog/{fmt}.
#include "resq/common/log.h"

#include <spdlog/logger.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include <cstdarg>
#include <cstdio>
#include <memory>

#include "resq/common/error.h"

namespace resq {

std::string strprintf(const char* fmt, ...) {
  // Most messages fit the stack buffer; longer ones are formatted again into an exact-size string.
  char buffer[256];
  va_list args;
  va_start(args, fmt);
  va_list retry;
  va_copy(retry, args);
  const int needed = std::vsnprintf(buffer, sizeof(buffer), fmt, args);
  va_end(args);
  if (needed < 0) {
    va_end(retry);
    throw Error(std::string("strprintf: invalid format string '") + fmt + "'");
  }
  std::string out;
  if (static_cast<size_t>(needed) < sizeof(buffer)) {
    out.assign(buffer, static_cast<size_t>(needed));
  } else {
    out.resize(static_cast<size_t>(needed));
    // C++17: data() is writable, and writing the terminator at out[needed] is allowed.
    std::vsnprintf(out.data(), out.size() + 1, fmt, retry);
  }
  va_end(retry);
  return out;
}

namespace log {
namespace {

spdlog::level::level_enum to_spdlog(Level level) {
  switch (level) {
    case Level::trace: return spdlog::level::trace;
    case Level::debug: return spdlog::level::debug;
    case Level::info: return spdlog::level::info;
    case Level::warn: return spdlog::level::warn;
    case Level::error: return spdlog::level::err;
    case Level::critical: return spdlog::level::critical;
    case Level::off: return spdlog::level::off;
  }
  return spdlog::level::off;
}

Level from_spdlog(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace: return Level::trace;
    case spdlog::level::debug: return Level::debug;
    case spdlog::level::info: return Level::info;
    case spdlog::level::warn: return Level::warn;
    case spdlog::level::err: return Level::error;
    case spdlog::level::critical: return Level::critical;
    default: return Level::off;
  }
}

// Created on first use (thread-safe static), so logging works before and without any set-up call:
// stderr, colored only when stderr is a terminal, level info. Logs and progress go to stderr;
// results go to stdout.
spdlog::logger& logger() {
  static const std::shared_ptr<spdlog::logger> instance = [] {
    auto l = std::make_shared<spdlog::logger>("resq", std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    l->set_pattern("[%H:%M:%S.%e] [%^%l%$] %v");
    l->set_level(spdlog::level::info);
    return l;
  }();
  return *instance;
}

}  // namespace

void set_level(const std::string& name) {
  // spdlog's own parser, so the accepted names stay exactly those --log-level always took; it
  // answers `off` for unknown names.
  const auto level = spdlog::level::from_str(name);
  if (level == spdlog::level::off && name != "off") {
    throw UsageError("--log-level: expected trace, debug, info, warn, error or off, got '" + name + "'");
  }
  logger().set_level(level);
}

void set_level(Level level) { logger().set_level(to_spdlog(level)); }

Level level() { return from_spdlog(logger().level()); }

bool enabled(Level level) { return level != Level::off && logger().should_log(to_spdlog(level)); }

void write(Level level, const std::string& message) {
  if (!enabled(level)) return;
  // The string_view overload logs the text as is: braces in messages are not format fields.
  logger().log(to_spdlog(level), spdlog::string_view_t(message.data(), message.size()));
}

}  // namespace log
}  // namespace resq
