// The checkpoint-name → ModelWeights field table for the HF and original/ layouts (spec §2.1, §2.2).
#include "model/weight_table.h"

#include <fmt/format.h>

#include "core/mxfp4.h"

namespace gptoss {

int64_t WeightSlot::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

using Shape = std::vector<int64_t>;

// Appends slots; each helper names the tensor once and says which fields view it.
class TableBuilder {
 public:
  explicit TableBuilder(std::vector<WeightSlot>* out) : out_(out) {}

  void whole(std::string name, DType dtype, Shape shape, WeightRole role, Weight* dst) {
    const int64_t rows = shape[0];
    out_->push_back({std::move(name), dtype, std::move(shape), role, {{dst, 0, rows}}});
  }
  void bf16(std::string name, Shape shape, WeightRole role, Weight* dst) {
    whole(std::move(name), DType::kBF16, std::move(shape), role, dst);
  }
  // A fused tensor whose consecutive row ranges are separate fields (original/ qkv).
  void split(std::string name, Shape shape, WeightRole role, std::vector<std::pair<Weight*, int64_t>> fields) {
    WeightSlot slot{std::move(name), DType::kBF16, std::move(shape), role, {}};
    int64_t row = 0;
    for (auto [dst, rows] : fields) {
      slot.parts.push_back({dst, row, rows});
      row += rows;
    }
    out_->push_back(std::move(slot));
  }
  // blocks / scales / bias of one MXFP4 expert matrix set, named prefix + the three suffixes.
  void experts(const std::string& blocks, const std::string& scales, const std::string& bias, int64_t n_experts,
               int64_t rows, int64_t cols, Mxfp4Experts* dst) {
    dst->rows = rows;
    dst->cols = cols;
    const int64_t nb = cols / kMxfp4BlockSize;
    whole(blocks, DType::kU8, {n_experts, rows, nb, kMxfp4BytesPerBlock}, WeightRole::kExpertBlocks, &dst->blocks);
    whole(scales, DType::kU8, {n_experts, rows, nb}, WeightRole::kExpertScales, &dst->scales);
    bf16(bias, {n_experts, rows}, WeightRole::kExpertBias, &dst->bias);
  }

