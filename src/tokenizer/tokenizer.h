// o200k_harmony byte-level BPE tokenizer loaded from a Hugging Face tokenizer.json.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace gptoss {

// Harmony structural token ids (fixed by the o200k_harmony vocabulary).
namespace harmony_tokens {
inline constexpr int32_t kStartOfText = 199998;
inline constexpr int32_t kEndOfText = 199999;
inline constexpr int32_t kReturn = 200002;
inline constexpr int32_t kConstrain = 200003;
inline constexpr int32_t kChannel = 200005;
inline constexpr int32_t kStart = 200006;
inline constexpr int32_t kEnd = 200007;
inline constexpr int32_t kMessage = 200008;
inline constexpr int32_t kCall = 200012;
}  // namespace harmony_tokens

// Thread-safety: a loaded Tokenizer is immutable apart from an internal, mutex-guarded BPE cache,
// so one instance may be shared by any number of threads.
class Tokenizer {
 public:
  // Loads tokenizer.json (vocab, merges, added tokens, pre-tokenizer regex). Errors name the file.
  static Result<std::unique_ptr<Tokenizer>> load(const std::string& path);
  ~Tokenizer();

  // Encodes UTF-8 text exactly as HF `tokenizers` does. With allow_special, added/special token
  // strings in the text become their ids (leftmost, longest first); without it they are encoded as
  // ordinary text (user content is never parsed for them). Invalid UTF-8 bytes are never matched by
  // the pre-tokenizer regex; they form pieces of their own and are encoded byte-wise, so
  // decode(encode(x)) == x holds for any bytes x.
  std::vector<int32_t> encode(std::string_view text, bool allow_special = false) const;

  // The pre-tokenizer pieces of `text` (regex matches and the gaps between them, in order, covering
  // the text), appended to *pieces as views into `text`. No special-token handling.
  void pre_tokenize(std::string_view text, std::vector<std::string_view>* pieces) const;

  // Bytes of one token (special tokens give their literal text); empty for unknown ids.
  std::string_view token_bytes(int32_t id) const;
  bool is_valid_id(int32_t id) const;
  bool is_special(int32_t id) const;
  std::optional<int32_t> special_id(std::string_view text) const;  // "<|start|>" → 200006
  int32_t vocab_size() const;  // number of ids the tokenizer defines (200019 for o200k_harmony)

  // ids → UTF-8 text; invalid byte sequences become U+FFFD. Error for ids outside the vocabulary.
  Result<std::string> decode(const std::vector<int32_t>& ids) const;

 private:
  Tokenizer();
  std::unique_ptr<struct TokenizerImpl> impl_;
};

// The tokenizer.json to use: `flag_value` when non-empty, else $GPTOSS_TOKENIZER when set and
// non-empty, else an error telling how to pass one.
Result<std::string> resolve_tokenizer_path(const std::string& flag_value);

// Streaming-safe detokenizer: push ids one at a time, get the text that is complete so far;
// an incomplete multi-byte UTF-8 sequence is held back until it completes; invalid bytes
// become U+FFFD; flush() emits what is left (an incomplete tail becomes U+FFFD). The
// concatenation of all outputs equals the lossy decode of all bytes at once. An id the
// tokenizer does not define counts as one invalid byte: it flushes the held bytes and adds U+FFFD.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok) : tok_(tok) {}
  std::string push(int32_t id);
  std::string push_bytes(std::string_view bytes);
  std::string flush();
  // True while an incomplete UTF-8 sequence is held back.
  bool has_pending() const { return !pending_.empty(); }

 private:
  const Tokenizer& tok_;
  std::string pending_;
};

}  // namespace gptoss
