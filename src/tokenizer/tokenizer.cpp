// Byte-level BPE encode/decode with HF `tokenizers` semantics (see tokenizer.h).
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <nlohmann/json.hpp>
#include <queue>

#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"

namespace gptoss {

// ---------------------------------------------------------------------------------------------
// Hash tables

namespace {
size_t table_size_for(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap <<= 1;  // load factor <= 0.5 keeps linear probes short
  return cap;
}
uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}
}  // namespace

void BytesToId::reserve(size_t n) {
  slots_.assign(table_size_for(n), Slot{});
  mask_ = slots_.size() - 1;
  size_ = 0;
}

bool BytesToId::insert(std::string_view bytes, int32_t id) {
  size_t i = std::hash<std::string_view>{}(bytes)&mask_;
  while (slots_[i].id >= 0) {
    if (slots_[i].key == bytes) return false;
    i = (i + 1) & mask_;
  }
  slots_[i] = {bytes, id};
  ++size_;
  return true;
}

int32_t BytesToId::find(std::string_view bytes) const {
  if (slots_.empty()) return -1;
  size_t i = std::hash<std::string_view>{}(bytes)&mask_;
  while (slots_[i].id >= 0) {
    if (slots_[i].key == bytes) return slots_[i].id;
    i = (i + 1) & mask_;
  }
  return -1;
}

void PairMerges::reserve(size_t n) {
  slots_.assign(table_size_for(n), Slot{});
  mask_ = slots_.size() - 1;
  size_ = 0;
}

void PairMerges::insert(int32_t a, int32_t b, Merge m) {
  if ((size_ + 1) * 2 > slots_.size()) {
    // Grow: rehash everything into a table twice the size.
    std::vector<Slot> old = std::move(slots_);
    reserve(std::max<size_t>(old.size(), 16));
    for (const Slot& s : old) {
      if (s.key != kEmpty) insert(static_cast<int32_t>(s.key >> 32), static_cast<int32_t>(s.key & 0xffffffffu), s.m);
    }
  }
  const uint64_t key = key_of(a, b);
  size_t i = mix64(key) & mask_;
  while (slots_[i].key != kEmpty && slots_[i].key != key) i = (i + 1) & mask_;
  if (slots_[i].key == kEmpty) ++size_;
  slots_[i] = {key, m};
}

const PairMerges::Merge* PairMerges::find(int32_t a, int32_t b) const {
  if (slots_.empty()) return nullptr;
  const uint64_t key = key_of(a, b);
  size_t i = mix64(key) & mask_;
  while (slots_[i].key != kEmpty) {
    if (slots_[i].key == key) return &slots_[i].m;
    i = (i + 1) & mask_;
  }
  return nullptr;
}

// ---------------------------------------------------------------------------------------------
// Loading

namespace {

// Adds one token's bytes to the per-id tables (the arena grows; offsets stay valid).
void set_token(TokenizerImpl* t, int32_t id, uint32_t offset, uint32_t length) {
  if (static_cast<size_t>(id) >= t->offset.size()) {
    t->offset.resize(id + 1, 0);
    t->length.resize(id + 1, 0);
    t->valid.resize(id + 1, 0);
    t->special.resize(id + 1, 0);
  }
  t->offset[id] = offset;
  t->length[id] = length;
  t->valid[id] = 1;
}

Status load_added_tokens(TokenizerImpl* t, const nlohmann::json& added) {
  if (added.is_null()) return {};
  if (!added.is_array()) return make_error(ErrorCode::kFormat, "{}: added_tokens is not an array", t->path);
  for (const auto& a : added) {
    if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
        !a["content"].is_string()) {
      return make_error(ErrorCode::kFormat, "{}: added token without integer id and string content", t->path);
    }
    const long long id = a["id"].get<long long>();
    const std::string content = a["content"].get<std::string>();
    if (id < 0 || id >= (1 << 24) || content.empty()) {
      return make_error(ErrorCode::kFormat, "{}: bad added token id {} / content '{}'", t->path, id, content);
    }
    // Whitespace stripping options would change matching; the o200k files never set them.
    for (const char* flag : {"lstrip", "rstrip", "single_word"}) {
      if (a.value(flag, false)) {
        return make_error(ErrorCode::kFormat, "{}: added token '{}' sets unsupported option {}", t->path, content,
                          flag);
      }
    }
    const bool is_special = a.value("special", false);
    if (static_cast<size_t>(id) < t->valid.size() && t->valid[id] && t->bytes_of(id) != content) {
      return make_error(ErrorCode::kFormat, "{}: added token '{}' reuses id {}", t->path, content, id);
    }
    set_token(t, static_cast<int32_t>(id), static_cast<uint32_t>(t->arena.size()), content.size());
    t->arena.append(content);
    t->special[id] = is_special ? 1 : 0;
    t->added.push_back({content, static_cast<int32_t>(id), is_special});
    t->added_first_byte.set(static_cast<uint8_t>(content[0]));
  }
  // Longest first, so the first hit at a position is the longest (HF matches leftmost-longest).
  std::stable_sort(t->added.begin(), t->added.end(),
                   [](const SpecialToken& x, const SpecialToken& y) { return x.text.size() > y.text.size(); });
  return {};
}

}  // namespace

