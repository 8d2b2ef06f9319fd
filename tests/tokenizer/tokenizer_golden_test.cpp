// Our tokenizer against HF `tokenizers` 0.23.2 (the goldens were made on a GPU machine with
// shared/tools/golden.py and tests/fixtures/tokenizer/make_sweep_golden.py):
//  * corpus: ~670 varied texts (every script, emoji, code, numbers, whitespace, contractions, odd
//    Unicode, long repeats, special-token text) → exact ids;
//  * sweep: every codepoint of planes 0-3 and 14 (plus samples of the others) in letter, digit,
//    space, apostrophe and newline contexts → hashes of the pre-tokenizer pieces and of the ids.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tok_test_util.h"
#include "tokenizer/utf8.h"

namespace gptoss {
namespace {

const std::string kDir = std::string(GPTOSS_FIXTURES) + "/tokenizer";

TEST(TokenizerGolden, CorpusMatchesHfTokenizers) {
  REQUIRE_TOKENIZER(tok);
  const auto corpus = nlohmann::json::parse(tok_test::read_file(kDir + "/corpus.json"));
  const auto golden = nlohmann::json::parse(tok_test::read_file(kDir + "/tokens_golden.json"));
  ASSERT_EQ(golden.size(), corpus.size()) << "goldens are stale: regenerate them from corpus.json";
  ASSERT_GT(corpus.size(), 600u);
  int mismatches = 0;
  for (size_t i = 0; i < golden.size(); ++i) {
    const std::string text = golden[i]["text"];
    ASSERT_EQ(text, corpus[i].get<std::string>()) << "entry " << i;
    const auto want = golden[i]["ids"].get<std::vector<int32_t>>();
    // HF always splits out added tokens, so the goldens correspond to allow_special = true.
    const auto got = tok->encode(text, /*allow_special=*/true);
    if (got != want && ++mismatches <= 5) {
      ADD_FAILURE() << "entry " << i << " " << nlohmann::json(text).dump().substr(0, 120) << "\n want "
                    << tok_test::ids_text(want) << "\n got  " << tok_test::ids_text(got);
    }
    EXPECT_EQ(tok->decode(got).value(), text) << "entry " << i;
    if (text.find("<|") == std::string::npos) {
      EXPECT_EQ(tok->encode(text, /*allow_special=*/false), want) << "entry " << i;
    }
  }
  EXPECT_EQ(mismatches, 0);
}

uint64_t fnv(const std::vector<uint64_t>& values) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (uint64_t v : values) h = (h ^ v) * 0x100000001B3ull;
  return h;
}

// Same text as make_sweep_golden.py's block_text().
std::string block_text(uint32_t start) {
  std::string text;
  for (uint32_t c = start; c < start + 256; ++c) {
    if (c >= 0xD800 && c <= 0xDFFF) continue;
    std::string ch;
    utf8::append_codepoint(c, &ch);
    text += "x" + ch + "X" + ch + "1" + ch + " " + ch + "x'" + ch + "\n";
  }
  return text;
}

TEST(TokenizerGolden, UnicodeSweepMatchesHfTokenizers) {
  REQUIRE_TOKENIZER(tok);
  const auto golden = nlohmann::json::parse(tok_test::read_file(kDir + "/sweep_golden.json"));
  const auto& blocks = golden["blocks"];
  ASSERT_GT(blocks.size(), 1000u);
  int bad = 0;
  for (const auto& row : blocks) {
    const uint32_t start = row[0];
    const std::string text = block_text(start);
    std::vector<std::string_view> pieces;
    tok->pre_tokenize(text, &pieces);
    std::vector<uint64_t> lengths;
    for (auto p : pieces) lengths.push_back(p.size());
    const auto ids = tok->encode(text);
    const std::vector<uint64_t> ids64(ids.begin(), ids.end());
    const bool pieces_ok = lengths.size() == row[1].get<size_t>() && fmt::format("{:016x}", fnv(lengths)) == row[2];
    const bool ids_ok = ids.size() == row[3].get<size_t>() && fmt::format("{:016x}", fnv(ids64)) == row[4];
    if ((!pieces_ok || !ids_ok) && ++bad <= 10) {
      ADD_FAILURE() << fmt::format("block U+{:04X}: pieces {} ids {}", start, pieces_ok ? "ok" : "differ",
                                   ids_ok ? "ok" : "differ");
    }
  }
  EXPECT_EQ(bad, 0) << "blocks of 256 codepoints that differ from HF";
}

}  // namespace
}  // namespace gptoss
