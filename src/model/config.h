// Typed gpt-oss configuration, read from HF `config.json` (or `original/config.json`) and validated.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace gptoss {

enum class LayerType { kSlidingAttention, kFullAttention };

// Harmony stop tokens (<|return|>, <|call|>, <|endoftext|>). Configs always stop on those that
// exist in the vocabulary, because published generation configs disagree on the list (spec §1.1).
inline constexpr int32_t kHarmonyStopTokens[] = {200002, 200012, 199999};

// Most layers a valid config may have (far above any real model; guards against corrupt files).
inline constexpr int64_t kConfigMaxLayers = 4096;

struct RopeScaling {
  double factor = 32.0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  int64_t original_max_position_embeddings = 4096;
  bool truncate = false;  // gpt-oss: no rounding of the YaRN correction range
};

struct Config {
  int64_t hidden_size = 2880;
  int64_t intermediate_size = 2880;
  int64_t num_hidden_layers = 24;
  int64_t num_attention_heads = 64;
  int64_t num_key_value_heads = 8;
  int64_t head_dim = 64;
  int64_t num_local_experts = 32;
  int64_t num_experts_per_tok = 4;
  int64_t vocab_size = 201088;
  int64_t sliding_window = 128;
  int64_t max_position_embeddings = 131072;
  int64_t initial_context_length = 4096;
  double rope_theta = 150000.0;
  double rms_norm_eps = 1e-5;
  double swiglu_limit = 7.0;
  double swiglu_alpha = 1.702;  // fixed by the architecture (not a config field)
  RopeScaling rope_scaling;
  std::vector<LayerType> layer_types;
  std::vector<int32_t> eos_token_ids;  // from config (+ generation_config), always includes the
                                       // harmony stops that exist in the vocabulary
  int32_t pad_token_id = -1;

  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
  bool is_sliding(int64_t layer) const {
    return layer_types[static_cast<size_t>(layer)] == LayerType::kSlidingAttention;
  }

  // Checks ranges and consistency (heads divisible by kv heads, head_dim even, sizes multiple
  // of 32 for MXFP4, layer_types length, top-k ≤ experts, ...). Errors name the field.
  Status validate() const;
};

// Parses a config.json text. Accepts the HF names and the original/ OpenAI names
// (num_experts, experts_per_token, rope_scaling_factor, rope_ntk_alpha/beta, ...).
// Absent fields take the HF GptOssConfig class defaults (the 120b values); absent layer_types
// means even layers slide. eos ids (int or list) get the in-vocabulary kHarmonyStopTokens added.
// The result is validated. `source` names the file in errors.
Result<Config> config_from_json_text(const std::string& text, const std::string& source);

// Loads DIR/config.json, else DIR/original/config.json; merges DIR/generation_config.json stops
// (ids outside the vocabulary are dropped with a warning).
Result<Config> config_load_dir(const std::string& dir);

// Serialises as an HF config.json (the layout mkckpt.py and the official checkpoints use).
std::string config_to_json_text(const Config& config);

// Named shapes: "20b", "120b" (the published models), "demo" (tiny, real vocabulary so the real
// tokenizer works), "tiny" (tiny, small vocabulary, for tests).
Result<Config> config_preset(const std::string& name);
std::vector<std::string> config_preset_names();

}  // namespace gptoss
