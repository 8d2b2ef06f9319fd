// Unit tests of the CLI helpers: harmony output routing (answer vs reasoning, plain-text fallback)
// with the real tokenizer, the console presentation off a terminal, flag checks, and the routing
// metrics against hand-derived values.
#include <gtest/gtest.h>

#include <pty.h>
#include <termios.h>
#include <unistd.h>
#include <cmath>

#include <cstdio>

#include "cli/common.h"

namespace gptoss::cli {
namespace {

class RecordingSink : public TextSink {
 public:
  void answer(const std::string& t) override { answer_ += t, log_ += "A:" + t + "|"; }
  void reasoning(const std::string& t) override { reasoning_ += t, log_ += "R:" + t + "|"; }
  void message_break() override { log_ += "/"; }
  std::string answer_, reasoning_, log_;
};

class HarmonyStreamTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto t = Tokenizer::load(GPTOSS_TOKENIZER);
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    tok_ = std::move(t).value().release();
  }
  static void TearDownTestSuite() { delete tok_; }

  // Streams `text` (special tokens allowed) one token at a time.
  static HarmonyStream& feed(HarmonyStream& s, const std::string& text) {
    for (int32_t id : tok_->encode(text, /*allow_special=*/true)) s.push(id);
    return s;
  }
  static Tokenizer* tok_;
};
Tokenizer* HarmonyStreamTest::tok_ = nullptr;

TEST_F(HarmonyStreamTest, ReasoningAndAnswerNeverMix) {
  RecordingSink sink;
  HarmonyStream s(*tok_, sink);
  feed(s,
       "<|channel|>analysis<|message|>User asks 2+2. Simple.<|end|>"
       "<|start|>assistant<|channel|>final<|message|>2 + 2 = 4 — naïve 世界 check.<|return|>");
  s.finish();
  EXPECT_FALSE(s.plain_mode());
  EXPECT_EQ(sink.reasoning_, "User asks 2+2. Simple.");
  EXPECT_EQ(sink.answer_, "2 + 2 = 4 — naïve 世界 check.");
  const auto msgs = s.messages();
  ASSERT_EQ(msgs.size(), 2u);
  EXPECT_EQ(msgs[0].channel, "analysis");
  EXPECT_EQ(msgs[1].channel, "final");
  EXPECT_EQ(msgs[1].content, "2 + 2 = 4 — naïve 世界 check.");
  // All reasoning is emitted before any answer text, with a message break in between.
  EXPECT_LT(sink.log_.rfind("R:"), sink.log_.find("A:"));
  EXPECT_NE(sink.log_.find('/'), std::string::npos);
}

TEST_F(HarmonyStreamTest, PreambleIsShownToolCallIsReasoning) {
  RecordingSink sink;
  HarmonyStream s(*tok_, sink);
  feed(s,
       "<|channel|>commentary<|message|>Checking the weather.<|end|>"
       "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
       "{\"city\":\"Paris\"}<|call|>");
  s.finish();
  EXPECT_EQ(sink.answer_, "Checking the weather.");
  EXPECT_EQ(sink.reasoning_, "{\"city\":\"Paris\"}");
  ASSERT_EQ(s.messages().size(), 2u);
  EXPECT_EQ(s.messages()[1].recipient, "functions.get_weather");
}

TEST_F(HarmonyStreamTest, ForgottenEndStillKeepsReasoningApart) {
  RecordingSink sink;
  HarmonyStream s(*tok_, sink);
  // No <|end|> after the analysis: the next <|start|> closes it.
  feed(s, "<|channel|>analysis<|message|>Thinking hard.<|start|>assistant<|channel|>final<|message|>Done.<|return|>");
  s.finish();
  EXPECT_FALSE(s.plain_mode());
  EXPECT_EQ(sink.reasoning_, "Thinking hard.");
  EXPECT_EQ(sink.answer_, "Done.");
  ASSERT_EQ(s.messages().size(), 2u);
  EXPECT_EQ(s.messages()[0].channel, "analysis");
}

