// `gptoss inspect --model DIR [--json]`: loads a checkpoint through Model::load (every tensor checked)
// and prints its configuration, parameter counts, weight bytes by kind and bytes read per token.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/common.h"

namespace gptoss::cli {
namespace {

constexpr const char* kName = "inspect";

// 20914757184 → "20,914,757,184"
std::string with_commas(int64_t v) {
  const std::string digits = std::to_string(v < 0 ? -v : v);
  std::string out = v < 0 ? "-" : "";
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

int64_t count_sliding(const Config& c) {
  int64_t n = 0;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) n += c.is_sliding(i) ? 1 : 0;
  return n;
}

nlohmann::ordered_json to_json(const Model& m) {
  const Config& c = m.config();
  const Model::ParamCounts pc = m.param_counts();
  nlohmann::ordered_json j;
  j["model"] = m.source();
  j["config"] = nlohmann::ordered_json::parse(config_to_json_text(c));
  j["sliding_layers"] = count_sliding(c);
  j["eos_token_ids"] = c.eos_token_ids;
  j["params"] = {{"total", pc.total}, {"active", pc.active}};
  j["bytes"] = {{"weights", pc.weight_bytes},      {"experts", pc.expert_bytes},  {"attention", pc.attention_bytes},
                {"embedding", pc.embedding_bytes}, {"lm_head", pc.lm_head_bytes}, {"other", pc.other_bytes},
                {"per_token", pc.bytes_per_token}};
  return j;
}

void print_text(const Model& m) {
  const Config& c = m.config();
  const Model::ParamCounts pc = m.param_counts();
  const int64_t sliding = count_sliding(c);
  std::printf("model       %s\n", m.source().c_str());
  std::printf("layers      %lld (%lld sliding window %lld, %lld full)\n", static_cast<long long>(c.num_hidden_layers),
              static_cast<long long>(sliding), static_cast<long long>(c.sliding_window),
              static_cast<long long>(c.num_hidden_layers - sliding));
  std::printf("widths      hidden %lld, expert intermediate %lld, vocab %lld\n", static_cast<long long>(c.hidden_size),
              static_cast<long long>(c.intermediate_size), static_cast<long long>(c.vocab_size));
  std::printf("attention   %lld query heads, %lld kv heads, head_dim %lld\n",
              static_cast<long long>(c.num_attention_heads), static_cast<long long>(c.num_key_value_heads),
              static_cast<long long>(c.head_dim));
  std::printf("experts     %lld, top-%lld per token (MXFP4)\n", static_cast<long long>(c.num_local_experts),
              static_cast<long long>(c.num_experts_per_tok));
  std::printf("rope        theta %g, yarn factor %g from %lld tokens, max position %lld\n", c.rope_theta,
              c.rope_scaling.factor, static_cast<long long>(c.rope_scaling.original_max_position_embeddings),
              static_cast<long long>(c.max_position_embeddings));
  std::string eos;
  for (int32_t id : c.eos_token_ids) eos += (eos.empty() ? "" : " ") + std::to_string(id);
  std::printf("stop ids    %s (pad %d)\n", eos.c_str(), c.pad_token_id);
  std::printf("parameters  total %s, active per token %s\n", with_commas(pc.total).c_str(),
              with_commas(pc.active).c_str());
  std::printf("weights     %s: experts %s, attention %s, embedding %s, lm_head %s, norms+router %s\n",
              format_bytes(pc.weight_bytes).c_str(), format_bytes(pc.expert_bytes).c_str(),
              format_bytes(pc.attention_bytes).c_str(), format_bytes(pc.embedding_bytes).c_str(),
              format_bytes(pc.lm_head_bytes).c_str(), format_bytes(pc.other_bytes).c_str());
  std::printf("per token   %s of weights read per decoded token (batch 1)\n", format_bytes(pc.bytes_per_token).c_str());
}

int inspect_main(int argc, char** argv) {
  CLI::App app{"Check a checkpoint and print its configuration and sizes.", "gptoss inspect"};
  std::string dir;
  bool json = false;
  app.add_option("--model,-m", dir, "checkpoint folder (HF layout, or original/)")->required();
  app.add_flag("--json", json, "print one JSON object instead of text");
  if (auto code = parse_flags(app, argc, argv, kName)) return *code;

  ProgressBar bar("checking");
  auto model = Model::load(dir, [&](const LoadProgress& p) { bar.update(p.bytes_done, p.bytes_total, *p.tensor); });
  bar.finish();
  if (!model.ok()) return report_error(kName, model.status());
  if (json)
    std::printf("%s\n", to_json(**model).dump(2).c_str());
  else
    print_text(**model);
  return 0;
}

}  // namespace

GPTOSS_COMMAND("inspect", "check a checkpoint; print its config, parameter counts and sizes", inspect_main);

}  // namespace gptoss::cli
