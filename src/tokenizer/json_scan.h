// A minimal, fast JSON scanner used to load the large vocab/merges sections of tokenizer.json
// without building a DOM (nlohmann parses the small sections from the spans this finds).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "core/status.h"

namespace gptoss {

// Walks a JSON document held in memory. Errors name the source (e.g. the file path) and the
// byte offset. Not thread-safe; one cursor per parse.
class JsonScanner {
 public:
  JsonScanner(std::string_view text, std::string source) : text_(text), source_(std::move(source)) {}

  size_t pos() const { return pos_; }
  void skip_ws();
  // Consumes `c` (after whitespace) or fails.
  Status expect(char c);
  // After whitespace: consumes `c` and returns true when it is next, else leaves it.
  bool consume(char c);
  // True when the next non-space byte is `c` (consumes nothing else).
  bool peek_is(char c);
  // Parses a JSON string into *out: escapes decoded, a pair of \u escapes holding UTF-16 surrogates
  // joined into one code point.
  Status parse_string(std::string* out);
  // Parses an integer number into *out.
  Status parse_int(long long* out);
  // Skips one value of any type; *span receives its exact text.
  Status skip_value(std::string_view* span);
  // Error at the current position.
  Status error(std::string_view what) const;

 private:
  Status skip_string();
  Status skip_scalar();
  std::string_view text_;
  std::string source_;
  size_t pos_ = 0;
};

}  // namespace gptoss