Status tokenizer_finish_load(TokenizerImpl* t, const std::vector<VocabEntry>& vocab, const nlohmann::json& added) {
  int32_t max_id = -1;
  for (const auto& e : vocab) max_id = std::max(max_id, e.id);
  t->offset.assign(max_id + 1, 0);
  t->length.assign(max_id + 1, 0);
  t->valid.assign(max_id + 1, 0);
  t->special.assign(max_id + 1, 0);
  for (const auto& e : vocab) {
    if (t->valid[e.id]) return make_error(ErrorCode::kFormat, "{}: vocab id {} appears twice", t->path, e.id);
    set_token(t, e.id, e.offset, e.length);
  }
  GPTOSS_RETURN_IF_ERROR(load_added_tokens(t, added));
  // Keys are views into the arena, so the map is built only after the arena stopped growing.
  t->vocab.reserve(vocab.size());
  for (const auto& e : vocab) {
    if (!t->vocab.insert(t->bytes_of(e.id), e.id)) {
      return make_error(ErrorCode::kFormat, "{}: two vocab entries have the same bytes (id {})", t->path, e.id);
    }
  }
  for (int b = 0; b < 256; ++b) {
    const char c = static_cast<char>(b);
    t->byte_id[b] = t->vocab.find(std::string_view(&c, 1));
    if (t->byte_id[b] < 0) {
      return make_error(ErrorCode::kFormat, "{}: vocab lacks the single-byte token for byte 0x{:02X}", t->path, b);
    }
  }
  t->merges.reserve(1 << 19);
  return {};
}

Tokenizer::Tokenizer() : impl_(std::make_unique<TokenizerImpl>()) {}
Tokenizer::~Tokenizer() = default;

Result<std::unique_ptr<Tokenizer>> Tokenizer::load(const std::string& path) {
  std::unique_ptr<Tokenizer> tok(new Tokenizer());
  tok->impl_->path = path;
  GPTOSS_RETURN_IF_ERROR(tokenizer_load_into(path, tok->impl_.get()));
  return tok;
}

// ---------------------------------------------------------------------------------------------
// Encoding

