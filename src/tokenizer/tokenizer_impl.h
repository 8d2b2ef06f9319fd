// Internal state of Tokenizer: token bytes, the vocab and merge hash tables, special tokens,
// the pre-tokenizer and the BPE cache. Shared by tokenizer_load.cpp and tokenizer.cpp only.
#pragma once

#include <array>
#include <bitset>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/status.h"
#include "tokenizer/pretokenizer.h"

namespace gptoss {

// Open-addressing map from token bytes to id; keys live in the tokenizer's byte arena.
class BytesToId {
 public:
  void reserve(size_t n);
  // Inserts `id` under key `bytes` (bytes must stay alive: they are views into the arena).
  // Returns false when the key already exists.
  bool insert(std::string_view bytes, int32_t id);
  int32_t find(std::string_view bytes) const;  // -1 when absent

 private:
  struct Slot {
    std::string_view key;
    int32_t id = -1;
  };
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

// Open-addressing map from an ordered id pair to (merge rank, merged id).
class PairMerges {
 public:
  struct Merge {
    uint32_t rank;
    int32_t new_id;
  };
  void reserve(size_t n);
  void insert(int32_t a, int32_t b, Merge m);  // a later insert of the same pair wins (as in HF)
  const Merge* find(int32_t a, int32_t b) const;
  size_t size() const { return size_; }

 private:
  struct Slot {
    uint64_t key = kEmpty;
    Merge m{};
  };
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  static uint64_t key_of(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

struct SpecialToken {
  std::string text;
  int32_t id;
  bool special;  // HF "special" flag
};

struct TokenizerImpl {
  std::string arena;                     // bytes of every token, concatenated
  std::vector<uint32_t> offset, length;  // per id; length 0 with valid=false marks a hole
  std::vector<uint8_t> valid, special;
  BytesToId vocab;  // ordinary (BPE) tokens only
  PairMerges merges;
  std::array<int32_t, 256> byte_id{};
  bool ignore_merges = false;
  std::vector<SpecialToken> added;    // sorted by text length, longest first
  std::bitset<256> added_first_byte;  // first bytes of added-token texts
  std::unique_ptr<PreTokenizer> pre;
  std::string path;

  // piece bytes -> ids for pieces that needed merging; bounded by clearing when full.
  static constexpr size_t kCacheMaxEntries = 1 << 16;
  static constexpr size_t kCacheMaxPieceBytes = 256;
  mutable std::mutex cache_mu;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  std::string_view bytes_of(int32_t id) const { return std::string_view(arena).substr(offset[id], length[id]); }
};

// One vocab entry as read from the file: its bytes are arena[offset, offset + length).
struct VocabEntry {
  int32_t id;
  uint32_t offset, length;
};

// Reads tokenizer.json into *t (tokenizer_load.cpp).
Status tokenizer_load_into(const std::string& path, TokenizerImpl* t);
// Builds the per-id tables, the vocab map and the added tokens once the vocab is read, before
// merges are resolved (tokenizer.cpp).
Status tokenizer_finish_load(TokenizerImpl* t, const std::vector<VocabEntry>& vocab, const nlohmann::json& added);

}  // namespace gptoss
