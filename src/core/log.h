// Leveled logging to stderr with timestamps. Quiet (warnings and errors) by default; `--verbose`
// or GPTOSS_LOG=debug|info raises the level. The level is per process, set once by main().
#pragma once

#include <fmt/format.h>

#include <string>

namespace gptoss {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

void log_set_level(LogLevel level);
LogLevel log_level();
// Reads GPTOSS_LOG (debug|info|warn|error); leaves the level alone when unset or unknown.
void log_init_from_env();
void log_write(LogLevel level, const std::string& msg);

template <typename... Args>
void log_debug(fmt::format_string<Args...> f, Args&&... a) {
  if (log_level() <= LogLevel::kDebug) log_write(LogLevel::kDebug, fmt::format(f, std::forward<Args>(a)...));
}
template <typename... Args>
void log_info(fmt::format_string<Args...> f, Args&&... a) {
  if (log_level() <= LogLevel::kInfo) log_write(LogLevel::kInfo, fmt::format(f, std::forward<Args>(a)...));
}
template <typename... Args>
void log_warn(fmt::format_string<Args...> f, Args&&... a) {
  if (log_level() <= LogLevel::kWarn) log_write(LogLevel::kWarn, fmt::format(f, std::forward<Args>(a)...));
}
template <typename... Args>
void log_error(fmt::format_string<Args...> f, Args&&... a) {
  log_write(LogLevel::kError, fmt::format(f, std::forward<Args>(a)...));
}

}  // namespace gptoss
