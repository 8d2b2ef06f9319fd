// `gptoss chat` driven as a real process on the demo model: piped stdin and a pseudo-terminal,
// KV reuse across turns (cached prompt tokens), /stats numbers, commands, Ctrl-C, bad input.
#include <gtest/gtest.h>

#include <numeric>

#include "cli/process.h"
#include "cli/stats_parse.h"

namespace gptoss::testing {
namespace {

std::vector<std::string> chat_args(const std::vector<std::string>& more = {}) {
  std::vector<std::string> a{"chat", "--model", demo_model_dir(), "--backend", "cpu", "--threads",
                             "2",    "--date",  "2025-06-28",     "--seed",    "5"};
  a.insert(a.end(), more.begin(), more.end());
  return a;
}

// Routed tokens of one turn: the prompt tokens not served from the cache, plus every generated
// token except the last (which is sampled but never run through the model).
uint64_t routed(const TurnSummary& s) {
  return static_cast<uint64_t>(s.prompt - s.cached + s.generated - 1);
}

TEST(CliChat, PipedTurnsReuseTheCacheAndStatsAddUp) {
  const std::string input =
      "Hello there!\n"
      "And a second question?\n"
      "/stats\n"
      "/effort bogus\n"
      "/effort high\n"
      "\n"
      "/nonsense\n"
      "Third turn with high effort.\n"
      "/reset\n"
      "After the reset.\n"
      "/exit\n"
      "This line is never read.\n";
  const ProcResult r = run_gptoss(chat_args({"--max-tokens", "12"}), input);
  ASSERT_TRUE(r.exited && r.exit_code == 0) << r.err;
  const auto sums = parse_summaries(r.err);
  ASSERT_EQ(sums.size(), 4u) << r.err;
  // Turn 2 re-renders turn 1's prompt unchanged, so at least all of it comes from the KV cache.
  EXPECT_EQ(sums[0].cached, 0);
  EXPECT_GE(sums[1].cached, sums[0].prompt);
  EXPECT_GT(sums[1].prompt, sums[0].prompt);
  // The effort changed the system message: reuse stops at (or before) the effort line.
  EXPECT_LT(sums[2].cached, sums[1].prompt);
  EXPECT_GT(sums[2].cached, 0);
  // After /reset the conversation is the system message + one user turn: shorter than turn 3's.
  EXPECT_LT(sums[3].prompt, sums[2].prompt);
  EXPECT_GT(sums[3].cached, 0) << "the system prefix is still cached";
  // /stats came after two turns: its counts cover exactly the tokens those turns routed.
  const auto rep = parse_routing(r.out);
  ASSERT_TRUE(rep.has_value()) << r.out;
  ASSERT_EQ(rep->per_layer.size(), 2u);
  for (const RoutingLayer& l : rep->per_layer) {
    EXPECT_EQ(l.tokens, routed(sums[0]) + routed(sums[1]));
    EXPECT_EQ(std::accumulate(l.counts.begin(), l.counts.end(), uint64_t{0}), l.tokens * rep->top_k);
  }
  EXPECT_NE(r.out.find("KV cache"), std::string::npos);
  EXPECT_NE(r.err.find("reasoning effort must be low, medium or high, got 'bogus'"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("reasoning effort: high"), std::string::npos);
  EXPECT_NE(r.err.find("unknown command '/nonsense'"), std::string::npos);
  EXPECT_NE(r.err.find("conversation cleared"), std::string::npos);
  // Piped: no prompt markers, no styles.
  EXPECT_EQ(r.out.find(">>> "), std::string::npos);
  EXPECT_EQ(r.out.find('\033'), std::string::npos);
}

TEST(CliChat, EndOfInputEndsTheSessionAndIsDeterministic) {
  // No /exit and no trailing newline on the last line.
  const std::string input = "First line\nsecond line without newline";
  const ProcResult a = run_gptoss(chat_args({"--max-tokens", "8", "--temperature", "0.7"}), input);
  const ProcResult b = run_gptoss(chat_args({"--max-tokens", "8", "--temperature", "0.7"}), input);
  ASSERT_TRUE(a.exited && a.exit_code == 0) << a.err;
  ASSERT_TRUE(b.exited && b.exit_code == 0) << b.err;
  EXPECT_EQ(parse_summaries(a.err).size(), 2u) << a.err;
  EXPECT_EQ(a.out, b.out);
}

TEST(CliChat, PseudoTerminalTwoTurnsAndStats) {
  std::vector<std::string> args{GPTOSS_BIN};
  const auto rest = chat_args({"--max-tokens", "10"});
  args.insert(args.end(), rest.begin(), rest.end());
  PtyProcess p(args);
  ASSERT_TRUE(p.started());
  ASSERT_TRUE(p.wait_for(">>> ", 0, 120000)) << p.output();
  size_t mark = p.output().size();
  p.write("Hi, who are you?\n");
  ASSERT_TRUE(p.wait_for("finish ", mark, 60000)) << p.output();
  ASSERT_TRUE(p.wait_for(">>> ", mark, 60000)) << p.output();
  mark = p.output().size();
  p.write("Tell me more.\n");
  ASSERT_TRUE(p.wait_for("finish ", mark, 60000)) << p.output();
  ASSERT_TRUE(p.wait_for(">>> ", mark, 60000)) << p.output();
  mark = p.output().size();
  p.write("/stats\n");
  ASSERT_TRUE(p.wait_for("MoE routing", mark, 60000)) << p.output();
  ASSERT_TRUE(p.wait_for(">>> ", mark, 60000)) << p.output();
  p.write("/exit\n");
  ASSERT_TRUE(p.wait_exit(60000)) << p.output();
  EXPECT_TRUE(p.exited()) << "signal " << p.term_signal();
  EXPECT_EQ(p.exit_code(), 0);
  const auto sums = parse_summaries(p.output());
  ASSERT_EQ(sums.size(), 2u) << p.output();
  EXPECT_GE(sums[1].cached, sums[0].prompt);
  const auto rep = parse_routing(p.output());
  ASSERT_TRUE(rep.has_value());
  for (const RoutingLayer& l : rep->per_layer) {
    EXPECT_EQ(l.tokens, routed(sums[0]) + routed(sums[1]));
    EXPECT_EQ(std::accumulate(l.counts.begin(), l.counts.end(), uint64_t{0}), l.tokens * rep->top_k);
  }
}

TEST(CliChat, CtrlCStopsTheAnswerButNotTheChat) {
  std::vector<std::string> args{GPTOSS_BIN};
  const auto rest = chat_args({"--max-tokens", "60000", "--context", "65536"});
  args.insert(args.end(), rest.begin(), rest.end());
  PtyProcess p(args);
  ASSERT_TRUE(p.started());
  ASSERT_TRUE(p.wait_for(">>> ", 0, 120000)) << p.output();
  size_t mark = p.output().size();
  p.write("Write forever.\n");
  ASSERT_TRUE(p.wait_for(" ", mark + 60, 60000)) << p.output();
  p.write("\x03");
  ASSERT_TRUE(p.wait_for("(interrupted)", mark, 60000)) << p.output();
  ASSERT_TRUE(p.wait_for(">>> ", p.output().find("(interrupted)"), 60000)) << p.output();
  // The conversation goes on after the interrupted answer: a second turn streams (and is
  // interrupted in turn) with the first one's prompt served from the KV cache.
  mark = p.output().size();
  p.write("Shorter please.\n");
  ASSERT_TRUE(p.wait_for(" ", mark + 60, 60000)) << p.output();
  p.write("\x03");
  ASSERT_TRUE(p.wait_for("(interrupted)", mark, 60000)) << p.output();
  ASSERT_TRUE(p.wait_for(">>> ", p.output().find("(interrupted)", mark), 60000)) << p.output();
  const auto sums = parse_summaries(p.output());
  ASSERT_EQ(sums.size(), 2u);
  EXPECT_GE(sums[1].cached, sums[0].prompt);
  EXPECT_EQ(sums[1].finish, "cancelled");
  p.write("\x03");  // Ctrl-C at the prompt ends the session
  ASSERT_TRUE(p.wait_exit(60000)) << p.output();
  EXPECT_TRUE(p.exited());
  EXPECT_EQ(p.exit_code(), 130);
}

TEST(CliChat, BadInputFailsBeforeChatting) {
  for (const auto& [flags, needle] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"--temperature=-1"}, "--temperature"},
           {{"--top-p", "2"}, "--top-p"},
           {{"--reasoning-effort", "max"}, "--reasoning-effort"},
       }) {
    const ProcResult r = run_gptoss(chat_args(flags), "hello\n");
    EXPECT_TRUE(r.exited) << r.err;
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
    EXPECT_TRUE(parse_summaries(r.err).empty());
  }
  const ProcResult r = run_gptoss({"chat", "--model", "/nonexistent"}, "hello\n");
  EXPECT_TRUE(r.exited);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("does not exist"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace gptoss::testing
