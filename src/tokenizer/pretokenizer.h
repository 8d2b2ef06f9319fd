// Regex pre-tokenizer (HF "Split" with behavior Isolated) on PCRE2 with UTF + UCP + JIT.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace gptoss {

// Splits text into pieces: every regex match is a piece, and so is every run of text between
// matches (HF keeps unmatched text as pieces too). Invalid UTF-8 never matches, so invalid bytes
// end up in such gap pieces and are still tokenized byte-wise. Thread-safe after creation.
class PreTokenizer {
 public:
  // Compiles `pattern` (an HF/Oniguruma regex) after adapt_regex_for_pcre2(). Errors name the offset.
  static Result<std::unique_ptr<PreTokenizer>> create(const std::string& pattern);
  ~PreTokenizer();

  // Appends the pieces of `text` (views into it) to *pieces, in order; they cover the text.
  void split(std::string_view text, std::vector<std::string_view>* pieces) const;

  // The pattern actually compiled (after adaptation), for diagnostics.
  const std::string& compiled_pattern() const { return pattern_; }

 private:
  PreTokenizer() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string pattern_;
};

// Makes PCRE2 match what HF's Oniguruma matches: \s and \S become an explicit Unicode White_Space
// class (PCRE2's \s lacks U+0085), and the general-category escapes \p{L}, \p{Lu}, ..., \p{M},
// \p{N}, ... gain the codepoints Unicode 15-16 assigned, which PCRE2 10.42 (Unicode 14) lacks.
// Exposed for tests.
std::string adapt_regex_for_pcre2(std::string_view pattern);

}  // namespace gptoss
