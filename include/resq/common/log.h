// resq's logging facade: leveled messages to stderr, plus strprintf to format them.
// Why a facade: spdlog (and the {fmt} it is built on) is reached only from src/common/log.cpp, so no
// translation unit that includes torch headers ever includes a second {fmt} — pip PyTorch ships its
// own, newer {fmt} in torch/include, which breaks Debian's spdlog 1.10 when both are on one include
// path. Callers format with strprintf (printf syntax, checked by -Wformat) and pass a std::string.
#pragma once

#include <string>

namespace resq {

// printf-style formatting into a std::string, of any length. The format attribute makes the
// compiler check every call's arguments against the format string (-Wformat, in -Wall).
std::string strprintf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

namespace log {

// Severity, in increasing order; a message is written when its level >= the current level.
enum class Level { trace, debug, info, warn, error, critical, off };

// Sets the threshold. `name` is a --log-level value: trace, debug, info, warning (or warn), error
// (or err), critical or off; anything else throws UsageError naming the accepted values.
void set_level(const std::string& name);
void set_level(Level level);
Level level();
// True when a message at `level` would be written: lets callers skip costly formatting.
bool enabled(Level level);

// Writes `message` (already formatted; no further interpretation of braces or percent signs) to
// stderr as `[HH:MM:SS.mmm] [level] message` when `level` is enabled.
void write(Level level, const std::string& message);
inline void trace(const std::string& message) { write(Level::trace, message); }
inline void debug(const std::string& message) { write(Level::debug, message); }
inline void info(const std::string& message) { write(Level::info, message); }
inline void warn(const std::string& message) { write(Level::warn, message); }
inline void error(const std::string& message) { write(Level::error, message); }

}  // namespace log
}  // namespace resq
