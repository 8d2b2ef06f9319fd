// The CUDA backend object: options, device weights, KV cache, scratch buffers, decode graphs. The
// forward driver lives in cuda_backend.cpp, the per-layer launch sequence in cuda_step.cpp.
#pragma once

#include <cuda_runtime_api.h>

#include <map>
#include <set>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cuda_internal.h"

namespace gptoss::cuda {

// Device scratch for one step, sized for max_batch_tokens (one allocation).
struct Scratch {
  DeviceBuffer mem;
  float* h = nullptr;           // residual [T][H]
  uint16_t* x16 = nullptr;      // normed activations, fp16 pairs [T][hi: hp | lo: hp]
  float* x32 = nullptr;         // normed activations, f32 [T][H] (router input)
  float* qkv = nullptr;         // [nparts][T][qkv rows]
  float* q32 = nullptr;         // [T][Hq][dp]
  float* attn_o = nullptr;      // [splits][T][Hq][dp]
  float* attn_ml = nullptr;     // [splits][T][Hq][2]
  uint16_t* o16 = nullptr;      // attention output, fp16 pairs [T][hi: qp | lo: qp]
  float* proj = nullptr;        // o-proj output [nparts][T][H]
  int32_t* topk_idx = nullptr;  // [T·K]
  float* topk_w = nullptr;
  float* router_logits = nullptr;           // [T][E]
  unsigned int* router_counters = nullptr;  // [T] (zero between launches)
  int32_t *sorted_token = nullptr, *sorted_pair = nullptr, *tiles = nullptr, *n_tiles = nullptr;
  float* mlp1 = nullptr;                       // split-mode gate/up partials [nseg][P][2I]
  uint16_t* a16 = nullptr;                     // SwiGLU output, fp16 pairs [P][hi: ip | lo: ip]
  float* y = nullptr;                          // expert outputs [nparts][P][H]
  float* logits = nullptr;                     // [logit_rows][V]
  int32_t* argmax = nullptr;                   // [logit_rows]
  unsigned long long* argmax_keys = nullptr;   // [logit_rows] (zero between launches)
  unsigned long long* sample_parts = nullptr;  // the sampling passes' per-chunk results (SampleSplit)
  int32_t* meta = nullptr;                     // per step: tokens, pos, slot, out_rows [T] each, then items (int4) [T]
  unsigned long long *stat_counts = nullptr, *stat_tokens = nullptr;  // [L][E], [L]
  double *stat_top1 = nullptr, *stat_entropy = nullptr;               // [L]
  int logit_rows = 0;
  size_t attn_rows = 0;  // (split, token) rows of attn_o / attn_ml
};

// What the host decided for one forward() call.
struct StepPlan {
  int T = 0, R = 0;
  int items = 0, tokens_per_item = 1;
  int splits_full = 1, splits_sliding = 1;  // attention key splits per layer type
  bool decode_only = false;                 // every sequence contributes one token (graph-capturable)
  bool stats = false;
  double kv_keys_full = 0, kv_keys_sliding = 0;  // keys read per full / sliding layer (profiler bytes)
  // The RoPE kernel of a full / sliding layer prefetches o weights into L2 (attention_block): only
  // when the own kernel (not cuBLAS) runs the o product and the attention's KV reads are small
  // enough not to evict them again. Part of the decode graph key.
  bool prefetch_o_full = false, prefetch_o_sliding = false;
};

class CudaBackend final : public Backend {
 public:
  // `target`: what launch_target() found for the device (its stream is set by init()).
  CudaBackend(std::shared_ptr<const Model> model, const BackendOptions& opts, int sm_count, std::string device_name,
              const Launch& target);
  ~CudaBackend() override;
  Status init();  // uploads weights, allocates KV cache and scratch

  std::string name() const override { return "cuda:" + device_name_; }
  const BackendOptions& options() const override { return opts_; }
  Status forward(std::span<const SeqBatch> batch, const StepOutputs& out) override;
  int64_t slot_length(int slot) const override;
  int64_t slot_min_resume(int slot) const override;
  void slot_reset(int slot) override;
  MemoryStats memory_stats() const override;

 private:
  bool kv_f16() const { return opts_.kv_cache == KvCacheType::kF16; }
  // Bytes of one position's keys and values (one sequence, one layer: all KV heads, padded to dp,
  // in the cache's fp16 planes).
  size_t kv_entry_bytes() const {
    return static_cast<size_t>(shape_.n_kv_heads) * shape_.dp * kv_planes(kv_f16()) * sizeof(uint16_t) * 2;
  }
  StepPlan plan_step(std::span<const SeqBatch> batch, const StepOutputs& out);
  // Tokens per prefill attention item: attn_warps_ warps of kAttnRowsPerWarp (token, head) rows.
  int prefill_item_tokens() const;
  // Key-split cap of a step whose `items` items hold at most `tokens` tokens each: items of one token
  // run the decode kernel (decode_split_cap_), others the prefill kernel (prefill_split_cap).
  int split_cap(int items, int tokens) const;
  // The prefill kernel's cap. Items × warps per item never falls below the warps of all the step's
  // rows, so (1, T) bounds the cap of every prefill step of T tokens: alloc_scratch sizes the split
  // partials with it.
  int prefill_split_cap(int items, int tokens) const;
  Status alloc_scratch();
  // cuda_step.cpp: the kernels of one step up to the final norm, then the lm_head and outputs.
  Status enqueue_layers(const StepPlan& p);
  Status attention_block(const StepPlan& p, int layer);
  Status moe_block(const StepPlan& p, int layer, ResidualAdd* moe_out);
  Status enqueue_outputs(const StepPlan& p, const StepOutputs& out);
  // The qkv / o products: cuBLAS from cublas_min_tokens_ tokens on, the decode GEMV up to
  // kDenseGemvTokens, the own GEMM between (dense_plan picks, dense_product launches).
  GemmPlan dense_plan(const DenseDev& w, int T) const;
  Status dense_product(const char* name, const DenseDev& w, const GemmPlan& g, const GemmArgs& a);
  // Packs out.sample (rows relative to their logit_rows chunk, edits) and copies it to the device.
  Status upload_samples(const StepOutputs& out);
  Status run_layers(const StepPlan& p);  // eager or through the decode graph for p.T
  int32_t* meta_tokens(const StepPlan& p) const { return scratch_.meta; }
  int32_t* meta_pos(const StepPlan& p) const { return scratch_.meta + p.T; }
  int32_t* meta_slot(const StepPlan& p) const { return scratch_.meta + 2 * p.T; }
  int32_t* meta_out_rows(const StepPlan& p) const { return scratch_.meta + 3 * p.T; }
  const AttnItem* meta_items(const StepPlan& p) const {
    return reinterpret_cast<const AttnItem*>(scratch_.meta + 4 * p.T);
  }

