// Internal: the one table from checkpoint tensor names (HF or original/ layout) to the fields of
// ModelWeights, with the dtype and exact shape each tensor must have for a given Config.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/weights.h"

namespace gptoss {

enum class CheckpointLayout { kHF, kOriginal };

// What a tensor is; drives random initialisation and the byte/parameter breakdown.
enum class WeightRole {
  kEmbed,
  kLmHead,
  kNorm,      // RMSNorm gains (attention, MLP, final)
  kAttnQKV,   // q/k/v projection weights (or the fused qkv)
  kAttnOut,   // o_proj weight
  kAttnBias,  // q/k/v/o biases
  kSinks,
  kRouterWeight,
  kRouterBias,
  kExpertBlocks,  // MXFP4 payload
  kExpertScales,  // E8M0 scales
  kExpertBias,
};

// One struct field that views rows [row_begin, row_begin + rows) of a checkpoint tensor
// (the whole tensor except for the original/ fused qkv, which feeds q, k and v).
struct WeightPart {
  Weight* dst;
  int64_t row_begin, rows;
};

struct WeightSlot {
  std::string name;  // checkpoint tensor name
  DType dtype;
  std::vector<int64_t> shape;  // exact expected shape
  WeightRole role;
  std::vector<WeightPart> parts;

  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
};

// Builds the table for `config` in checkpoint write order, pointing into `*weights`: its layers
// are resized when their count differs (existing views are kept otherwise) and the Mxfp4Experts
// rows/cols are set. The config must be valid.
std::vector<WeightSlot> weight_table(const Config& config, ModelWeights* weights, CheckpointLayout layout);

// Points every field of `slot` at its rows of the tensor bytes `data` (slot.nbytes() long).
void weight_slot_bind(const WeightSlot& slot, const uint8_t* data);

}  // namespace gptoss