TEST_F(HarmonyStreamTest, HeaderEndedByAStopTokenBecomesItsOwnMessage) {
  RecordingSink sink;
  HarmonyStream s(*tok_, sink);
  // The second message never gets <|message|>: its header words are what the model said.
  feed(s, "<|channel|>analysis<|message|>Hmm.<|end|><|start|>assistant hello world<|end|>");
  s.finish();
  EXPECT_EQ(sink.reasoning_, "Hmm.");
  EXPECT_EQ(sink.answer_, "hello world");
  // Streamed in order, each message closed by a break.
  EXPECT_TRUE(sink.log_.ends_with("|/A:hello world|/")) << sink.log_;
  EXPECT_EQ(sink.log_.find("A:"), sink.log_.rfind("A:"));
}

TEST_F(HarmonyStreamTest, ShortNonHarmonyOutputIsShownAsPlainText) {
  RecordingSink sink;
  HarmonyStream s(*tok_, sink);
  const std::string text = "just some words, no header";
  feed(s, text);
  EXPECT_EQ(sink.answer_, "");  // still possibly a header until the end
  s.finish();
  EXPECT_TRUE(s.plain_mode());
  EXPECT_EQ(sink.answer_, text);
  ASSERT_EQ(s.messages().size(), 1u);
  EXPECT_EQ(s.messages()[0].channel, "final");
  EXPECT_EQ(s.messages()[0].content, text);
}

TEST_F(HarmonyStreamTest, LongNonHarmonyOutputSwitchesToPlainTextMidStream) {
  RecordingSink sink;
  HarmonyStream s(*tok_, sink);
  std::string text;
  for (int i = 0; i < 40; ++i) text += " w" + std::to_string(i);
  const auto ids = tok_->encode(text);
  ASSERT_GT(ids.size(), HarmonyStream::kMaxHeaderTokens + 1);
  for (size_t i = 0; i <= HarmonyStream::kMaxHeaderTokens; ++i) s.push(ids[i]);
  EXPECT_TRUE(s.plain_mode());  // decided before the end of the output
  for (size_t i = HarmonyStream::kMaxHeaderTokens + 1; i < ids.size(); ++i) s.push(ids[i]);
  s.push(harmony_tokens::kReturn);  // special tokens are structure, not text
  s.finish();
  EXPECT_EQ(sink.answer_, text);
}

TEST_F(HarmonyStreamTest, AnswerCutShortKeepsItsText) {
  RecordingSink sink;
  HarmonyStream s(*tok_, sink);
  feed(s, "<|channel|>final<|message|>The answer is");
  s.finish();
  EXPECT_EQ(sink.answer_, "The answer is");
  ASSERT_EQ(s.messages().size(), 1u);
  EXPECT_EQ(s.messages()[0].content, "The answer is");
}

// Reads back what was written to a temporary FILE.
std::string slurp(FILE* f) {
  std::fflush(f);
  std::rewind(f);
  std::string s;
  for (int c; (c = std::fgetc(f)) != EOF;) s += static_cast<char>(c);
  return s;
}

TEST(ConsoleSinkTest, OffTerminalReasoningGoesToStderrPrefixedPerLine) {
  FILE* out = std::tmpfile();
  FILE* err = std::tmpfile();
  {
    ConsoleSink sink(out, err, /*show_reasoning=*/true);
    sink.reasoning("first line\nsecond ");
    sink.reasoning("half\n");
    sink.message_break();
    sink.answer("The answer.");
    sink.end_turn();
  }
  EXPECT_EQ(slurp(out), "The answer.\n");
  EXPECT_EQ(slurp(err), "[reasoning] first line\n[reasoning] second half\n");
  std::fclose(out);
  std::fclose(err);
}

