// Minimal JSON scanner (see json_scan.h).
#include "tokenizer/json_scan.h"

#include <cstring>

#include "tokenizer/utf8.h"

namespace gptoss {

void JsonScanner::skip_ws() {
  while (pos_ < text_.size()) {
    const char c = text_[pos_];
    if (c != ' ' && c != '\n' && c != '\r' && c != '\t') break;
    ++pos_;
  }
}

Status JsonScanner::error(std::string_view what) const {
  return make_error(ErrorCode::kFormat, "{}: invalid JSON at byte {}: {}", source_, pos_, what);
}

Status JsonScanner::expect(char c) {
  skip_ws();
  if (pos_ >= text_.size() || text_[pos_] != c) return error(fmt::format("expected '{}'", c));
  ++pos_;
  return {};
}

bool JsonScanner::consume(char c) {
  skip_ws();
  if (pos_ < text_.size() && text_[pos_] == c) {
    ++pos_;
    return true;
  }
  return false;
}

bool JsonScanner::peek_is(char c) {
  skip_ws();
  return pos_ < text_.size() && text_[pos_] == c;
}

namespace {
int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
}  // namespace

Status JsonScanner::parse_string(std::string* out) {
  GPTOSS_RETURN_IF_ERROR(expect('"'));
  out->clear();
  while (true) {
    // Copy the run up to the next quote or backslash in one go (vocab keys rarely escape).
    const char* start = text_.data() + pos_;
    const char* end = text_.data() + text_.size();
    const char* p = start;
    while (p < end && *p != '"' && *p != '\\') ++p;
    out->append(start, p - start);
    pos_ = p - text_.data();
    if (p >= end) return error("unterminated string");
    ++pos_;
    if (*p == '"') return {};
    if (pos_ >= text_.size()) return error("unterminated escape");
    const char e = text_[pos_++];
    switch (e) {
      case '"': out->push_back('"'); break;
      case '\\': out->push_back('\\'); break;
      case '/': out->push_back('/'); break;
      case 'b': out->push_back('\b'); break;
      case 'f': out->push_back('\f'); break;
      case 'n': out->push_back('\n'); break;
      case 'r': out->push_back('\r'); break;
      case 't': out->push_back('\t'); break;
      case 'u': {
        auto read4 = [&](uint32_t* v) {
          if (pos_ + 4 > text_.size()) return false;
          *v = 0;
          for (int k = 0; k < 4; ++k) {
            const int h = hex_value(text_[pos_ + k]);
            if (h < 0) return false;
            *v = *v * 16 + h;
          }
          pos_ += 4;
          return true;
        };
        uint32_t cp;
        if (!read4(&cp)) return error("bad \\u escape");
        if (cp >= 0xD800 && cp <= 0xDBFF && pos_ + 1 < text_.size() && text_[pos_] == '\\' && text_[pos_ + 1] == 'u') {
          const size_t save = pos_;
          pos_ += 2;
          uint32_t lo;
          if (read4(&lo) && lo >= 0xDC00 && lo <= 0xDFFF) {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else {
            pos_ = save;
          }
        }
        // A lone surrogate cannot be represented in UTF-8; keep it visible as U+FFFD.
        if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;
        utf8::append_codepoint(cp, out);
        break;
      }
      default: return error("bad escape");
    }
  }
}

Status JsonScanner::parse_int(long long* out) {
  skip_ws();
  const size_t start = pos_;
  bool neg = false;
  if (pos_ < text_.size() && text_[pos_] == '-') {
    neg = true;
    ++pos_;
  }
  long long v = 0;
  size_t digits = 0;
  while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
    if (v > (1LL << 40)) return error("integer too large");
    v = v * 10 + (text_[pos_] - '0');
    ++pos_;
    ++digits;
  }
  if (digits == 0) {
    pos_ = start;
    return error("expected an integer");
  }
  if (pos_ < text_.size() && (text_[pos_] == '.' || text_[pos_] == 'e' || text_[pos_] == 'E')) {
    return error("expected an integer, got a fractional number");
  }
  *out = neg ? -v : v;
  return {};
}

Status JsonScanner::skip_string() {
  ++pos_;  // opening quote
  while (pos_ < text_.size()) {
    const char c = text_[pos_++];
    if (c == '\\') {
      ++pos_;
    } else if (c == '"') {
      return {};
    }
  }
  return error("unterminated string");
}

Status JsonScanner::skip_scalar() {
  const size_t start = pos_;
  while (pos_ < text_.size()) {
    const char c = text_[pos_];
    if (c == ',' || c == '}' || c == ']' || c == ' ' || c == '\n' || c == '\r' || c == '\t') break;
    ++pos_;
  }
  if (pos_ == start) return error("expected a value");
  return {};
}

Status JsonScanner::skip_value(std::string_view* span) {
  skip_ws();
  if (pos_ >= text_.size()) return error("unexpected end of input");
  const size_t start = pos_;
  const char c = text_[pos_];
  if (c == '"') {
    GPTOSS_RETURN_IF_ERROR(skip_string());
  } else if (c == '{' || c == '[') {
    // Nested containers: track depth only; the span's consumer validates the structure.
    int depth = 0;
    while (pos_ < text_.size()) {
      const char d = text_[pos_];
      if (d == '"') {
        GPTOSS_RETURN_IF_ERROR(skip_string());
        continue;
      }
      ++pos_;
      if (d == '{' || d == '[') {
        ++depth;
      } else if (d == '}' || d == ']') {
        if (--depth == 0) break;
      }
    }
    if (depth != 0) return error("unbalanced brackets");
  } else {
    GPTOSS_RETURN_IF_ERROR(skip_scalar());
  }
  if (span) *span = text_.substr(start, pos_ - start);
  return {};
}

}  // namespace gptoss
