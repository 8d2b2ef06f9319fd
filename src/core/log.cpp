#include "core/log.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>

namespace gptoss {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::kWarn)};  // process-wide verbosity, set by main
std::mutex g_write_mu;
}  // namespace

void log_set_level(LogLevel level) {
  g_level.store(static_cast<int>(level));
}
LogLevel log_level() {
  return static_cast<LogLevel>(g_level.load());
}

void log_init_from_env() {
  const char* v = std::getenv("GPTOSS_LOG");
  if (!v) return;
  if (!std::strcmp(v, "debug"))
    log_set_level(LogLevel::kDebug);
  else if (!std::strcmp(v, "info"))
    log_set_level(LogLevel::kInfo);
  else if (!std::strcmp(v, "warn"))
    log_set_level(LogLevel::kWarn);
  else if (!std::strcmp(v, "error"))
    log_set_level(LogLevel::kError);
}

void log_write(LogLevel level, const std::string& msg) {
  static const char* kNames[] = {"debug", "info", "warn", "error"};
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  localtime_r(&t, &tm);
  char ts[32];
  std::strftime(ts, sizeof ts, "%H:%M:%S", &tm);
  std::lock_guard<std::mutex> lock(g_write_mu);
  std::fprintf(stderr, "[%s.%03d %s] %s\n", ts, static_cast<int>(ms), kNames[static_cast<int>(level)], msg.c_str());
}

}  // namespace gptoss
