// Parameter/byte accounting (spec §8) and HF checkpoint writing of a Model.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/weight_table.h"
#include "model/weights.h"

namespace gptoss {

namespace fs = std::filesystem;

Model::ParamCounts Model::param_counts_for(const Config& c) {
  ModelWeights scratch;  // only the table's shapes are used; no tensor data exists
  const std::vector<WeightSlot> slots = weight_table(c, &scratch, CheckpointLayout::kHF);
  ParamCounts pc;
  for (const WeightSlot& s : slots) {
    const int64_t n = s.numel();
    const size_t bytes = s.nbytes();
    // MXFP4 payload bytes hold two weights each; scales are metadata, not parameters.
    const int64_t params = s.role == WeightRole::kExpertBlocks ? 2 * n : s.role == WeightRole::kExpertScales ? 0 : n;
    pc.total += params;
    pc.weight_bytes += bytes;
    switch (s.role) {
      case WeightRole::kEmbed:
        // Only one embedding row is read per token, and it is not an "active" parameter.
        pc.embedding_bytes += bytes;
        pc.bytes_per_token += bytes / static_cast<size_t>(c.vocab_size);
        continue;
      case WeightRole::kExpertBlocks:
      case WeightRole::kExpertScales:
      case WeightRole::kExpertBias:
        // Each token reads top-k of the E experts; the leading dimension is E, so this is exact.
        pc.expert_bytes += bytes;
        pc.active += params / c.num_local_experts * c.num_experts_per_tok;
        pc.bytes_per_token += bytes / static_cast<size_t>(c.num_local_experts) * c.num_experts_per_tok;
        continue;
      case WeightRole::kAttnQKV:
      case WeightRole::kAttnOut:
      case WeightRole::kAttnBias:
      case WeightRole::kSinks: pc.attention_bytes += bytes; break;
      case WeightRole::kLmHead: pc.lm_head_bytes += bytes; break;
      case WeightRole::kNorm:
      case WeightRole::kRouterWeight:
      case WeightRole::kRouterBias: pc.other_bytes += bytes; break;
    }
    pc.active += params;
    pc.bytes_per_token += bytes;
  }
  return pc;
}

Model::ParamCounts Model::param_counts() const {
  return param_counts_for(config_);
}

std::vector<TensorToWrite> Model::tensors_for_writing() const {
  ModelWeights copy = weights_;  // same views; the table needs mutable field pointers
  const std::vector<WeightSlot> slots = weight_table(config_, &copy, CheckpointLayout::kHF);
  std::vector<TensorToWrite> out;
  out.reserve(slots.size());
  for (const WeightSlot& s : slots) {
    const Weight& w = *s.parts.front().dst;
    out.push_back({s.name, w.dtype, s.shape, w.data, w.nbytes});
  }
  return out;
}

namespace {

Status write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  out.close();
  if (!out) return make_error(ErrorCode::kIo, "{}: write failed", path.string());
  return {};
}

}  // namespace

Status model_write_hf(const Model& model, const std::string& dir, size_t max_shard_bytes) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return make_error(ErrorCode::kIo, "{}: cannot create directory: {}", dir, ec.message());
  GPTOSS_RETURN_IF_ERROR(write_text(fs::path(dir) / "config.json", config_to_json_text(model.config())));
  const std::vector<TensorToWrite> tensors = model.tensors_for_writing();
  // Greedy sharding in write order; a tensor larger than the limit gets a shard of its own.
  std::vector<std::vector<TensorToWrite>> shards(1);
  size_t in_shard = 0, total = 0;
  for (const TensorToWrite& t : tensors) {
    if (!shards.back().empty() && in_shard + t.nbytes > max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(t);
    in_shard += t.nbytes;
    total += t.nbytes;
  }
  // A stale file of the other layout would take precedence when the folder is loaded again.
  fs::remove(fs::path(dir) / (shards.size() == 1 ? "model.safetensors.index.json" : "model.safetensors"), ec);
  if (shards.size() == 1) return safetensors_write((fs::path(dir) / "model.safetensors").string(), tensors);
  nlohmann::ordered_json index;
  index["metadata"] = {{"total_size", total}};
  index["weight_map"] = nlohmann::ordered_json::object();
  for (size_t k = 0; k < shards.size(); ++k) {
    const std::string name = fmt::format("model-{:05d}-of-{:05d}.safetensors", k, shards.size() - 1);
    GPTOSS_RETURN_IF_ERROR(safetensors_write((fs::path(dir) / name).string(), shards[k]));
    for (const TensorToWrite& t : shards[k]) index["weight_map"][t.name] = name;
  }
  return write_text(fs::path(dir) / "model.safetensors.index.json", index.dump(2) + "\n");
}

}  // namespace gptoss
