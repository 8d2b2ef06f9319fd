// `gptoss bench` driven as the real binary on the CPU backend: the JSON carries every field with
// consistent values (rates from the measured step times, the bound from the model's byte counts),
// the text report has its lines, and bad flags fail with a clear message.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/process.h"
#include "model/config.h"
#include "model/weights.h"

namespace gptoss::testing {
namespace {

nlohmann::json run_bench_json(const std::vector<std::string>& extra) {
  std::vector<std::string> args = {"bench", "--random", "tiny", "--backend", "cpu", "--threads", "2", "--json"};
  args.insert(args.end(), extra.begin(), extra.end());
  const ProcResult r = run_gptoss(args);
  EXPECT_TRUE(r.exited && r.exit_code == 0) << r.err;
  return nlohmann::json::parse(r.out);  // throws (test fails) on invalid JSON
}

TEST(BenchCli, JsonHasEveryFieldWithConsistentValues) {
  const nlohmann::json j =
      run_bench_json({"--prompt-tokens", "24", "--gen-tokens", "6", "--batch", "3", "--repeat", "2"});
  for (const char* key : {"model",
                          "preset",
                          "backend",
                          "prompt_tokens",
                          "gen_tokens",
                          "depth",
                          "batch",
                          "repeat",
                          "kv_cache",
                          "prefill_tok_s",
                          "decode_tok_s",
                          "ttft_ms",
                          "ms_per_step",
                          "peak_rss_bytes",
                          "weight_bytes",
                          "kv_bytes_reserved",
                          "device_memory_used_bytes",
                          "device_memory_total_bytes",
                          "bytes_per_token_weights",
                          "bytes_per_token_kv",
                          "bytes_per_step_weights",
                          "experts_read_per_layer",
                          "bandwidth_bytes_per_s",
                          "bandwidth_source",
                          "bound_tok_s",
                          "fraction_of_bound"})
    EXPECT_TRUE(j.contains(key)) << key;
  EXPECT_EQ(j["backend"], "cpu");
  EXPECT_EQ(j["batch"], 3);
  EXPECT_EQ(j["kv_cache"], "f32");
  for (const char* stat : {"prefill_tok_s", "decode_tok_s", "ttft_ms", "ms_per_step"}) {
    const auto& s = j[stat];
    EXPECT_GT(s["min"].get<double>(), 0) << stat;
    EXPECT_LE(s["min"].get<double>(), s["median"].get<double>()) << stat;
    EXPECT_LE(s["median"].get<double>(), s["max"].get<double>()) << stat;
  }
  // Byte counts come from the model's shapes (spec §8.2 arithmetic, tested in tests/model).
  auto cfg = config_preset("tiny");
  ASSERT_TRUE(cfg.ok());
  const auto pc = Model::param_counts_for(*cfg);
  EXPECT_EQ(j["bytes_per_token_weights"].get<size_t>(), pc.bytes_per_token);
  // Three tokens of top-k from E experts: E·(1 − (1 − k/E)^3) distinct experts expected per layer.
  const double E = static_cast<double>(cfg->num_local_experts), k = static_cast<double>(cfg->num_experts_per_tok);
  EXPECT_NEAR(j["experts_read_per_layer"].get<double>(), E * (1 - std::pow(1 - k / E, 3)), 1e-9);
  // bound = batch × bandwidth / (step weights + batch × KV); fraction = decode / bound.
  const double bound = 3 * j["bandwidth_bytes_per_s"].get<double>() /
                       (j["bytes_per_step_weights"].get<double>() + 3 * j["bytes_per_token_kv"].get<double>());
  EXPECT_NEAR(j["bound_tok_s"].get<double>(), bound, bound * 1e-9);
  EXPECT_NEAR(j["fraction_of_bound"].get<double>(), j["decode_tok_s"]["median"].get<double>() / bound, 1e-9);
  EXPECT_GT(j["weight_bytes"].get<double>(), 0);
  EXPECT_GT(j["kv_bytes_reserved"].get<double>(), 0);
  EXPECT_GT(j["peak_rss_bytes"].get<double>(), j["weight_bytes"].get<double>());
}

TEST(BenchCli, PrefillOnlyHasNoDecodeFraction) {
  const nlohmann::json j = run_bench_json({"--prompt-tokens", "16", "--gen-tokens", "0", "--repeat", "1"});
  EXPECT_TRUE(j["fraction_of_bound"].is_null());
  EXPECT_GT(j["prefill_tok_s"]["median"].get<double>(), 0);
}

TEST(BenchCli, TextReportAndDepth) {
  const ProcResult r = run_gptoss({"bench", "--random", "tiny", "--backend", "cpu", "--depth", "40", "--prompt-tokens",
                                   "4", "--gen-tokens", "4", "--repeat", "1"});
  ASSERT_TRUE(r.exited && r.exit_code == 0) << r.err;
  for (const char* line : {"prefill ", "decode ", "bound ", "fraction ", "memory "})
    EXPECT_NE(r.out.find(line), std::string::npos) << line << "\n" << r.out;
  EXPECT_NE(r.out.find("depth 40"), std::string::npos) << r.out;
}

// --temperature decodes sampled tokens, on the backend or (--host-sampling) from copied logits.
TEST(BenchCli, SampledDecodeOnTheBackendOrTheHost) {
  for (const bool host : {false, true}) {
    std::vector<std::string> args = {"--prompt-tokens", "8",   "--gen-tokens",  "5",   "--batch", "2",
                                     "--repeat",        "1",   "--temperature", "0.8", "--top-k", "20",
                                     "--top-p",         "0.9", "--min-p",       "0.01"};
    if (host) args.push_back("--host-sampling");
    const nlohmann::json j = run_bench_json(args);
    EXPECT_EQ(j["sampling"]["where"], host ? "host" : "backend");
    EXPECT_FLOAT_EQ(j["sampling"]["temperature"].get<float>(), 0.8f);
    EXPECT_EQ(j["sampling"]["top_k"], 20);
    EXPECT_GT(j["decode_tok_s"]["median"].get<double>(), 0);
  }
  EXPECT_EQ(run_bench_json({"--prompt-tokens", "4", "--gen-tokens", "2", "--repeat", "1"})["sampling"]["where"],
            "greedy");
  const ProcResult r = run_gptoss({"bench", "--random", "tiny", "--backend", "cpu", "--prompt-tokens", "4",
                                   "--gen-tokens", "3", "--repeat", "1", "--temperature", "1"});
  ASSERT_TRUE(r.exited && r.exit_code == 0) << r.err;
  EXPECT_NE(r.out.find("sampling   temperature 1, top_p 1, top_k 0, min_p 0, on the backend"), std::string::npos)
      << r.out;
}

// --kv-cache f16 on the CPU backend: reported, and the bound still counts 4 bytes a value (the CPU
// keeps the rounded values in f32), so the KV bytes per token equal the f32 run's.
TEST(BenchCli, KvCacheTypeIsReported) {
  const std::vector<std::string> args = {"--depth", "40", "--prompt-tokens", "4", "--gen-tokens", "4", "--repeat", "1"};
  const nlohmann::json f32 = run_bench_json(args);
  std::vector<std::string> a16 = args;
  a16.insert(a16.end(), {"--kv-cache", "f16"});
  const nlohmann::json f16 = run_bench_json(a16);
  EXPECT_EQ(f16["kv_cache"], "f16");
  EXPECT_GT(f16["bytes_per_token_kv"].get<double>(), 0);
  EXPECT_EQ(f16["bytes_per_token_kv"].get<double>(), f32["bytes_per_token_kv"].get<double>());
  EXPECT_EQ(f16["kv_bytes_reserved"].get<double>(), f32["kv_bytes_reserved"].get<double>());
}

TEST(BenchCli, BadFlagsFailWithAMessage) {
  const std::string model = std::string(GPTOSS_FIXTURES) + "/pub-a";
  const std::vector<std::vector<std::string>> cases = {
      {"bench", "--backend", "cpu"},                          // neither --model nor --random
      {"bench", "--model", model, "--random", "tiny"},        // both
      {"bench", "--random", "nope"},                          // unknown preset
      {"bench", "--random", "tiny", "--prompt-tokens", "0"},  // nothing to decode from
      {"bench", "--random", "tiny", "--batch", "0"},          // no sequences
      {"bench", "--random", "tiny", "--backend", "tpu"},      // unknown backend
      {"bench", "--model", "/nonexistent/model"},             // missing folder
      {"bench", "--random", "tiny", "--depth", "200000"},     // beyond max_position_embeddings
      {"bench", "--random", "tiny", "--temperature", "-1"},   // bad sampling parameters
      {"bench", "--random", "tiny", "--top-p", "0"},
      {"bench", "--random", "tiny", "--kv-cache", "int8"},  // unknown KV cache type
  };
  for (const auto& args : cases) {
    const ProcResult r = run_gptoss(args);
    std::string joined;
    for (const auto& a : args) joined += a + " ";
    EXPECT_TRUE(r.exited) << joined;
    EXPECT_TRUE(r.exit_code == 1 || r.exit_code == 2) << joined << " exit " << r.exit_code;
    EXPECT_NE(r.err.find("gptoss bench: error:"), std::string::npos) << joined << "\n" << r.err;
  }
}

}  // namespace
}  // namespace gptoss::testing
