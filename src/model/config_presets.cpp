// Config validation, HF config.json serialisation and the named presets.
#include <cmath>
#include <nlohmann/json.hpp>

#include "model/config.h"

namespace gptoss {

using nlohmann::ordered_json;

namespace {

// Upper bounds keep every shape product far inside int64 and reject absurd (corrupt) values early.
constexpr int64_t kMaxDim = int64_t{1} << 24;
// Weights beyond this many parameters (a petabyte-scale model) are surely a corrupt config, and
// keeping below it keeps every byte count inside size_t.
constexpr double kMaxParams = 1e15;

Status check_range(const char* field, int64_t v, int64_t lo, int64_t hi) {
  if (v < lo || v > hi)
    return make_error(ErrorCode::kInvalidArgument, "field '{}' is {}, must be in [{}, {}]", field, v, lo, hi);
  return {};
}

Status check_positive(const char* field, double v) {
  if (!(v > 0.0) || !std::isfinite(v))
    return make_error(ErrorCode::kInvalidArgument, "field '{}' is {}, must be a positive finite number", field, v);
  return {};
}

}  // namespace

Status Config::validate() const {
  GPTOSS_RETURN_IF_ERROR(check_range("hidden_size", hidden_size, 32, kMaxDim));
  GPTOSS_RETURN_IF_ERROR(check_range("intermediate_size", intermediate_size, 32, kMaxDim));
  // MXFP4 blocks 32 values along the reduction dimension of both expert matrices (spec §3.2).
  if (hidden_size % 32 != 0)
    return make_error(ErrorCode::kInvalidArgument, "field 'hidden_size' is {}, must be a multiple of 32", hidden_size);
  if (intermediate_size % 32 != 0)
    return make_error(ErrorCode::kInvalidArgument, "field 'intermediate_size' is {}, must be a multiple of 32",
                      intermediate_size);
  GPTOSS_RETURN_IF_ERROR(check_range("num_hidden_layers", num_hidden_layers, 1, kConfigMaxLayers));
  GPTOSS_RETURN_IF_ERROR(check_range("num_attention_heads", num_attention_heads, 1, 65536));
  GPTOSS_RETURN_IF_ERROR(check_range("num_key_value_heads", num_key_value_heads, 1, num_attention_heads));
  if (num_attention_heads % num_key_value_heads != 0)
    return make_error(ErrorCode::kInvalidArgument,
                      "field 'num_attention_heads' ({}) must be a multiple of 'num_key_value_heads' ({})",
                      num_attention_heads, num_key_value_heads);
  GPTOSS_RETURN_IF_ERROR(check_range("head_dim", head_dim, 2, 4096));
  if (head_dim % 2 != 0)  // RoPE rotates pairs (half-split)
    return make_error(ErrorCode::kInvalidArgument, "field 'head_dim' is {}, must be even", head_dim);
  GPTOSS_RETURN_IF_ERROR(check_range("q width (num_attention_heads*head_dim)", q_dim(), 1, kMaxDim));
  GPTOSS_RETURN_IF_ERROR(check_range("num_local_experts", num_local_experts, 1, 65536));
  GPTOSS_RETURN_IF_ERROR(check_range("num_experts_per_tok", num_experts_per_tok, 1, num_local_experts));
  GPTOSS_RETURN_IF_ERROR(check_range("vocab_size", vocab_size, 1, kMaxDim));
  GPTOSS_RETURN_IF_ERROR(check_range("sliding_window", sliding_window, 1, INT32_MAX));
  GPTOSS_RETURN_IF_ERROR(check_range("max_position_embeddings", max_position_embeddings, 1, INT32_MAX));
  GPTOSS_RETURN_IF_ERROR(check_range("initial_context_length", initial_context_length, 1, INT32_MAX));
  GPTOSS_RETURN_IF_ERROR(check_positive("rope_theta", rope_theta));
  GPTOSS_RETURN_IF_ERROR(check_positive("rms_norm_eps", rms_norm_eps));
  GPTOSS_RETURN_IF_ERROR(check_positive("swiglu_limit", swiglu_limit));
  GPTOSS_RETURN_IF_ERROR(check_positive("swiglu_alpha", swiglu_alpha));
  if (!(rope_scaling.factor >= 1.0) || !std::isfinite(rope_scaling.factor))
    return make_error(ErrorCode::kInvalidArgument, "field 'rope_scaling.factor' is {}, must be >= 1",
                      rope_scaling.factor);
  GPTOSS_RETURN_IF_ERROR(check_positive("rope_scaling.beta_fast", rope_scaling.beta_fast));
  GPTOSS_RETURN_IF_ERROR(check_positive("rope_scaling.beta_slow", rope_scaling.beta_slow));
  if (!(rope_scaling.beta_fast > rope_scaling.beta_slow))
    return make_error(ErrorCode::kInvalidArgument, "field 'rope_scaling.beta_fast' ({}) must exceed 'beta_slow' ({})",
                      rope_scaling.beta_fast, rope_scaling.beta_slow);
  GPTOSS_RETURN_IF_ERROR(check_range("rope_scaling.original_max_position_embeddings",
                                     rope_scaling.original_max_position_embeddings, 1, INT32_MAX));
  const double per_layer =
      static_cast<double>(num_local_experts) * 3.0 * static_cast<double>(intermediate_size) * hidden_size +
      2.0 * static_cast<double>(q_dim()) * hidden_size + 2.0 * static_cast<double>(kv_dim()) * hidden_size;
  const double params = per_layer * num_hidden_layers + 2.0 * static_cast<double>(vocab_size) * hidden_size;
  if (params > kMaxParams)
    return make_error(ErrorCode::kInvalidArgument,
                      "the config describes {:.3g} parameters, more than the supported {:.0e}", params, kMaxParams);
  if (static_cast<int64_t>(layer_types.size()) != num_hidden_layers)
    return make_error(ErrorCode::kInvalidArgument,
                      "field 'layer_types' has {} entries, expected num_hidden_layers = {}", layer_types.size(),
                      num_hidden_layers);
  for (int32_t id : eos_token_ids) GPTOSS_RETURN_IF_ERROR(check_range("eos_token_id", id, 0, vocab_size - 1));
  if (pad_token_id != -1) GPTOSS_RETURN_IF_ERROR(check_range("pad_token_id", pad_token_id, 0, vocab_size - 1));
  return {};
}

std::string config_to_json_text(const Config& c) {
  ordered_json j;
  j["architectures"] = {"GptOssForCausalLM"};
  j["model_type"] = "gpt_oss";
  j["attention_bias"] = true;
  j["attention_dropout"] = 0.0;
  j["hidden_act"] = "silu";
  j["initializer_range"] = 0.02;
  j["initial_context_length"] = c.initial_context_length;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rope_theta"] = c.rope_theta;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["swiglu_limit"] = c.swiglu_limit;
  j["tie_word_embeddings"] = false;
  j["rope_scaling"] = {{"rope_type", "yarn"},
                       {"factor", c.rope_scaling.factor},
                       {"beta_fast", c.rope_scaling.beta_fast},
                       {"beta_slow", c.rope_scaling.beta_slow},
                       {"original_max_position_embeddings", c.rope_scaling.original_max_position_embeddings},
                       {"truncate", c.rope_scaling.truncate}};
  j["router_aux_loss_coef"] = 0.9;
  j["output_router_logits"] = false;
  j["use_cache"] = true;
  j["torch_dtype"] = "bfloat16";
  if (c.eos_token_ids.size() == 1)
    j["eos_token_id"] = c.eos_token_ids[0];
  else
    j["eos_token_id"] = c.eos_token_ids;
  if (c.pad_token_id >= 0)
    j["pad_token_id"] = c.pad_token_id;
  else
    j["pad_token_id"] = nullptr;
  j["quantization_config"] = {
      {"quant_method", "mxfp4"},
      {"modules_to_not_convert",
       {"model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"}}};
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["num_local_experts"] = c.num_local_experts;
  j["num_experts_per_tok"] = c.num_experts_per_tok;
  j["experts_per_token"] = c.num_experts_per_tok;
  j["vocab_size"] = c.vocab_size;
  j["sliding_window"] = c.sliding_window;
  ordered_json types = ordered_json::array();
  for (LayerType t : c.layer_types)
    types.push_back(t == LayerType::kSlidingAttention ? "sliding_attention" : "full_attention");
  j["layer_types"] = types;
  return j.dump(2) + "\n";
}

namespace {

struct PresetShape {
  const char* name;
  int64_t hidden, intermediate, layers, heads, kv_heads, head_dim, experts, top_k, vocab, window;
  int32_t eos, pad;
};

constexpr PresetShape kPresets[] = {
    {"20b", 2880, 2880, 24, 64, 8, 64, 32, 4, 201088, 128, 200002, 199999},
    {"120b", 2880, 2880, 36, 64, 8, 64, 128, 4, 201088, 128, 200002, 199999},
    {"demo", 64, 64, 2, 4, 1, 16, 4, 2, 201088, 128, 200002, 199999},
    {"tiny", 64, 96, 3, 4, 2, 16, 6, 3, 1024, 16, 1023, 1022},
};

}  // namespace

Result<Config> config_preset(const std::string& name) {
  for (const PresetShape& p : kPresets) {
    if (name != p.name) continue;
    Config c;  // RoPE, eps, swiglu and context fields keep the published gpt-oss values
    c.hidden_size = p.hidden;
    c.intermediate_size = p.intermediate;
    c.num_hidden_layers = p.layers;
    c.num_attention_heads = p.heads;
    c.num_key_value_heads = p.kv_heads;
    c.head_dim = p.head_dim;
    c.num_local_experts = p.experts;
    c.num_experts_per_tok = p.top_k;
    c.vocab_size = p.vocab;
    c.sliding_window = p.window;
    for (int64_t i = 0; i < p.layers; ++i)
      c.layer_types.push_back(i % 2 == 0 ? LayerType::kSlidingAttention : LayerType::kFullAttention);
    c.eos_token_ids = {p.eos};
    for (int32_t id : kHarmonyStopTokens)
      if (id < c.vocab_size && id != p.eos) c.eos_token_ids.push_back(id);
    c.pad_token_id = p.pad;
    return c;
  }
  std::string known;
  for (const PresetShape& p : kPresets) known += std::string(known.empty() ? "" : ", ") + p.name;
  return make_error(ErrorCode::kInvalidArgument, "unknown preset '{}' (known: {})", name, known);
}

std::vector<std::string> config_preset_names() {
  std::vector<std::string> names;
  for (const PresetShape& p : kPresets) names.push_back(p.name);
  return names;
}

}  // namespace gptoss
