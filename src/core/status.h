// Status and Result<T>: the error values every library function returns (only main() exits).
#pragma once

#include <optional>
#include <string>
#include <utility>

#include <fmt/format.h>

namespace gptoss {

enum class ErrorCode {
  kOk = 0,
  kInvalidArgument,    // bad user input (flags, ids, JSON, sampling values)
  kNotFound,           // missing file, tensor or key
  kIo,                 // read/write/mmap failures
  kFormat,             // malformed file contents (safetensors header, config, tokenizer)
  kOutOfRange,         // context overflow, id beyond vocabulary
  kResourceExhausted,  // KV cache / memory full
  kUnavailable,        // device or service not available
  kCancelled,          // stopped by the caller (Ctrl-C, client disconnect)
  kInternal,           // broken invariant
};

const char* error_code_name(ErrorCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status ok_status() { return {}; }

  bool ok() const { return code_ == ErrorCode::kOk; }
  ErrorCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "invalid_argument: message"
  std::string to_string() const;

 private:
  ErrorCode code_ = ErrorCode::kOk;
  std::string message_;
};

template <typename... Args>
Status make_error(ErrorCode code, fmt::format_string<Args...> f, Args&&... args) {
  return Status(code, fmt::format(f, std::forward<Args>(args)...));
}

[[noreturn]] void check_failed(const char* file, int line, const char* cond, const std::string& msg);

// Result<T> holds a value or a non-ok Status. (An optional + Status rather than a std::variant:
// GCC 12 reports false -Wmaybe-uninitialized warnings when destroying variant<int, Status>.)
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}         // NOLINT(google-explicit-constructor)
  Result(Status status) : status_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    if (status_.ok()) status_ = Status(ErrorCode::kInternal, "Result constructed from an ok Status without a value");
  }

  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }
  // Reading the value of an error Result is a programmer error: it aborts with the status.
  T& value() & { return checked(), *value_; }
  const T& value() const& { return checked(), *value_; }
  T&& value() && { return checked(), std::move(*value_); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  void checked() const {
    if (!value_) check_failed(__FILE__, __LINE__, "ok()", "value() of a Result holding " + status_.to_string());
  }
  std::optional<T> value_;
  Status status_;
};

}  // namespace gptoss

#define GPTOSS_CONCAT_INNER(a, b) a##b
#define GPTOSS_CONCAT(a, b) GPTOSS_CONCAT_INNER(a, b)

// Returns the Status from the enclosing function when `expr` (a Status) is not ok.
#define GPTOSS_RETURN_IF_ERROR(expr) \
  do {                               \
    ::gptoss::Status _st = (expr);   \
    if (!_st.ok()) return _st;       \
  } while (0)

// `lhs = value of expr` (a Result<T>), or return its Status.
#define GPTOSS_ASSIGN_OR_RETURN(lhs, expr) GPTOSS_ASSIGN_OR_RETURN_IMPL(GPTOSS_CONCAT(_res_, __LINE__), lhs, expr)
#define GPTOSS_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()

// Always-on invariant check for programmer errors (never for user input).
#define GPTOSS_CHECK(cond, ...)                                                               \
  do {                                                                                        \
    if (!(cond)) ::gptoss::check_failed(__FILE__, __LINE__, #cond, fmt::format(__VA_ARGS__)); \
  } while (0)