 private:
  std::vector<WeightSlot>* out_;
};

void hf_layer(TableBuilder& b, const Config& c, int64_t n, LayerWeights* L) {
  const std::string p = fmt::format("model.layers.{}.", n);
  const int64_t H = c.hidden_size, E = c.num_local_experts;
  b.bf16(p + "input_layernorm.weight", {H}, WeightRole::kNorm, &L->attn_norm);
  b.bf16(p + "post_attention_layernorm.weight", {H}, WeightRole::kNorm, &L->mlp_norm);
  b.bf16(p + "self_attn.q_proj.weight", {c.q_dim(), H}, WeightRole::kAttnQKV, &L->q_w);
  b.bf16(p + "self_attn.q_proj.bias", {c.q_dim()}, WeightRole::kAttnBias, &L->q_b);
  b.bf16(p + "self_attn.k_proj.weight", {c.kv_dim(), H}, WeightRole::kAttnQKV, &L->k_w);
  b.bf16(p + "self_attn.k_proj.bias", {c.kv_dim()}, WeightRole::kAttnBias, &L->k_b);
  b.bf16(p + "self_attn.v_proj.weight", {c.kv_dim(), H}, WeightRole::kAttnQKV, &L->v_w);
  b.bf16(p + "self_attn.v_proj.bias", {c.kv_dim()}, WeightRole::kAttnBias, &L->v_b);
  b.bf16(p + "self_attn.o_proj.weight", {H, c.q_dim()}, WeightRole::kAttnOut, &L->o_w);
  b.bf16(p + "self_attn.o_proj.bias", {H}, WeightRole::kAttnBias, &L->o_b);
  b.bf16(p + "self_attn.sinks", {c.num_attention_heads}, WeightRole::kSinks, &L->sinks);
  b.bf16(p + "mlp.router.weight", {E, H}, WeightRole::kRouterWeight, &L->router_w);
  b.bf16(p + "mlp.router.bias", {E}, WeightRole::kRouterBias, &L->router_b);
  const std::string x = p + "mlp.experts.";
  b.experts(x + "gate_up_proj_blocks", x + "gate_up_proj_scales", x + "gate_up_proj_bias", E, 2 * c.intermediate_size,
            H, &L->mlp1);
  b.experts(x + "down_proj_blocks", x + "down_proj_scales", x + "down_proj_bias", E, H, c.intermediate_size, &L->mlp2);
}

void original_layer(TableBuilder& b, const Config& c, int64_t n, LayerWeights* L) {
  const std::string p = fmt::format("block.{}.", n);
  const int64_t H = c.hidden_size, E = c.num_local_experts;
  const int64_t qkv = c.q_dim() + 2 * c.kv_dim();
  b.bf16(p + "attn.norm.scale", {H}, WeightRole::kNorm, &L->attn_norm);
  b.split(p + "attn.qkv.weight", {qkv, H}, WeightRole::kAttnQKV,
          {{&L->q_w, c.q_dim()}, {&L->k_w, c.kv_dim()}, {&L->v_w, c.kv_dim()}});
  b.split(p + "attn.qkv.bias", {qkv}, WeightRole::kAttnBias,
          {{&L->q_b, c.q_dim()}, {&L->k_b, c.kv_dim()}, {&L->v_b, c.kv_dim()}});
  b.bf16(p + "attn.sinks", {c.num_attention_heads}, WeightRole::kSinks, &L->sinks);
  b.bf16(p + "attn.out.weight", {H, c.q_dim()}, WeightRole::kAttnOut, &L->o_w);
  b.bf16(p + "attn.out.bias", {H}, WeightRole::kAttnBias, &L->o_b);
  b.bf16(p + "mlp.norm.scale", {H}, WeightRole::kNorm, &L->mlp_norm);
  b.bf16(p + "mlp.gate.weight", {E, H}, WeightRole::kRouterWeight, &L->router_w);
  b.bf16(p + "mlp.gate.bias", {E}, WeightRole::kRouterBias, &L->router_b);
  b.experts(p + "mlp.mlp1_weight.blocks", p + "mlp.mlp1_weight.scales", p + "mlp.mlp1_bias", E, 2 * c.intermediate_size,
            H, &L->mlp1);
  b.experts(p + "mlp.mlp2_weight.blocks", p + "mlp.mlp2_weight.scales", p + "mlp.mlp2_bias", E, H, c.intermediate_size,
            &L->mlp2);
}

}  // namespace

std::vector<WeightSlot> weight_table(const Config& c, ModelWeights* w, CheckpointLayout layout) {
  std::vector<WeightSlot> slots;
  TableBuilder b(&slots);
  const bool hf = layout == CheckpointLayout::kHF;
  const int64_t V = c.vocab_size, H = c.hidden_size;
  // Existing layers keep their views, so a copy of loaded weights can be re-tabled (for writing).
  if (w->layers.size() != static_cast<size_t>(c.num_hidden_layers))
    w->layers.assign(static_cast<size_t>(c.num_hidden_layers), LayerWeights{});
  b.bf16(hf ? "model.embed_tokens.weight" : "embedding.weight", {V, H}, WeightRole::kEmbed, &w->embed);
  for (int64_t n = 0; n < c.num_hidden_layers; ++n) {
    LayerWeights* L = &w->layers[static_cast<size_t>(n)];
    if (hf)
      hf_layer(b, c, n, L);
    else
      original_layer(b, c, n, L);
  }
  b.bf16(hf ? "model.norm.weight" : "norm.scale", {H}, WeightRole::kNorm, &w->final_norm);
  b.bf16(hf ? "lm_head.weight" : "unembedding.weight", {V, H}, WeightRole::kLmHead, &w->lm_head);
  return slots;
}

void weight_slot_bind(const WeightSlot& slot, const uint8_t* data) {
  const size_t row_bytes = slot.nbytes() / static_cast<size_t>(slot.shape[0]);
  for (const WeightPart& part : slot.parts) {
    Weight& w = *part.dst;
    const bool whole = part.row_begin == 0 && part.rows == slot.shape[0];
    w.name = whole ? slot.name : fmt::format("{}[{}:{}]", slot.name, part.row_begin, part.row_begin + part.rows);
    w.dtype = slot.dtype;
    w.shape = slot.shape;
    w.shape[0] = part.rows;
    w.data = data + static_cast<size_t>(part.row_begin) * row_bytes;
    w.nbytes = static_cast<size_t>(part.rows) * row_bytes;
  }
}

}  // namespace gptoss
