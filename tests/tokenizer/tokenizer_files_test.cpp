// Small hand-made tokenizer.json files: BPE merge semantics derived by hand (rank order, leftmost
// ties, ignore_merges), added-token matching, both merge formats, and every malformed-file error.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tok_test_util.h"

namespace gptoss {
namespace {

using Json = nlohmann::ordered_json;
using tok_test::ids_text;

// GPT-2's byte → unicode alphabet, written independently of the tokenizer's inverse table.
std::string byte_char(uint8_t b) {
  int next = 256;
  for (int x = 0; x < 256; ++x) {
    const bool printable = (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255);
    const int cp = printable ? x : next++;
    if (x == b) {
      std::string s;
      if (cp < 0x80) {
        s.push_back(static_cast<char>(cp));
      } else {
        s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      }
      return s;
    }
  }
  return {};
}

std::string bl(std::string_view raw) {  // raw bytes → byte-level token string
  std::string s;
  for (char c : raw) s += byte_char(static_cast<uint8_t>(c));
  return s;
}

// Vocab: the 256 bytes (id = byte value), then `extra` tokens from 256 on; merges in rank order.
Json toy_tokenizer(const std::vector<std::string>& extra,
                   const std::vector<std::pair<std::string, std::string>>& merges, bool ignore_merges = true) {
  Json vocab = Json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_char(static_cast<uint8_t>(b))] = b;
  for (size_t i = 0; i < extra.size(); ++i) vocab[bl(extra[i])] = 256 + static_cast<int>(i);
  Json m = Json::array();
  for (const auto& [a, b] : merges) m.push_back(Json::array({bl(a), bl(b)}));
  Json added = Json::array();
  added.push_back({{"id", 400}, {"content", "<x>"}, {"special", true}});
  added.push_back({{"id", 401}, {"content", "<xy>"}, {"special", true}});
  added.push_back({{"id", 402}, {"content", "hello"}, {"special", false}});
  return Json{
      {"version", "1.0"},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers", Json::array({{{"type", "Split"},
                                        {"pattern", {{"Regex", "[a-z]+|\\s+|[^a-z\\s]+"}}},
                                        {"behavior", "Isolated"},
                                        {"invert", false}},
                                       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"}, {"ignore_merges", ignore_merges}, {"byte_fallback", false}, {"vocab", vocab}, {"merges", m}}}};
}

class TokenizerFiles : public ::testing::Test {
 protected:
  std::string write(const std::string& text) {
    const std::string path = (std::filesystem::temp_directory_path() /
                              ("gptoss_tok_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++) + ".json"))
                                 .string();
    std::ofstream(path, std::ios::binary) << text;
    paths_.push_back(path);
    return path;
  }
  Result<std::unique_ptr<Tokenizer>> load(const Json& j) { return Tokenizer::load(write(j.dump())); }
  std::string load_error(const std::string& text) {
    auto r = Tokenizer::load(write(text));
    return r.ok() ? "(loaded)" : r.status().message();
  }
  void TearDown() override {
    for (const auto& p : paths_) std::remove(p.c_str());
  }
  std::vector<std::string> paths_;
  int counter_ = 0;
};

TEST_F(TokenizerFiles, MergeRankDecidesTheSegmentation) {
  // Ranks (a,b) < (ab,c) < (b,c): "abc" → ab c → abc.
  auto t1 = load(toy_tokenizer({"ab", "abc", "bc"}, {{"a", "b"}, {"ab", "c"}, {"b", "c"}}, /*ignore_merges=*/false));
  ASSERT_TRUE(t1.ok()) << t1.status().message();
  EXPECT_EQ(ids_text(t1.value()->encode("abc")), "[257]");
  // Ranks (b,c) < (a,b): "abc" → a bc, and no (a,bc) merge exists.
  auto t2 = load(toy_tokenizer({"ab", "abc", "bc"}, {{"b", "c"}, {"a", "b"}, {"ab", "c"}}, false));
  ASSERT_TRUE(t2.ok());
  EXPECT_EQ(ids_text(t2.value()->encode("abc")), "[97,258]");
  // Equal pairs merge leftmost first: "aaa" → aa a; "aaaaa" → aa aa a.
  auto t3 = load(toy_tokenizer({"aa", "aaaa"}, {{"a", "a"}, {"aa", "aa"}}, false));
  ASSERT_TRUE(t3.ok());
  EXPECT_EQ(ids_text(t3.value()->encode("aaa")), "[256,97]");
  EXPECT_EQ(ids_text(t3.value()->encode("aaaaa")), "[257,97]");
  EXPECT_EQ(ids_text(t3.value()->encode("aa aaaa")), "[256,32,257]");  // pieces are merged separately
  // A long piece still merges correctly (heap path): 1000 a's = 250 × aaaa.
  const auto many = t3.value()->encode(std::string(1000, 'a'));
  EXPECT_EQ(many.size(), 250u);
  for (int32_t id : many) EXPECT_EQ(id, 257);
}

TEST_F(TokenizerFiles, IgnoreMergesTakesWholeTokens) {
  // "abd" is in the vocab but unreachable by merges.
  auto with = load(toy_tokenizer({"ab", "abd"}, {{"a", "b"}}, /*ignore_merges=*/true));
  auto without = load(toy_tokenizer({"ab", "abd"}, {{"a", "b"}}, /*ignore_merges=*/false));
  ASSERT_TRUE(with.ok() && without.ok());
  EXPECT_EQ(ids_text(with.value()->encode("abd")), "[257]");
  EXPECT_EQ(ids_text(without.value()->encode("abd")), "[256,100]");
}

TEST_F(TokenizerFiles, AddedTokensLeftmostLongest) {
  auto t = load(toy_tokenizer({}, {}));
  ASSERT_TRUE(t.ok());
  const Tokenizer& tok = *t.value();
  EXPECT_EQ(ids_text(tok.encode("<xy>", true)), "[401]");
  EXPECT_EQ(ids_text(tok.encode("<x>y", true)), "[400,121]");
  EXPECT_EQ(ids_text(tok.encode("<<x>", true)), "[60,400]");
  EXPECT_EQ(ids_text(tok.encode("<x>", false)), "[60,120,62]");
  EXPECT_TRUE(tok.is_special(400));
  EXPECT_FALSE(tok.is_special(402));  // added but not special
  EXPECT_EQ(tok.vocab_size(), 403);
  EXPECT_FALSE(tok.is_valid_id(300));  // a hole between the vocab and the added tokens
  EXPECT_FALSE(tok.decode({300}).ok());
  EXPECT_EQ(tok.decode({104, 400, 10}).value(), "h<x>\n");
}

TEST_F(TokenizerFiles, LegacyMergeStringsAndEscapedKeys) {
  Json j = toy_tokenizer({"ab", "\xC3\xA9"}, {}, /*ignore_merges=*/false);
  j["model"]["merges"] = Json::array({"a b", bl("\xC3") + " " + bl("\xA9")});
  // Write the key of "é" (byte-level "Ã©") with \u escapes to exercise the scanner's unescaping.
  std::string text = j.dump();
  const std::string key = "\"" + bl("\xC3\xA9") + "\"";
  const size_t at = text.find(key);
  ASSERT_NE(at, std::string::npos);
  text.replace(at, key.size(), "\"\\u00c3\\u00A9\"");
  auto t = Tokenizer::load(write(text));
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_EQ(ids_text(t.value()->encode("ab")), "[256]");
  EXPECT_EQ(ids_text(t.value()->encode("\xC3\xA9")), "[257]");
  EXPECT_EQ(t.value()->token_bytes(257), "\xC3\xA9");
}

TEST_F(TokenizerFiles, MalformedFilesAreErrors) {
  const std::string missing = "/nonexistent/dir/tokenizer.json";
  auto r = Tokenizer::load(missing);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kNotFound);
  EXPECT_NE(r.status().message().find(missing), std::string::npos);

  const std::string good = toy_tokenizer({"ab"}, {{"a", "b"}}).dump();
  EXPECT_NE(load_error(good.substr(0, good.size() / 2)).find("invalid JSON"), std::string::npos);
  EXPECT_NE(load_error("[]").find("invalid JSON"), std::string::npos);
  EXPECT_NE(load_error("{}").find("missing model.vocab"), std::string::npos);

  auto error_of = [&](const std::function<void(Json&)>& edit) {
    Json j = toy_tokenizer({"ab"}, {{"a", "b"}});
    edit(j);
    return load_error(j.dump());
  };
  EXPECT_NE(error_of([](Json& j) { j["model"]["type"] = "WordPiece"; }).find("model.type"), std::string::npos);
  EXPECT_NE(error_of([](Json& j) { j["model"]["vocab"]["\xE2\x82\xAC"] = 999; }).find("byte-level alphabet"),
            std::string::npos);
  EXPECT_NE(error_of([](Json& j) { j["model"]["vocab"][bl("zz")] = 7; }).find("appears twice"), std::string::npos);
  EXPECT_NE(error_of([](Json& j) { j["model"]["vocab"][bl("zz")] = -4; }).find("out of range"), std::string::npos);
  EXPECT_NE(error_of([](Json& j) {
              j["model"]["merges"].push_back(Json::array({bl("q"), bl("r")}));
            }).find("missing from the vocab"),
            std::string::npos);
  EXPECT_NE(error_of([](Json& j) { j["model"]["merges"].push_back("a b c"); }).find("two space-separated"),
            std::string::npos);
  EXPECT_NE(error_of([](Json& j) { j["model"]["vocab"].erase(byte_char('z')); }).find("0x7A"), std::string::npos);
  EXPECT_NE(error_of([](Json& j) { j["model"]["byte_fallback"] = true; }).find("byte_fallback"), std::string::npos);
  EXPECT_NE(error_of([](Json& j) { j["normalizer"] = {{"type", "NFC"}}; }).find("normalizers"), std::string::npos);
  EXPECT_NE(error_of([](Json& j) {
              j["pre_tokenizer"] = {{"type", "Whitespace"}};
            }).find("pre_tokenizer"),
            std::string::npos);
  EXPECT_NE(error_of([](Json& j) {
              j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "([a-z";
            }).find("does not compile"),
            std::string::npos);
  EXPECT_NE(error_of([](Json& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed"; }).find("Isolated"),
            std::string::npos);
  EXPECT_NE(error_of([](Json& j) { j["added_tokens"][0]["lstrip"] = true; }).find("lstrip"), std::string::npos);
  EXPECT_NE(error_of([](Json& j) { j["added_tokens"][0]["id"] = 97; }).find("reuses id 97"), std::string::npos);
  EXPECT_NE(error_of([](Json& j) { j["decoder"] = {{"type", "WordPiece"}}; }).find("decoder"), std::string::npos);
}

}  // namespace
}  // namespace gptoss
