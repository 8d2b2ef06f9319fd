// UTF-8 lossy decoding (Python errors="replace" results worked out by hand) and StreamDecoder:
// any split of the bytes must give the same text as decoding them at once.
#include <gtest/gtest.h>

#include <random>

#include "tok_test_util.h"
#include "tokenizer/utf8.h"

namespace gptoss {
namespace {

const std::string R = "\xEF\xBF\xBD";  // U+FFFD

TEST(Utf8, LossyDecodingReplacesMaximalSubparts) {
  EXPECT_EQ(utf8::to_valid_lossy(""), "");
  EXPECT_EQ(utf8::to_valid_lossy("plain ascii"), "plain ascii");
  EXPECT_EQ(utf8::to_valid_lossy("h\xC3\xA9llo \xF0\x9F\x98\x80"), "h\xC3\xA9llo \xF0\x9F\x98\x80");
  EXPECT_EQ(utf8::to_valid_lossy("a\x80"
                                 "b"),
            "a" + R + "b");                            // lone continuation
  EXPECT_EQ(utf8::to_valid_lossy("\xE0\x80"), R + R);  // E0 needs A0..BF
  EXPECT_EQ(utf8::to_valid_lossy("\xF0\x9F\x98"), R);  // truncated 4-byte: one
  EXPECT_EQ(utf8::to_valid_lossy("\xF0\x9F\x98"
                                 "A"),
            R + "A");
  EXPECT_EQ(utf8::to_valid_lossy("\xED\xA0\x80"), R + R + R);          // encoded surrogate
  EXPECT_EQ(utf8::to_valid_lossy("\xF4\x90\x80\x80"), R + R + R + R);  // above U+10FFFF
  EXPECT_EQ(utf8::to_valid_lossy("\xC0\xAF"), R + R);                  // overlong
  EXPECT_EQ(utf8::to_valid_lossy("\xFF\xFE"), R + R);
  EXPECT_EQ(utf8::to_valid_lossy("\xE2\x82"
                                 "a\xE2\x82\xAC"),
            R + "a\xE2\x82\xAC");
  EXPECT_EQ(utf8::to_valid_lossy(std::string("\0x", 2)), std::string("\0x", 2));
  EXPECT_TRUE(utf8::is_valid("\xF4\x8F\xBF\xBF"));
  EXPECT_FALSE(utf8::is_valid("\xF4\x90\x80\x80"));
  EXPECT_FALSE(utf8::is_valid("\xC3"));
}

TEST(Utf8, HoldsAnIncompleteTail) {
  std::string out;
  EXPECT_EQ(utf8::append_lossy("ab\xF0\x9F", &out, /*hold_incomplete=*/true), 2u);
  EXPECT_EQ(out, "ab");
  out.clear();
  EXPECT_EQ(utf8::append_lossy("ab\xF0\x9F"
                               "c",
                               &out, true),
            5u);  // not a prefix any more
  EXPECT_EQ(out, "ab" + R + "c");
}

TEST(Utf8, Codepoints) {
  std::string s;
  for (uint32_t cp : {0x41u, 0xE9u, 0x20ACu, 0x1F600u, 0x10FFFFu}) utf8::append_codepoint(cp, &s);
  EXPECT_EQ(s, "A\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\xF4\x8F\xBF\xBF");
  size_t pos = 0;
  std::vector<uint32_t> cps;
  while (pos < s.size()) cps.push_back(utf8::next_codepoint(s, &pos));
  EXPECT_EQ(cps, (std::vector<uint32_t>{0x41, 0xE9, 0x20AC, 0x1F600, 0x10FFFF}));
  EXPECT_EQ(utf8::codepoint_count(s), 5u);
  EXPECT_EQ(utf8::codepoint_count("a\xFF"
                                  "b"),
            3u);  // an invalid byte counts once
}

TEST(StreamDecoder, EmojiSplitAcrossTokens) {
  REQUIRE_TOKENIZER(tok);
  StreamDecoder dec(*tok);
  const auto ids = tok->encode("\xF0\x9F\x92\x96!");  // F0 9F 92 | 96 | !
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(dec.push(ids[0]), "");
  EXPECT_TRUE(dec.has_pending());
  EXPECT_EQ(dec.push(ids[1]), "\xF0\x9F\x92\x96");
  EXPECT_FALSE(dec.has_pending());
  EXPECT_EQ(dec.push(ids[2]), "!");
  EXPECT_EQ(dec.flush(), "");
}

TEST(StreamDecoder, InvalidBytesAndUnknownIds) {
  REQUIRE_TOKENIZER(tok);
  StreamDecoder dec(*tok);
  EXPECT_EQ(dec.push(9552), " ");  // " " F0 9F: the space now, the rest held
  EXPECT_EQ(dec.push(9552), R + " ");
  EXPECT_EQ(dec.push(-3), R + R);  // an unknown id flushes the held bytes and adds one U+FFFD
  EXPECT_EQ(dec.push(9552), " ");
  EXPECT_EQ(dec.flush(), R);  // an incomplete tail at the end
  EXPECT_EQ(dec.flush(), "");
  EXPECT_EQ(dec.push_bytes("\xC3"), "");
  EXPECT_EQ(dec.push_bytes("\xA9"), "\xC3\xA9");
}

TEST(StreamDecoder, AnySplitEqualsOneShotDecoding) {
  std::mt19937 rng(42);
  // Bytes biased towards UTF-8 structure so that sequences get split in interesting places.
  const uint8_t pool[] = {'a', ' ', 0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x98, 0x80, 0xED, 0xA0, 0xF4, 0x90, 0xFF};
  REQUIRE_TOKENIZER(tok);
  for (int iter = 0; iter < 2000; ++iter) {
    std::string bytes(rng() % 24, '\0');
    for (auto& c : bytes) c = static_cast<char>(pool[rng() % std::size(pool)]);
    StreamDecoder dec(*tok);
    std::string streamed;
    size_t pos = 0;
    while (pos < bytes.size()) {
      const size_t n = 1 + rng() % 4;
      streamed += dec.push_bytes(std::string_view(bytes).substr(pos, n));
      pos += n;
    }
    streamed += dec.flush();
    ASSERT_EQ(streamed, utf8::to_valid_lossy(bytes)) << "iteration " << iter;
  }
}

TEST(StreamDecoder, TokenStreamsEqualDecode) {
  REQUIRE_TOKENIZER(tok);
  std::mt19937 rng(1);
  for (int iter = 0; iter < 300; ++iter) {
    std::vector<int32_t> ids(rng() % 30);
    for (auto& id : ids) id = static_cast<int32_t>(rng() % 200000);
    StreamDecoder dec(*tok);
    std::string streamed;
    for (int32_t id : ids) streamed += dec.push(id);
    streamed += dec.flush();
    ASSERT_EQ(streamed, tok->decode(ids).value()) << "iteration " << iter;
  }
}

}  // namespace
}  // namespace gptoss
