// PCRE2-backed regex pre-tokenizer (see pretokenizer.h).
#include "tokenizer/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <fmt/format.h>
#include <pcre2.h>

#include "tokenizer/utf8.h"

namespace gptoss {

namespace {

// Unicode White_Space (PropList.txt), which is what Oniguruma's \s matches in UTF-8 mode.
// PCRE2 with UCP uses \p{Xps} instead, which lacks U+0085 (NEL).
constexpr std::string_view kWhiteSpaceItems =
    "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";

// Letters, marks and numbers that HF `tokenizers` (Oniguruma with Unicode 16 tables) knows but
// Debian's PCRE2 10.42 (Unicode 14) does not: everything assigned as L*, M* or N* in Unicode
// 15.0-16.0. Found by sweeping every codepoint through HF's pre-tokenizer and ours
// (tests/fixtures/tokenizer/make_sweep_golden.py); categories as in UnicodeData.txt. U+0295 moved
// from Ll to Lo; adding it to Lo gives the Lo behaviour wherever a class also holds \p{Ll}, as in
// every o200k class. Newer PCRE2 builds already know these, and a repeated class member is harmless.
struct ExtraRange {
  const char* category;
  uint32_t lo, hi;
};
constexpr ExtraRange kUnicode16Extras[] = {
    {"Lu", 0x1C89, 0x1C89},   {"Lu", 0xA7CB, 0xA7CC},   {"Lu", 0xA7DA, 0xA7DA},   {"Lu", 0xA7DC, 0xA7DC},
    {"Lu", 0x10D50, 0x10D65}, {"Ll", 0x1C8A, 0x1C8A},   {"Ll", 0xA7CD, 0xA7CD},   {"Ll", 0xA7DB, 0xA7DB},
    {"Ll", 0x10D70, 0x10D85}, {"Ll", 0x1DF25, 0x1DF2A}, {"Lm", 0x10D4E, 0x10D4E}, {"Lm", 0x10D6F, 0x10D6F},
    {"Lm", 0x16D40, 0x16D42}, {"Lm", 0x16D6B, 0x16D6C}, {"Lm", 0x1E030, 0x1E06D}, {"Lm", 0x1E4EB, 0x1E4EB},
    {"Lo", 0x295, 0x295},     {"Lo", 0x105C0, 0x105F3}, {"Lo", 0x10D4A, 0x10D4D}, {"Lo", 0x10D4F, 0x10D4F},
    {"Lo", 0x10EC2, 0x10EC4}, {"Lo", 0x1123F, 0x11240}, {"Lo", 0x11380, 0x11389}, {"Lo", 0x1138B, 0x1138B},
    {"Lo", 0x1138E, 0x1138E}, {"Lo", 0x11390, 0x113B5}, {"Lo", 0x113B7, 0x113B7}, {"Lo", 0x113D1, 0x113D1},
    {"Lo", 0x113D3, 0x113D3}, {"Lo", 0x11BC0, 0x11BE0}, {"Lo", 0x11F02, 0x11F02}, {"Lo", 0x11F04, 0x11F10},
    {"Lo", 0x11F12, 0x11F33}, {"Lo", 0x1342F, 0x1342F}, {"Lo", 0x13441, 0x13446}, {"Lo", 0x13460, 0x143FA},
    {"Lo", 0x16100, 0x1611D}, {"Lo", 0x16D43, 0x16D6A}, {"Lo", 0x18CFF, 0x18CFF}, {"Lo", 0x1B132, 0x1B132},
    {"Lo", 0x1B155, 0x1B155}, {"Lo", 0x1E4D0, 0x1E4EA}, {"Lo", 0x1E5D0, 0x1E5ED}, {"Lo", 0x1E5F0, 0x1E5F0},
    {"Lo", 0x2B739, 0x2B739}, {"Lo", 0x2EBF0, 0x2EE5D}, {"Lo", 0x31350, 0x323AF}, {"Mn", 0x897, 0x897},
    {"Mn", 0xECE, 0xECE},     {"Mn", 0x10D69, 0x10D6D}, {"Mn", 0x10EFC, 0x10EFF}, {"Mn", 0x11241, 0x11241},
    {"Mn", 0x113BB, 0x113C0}, {"Mn", 0x113CE, 0x113CE}, {"Mn", 0x113D0, 0x113D0}, {"Mn", 0x113D2, 0x113D2},
    {"Mn", 0x113E1, 0x113E2}, {"Mn", 0x11F00, 0x11F01}, {"Mn", 0x11F36, 0x11F3A}, {"Mn", 0x11F40, 0x11F40},
    {"Mn", 0x11F42, 0x11F42}, {"Mn", 0x11F5A, 0x11F5A}, {"Mn", 0x13440, 0x13440}, {"Mn", 0x13447, 0x13455},
    {"Mn", 0x1611E, 0x16129}, {"Mn", 0x1612D, 0x1612F}, {"Mn", 0x1E08F, 0x1E08F}, {"Mn", 0x1E4EC, 0x1E4EF},
    {"Mn", 0x1E5EE, 0x1E5EF}, {"Mc", 0xCF3, 0xCF3},     {"Mc", 0x113B8, 0x113BA}, {"Mc", 0x113C2, 0x113C2},
    {"Mc", 0x113C5, 0x113C5}, {"Mc", 0x113C7, 0x113CA}, {"Mc", 0x113CC, 0x113CD}, {"Mc", 0x113CF, 0x113CF},
    {"Mc", 0x11F03, 0x11F03}, {"Mc", 0x11F34, 0x11F35}, {"Mc", 0x11F3E, 0x11F3F}, {"Mc", 0x11F41, 0x11F41},
    {"Mc", 0x1612A, 0x1612C}, {"Nd", 0x10D40, 0x10D49}, {"Nd", 0x116D0, 0x116E3}, {"Nd", 0x11BF0, 0x11BF9},
    {"Nd", 0x11F50, 0x11F59}, {"Nd", 0x16130, 0x16139}, {"Nd", 0x16D70, 0x16D79}, {"Nd", 0x1CCF0, 0x1CCF9},
    {"Nd", 0x1E4F0, 0x1E4F9}, {"Nd", 0x1E5F1, 0x1E5FA}, {"No", 0x1D2C0, 0x1D2D3},
};

// Class items ("\x{lo}-\x{hi}...") to add to the property \p{name}; empty when none.
std::string extra_items(std::string_view name) {
  std::string items;
  for (const ExtraRange& r : kUnicode16Extras) {
    const std::string_view cat(r.category);
    // "L" covers Lu, Ll, Lm, Lo...; "Lu" only itself.
    if (cat == name || (name.size() == 1 && cat[0] == name[0])) {
      items += fmt::format("\\x{{{:X}}}", r.lo);
      if (r.hi != r.lo) items += fmt::format("-\\x{{{:X}}}", r.hi);
    }
  }
  return items;
}

}  // namespace

std::string adapt_regex_for_pcre2(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 1024);
  bool in_class = false;
  size_t class_start = 0;  // index in `p` of the first char after '[' or '[^'
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[i + 1];
      if (e == 's' || (e == 'S' && !in_class)) {
        if (in_class) {
          out.append(kWhiteSpaceItems);
        } else {
          out.append(e == 's' ? "[" : "[^").append(kWhiteSpaceItems).append("]");
        }
        ++i;
        continue;
      }
      const size_t close =
          e == 'p' && i + 2 < p.size() && p[i + 2] == '{' ? p.find('}', i + 3) : std::string_view::npos;
      if (close != std::string_view::npos) {
        const std::string_view escape = p.substr(i, close + 1 - i);
        const std::string extras = extra_items(p.substr(i + 3, close - i - 3));
        if (extras.empty()) {
          out.append(escape);
        } else if (in_class) {
          out.append(escape).append(extras);
        } else {
          out.append("[").append(escape).append(extras).append("]");
        }
        i = close;
        continue;
      }
      out.push_back(c);
      out.push_back(e);
      ++i;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      class_start = i + 1;
      if (class_start < p.size() && p[class_start] == '^') ++class_start;
    } else if (in_class && c == ']' && i != class_start) {
      in_class = false;  // a ']' right after '[' or '[^' is a literal
    }
    out.push_back(c);
  }
  return out;
}

