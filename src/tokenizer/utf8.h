// UTF-8 helpers shared by the tokenizer and the harmony parser: lossy decoding that replaces
// invalid sequences with U+FFFD the way Python/Rust do, and codepoint iteration.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace gptoss::utf8 {

inline constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Length of the longest prefix of `bytes[pos..]` that is a valid-so-far UTF-8 sequence, and
// whether it is complete. A result with `length == 0` means the byte at `pos` cannot start a
// sequence. `complete == false` with `length > 0` means the input ended inside a sequence that
// could still become valid.
struct SequenceScan {
  size_t length = 0;
  bool complete = false;
};
SequenceScan scan_sequence(std::string_view bytes, size_t pos);

// Appends `bytes` to `out` as valid UTF-8: each maximal invalid subpart becomes one U+FFFD
// (Unicode "best practice", as Python's errors="replace" and Rust's from_utf8_lossy). When
// `hold_incomplete` is true, an incomplete but valid-so-far sequence at the very end is not
// emitted; its start offset is returned so the caller can keep those bytes. Otherwise it becomes
// one U+FFFD and the return value is bytes.size().
size_t append_lossy(std::string_view bytes, std::string* out, bool hold_incomplete);

// Whole-string lossy conversion.
std::string to_valid_lossy(std::string_view bytes);

// True when `bytes` is entirely valid UTF-8.
bool is_valid(std::string_view bytes);

// Appends the UTF-8 encoding of codepoint `cp` (no validation of surrogates).
void append_codepoint(uint32_t cp, std::string* out);

// Decodes the codepoint starting at `pos` of valid UTF-8 text and advances `pos`. Invalid bytes
// decode as one U+FFFD each so callers never loop forever.
uint32_t next_codepoint(std::string_view text, size_t* pos);

// Number of codepoints in valid UTF-8 text (invalid bytes count one each).
size_t codepoint_count(std::string_view text);

}  // namespace gptoss::utf8