TEST(ConsoleSinkTest, OnATerminalReasoningIsDimAndTheAnswerStartsItsOwnLine) {
  int master = -1, slave = -1;
  ASSERT_EQ(openpty(&master, &slave, nullptr, nullptr, nullptr), 0);
  struct termios t {};
  tcgetattr(slave, &t);
  cfmakeraw(&t);  // no newline translation: read back exactly what was written
  tcsetattr(slave, TCSANOW, &t);
  setenv("TERM", "xterm", 1);
  unsetenv("NO_COLOR");
  FILE* out = fdopen(slave, "w");
  FILE* err = std::tmpfile();
  ASSERT_TRUE(is_terminal(out));
  {
    ConsoleSink sink(out, err, /*show_reasoning=*/true);
    sink.reasoning("think");
    sink.message_break();
    sink.answer("ans");
    sink.end_turn();
  }
  std::string got;
  char buf[256];
  for (ssize_t n; (n = read(master, buf, sizeof buf)) > 0;) {
    got.append(buf, static_cast<size_t>(n));
    if (got.ends_with("ans\n")) break;
  }
  EXPECT_EQ(got, "\033[2mthink\033[0m\nans\n");
  EXPECT_EQ(slurp(err), "");  // nothing on stderr: reasoning stayed on the terminal
  std::fclose(out);
  std::fclose(err);
  close(master);
}

TEST(ConsoleSinkTest, HiddenReasoningWritesNothing) {
  FILE* out = std::tmpfile();
  FILE* err = std::tmpfile();
  {
    ConsoleSink sink(out, err, /*show_reasoning=*/false);
    sink.reasoning("secret thoughts\n");
    sink.answer("visible");
    sink.end_turn();
  }
  EXPECT_EQ(slurp(out), "visible\n");
  EXPECT_EQ(slurp(err), "");
  std::fclose(out);
  std::fclose(err);
}

TEST(FlagsTest, FinalizeChecksEveryValue) {
  auto check = [](auto mutate) {
    ModelFlags m;
    GenerationFlags g;
    mutate(m, g);
    return finalize_flags(m, g);
  };
  EXPECT_TRUE(check([](ModelFlags&, GenerationFlags&) {}).ok());
  struct Case {
    std::function<void(ModelFlags&, GenerationFlags&)> mutate;
    std::string needle;
  };
  const std::vector<Case> bad = {
      {[](ModelFlags&, GenerationFlags& g) { g.sampling.temperature = -0.1f; }, "--temperature"},
      {[](ModelFlags&, GenerationFlags& g) { g.sampling.top_p = 0.0f; }, "--top-p"},
      {[](ModelFlags&, GenerationFlags& g) { g.sampling.top_p = 1.01f; }, "--top-p"},
      {[](ModelFlags&, GenerationFlags& g) { g.sampling.top_k = -1; }, "--top-k"},
      {[](ModelFlags&, GenerationFlags& g) { g.sampling.min_p = 1.0f; }, "--min-p"},
      {[](ModelFlags&, GenerationFlags& g) { g.sampling.repetition_penalty = 0.0f; }, "--repeat-penalty"},
      {[](ModelFlags&, GenerationFlags& g) { g.effort = "Medium"; }, "--reasoning-effort"},
      {[](ModelFlags&, GenerationFlags& g) { g.date = "2024-13-01"; }, "--date"},
      {[](ModelFlags&, GenerationFlags& g) { g.date = "2023-02-29"; }, "--date"},
      {[](ModelFlags&, GenerationFlags& g) { g.date = "24-01-01"; }, "--date"},
      {[](ModelFlags&, GenerationFlags& g) { g.max_tokens = 0; }, "--max-tokens"},
      {[](ModelFlags& m, GenerationFlags&) { m.threads = -2; }, "--threads"},
      {[](ModelFlags& m, GenerationFlags&) { m.context = 1; }, "--context"},
      {[](ModelFlags& m, GenerationFlags&) { m.context = -5; }, "--context"},
  };
  for (const Case& c : bad) {
    const Status st = check(c.mutate);
    EXPECT_FALSE(st.ok()) << c.needle;
    EXPECT_NE(st.message().find(c.needle), std::string::npos) << st.message();
  }
  ModelFlags m;
  GenerationFlags g;
  g.date = "2024-02-29";  // a leap day
  g.seed = 42;
  ASSERT_TRUE(finalize_flags(m, g).ok());
  EXPECT_EQ(g.date, "2024-02-29");
  EXPECT_EQ(g.sampling.seed, 42u);
  g.date = "none";
  ASSERT_TRUE(finalize_flags(m, g).ok());
  EXPECT_EQ(g.date, "");
  const Conversation c = make_conversation(g);
  EXPECT_EQ(c.system.current_date, "");
  EXPECT_FALSE(c.has_developer);
}

