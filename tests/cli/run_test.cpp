// `gptoss run` driven as a real process on the demo model: determinism, summary and --stats
// numbers checked against independent derivations, terminal behaviour, Ctrl-C, and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <regex>

#include <nlohmann/json.hpp>

#include "cli/process.h"
#include "cli/stats_parse.h"
#include "tokenizer/harmony.h"
#include "tokenizer/tokenizer.h"

namespace gptoss::testing {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> base_args(const std::string& prompt) {
  return {"run",       "--model", demo_model_dir(), "--prompt",  prompt, "--backend", "cpu",
          "--threads", "2",       "--date",         "2025-06-28"};
}

std::vector<std::string> with(std::vector<std::string> a, const std::vector<std::string>& more) {
  a.insert(a.end(), more.begin(), more.end());
  return a;
}

// A failed command must exit (not crash) with 1 or 2 and say what is wrong in one error line.
void expect_clean_failure(const ProcResult& r, const std::string& needle) {
  EXPECT_TRUE(r.exited) << "ended by signal " << r.term_signal << "\n" << r.err;
  EXPECT_TRUE(r.exit_code == 1 || r.exit_code == 2) << "exit " << r.exit_code << "\n" << r.err;
  EXPECT_NE(r.err.find("error:"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << "expected '" << needle << "' in: " << r.err;
  EXPECT_EQ(r.err.find("Segmentation"), std::string::npos);
}

TEST(CliRun, SameSeedSameTextDifferentSeedDifferentText) {
  const auto args = with(base_args("Hello! What is the capital of France?"),
                         {"--max-tokens", "24", "--temperature", "0.8", "--seed", "11"});
  const ProcResult a = run_gptoss(args);
  const ProcResult b = run_gptoss(args);
  ASSERT_TRUE(a.exited && a.exit_code == 0) << a.err;
  ASSERT_TRUE(b.exited && b.exit_code == 0) << b.err;
  EXPECT_FALSE(a.out.empty());
  EXPECT_EQ(a.out, b.out);
  const ProcResult c = run_gptoss(with(base_args("Hello! What is the capital of France?"),
                                       {"--max-tokens", "24", "--temperature", "0.8", "--seed", "12"}));
  ASSERT_TRUE(c.exited && c.exit_code == 0) << c.err;
  EXPECT_NE(a.out, c.out) << "the seed must change the sampled text";
  // Not a terminal: no ANSI styles and no progress bar anywhere.
  for (const auto* s : {&a.out, &a.err}) {
    EXPECT_EQ(s->find('\033'), std::string::npos);
    EXPECT_EQ(s->find('\r'), std::string::npos);
  }
}

TEST(CliRun, SummaryCountsMatchTheRenderedPrompt) {
  const std::string prompt = "Explain MXFP4 in one sentence.";
  const ProcResult r = run_gptoss(with(base_args(prompt), {"--max-tokens", "9", "--temperature", "0", "--system",
                                                           "Answer briefly.", "--reasoning-effort", "high"}));
  ASSERT_TRUE(r.exited && r.exit_code == 0) << r.err;
  EXPECT_NE(r.err.find("loaded "), std::string::npos) << r.err;
  const auto sums = parse_summaries(r.err);
  ASSERT_EQ(sums.size(), 1u) << r.err;
  // The same conversation rendered independently with the tokenizer library.
  auto tok = Tokenizer::load(GPTOSS_TOKENIZER);
  ASSERT_TRUE(tok.ok()) << tok.status().to_string();
  Conversation conv;
  conv.system.current_date = "2025-06-28";
  conv.system.reasoning_effort = "high";
  conv.has_developer = true;
  conv.instructions = "Answer briefly.";
  HarmonyMessage user;
  user.role = "user";
  user.content = prompt;
  conv.messages.push_back(user);
  auto ids = harmony_render(**tok, conv, RenderOptions{});
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(sums[0].prompt, static_cast<int64_t>(ids->size()));
  EXPECT_EQ(sums[0].cached, 0);
  EXPECT_GE(sums[0].generated, 1);
  EXPECT_LE(sums[0].generated, 9);
  EXPECT_TRUE(sums[0].finish == "length" || sums[0].finish == "stop") << sums[0].finish;
  if (sums[0].finish == "length") {
    EXPECT_EQ(sums[0].generated, 9);
  }
}

TEST(CliRun, StatsExpertCountsSumToTokensTimesTopK) {
  const ProcResult r =
      run_gptoss(with(base_args("Count the experts, please."), {"--max-tokens", "13", "--seed", "3", "--stats"}));
  ASSERT_TRUE(r.exited && r.exit_code == 0) << r.err;
  const auto sums = parse_summaries(r.err);
  ASSERT_EQ(sums.size(), 1u);
  const auto rep = parse_routing(r.err);
  ASSERT_TRUE(rep.has_value()) << r.err;
  // The shape comes from the checkpoint's config.json.
  std::ifstream cfg_file(fs::path(demo_model_dir()) / "config.json");
  const auto cfg = nlohmann::json::parse(cfg_file);
  const int64_t layers = cfg.at("num_hidden_layers"), experts = cfg.at("num_local_experts"),
                k = cfg.at("num_experts_per_tok");
  EXPECT_EQ(rep->layers, layers);
  EXPECT_EQ(rep->experts, experts);
  EXPECT_EQ(rep->top_k, k);
  ASSERT_EQ(static_cast<int64_t>(rep->per_layer.size()), layers);
  // Every prompt token and every generated token except the last one ran through the model.
  const uint64_t routed = static_cast<uint64_t>(sums[0].prompt + sums[0].generated - 1);
  for (const RoutingLayer& l : rep->per_layer) {
    ASSERT_EQ(static_cast<int64_t>(l.counts.size()), experts);
    EXPECT_EQ(l.tokens, routed) << "layer " << l.layer;
    EXPECT_EQ(std::accumulate(l.counts.begin(), l.counts.end(), uint64_t{0}), l.tokens * k) << "layer " << l.layer;
    // Each expert is chosen at most once per token.
    for (uint64_t c : l.counts) EXPECT_LE(c, l.tokens);
    // balance = E·Σf² from the printed counts (3 decimals printed).
    double sum_sq = 0, h = 0;
    for (uint64_t c : l.counts) {
      const double f = static_cast<double>(c) / static_cast<double>(k * l.tokens);
      sum_sq += f * f;
      if (f > 0) h -= f * std::log2(f);
    }
    EXPECT_NEAR(l.balance, static_cast<double>(experts) * sum_sq, 1e-3);
    EXPECT_NEAR(l.usage_entropy, h, 1e-3);
    EXPECT_NEAR(l.usage_max, std::log2(static_cast<double>(experts)), 1e-3);
    EXPECT_NEAR(l.token_max, std::log2(static_cast<double>(k)), 1e-3);
    EXPECT_GE(l.balance, 1.0 - 1e-3);
    EXPECT_LE(l.balance, static_cast<double>(experts) / static_cast<double>(k) + 1e-3);  // the same k every time
    EXPECT_GE(l.token_entropy, 0.0);
    EXPECT_LE(l.token_entropy, l.token_max + 1e-3);
    EXPECT_GE(l.top1, 1.0 / static_cast<double>(k) - 1e-3);  // the largest of k weights summing to 1
    EXPECT_LE(l.top1, 1.0 + 1e-3);
  }
  for (const char* needle : {"weights", "KV cache", "scratch", "RSS", "device"}) {
    EXPECT_NE(r.err.find(needle), std::string::npos) << needle;
  }
  EXPECT_NE(r.err.find(" tokens, f32)"), std::string::npos) << r.err;  // the default cache type
}

// --kv-cache f16 reaches the backend and the report; the text still comes out.
TEST(CliRun, KvCacheFlagIsUsedAndReported) {
  const ProcResult r = run_gptoss(
      with(base_args("Say something short."), {"--max-tokens", "6", "--seed", "3", "--stats", "--kv-cache", "f16"}));
  ASSERT_TRUE(r.exited && r.exit_code == 0) << r.err;
  EXPECT_NE(r.err.find(" tokens, f16)"), std::string::npos) << r.err;
}

TEST(CliRun, TerminalShowsProgressAndCtrlCStopsCleanly) {
  std::vector<std::string> args{GPTOSS_BIN};
  const auto rest = with(base_args("Write a very long story."),
                         {"--max-tokens", "60000", "--context", "65536", "--seed", "1", "--show-reasoning"});
  args.insert(args.end(), rest.begin(), rest.end());
  PtyProcess p(args);
  ASSERT_TRUE(p.started());
  ASSERT_TRUE(p.wait_for("loaded ", 0, 120000)) << p.output();
  // The progress bar was drawn on the terminal before the load line.
  EXPECT_NE(p.output().find("loading ["), std::string::npos) << p.output();
  const size_t after_load = p.output().find("loaded ");
  const size_t line_end = p.output().find('\n', after_load);
  ASSERT_NE(line_end, std::string::npos);
  // Let some text stream, then press Ctrl-C.
  ASSERT_TRUE(p.wait_for(" ", line_end + 40, 60000)) << p.output();
  p.write("\x03");
  ASSERT_TRUE(p.wait_exit(60000)) << p.output();
  EXPECT_TRUE(p.exited()) << "signal " << p.term_signal();
  EXPECT_EQ(p.exit_code(), 130);
  const auto sums = parse_summaries(p.output());
  ASSERT_EQ(sums.size(), 1u) << p.output();
  EXPECT_TRUE(sums[0].interrupted);
  EXPECT_EQ(sums[0].finish, "cancelled");
  EXPECT_LT(sums[0].generated, 60000);
}

TEST(CliRun, LoggingIsQuietByDefaultAndTimestampedWhenAsked) {
  const auto args = with(base_args("hi"), {"--max-tokens", "2", "--seed", "1"});
  static const std::regex debug_line(R"(\[\d\d:\d\d:\d\d\.\d{3} debug\] )");
  const ProcResult quiet = run_gptoss(args);
  ASSERT_EQ(quiet.exit_code, 0) << quiet.err;
  EXPECT_FALSE(std::regex_search(quiet.err, debug_line)) << quiet.err;
  EXPECT_EQ(quiet.err.find(" info] "), std::string::npos) << quiet.err;
  const ProcResult verbose = run_gptoss(with(args, {"--verbose"}));
  ASSERT_EQ(verbose.exit_code, 0) << verbose.err;
  EXPECT_TRUE(std::regex_search(verbose.err, debug_line)) << verbose.err;
  const ProcResult env = run_process(with({GPTOSS_BIN}, args), "", {{"GPTOSS_LOG", "debug"}});
  ASSERT_EQ(env.exit_code, 0) << env.err;
  EXPECT_TRUE(std::regex_search(env.err, debug_line)) << env.err;
  // Logging never touches stdout: the answer is the same either way.
  EXPECT_EQ(quiet.out, verbose.out);
  EXPECT_EQ(quiet.out, env.out);
}

TEST(CliRun, HelpListsTheOptions) {
  const ProcResult r = run_gptoss({"run", "--help"});
  EXPECT_TRUE(r.exited);
  EXPECT_EQ(r.exit_code, 0);
  for (const char* flag : {"--model",          "--tokenizer",   "--prompt",  "--system",  "--reasoning-effort",
                           "--max-tokens",     "--temperature", "--top-p",   "--top-k",   "--min-p",
                           "--repeat-penalty", "--seed",        "--backend", "--threads", "--show-reasoning",
                           "--stats",          "--verbose",     "--date",    "--context", "--kv-cache"}) {
    EXPECT_NE(r.out.find(flag), std::string::npos) << flag;
  }
}

TEST(CliRun, ContextDefaultsToTheSmallerOf4096AndTheModelMaximum) {
  const std::string demo = demo_model_dir();
  const ProcResult big = run_gptoss(with(base_args("hi"), {"--max-tokens", "1"}));
  ASSERT_EQ(big.exit_code, 0) << big.err;
  EXPECT_NE(big.err.find("context 4096)"), std::string::npos) << big.err;
  // The same weights with a config that allows only 256 positions.
  const std::string dir = make_temp_dir("ctx");
  for (const char* f : {"model.safetensors", "tokenizer.json"}) {
    fs::create_symlink(fs::canonical(fs::path(demo) / f), fs::path(dir) / f);
  }
  std::ifstream in(fs::path(demo) / "config.json");
  auto cfg = nlohmann::json::parse(in);
  cfg["max_position_embeddings"] = 256;
  std::ofstream(fs::path(dir) / "config.json") << cfg.dump(2);
  auto args = base_args("hi");
  args[2] = dir;
  const ProcResult small = run_gptoss(with(args, {"--max-tokens", "1"}));
  ASSERT_EQ(small.exit_code, 0) << small.err;
  EXPECT_NE(small.err.find("context 256)"), std::string::npos) << small.err;
  expect_clean_failure(run_gptoss(with(args, {"--context", "1000"})), "max_position_embeddings 256");
  fs::remove_all(dir);
}

TEST(CliRun, BadInputFailsWithAClearMessage) {
  const std::string demo = demo_model_dir();
  expect_clean_failure(run_gptoss({"run", "--model", "/nonexistent/model", "--prompt", "hi"}), "does not exist");
  expect_clean_failure(run_gptoss({"run", "--prompt", "hi"}), "--model");
  expect_clean_failure(run_gptoss(with(base_args("hi"), {"--temperature=-0.5"})), "--temperature");
  expect_clean_failure(run_gptoss(with(base_args("hi"), {"--top-p", "0"})), "--top-p");
  expect_clean_failure(run_gptoss(with(base_args("hi"), {"--top-p", "1.5"})), "--top-p");
  expect_clean_failure(run_gptoss(with(base_args("hi"), {"--reasoning-effort", "extreme"})), "reasoning-effort");
  expect_clean_failure(run_gptoss(with(base_args("hi"), {"--max-tokens", "0"})), "--max-tokens");
  expect_clean_failure(run_gptoss(with(base_args("hi"), {"--date", "2025-02-30"})), "--date");
  expect_clean_failure(run_gptoss(with(base_args("hi"), {"--backend", "tpu"})), "--backend");
  expect_clean_failure(run_gptoss(with(base_args("hi"), {"--kv-cache", "q8"})), "unknown KV cache type 'q8'");
  expect_clean_failure(run_gptoss(with(base_args("hi"), {"--no-such-flag"})), "no-such-flag");
  expect_clean_failure(run_gptoss(with(base_args("hi"), {"--tokenizer", "/nonexistent/tokenizer.json"})),
                       "no tokenizer");
  // A prompt that cannot fit the context (plus room for one new token).
  std::string long_prompt;
  for (int i = 0; i < 300; ++i) long_prompt += "word" + std::to_string(i) + " ";
  expect_clean_failure(run_gptoss(with(base_args(long_prompt), {"--context", "128"})), "context");
  // A model folder without tokenizer.json: the checkpoint alone, through symlinks.
  const std::string bare = make_temp_dir("notok");
  for (const char* f : {"config.json", "model.safetensors"}) fs::create_symlink(fs::path(demo) / f, fs::path(bare) / f);
  expect_clean_failure(run_gptoss({"run", "--model", bare, "--prompt", "hi"}), "no tokenizer");
  // A tokenizer whose special ids the model has no rows for.
  expect_clean_failure(run_gptoss({"run", "--model", std::string(GPTOSS_FIXTURES) + "/pub-a", "--tokenizer",
                                   GPTOSS_TOKENIZER, "--prompt", "hi"}),
                       "vocabulary");
  fs::remove_all(bare);
}

}  // namespace
}  // namespace gptoss::testing