namespace {

// BPE of one piece with HF semantics: start from single bytes and repeatedly apply the merge of
// lowest rank, leftmost first. A heap of candidate pairs keeps long pieces O(n log n); stale
// candidates are detected by re-checking the pair when popped.
void bpe_piece(const TokenizerImpl& t, std::string_view piece, std::vector<int32_t>* out) {
  struct Sym {
    int32_t id, prev, next;
    bool alive;
  };
  struct Cand {
    uint32_t rank;
    int32_t pos, new_id;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  const int32_t n = static_cast<int32_t>(piece.size());
  std::vector<Sym> sym(n);
  for (int32_t i = 0; i < n; ++i)
    sym[i] = {t.byte_id[static_cast<uint8_t>(piece[i])], i - 1, i + 1 < n ? i + 1 : -1, true};
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto consider = [&](int32_t left) {
    const int32_t right = sym[left].next;
    if (right < 0) return;
    if (const auto* m = t.merges.find(sym[left].id, sym[right].id)) heap.push({m->rank, left, m->new_id});
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    Sym& s = sym[c.pos];
    if (!s.alive || s.next < 0) continue;
    const auto* m = t.merges.find(s.id, sym[s.next].id);
    if (!m || m->new_id != c.new_id) continue;  // the pair changed since this candidate was queued
    const int32_t right = s.next;
    s.id = c.new_id;
    s.next = sym[right].next;
    sym[right].alive = false;
    if (s.next >= 0) sym[s.next].prev = c.pos;
    if (s.prev >= 0) consider(s.prev);
    consider(c.pos);
  }
  for (int32_t i = n > 0 ? 0 : -1; i >= 0; i = sym[i].next) out->push_back(sym[i].id);
}

void encode_piece(const TokenizerImpl& t, std::string_view piece, std::vector<int32_t>* out) {
  if (t.ignore_merges) {
    const int32_t whole = t.vocab.find(piece);
    if (whole >= 0) {
      out->push_back(whole);
      return;
    }
  }
  if (piece.size() == 1) {
    out->push_back(t.byte_id[static_cast<uint8_t>(piece[0])]);
    return;
  }
  const bool cacheable = piece.size() <= TokenizerImpl::kCacheMaxPieceBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(t.cache_mu);
    auto it = t.cache.find(std::string(piece));
    if (it != t.cache.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t start = out->size();
  bpe_piece(t, piece, out);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(t.cache_mu);
    if (t.cache.size() >= TokenizerImpl::kCacheMaxEntries) t.cache.clear();  // bounded memory
    t.cache.emplace(std::string(piece), std::vector<int32_t>(out->begin() + start, out->end()));
  }
}

void encode_ordinary(const TokenizerImpl& t, std::string_view text, std::vector<int32_t>* out) {
  std::vector<std::string_view> pieces;
  t.pre->split(text, &pieces);
  for (std::string_view p : pieces) encode_piece(t, p, out);
}

// Finds the leftmost (then longest) added token in text[from..]; returns npos when none.
size_t find_added(const TokenizerImpl& t, std::string_view text, size_t from, const SpecialToken** hit) {
  for (size_t i = from; i < text.size(); ++i) {
    if (!t.added_first_byte.test(static_cast<uint8_t>(text[i]))) continue;
    for (const SpecialToken& s : t.added) {
      if (text.compare(i, s.text.size(), s.text) == 0) {
        *hit = &s;
        return i;
      }
    }
  }
  return std::string_view::npos;
}

}  // namespace

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool allow_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  if (!allow_special || impl_->added.empty()) {
    encode_ordinary(*impl_, text, &out);
    return out;
  }
  size_t pos = 0;
  while (pos < text.size()) {
    const SpecialToken* hit = nullptr;
    const size_t at = find_added(*impl_, text, pos, &hit);
    if (at == std::string_view::npos) {
      encode_ordinary(*impl_, text.substr(pos), &out);
      break;
    }
    if (at > pos) encode_ordinary(*impl_, text.substr(pos, at - pos), &out);
    out.push_back(hit->id);
    pos = at + hit->text.size();
  }
  return out;
}

void Tokenizer::pre_tokenize(std::string_view text, std::vector<std::string_view>* pieces) const {
  impl_->pre->split(text, pieces);
}

// ---------------------------------------------------------------------------------------------
// Lookups and decoding

bool Tokenizer::is_valid_id(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->valid.size() && impl_->valid[id];
}

std::string_view Tokenizer::token_bytes(int32_t id) const {
  return is_valid_id(id) ? impl_->bytes_of(id) : std::string_view();
}

bool Tokenizer::is_special(int32_t id) const {
  return is_valid_id(id) && impl_->special[id];
}

std::optional<int32_t> Tokenizer::special_id(std::string_view text) const {
  for (const SpecialToken& s : impl_->added) {
    if (s.text == text) return s.id;
  }
  return std::nullopt;
}

int32_t Tokenizer::vocab_size() const {
  return static_cast<int32_t>(impl_->valid.size());
}

Result<std::string> Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string bytes;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!is_valid_id(ids[i])) {
      return make_error(ErrorCode::kOutOfRange, "token id {} (at position {}) is not in the vocabulary (0..{})", ids[i],
                        i, vocab_size() - 1);
    }
    bytes.append(impl_->bytes_of(ids[i]));
  }
  return utf8::to_valid_lossy(bytes);
}

Result<std::string> resolve_tokenizer_path(const std::string& flag_value) {
  if (!flag_value.empty()) return flag_value;
  const char* env = std::getenv("GPTOSS_TOKENIZER");
  if (env && *env) return std::string(env);
  return Status(ErrorCode::kInvalidArgument,
                "no tokenizer given: pass --tokenizer FILE (a tokenizer.json) or set GPTOSS_TOKENIZER");
}

// ---------------------------------------------------------------------------------------------
// StreamDecoder

std::string StreamDecoder::push(int32_t id) {
  if (!tok_.is_valid_id(id)) {
    std::string out = flush();
    out.append(utf8::kReplacement);
    return out;
  }
  return push_bytes(tok_.token_bytes(id));
}

std::string StreamDecoder::push_bytes(std::string_view bytes) {
  std::string out;
  if (pending_.empty()) {
    const size_t kept = utf8::append_lossy(bytes, &out, /*hold_incomplete=*/true);
    pending_.assign(bytes.substr(kept));
    return out;
  }
  pending_.append(bytes);
  const size_t kept = utf8::append_lossy(pending_, &out, /*hold_incomplete=*/true);
  pending_.erase(0, kept);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out = utf8::to_valid_lossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace gptoss