TEST(RoutingTest, MetricsMatchHandDerivedValues) {
  RouterStats st;
  st.reset(/*layers=*/3, /*experts=*/4, /*k=*/2);
  // Layer 0: perfectly even (each expert 5 of 20 assignments over 10 tokens).
  for (int e = 0; e < 4; ++e) st.counts[static_cast<size_t>(e)] = 5;
  st.tokens[0] = 10;
  st.top1_weight_sum[0] = 6.0;
  st.entropy_sum[0] = 10 * std::log(2.0);  // every token split 50/50: 1 bit
  // Layer 1: always experts 0 and 1.
  st.counts[4] = 7;
  st.counts[5] = 7;
  st.tokens[1] = 7;
  st.top1_weight_sum[1] = 7.0;
  // Layer 2: nothing routed.
  const LayerRouting even = summarize_layer(st, 0);
  EXPECT_DOUBLE_EQ(even.balance, 1.0);
  EXPECT_DOUBLE_EQ(even.usage_entropy_bits, 2.0);
  EXPECT_DOUBLE_EQ(even.token_entropy_bits, 1.0);
  EXPECT_DOUBLE_EQ(even.mean_top1, 0.6);
  const LayerRouting pinned = summarize_layer(st, 1);
  EXPECT_DOUBLE_EQ(pinned.balance, 2.0);  // E/k
  EXPECT_DOUBLE_EQ(pinned.usage_entropy_bits, 1.0);
  EXPECT_DOUBLE_EQ(pinned.token_entropy_bits, 0.0);
  EXPECT_EQ(pinned.counts, (std::vector<uint64_t>{7, 7, 0, 0}));
  const LayerRouting none = summarize_layer(st, 2);
  EXPECT_EQ(none.tokens, 0u);
  EXPECT_EQ(none.balance, 0.0);
  const std::string text = format_router_stats(st);
  EXPECT_NE(text.find("top-2 of 4 experts, 3 layers"), std::string::npos) << text;
  EXPECT_NE(text.find("counts: 7 7 0 0"), std::string::npos) << text;
  RouterStats empty;
  EXPECT_EQ(format_router_stats(empty), "MoE routing: no tokens routed yet\n");
}

TEST(SummaryTest, DecodeRateExcludesTheFirstToken) {
  TurnResult r;
  r.prompt_tokens = 50;
  r.cached_prompt_tokens = 20;
  r.generated_tokens = 11;
  r.ttft_s = 0.5;
  r.total_s = 1.5;
  r.finish = FinishReason::kLength;
  EXPECT_EQ(format_turn_summary(r),
            "prompt 50 tokens (20 cached), generated 11 tokens, TTFT 0.500 s, 10.0 tok/s, total 1.50 s, finish length");
  r.interrupted = true;
  r.finish = FinishReason::kCancelled;
  r.cached_prompt_tokens = 0;
  EXPECT_NE(format_turn_summary(r).find("finish cancelled (interrupted)"), std::string::npos);
  EXPECT_EQ(format_turn_summary(r).find("cached"), std::string::npos);
}

TEST(FormatTest, Bytes) {
  EXPECT_EQ(format_bytes(0), "0 B");
  EXPECT_EQ(format_bytes(999), "999 B");
  EXPECT_EQ(format_bytes(1500), "1.5 kB");
  EXPECT_EQ(format_bytes(13761264768ull), "13.76 GB");
}

}  // namespace
}  // namespace gptoss::cli