struct PreTokenizer::Impl {
  pcre2_code* code = nullptr;
  ~Impl() {
    if (code) pcre2_code_free(code);
  }
};

PreTokenizer::~PreTokenizer() = default;

Result<std::unique_ptr<PreTokenizer>> PreTokenizer::create(const std::string& pattern) {
  std::unique_ptr<PreTokenizer> pt(new PreTokenizer());
  pt->impl_ = std::make_unique<Impl>();
  pt->pattern_ = adapt_regex_for_pcre2(pattern);
  int err = 0;
  PCRE2_SIZE err_off = 0;
  // MATCH_INVALID_UTF lets arbitrary bytes be matched safely: invalid sequences never match.
  pt->impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pt->pattern_.data()), pt->pattern_.size(),
                                  PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &err_off, nullptr);
  if (!pt->impl_->code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof(msg));
    return make_error(ErrorCode::kFormat, "pre-tokenizer regex does not compile at offset {}: {}", err_off,
                      reinterpret_cast<const char*>(msg));
  }
  // JIT is an optimisation only: when unavailable, pcre2_match falls back to the interpreter.
  pcre2_jit_compile(pt->impl_->code, PCRE2_JIT_COMPLETE);
  return pt;
}

void PreTokenizer::split(std::string_view text, std::vector<std::string_view>* pieces) const {
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(impl_->code, nullptr);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t emitted = 0;  // text before this offset is already in *pieces
  size_t search = 0;   // where the next match attempt starts
  while (search < text.size()) {
    // A negative result is "no further match" (or a matcher failure): the rest becomes one piece
    // below, so no byte is ever lost.
    if (pcre2_match(impl_->code, subject, text.size(), search, 0, md, nullptr) < 0) break;
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t s = ov[0], e = ov[1];
    if (e == s) {
      // An empty match makes no progress; step over one character and keep it for the next gap.
      const utf8::SequenceScan scan = utf8::scan_sequence(text, s);
      search = s + (scan.complete ? scan.length : 1);
      continue;
    }
    if (s > emitted) pieces->push_back(text.substr(emitted, s - emitted));
    pieces->push_back(text.substr(s, e - s));
    emitted = search = e;
  }
  if (emitted < text.size()) pieces->push_back(text.substr(emitted));
  pcre2_match_data_free(md);
}

}  // namespace gptoss
