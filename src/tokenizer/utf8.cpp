// UTF-8 validation, lossy decoding and codepoint iteration (see utf8.h).
#include "tokenizer/utf8.h"

namespace gptoss::utf8 {

namespace {

// Range of the second byte allowed after each lead byte (Unicode Table 3-7); the third and
// fourth bytes are always 80..BF. Returns the total sequence length, or 0 for a bad lead byte.
int lead_info(uint8_t b, uint8_t* lo, uint8_t* hi) {
  *lo = 0x80;
  *hi = 0xBF;
  if (b < 0x80) return 1;
  if (b >= 0xC2 && b <= 0xDF) return 2;
  if (b == 0xE0) {
    *lo = 0xA0;
    return 3;
  }
  if (b == 0xED) {
    *hi = 0x9F;  // excludes the surrogates D800..DFFF
    return 3;
  }
  if (b >= 0xE1 && b <= 0xEF) return 3;
  if (b == 0xF0) {
    *lo = 0x90;
    return 4;
  }
  if (b >= 0xF1 && b <= 0xF3) return 4;
  if (b == 0xF4) {
    *hi = 0x8F;  // nothing above U+10FFFF
    return 4;
  }
  return 0;
}

}  // namespace

SequenceScan scan_sequence(std::string_view bytes, size_t pos) {
  uint8_t lo, hi;
  const int need = lead_info(static_cast<uint8_t>(bytes[pos]), &lo, &hi);
  if (need == 0) return {0, false};
  size_t len = 1;
  for (int k = 1; k < need; ++k) {
    if (pos + len >= bytes.size()) return {len, false};  // ran out inside a valid prefix
    const uint8_t c = static_cast<uint8_t>(bytes[pos + len]);
    const uint8_t l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (c < l || c > h) return {len, false};  // maximal subpart ends before c
    ++len;
  }
  return {len, true};
}

size_t append_lossy(std::string_view bytes, std::string* out, bool hold_incomplete) {
  size_t pos = 0;
  out->reserve(out->size() + bytes.size());
  while (pos < bytes.size()) {
    // Fast path for ASCII runs, the common case in model output.
    if (static_cast<uint8_t>(bytes[pos]) < 0x80) {
      size_t end = pos + 1;
      while (end < bytes.size() && static_cast<uint8_t>(bytes[end]) < 0x80) ++end;
      out->append(bytes.substr(pos, end - pos));
      pos = end;
      continue;
    }
    const SequenceScan s = scan_sequence(bytes, pos);
    if (s.complete) {
      out->append(bytes.substr(pos, s.length));
      pos += s.length;
    } else if (s.length == 0) {
      out->append(kReplacement);
      pos += 1;
    } else if (pos + s.length == bytes.size() && hold_incomplete) {
      return pos;  // a sequence that may still complete with more bytes
    } else {
      out->append(kReplacement);
      pos += s.length;
    }
  }
  return pos;
}

std::string to_valid_lossy(std::string_view bytes) {
  std::string out;
  append_lossy(bytes, &out, /*hold_incomplete=*/false);
  return out;
}

bool is_valid(std::string_view bytes) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    const SequenceScan s = scan_sequence(bytes, pos);
    if (!s.complete) return false;
    pos += s.length;
  }
  return true;
}

void append_codepoint(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

uint32_t next_codepoint(std::string_view text, size_t* pos) {
  const SequenceScan s = scan_sequence(text, *pos);
  if (!s.complete) {
    *pos += s.length == 0 ? 1 : s.length;
    return 0xFFFD;
  }
  const auto* p = reinterpret_cast<const uint8_t*>(text.data() + *pos);
  uint32_t cp;
  switch (s.length) {
    case 1: cp = p[0]; break;
    case 2: cp = ((p[0] & 0x1Fu) << 6) | (p[1] & 0x3Fu); break;
    case 3: cp = ((p[0] & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu); break;
    default: cp = ((p[0] & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu); break;
  }
  *pos += s.length;
  return cp;
}

size_t codepoint_count(std::string_view text) {
  size_t n = 0, pos = 0;
  while (pos < text.size()) {
    next_codepoint(text, &pos);
    ++n;
  }
  return n;
}

}  // namespace gptoss::utf8
