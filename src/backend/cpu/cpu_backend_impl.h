// Internal declaration of the CPU backend class, shared by cpu_backend.cpp (driver, KV cache,
// validation) and cpu_blocks.cpp (attention and MoE blocks). Not part of the public interface.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/ops.h"
#include "core/threads.h"
#include "model/weights.h"

namespace gptoss::cpu {

// Activations and workspaces for up to T tokens, grown on demand and reused across steps.
struct Scratch {
  std::vector<float> h;                          // [T, H] residual stream
  std::vector<float> x;                          // [T, H] normalised input of a block
  std::vector<float> q, k, v;                    // [T, q_dim], [T, kv_dim] ×2 (post-RoPE q/k of this step)
  std::vector<float> attn;                       // [T, q_dim] attention output, heads concatenated
  std::vector<float> tmp;                        // [T, H] o_proj output
  std::vector<float> moe;                        // [T, H] weighted expert sum
  std::vector<float> rope_cs;                    // [T, head_dim] cos (first half) | sin (second half)
  std::vector<float> router_logits;              // [T, E]
  std::vector<int32_t> topk_idx;                 // [T, K]
  std::vector<float> topk_w;                     // [T, K]
  std::vector<int32_t> ex_count;                 // [E + 1] token counts, then offsets into ex_token
  std::vector<int32_t> ex_token;                 // [T·K] tokens grouped by expert: row·K + choice
  std::vector<float> ex_x, ex_gu, ex_act, ex_y;  // one expert's [n, H], [n, 2I], [n, I], [n, H]
  std::vector<float> final_x;                    // [R, H] final-normed rows that get logits
  std::vector<float> logits;                     // [R, V] when only argmax or samples are wanted
  std::vector<float> sample_row;                 // [V] a row being sampled when the caller keeps the logits
  SampleScratch sample_scratch;                  // sample_row's candidate list, reused row after row
  std::vector<int32_t> row_token, row_seq;       // [T]
  std::vector<int64_t> row_pos;                  // [T]
  std::vector<int64_t> seq_row0;                 // [n_seqs] first row of each sequence
  std::vector<int64_t> out_rows;                 // [R] rows whose logits are wanted, in batch order
  int64_t n_out_rows = 0;

  // Grows the buffers for T tokens of n_seqs sequences and logit_rows rows of scratch logits.
  void ensure(const Config& c, int64_t T, int64_t n_seqs, int64_t logit_rows);
  size_t bytes() const;
};

class CpuBackend final : public Backend {
 public:
  CpuBackend(std::shared_ptr<const Model> model, const BackendOptions& opts);

  std::string name() const override { return "cpu"; }
  const BackendOptions& options() const override { return opts_; }
  Status forward(std::span<const SeqBatch> batch, const StepOutputs& out) override;
  int64_t slot_length(int slot) const override;
  int64_t slot_min_resume(int slot) const override;
  void slot_reset(int slot) override;
  MemoryStats memory_stats() const override;

 private:
  // K/V of one layer for all slots: [slots, cap, kv_dim]; position p lives at index p % cap.
  struct LayerCache {
    int64_t cap = 0;
    std::vector<float> k, v;
  };

  void prepare_rows(std::span<const SeqBatch> batch);
  void attention_block(int64_t layer, int64_t T);
  void attend_rows(int64_t layer, int64_t T);
  void store_kv(int64_t layer, int64_t T);
  void moe_block(int64_t layer, int64_t T, RouterStats* stats);
  void route_tokens(int64_t layer, int64_t T, RouterStats* stats);
  void run_expert(int64_t layer, int64_t e, int64_t begin, int64_t end);
  void output_rows(const StepOutputs& out);

  std::shared_ptr<const Model> model_;
  const Config& cfg_;
  BackendOptions opts_;
  ThreadPool pool_;
  RopeTable rope_;
  std::vector<int64_t> lengths_;  // per slot
  std::vector<LayerCache> kv_;    // per layer
  bool ring_limits_resume_ = false;
  Scratch scratch_;
  std::span<const SeqBatch> batch_;  // the batch of the forward() in progress
};

}  // namespace gptoss::cpu
