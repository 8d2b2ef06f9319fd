// Named weight structs for gpt-oss and the loader that fills them from a checkpoint folder (HF or
// original/ OpenAI layout) or from random values (benchmarks, demo). Expert weights stay MXFP4.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"
#include "io/safetensors.h"
#include "model/config.h"

namespace gptoss {

// A typed, non-owning view of one weight. `data` points into the mapping or the owned arena
// of the Model; shape is the logical shape checked against the config.
struct Weight {
  std::string name;  // checkpoint name (for errors and stats)
  DType dtype = DType::kBF16;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;

  const uint16_t* bf16() const { return static_cast<const uint16_t*>(data); }
  const uint8_t* u8() const { return static_cast<const uint8_t*>(data); }
};

// MXFP4 expert matrices for all experts of one layer: W[e] is [rows, cols], blocked along cols.
struct Mxfp4Experts {
  Weight blocks;  // U8 [E, rows, cols/32, 16]
  Weight scales;  // U8 [E, rows, cols/32]
  Weight bias;    // BF16 [E, rows]
  int64_t rows = 0, cols = 0;
};

struct LayerWeights {
  Weight attn_norm;           // [H]            input_layernorm.weight
  Weight q_w, q_b;            // [Hq*Dh, H], [Hq*Dh]
  Weight k_w, k_b;            // [Hkv*Dh, H], [Hkv*Dh]
  Weight v_w, v_b;            // [Hkv*Dh, H], [Hkv*Dh]
  Weight o_w, o_b;            // [H, Hq*Dh], [H]
  Weight sinks;               // [Hq]
  Weight mlp_norm;            // [H]            post_attention_layernorm.weight
  Weight router_w, router_b;  // [E, H], [E]
  Mxfp4Experts mlp1;          // gate_up: rows 2I (gate/up interleaved), cols H
  Mxfp4Experts mlp2;          // down:    rows H, cols I
};

struct ModelWeights {
  Weight embed;       // [V, H]
  Weight final_norm;  // [H]
  Weight lm_head;     // [V, H]
  std::vector<LayerWeights> layers;
};

struct LoadProgress {
  size_t bytes_done = 0, bytes_total = 0;
  const std::string* tensor = nullptr;
};
using LoadProgressFn = std::function<void(const LoadProgress&)>;

// Immutable model: config + weights + the storage they point into. Shared by all contexts.
class Model {
 public:
  // Loads DIR: config from DIR/config.json (else DIR/original/config.json, plus
  // generation_config.json stops); tensors from DIR's safetensors (model.safetensors, the
  // index-listed shards, or all *.safetensors) under HF names, or, when DIR holds no HF tensors,
  // the OpenAI names in DIR/original/ (fused qkv becomes q/k/v row views). Every tensor's
  // presence, dtype (BF16 dense, U8 MXFP4) and exact shape are checked against the config before
  // any data is read; errors name the tensor, both shapes and the file. Unused tensors only warn.
  // Weights are views into the mmap (zero copy, MXFP4 stays packed); each tensor's pages are then
  // touched once and `progress` (optional) is called per tensor with cumulative bytes.
  static Result<std::shared_ptr<const Model>> load(const std::string& dir, const LoadProgressFn& progress = {});
  // Random weights with the exact shapes of `config`, built in memory (no disk), deterministic in
  // `seed`, with magnitudes like mkckpt.py so activations stay finite and routing spreads.
  static Result<std::shared_ptr<const Model>> random(const Config& config, uint64_t seed);

  const Config& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  const std::string& source() const { return source_; }  // folder or "random:<seed>"

  struct ParamCounts {
    int64_t total = 0;
    int64_t active = 0;          // per token: attention + router + top-k experts + norms + lm_head
    size_t weight_bytes = 0;     // all weights as stored
    size_t bytes_per_token = 0;  // weights read per decoded token at batch 1 (spec §8.2)
    // weight_bytes split by kind: experts (MXFP4 blocks + scales + biases), attention (q/k/v/o
    // weights and biases, sinks), embedding, lm_head, other (norm gains, router).
    size_t expert_bytes = 0, attention_bytes = 0, embedding_bytes = 0, lm_head_bytes = 0, other_bytes = 0;
  };
  ParamCounts param_counts() const;
  // The same counts for any valid config, computed from shapes alone (no weights allocated).
  static ParamCounts param_counts_for(const Config& config);

  // The checkpoint tensors (HF names) in write order, as views; used by init-random and convert.
  std::vector<TensorToWrite> tensors_for_writing() const;

 private:
  Model() = default;
  Config config_;
  ModelWeights weights_;
  std::string source_;
  std::shared_ptr<void> storage_;  // TensorStore or random arena
};

// Writes `model` as an HF checkpoint into DIR (created if needed): config.json plus
// model.safetensors, or, when the weights exceed `max_shard_bytes`, shards named
// model-0000K-of-0000N.safetensors (N = last index, as the official converter names them) and
// model.safetensors.index.json.
Status model_write_hf(const Model& model, const std::string& dir, size_t max_shard_bytes = size_t{4} << 30);

}  // namespace gptoss