  std::shared_ptr<const Model> model_;
  const Config& cfg_;
  BackendOptions opts_;
  int sm_count_ = 0;
  // Steps of at most decode_max_tokens_ tokens run the expert products with the tensor-core decode
  // kernel (moe_decode_launch), larger ones with the grouped GEMM; up to pair_max_tokens_ the decode
  // kernel takes the (token, expert) pairs straight from the router, above that the grouping's
  // tiles (an expert shared by several tokens is read once). Overrides:
  // GPTOSS_CUDA_EXPERT_DECODE_TOKENS (0: always the GEMM), GPTOSS_CUDA_EXPERT_PAIR_TOKENS.
  // Measured on an H200 (20b, decode of N sequences, same run): decode kernel vs GEMM at N = 16
  // 2412 vs 1975, N = 32 3912 vs 3348, N = 64 5102 vs 4295 tok/s; N = 2 pairs 665 vs tiles 604.
  int decode_max_tokens_ = 64;
  int pair_max_tokens_ = 2;
  // Warps of a prefill attention block (16 (token, head) rows each): its items hold
  // attn_warps_·16 / heads-per-chunk tokens, which share every staged K/V tile. Override:
  // GPTOSS_CUDA_ATTN_WARPS (1..kAttnMaxWarps).
  int attn_warps_ = kAttnMaxWarps;
  // Steps of at least cublas_min_tokens_ tokens run the qkv and o products through cuBLAS (0: never).
  // Override: GPTOSS_CUDA_CUBLAS_TOKENS. Measured on an H200 (20b, 64 sequences, 128-token prompts, same
  // run): never 18 854 prefill / 5 636 decode tok/s, from 64 tokens 20 856 / 5 876, from 256 20 850 / 5 599.
  int cublas_min_tokens_ = 64;
  // Decode steps prefetch the first o_prefetch_bytes_ of a layer's o weights into L2 from the RoPE
  // kernel (attention_block), in layers whose attention reads at most kv_prefetch_limit_ bytes of
  // keys and values (half the L2; more would evict them). Override: GPTOSS_CUDA_O_PREFETCH_MB (0:
  // none). Measured on an H100 (20b tg128, tok/s, means of two runs in one call): none 429.1, 2 MB
  // 430.6, 4 MB 433.8, 8 MB 432.5, 16 MB 425.1; in another call all 23.6 MB 419.5 against none 427.2.
  // Larger prefetches slow the step (docs/PERFORMANCE.md, "L2 prefetch of the o weights").
  int64_t o_prefetch_bytes_ = int64_t{4} << 20;
  int64_t kv_prefetch_limit_ = 0;
  int decode_split_cap_ = 1;  // most key splits of one decode sequence (fills the device with decode blocks)
  std::string device_name_;
  cudaStream_t stream_ = nullptr;
  Launch launch_;  // stream_ and what the kernel code running on this device may use
  CublasHandle cublas_;
  ThreadPool pool_;
  std::unique_ptr<ModelDev> dev_;
  DeviceBuffer kv_mem_;
  std::vector<KvLayer> kv_;
  Scratch scratch_;
  KernelProfiler prof_;
  PinnedBuffer host_meta_, host_argmax_;
  // Sampling requests of a step, the same layout on both sides (grown on demand): SampleRowDev [n],
  // then PenaltyEdit [edits] at sample_edits_off_, then the sampled ids int32 [n] at sample_out_off_.
  PinnedBuffer host_sample_;
  DeviceBuffer dev_sample_;
  size_t sample_edits_off_ = 0, sample_out_off_ = 0;
  AttnShape shape_;
  int hp_ = 0, qp_ = 0, ip_ = 0;  // lengths of the hi and lo halves of fp16-pair activation rows
  std::vector<int64_t> lengths_;
  bool ring_limits_resume_ = false;
  // Decode graphs by (batch size, key splits of full layers, of sliding layers, o prefetches of full
  // layers, of sliding layers); a configuration runs eagerly once and is captured on its second use.
  using GraphKey = std::tuple<int, int, int, bool, bool>;
  std::map<GraphKey, cudaGraphExec_t> graphs_;
  std::set<GraphKey> seen_decode_;
};

}  // namespace gptoss::cuda
