// Tokenizer facts (harmony README), special-token handling, round trips on arbitrary bytes,
// pre-tokenizer splits derived from the regex by hand, speed bounds and thread safety.
#include <gtest/gtest.h>

#include <chrono>
#include <random>
#include <thread>

#include "tok_test_util.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/utf8.h"

namespace gptoss {
namespace {

using tok_test::ids_text;

TEST(Tokenizer, FactsFromHarmonyReadme) {
  REQUIRE_TOKENIZER(tok);
  EXPECT_EQ(tok->vocab_size(), 200019);
  EXPECT_EQ(ids_text(tok->encode("hello world")), "[24912,2375]");
  EXPECT_EQ(ids_text(tok->encode("<|start|>", /*allow_special=*/true)), "[200006]");
  EXPECT_EQ(ids_text(tok->encode("<|start|>", /*allow_special=*/false)), "[27,91,5236,91,29]");
  EXPECT_EQ(tok->token_bytes(200014), "<|reserved_200014|>");
  auto d = tok->decode({200014});
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d.value(), "<|reserved_200014|>");
  EXPECT_TRUE(tok->is_special(200006));
  EXPECT_FALSE(tok->is_special(24912));
  // Handy ids from the spec.
  EXPECT_EQ(ids_text(tok->encode("assistant")), "[173781]");
  EXPECT_EQ(ids_text(tok->encode("analysis")), "[35644]");
  EXPECT_EQ(ids_text(tok->encode("final")), "[17196]");
}

TEST(Tokenizer, StructuralTokensHaveTheirNames) {
  REQUIRE_TOKENIZER(tok);
  namespace ht = harmony_tokens;
  const std::pair<int32_t, const char*> expected[] = {
      {ht::kStartOfText, "<|startoftext|>"},
      {ht::kEndOfText, "<|endoftext|>"},
      {ht::kReturn, "<|return|>"},
      {ht::kConstrain, "<|constrain|>"},
      {ht::kChannel, "<|channel|>"},
      {ht::kStart, "<|start|>"},
      {ht::kEnd, "<|end|>"},
      {ht::kMessage, "<|message|>"},
      {ht::kCall, "<|call|>"},
  };
  for (const auto& [id, name] : expected) {
    EXPECT_EQ(tok->token_bytes(id), name);
    EXPECT_EQ(tok->special_id(name), std::optional<int32_t>(id));
    EXPECT_TRUE(tok->is_special(id));
  }
  EXPECT_EQ(tok->special_id("<|endofprompt|>"), std::optional<int32_t>(200018));
  EXPECT_EQ(tok->special_id("<|nope|>"), std::nullopt);
  EXPECT_EQ(tok->special_id("hello"), std::nullopt);
}

TEST(Tokenizer, IdsOutsideTheVocabulary) {
  REQUIRE_TOKENIZER(tok);
  for (int32_t bad : {-1, 200019, 201088, 99999999, INT32_MIN}) {
    EXPECT_FALSE(tok->is_valid_id(bad)) << bad;
    EXPECT_TRUE(tok->token_bytes(bad).empty()) << bad;
    EXPECT_FALSE(tok->is_special(bad)) << bad;
    auto d = tok->decode({24912, bad});
    ASSERT_FALSE(d.ok()) << bad;
    EXPECT_EQ(d.status().code(), ErrorCode::kOutOfRange);
    EXPECT_NE(d.status().message().find(std::to_string(bad)), std::string::npos) << d.status().message();
  }
  EXPECT_TRUE(tok->is_valid_id(0));
  EXPECT_TRUE(tok->is_valid_id(200018));
}

TEST(Tokenizer, SpecialTokensOnlyWhenAllowed) {
  REQUIRE_TOKENIZER(tok);
  const std::string text = "Hi<|end|> <|start|>user<|message|>x<|reserved_200000|><|endoftext|>";
  const auto with = tok->encode(text, true);
  const auto without = tok->encode(text, false);
  int specials = 0;
  for (int32_t id : with) specials += tok->is_special(id);
  EXPECT_EQ(specials, 5);
  for (int32_t id : without) EXPECT_LT(id, 199998) << "special id in ordinary encoding";
  // With specials: the pieces between them are encoded independently.
  std::vector<int32_t> expect = tok->encode("Hi");
  expect.push_back(200007);
  for (int32_t id : tok->encode(" ")) expect.push_back(id);
  expect.push_back(200006);
  for (int32_t id : tok->encode("user")) expect.push_back(id);
  expect.push_back(200008);
  for (int32_t id : tok->encode("x")) expect.push_back(id);
  expect.push_back(200000);
  expect.push_back(199999);
  EXPECT_EQ(ids_text(with), ids_text(expect));
  // Both decode back to the same text.
  EXPECT_EQ(tok->decode(with).value(), text);
  EXPECT_EQ(tok->decode(without).value(), text);
  // Near misses stay ordinary text.
  for (const char* s : {"<|start|", "|start|>", "<|START|>", "<|reserved_201088|>", "<||>"}) {
    for (int32_t id : tok->encode(s, true)) EXPECT_LT(id, 199998) << s;
  }
}

TEST(Tokenizer, RoundTripsArbitraryBytes) {
  REQUIRE_TOKENIZER(tok);
  std::mt19937 rng(7);
  for (int iter = 0; iter < 300; ++iter) {
    std::string bytes(rng() % 200, '\0');
    for (auto& c : bytes) c = static_cast<char>(rng() % 256);
    // Encoding never drops or invents a byte, even for invalid UTF-8.
    std::string back;
    for (int32_t id : tok->encode(bytes)) back.append(tok->token_bytes(id));
    ASSERT_EQ(back, bytes) << "iteration " << iter;
    EXPECT_EQ(tok->decode(tok->encode(bytes)).value(), utf8::to_valid_lossy(bytes));
  }
}

TEST(Tokenizer, RoundTripsValidText) {
  REQUIRE_TOKENIZER(tok);
  std::mt19937 rng(11);
  const uint32_t ranges[][2] = {{0x20, 0x7E},     {0x9, 0xD},         {0xA0, 0x2FF},      {0x370, 0x52F},
                                {0x590, 0x6FF},   {0x900, 0xDFF},     {0x3040, 0x30FF},   {0x4E00, 0x9FFF},
                                {0xAC00, 0xD7A3}, {0x1F300, 0x1FAFF}, {0x10000, 0x10FFFF}};
  for (int iter = 0; iter < 300; ++iter) {
    std::string text;
    const int n = rng() % 150;
    for (int i = 0; i < n; ++i) {
      const auto& r = ranges[rng() % std::size(ranges)];
      uint32_t cp = r[0] + rng() % (r[1] - r[0] + 1);
      if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;
      utf8::append_codepoint(cp, &text);
    }
    auto d = tok->decode(tok->encode(text, iter % 2 == 0));
    ASSERT_TRUE(d.ok());
    ASSERT_EQ(d.value(), text) << "iteration " << iter;
  }
}

std::vector<std::string> pieces_of(const Tokenizer& tok, std::string_view text) {
  std::vector<std::string_view> views;
  tok.pre_tokenize(text, &views);
  return {views.begin(), views.end()};
}

// Splits worked out by hand from the o200k regex alternatives (spec §6.2).
TEST(Tokenizer, PreTokenizerSplits) {
  REQUIRE_TOKENIZER(tok);
  using V = std::vector<std::string>;
  EXPECT_EQ(pieces_of(*tok, "Hello world"), (V{"Hello", " world"}));
  EXPECT_EQ(pieces_of(*tok, "hello   world"), (V{"hello", "  ", " world"}));  // \s+(?!\S) leaves one space
  EXPECT_EQ(pieces_of(*tok, "12345"), (V{"123", "45"}));                      // \p{N}{1,3}
  EXPECT_EQ(pieces_of(*tok, "don't DON'T"), (V{"don't", " DON'T"}));          // case-insensitive suffix
  EXPECT_EQ(pieces_of(*tok, "HelloWorld"), (V{"Hello", "World"}));
  EXPECT_EQ(pieces_of(*tok, "camelCASE"), (V{"camel", "CASE"}));
  EXPECT_EQ(pieces_of(*tok, "a, b!!"), (V{"a", ",", " b", "!!"}));
  EXPECT_EQ(pieces_of(*tok, "x\n\n  y"), (V{"x", "\n\n", " ", " y"}));
  EXPECT_EQ(pieces_of(*tok, "end.  \n"), (V{"end", ".", "  \n"}));
  EXPECT_EQ(pieces_of(*tok, "path/to\n"), (V{"path", "/to", "\n"}));
  EXPECT_EQ(pieces_of(*tok, "}\n\n"), (V{"}\n\n"}));  // [\r\n/]* after punctuation
  EXPECT_EQ(pieces_of(*tok, "trailing "), (V{"trailing", " "}));
  // U+0085 (NEL) is White_Space for HF's regex engine: two NELs before a letter split like spaces.
  EXPECT_EQ(pieces_of(*tok, "x\u0085\u0085y"), (V{"x", "\u0085", "\u0085y"}));
  // A Unicode 16 digit (Garay U+10D40) is \p{N} for HF even though PCRE2 10.42 predates it.
  EXPECT_EQ(pieces_of(*tok, "a\U00010D40\U00010D41"), (V{"a", "\U00010D40\U00010D41"}));
  // Invalid UTF-8 never matches; it becomes its own piece and nothing is lost.
  EXPECT_EQ(pieces_of(*tok,
                      "ab\xFF\xFE"
                      "cd"),
            (V{"ab", "\xFF\xFE", "cd"}));
  EXPECT_TRUE(pieces_of(*tok, "").empty());
}

TEST(PreTokenizer, AdaptsRegexForPcre2) {
  const std::string ws = adapt_regex_for_pcre2("\\s+");
  EXPECT_EQ(ws.front(), '[');
  EXPECT_NE(ws.find("\\x{85}"), std::string::npos);
  EXPECT_EQ(adapt_regex_for_pcre2("\\S").substr(0, 2), "[^");
  EXPECT_EQ(adapt_regex_for_pcre2("[^\\s\\p{L}]").substr(0, 3), "[^\\");  // stays one class
  EXPECT_EQ(adapt_regex_for_pcre2("\\\\s"), "\\\\s");                     // an escaped backslash, then 's'
  EXPECT_EQ(adapt_regex_for_pcre2("[]\\s]").find("[]"), 0u);              // ']' first in a class is literal
  EXPECT_EQ(adapt_regex_for_pcre2("\\p{Zs}"), "\\p{Zs}");                 // nothing new to add
  const std::string n = adapt_regex_for_pcre2("\\p{N}{1,3}");
  EXPECT_EQ(n.substr(0, 6), "[\\p{N}");  // wrapped so the quantifier still applies to one class
  EXPECT_NE(n.find("\\x{1E4F0}-\\x{1E4F9}"), std::string::npos);
  EXPECT_EQ(n.substr(n.size() - 6), "]{1,3}");
  const std::string lu = adapt_regex_for_pcre2("[\\p{Lu}x]");
  EXPECT_NE(lu.find("\\x{A7CB}-\\x{A7CC}"), std::string::npos);
  EXPECT_EQ(lu.find("\\x{1E4F0}"), std::string::npos);  // digits are not Lu
  const std::string l = adapt_regex_for_pcre2("\\p{L}");
  EXPECT_NE(l.find("\\x{A7CB}"), std::string::npos);  // \p{L} takes every letter category
  EXPECT_NE(l.find("\\x{31350}"), std::string::npos);
  EXPECT_EQ(l.find("\\x{897}"), std::string::npos);  // a mark, not a letter
}

TEST(PreTokenizer, BadRegexIsAnError) {
  auto pt = PreTokenizer::create("(unclosed");
  ASSERT_FALSE(pt.ok());
  EXPECT_NE(pt.status().message().find("offset"), std::string::npos);
}

std::string varied_megabyte() {
  std::mt19937 rng(3);
  const char* words[] = {"the",        "Tokenizer",    "naïve",    "数据",    "данные", "1234567", "  ",    "\n",
                         "don't",      "😀👍🏽", "if (x) {", "}\n",     "مرحبا",  "\t",      "ß",     "e\u0301",
                         "HTTPServer", "____",         "3.14159",  "<|end|>", "ข้อมูล",   "     ",   "x=y+z", "’s"};
  std::string text;
  while (text.size() < (1u << 20)) {
    text += words[rng() % std::size(words)];
    if (rng() % 3) text += ' ';
  }
  return text;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Speed bounds are loose multiples of what one core does (load ~0.5 s, 1 MB ~0.2 s) so that a busy
// CI machine passes, while quadratic behaviour still fails by orders of magnitude.
TEST(TokenizerSpeed, LoadsAndEncodesFast) {
  const auto t0 = std::chrono::steady_clock::now();
  auto loaded = Tokenizer::load(GPTOSS_TOKENIZER);
  const double load_s = seconds_since(t0);
  ASSERT_TRUE(loaded.ok()) << loaded.status().message() << " (run scripts/setup)";
  EXPECT_LT(load_s, 2.0);
  const std::string text = varied_megabyte();
  const auto t1 = std::chrono::steady_clock::now();
  const auto ids = loaded.value()->encode(text);
  const double enc_s = seconds_since(t1);
  EXPECT_LT(enc_s, 1.0);
  EXPECT_EQ(loaded.value()->decode(ids).value(), text);
  std::printf("tokenizer.json load %.3f s; 1 MiB varied text -> %zu ids in %.3f s\n", load_s, ids.size(), enc_s);
}

TEST(TokenizerSpeed, LongRepeatsAreNotQuadratic) {
  REQUIRE_TOKENIZER(tok);
  std::string emoji;
  for (int i = 0; i < 25000; ++i) emoji += "\xF0\x9F\x98\x80";
  std::string letters;
  std::mt19937 rng(5);
  for (int i = 0; i < 100000; ++i) letters += static_cast<char>('a' + rng() % 26);
  const std::string cases[] = {std::string(100000, 'a'),
                               std::string(100000, ' '),
                               std::string(100000, '\n'),
                               std::string(100000, '1'),
                               std::string(100000, '!'),
                               emoji,
                               letters,
                               std::string(100000, ' ') + "x"};
  const auto t0 = std::chrono::steady_clock::now();
  for (const std::string& s : cases) {
    const auto ids = tok->encode(s);
    std::string back;
    for (int32_t id : ids) back.append(tok->token_bytes(id));
    EXPECT_EQ(back, s);
  }
  EXPECT_LT(seconds_since(t0), 2.0);
}

TEST(Tokenizer, ConcurrentEncodingMatchesSerial) {
  REQUIRE_TOKENIZER(tok);
  std::vector<std::string> texts;
  std::mt19937 rng(9);
  for (int i = 0; i < 200; ++i) {
    std::string s;
    for (int k = 0; k < 40; ++k) s += static_cast<char>('a' + rng() % 6) + std::string(rng() % 4 ? "" : " ");
    texts.push_back(s);
  }
  std::vector<std::vector<int32_t>> serial;
  for (const auto& t : texts) serial.push_back(tok->encode(t));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int th = 0; th < 4; ++th) {
    threads.emplace_back([&, th] {
      for (int rep = 0; rep < 5; ++rep) {
        for (size_t i = 0; i < texts.size(); ++i) mismatches[th] += tok->encode(texts[i]) != serial[i];
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int m : mismatches) EXPECT_EQ(m, 0);
}

TEST(Tokenizer, ResolvesTokenizerPath) {
  EXPECT_EQ(resolve_tokenizer_path("/x/tokenizer.json").value(), "/x/tokenizer.json");
  const char* old = std::getenv("GPTOSS_TOKENIZER");
  const std::string saved = old ? old : "";
  setenv("GPTOSS_TOKENIZER", "/env/tok.json", 1);
  EXPECT_EQ(resolve_tokenizer_path("").value(), "/env/tok.json");
  EXPECT_EQ(resolve_tokenizer_path("/flag.json").value(), "/flag.json");  // the flag wins
  unsetenv("GPTOSS_TOKENIZER");
  auto none = resolve_tokenizer_path("");
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("--tokenizer"), std::string::npos);
  if (old) setenv("GPTOSS_TOKENIZER", saved.c_str(), 1);
}

}  // namespace
}  // namespace gptoss
