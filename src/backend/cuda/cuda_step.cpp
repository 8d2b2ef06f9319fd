// The launch sequence of one forward step on the CUDA backend, block by block in the order of the
// reference model: embed → per layer (norm, qkv, RoPE + KV store, attention, o-proj, residual + norm,
// router, experts) → final norm → lm_head → argmax and sampling.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "backend/cuda/cuda_backend_impl.h"

// Launches `expr` (a cudaError_t) under the profiler's name and byte count; returns on failure.
#define GPTOSS_LAUNCH(name, bytes, expr) \
  do {                                   \
    prof_.begin(stream_);                \
    GPTOSS_CUDA_TRY((expr), (name));     \
    prof_.end((name), (bytes), stream_); \
  } while (0)

namespace gptoss::cuda {
namespace {

double dense_bytes(const DenseDev& w) {
  return static_cast<double>(w.rows) * w.kblocks * 64;
}
// Weights an expert GEMM must read: every routed expert once (at most min(pairs, experts) of them).
double expert_bytes(const ExpertsDev& w, int pairs, int experts) {
  return static_cast<double>(std::min(pairs, experts)) * w.rows * w.kblocks * 17;
}

// x: fp16-pair activation rows of 2·half elements (hi, then lo); out: rows `width` apart, in the
// plan's part layout.
GemmArgs dense_args(const DenseDev& w, const GemmPlan& g, const uint16_t* x, int64_t half, int n, float* out,
                    int64_t width) {
  GemmArgs a;
  a.weights = GemmWeights::kF16;
  a.w = w.w;
  a.rows = w.rows;
  a.kblocks = w.kblocks;
  a.seg_blocks = g.seg_blocks;
  a.nseg = g.nseg;
  a.x = x;
  a.x_stride = 2 * half;
  a.x_lo = half;
  a.n = n;
  a.mode = g.nparts() > 1 ? GemmOut::kPartial : GemmOut::kStore;
  a.out = out;
  a.out_stride = g.token_stride(width);
  a.part_stride = g.part_stride(n, width);
  return a;
}

GemmArgs expert_args(const ExpertsDev& w, const GemmPlan& g, const Scratch& s) {
  GemmArgs a;
  a.weights = GemmWeights::kMxfp4;
  set_mxfp4_experts(a, w.blocks, w.scales, w.rows, w.rows_p, w.kblocks);
  a.seg_blocks = g.seg_blocks;
  a.nseg = g.nseg;
  a.tiles = s.tiles;
  a.n_tiles = s.n_tiles;
  a.max_tiles = g.max_tiles;
  return a;
}

// Decode-kernel arguments of one expert matrix over activation rows x (fp16 pairs: hi, then lo at
// + half); the caller sets the work items and the output.
MoeDecodeArgs decode_args(const ExpertsDev& w, const uint16_t* x, int64_t half) {
  MoeDecodeArgs a;
  set_mxfp4_experts(a, w.blocks, w.scales, w.rows, w.rows_p, w.kblocks);
  a.x = x;
  a.x_stride = 2 * half;
  a.x_lo = half;
  return a;
}

// The fused SwiGLU epilogue of a gate/up product (GemmArgs or MoeDecodeArgs): bias + clamped SwiGLU
// into fp16 pairs of `half` elements per half.
template <typename Args>
void swiglu_out(Args& a, const ExpertsDev& w, uint16_t* out16, int64_t half, float alpha, float limit) {
  a.out16 = out16;
  a.out16_stride = 2 * half;
  a.out16_lo = half;
  a.bias = w.bias;
  a.bias_expert_stride = w.rows_p;
  a.swiglu_alpha = alpha;
  a.swiglu_limit = limit;
}

}  // namespace

GemmPlan CudaBackend::dense_plan(const DenseDev& w, int T) const {
  GemmPlan g = gemm_plan_dense(w.rows, w.kblocks, T, sm_count_);
  if (cublas_min_tokens_ > 0 && T >= cublas_min_tokens_) g.split = false, g.cublas = true;
  return g;
}

Status CudaBackend::dense_product(const char* name, const DenseDev& w, const GemmPlan& g, const GemmArgs& a) {
  if (g.cublas) {
    prof_.begin(stream_);
    GPTOSS_RETURN_IF_ERROR(cublas_dense(cublas_, a));
    prof_.end(name, dense_bytes(w), stream_);
  } else {
    GPTOSS_LAUNCH(name, dense_bytes(w),
                  a.n <= kDenseGemvTokens ? dense_gemv_launch(a, launch_) : gemm_launch(a, g.nt, launch_));
  }
  return Status::ok_status();
}

Status CudaBackend::attention_block(const StepPlan& p, int layer) {
  const LayerDev& L = dev_->layers[static_cast<size_t>(layer)];
  const KvLayer& kv = kv_[static_cast<size_t>(layer)];
  Scratch& s = scratch_;
  const int H = static_cast<int>(cfg_.hidden_size);
  const GemmPlan gq = dense_plan(L.qkv, p.T);
  GPTOSS_RETURN_IF_ERROR(
      dense_product("qkv projection", L.qkv, gq, dense_args(L.qkv, gq, s.x16, hp_, p.T, s.qkv, L.qkv.rows)));

  QkvRopeArgs r;
  r.parts = s.qkv;
  r.nparts = gq.nparts();
  r.part_stride = gq.part_stride(p.T, L.qkv.rows);
  r.stride = gq.token_stride(L.qkv.rows);
  r.bias = L.qkv_b;
  r.pos = meta_pos(p);
  r.slot = meta_slot(p);
  r.inv_freq = dev_->inv_freq;
  r.concentration = dev_->concentration;
  r.q32 = s.q32;
  // The first o_prefetch_bytes_ of the o product's weights stream into L2 while RoPE and the
  // attention run (both latency-bound at decode), where the plan says so (plan_step).
  if (kv.window > 0 ? p.prefetch_o_sliding : p.prefetch_o_full)
    r.prefetch = L2Span{L.o.w, std::min<int64_t>(static_cast<int64_t>(dense_bytes(L.o)), o_prefetch_bytes_)};
  GPTOSS_LAUNCH("qkv bias + RoPE + KV store", 0, qkv_rope_launch(r, p.T, shape_, kv, launch_));

  AttnArgs at;
  at.q32 = s.q32;
  at.pos = meta_pos(p);
  at.items = meta_items(p);
  at.n_items = p.items;
  at.tokens_per_item = p.tokens_per_item;
  at.sinks = L.sinks;
  at.scale = 1.0f / std::sqrt(static_cast<float>(cfg_.head_dim));
  at.splits = kv.window > 0 ? p.splits_sliding : p.splits_full;
  at.o16 = s.o16;
  at.o_stride = 2 * qp_;
  at.o_lo = qp_;
  at.part_o = s.attn_o;
  at.part_ml = s.attn_ml;
  at.n_tokens = p.T;
  const double kv_bytes = (kv.window > 0 ? p.kv_keys_sliding : p.kv_keys_full) * static_cast<double>(kv_entry_bytes());
  GPTOSS_LAUNCH(kv.window > 0 ? "attention (sliding)" : "attention (full)", kv_bytes,
                attention_launch(at, shape_, kv, launch_));
  if (at.splits > 1) GPTOSS_LAUNCH("attention split merge", 0, attention_combine_launch(at, shape_, launch_));

  const GemmPlan go = dense_plan(L.o, p.T);
  GPTOSS_RETURN_IF_ERROR(dense_product("o projection", L.o, go, dense_args(L.o, go, s.o16, qp_, p.T, s.proj, H)));
  ResidualAdd add;
  add.parts = s.proj;
  add.nparts = go.nparts();
  add.part_stride = go.part_stride(p.T, H);
  add.stride = go.token_stride(H);
  add.bias = L.o_b;
  GPTOSS_LAUNCH("residual add + norm", 0,
                add_rmsnorm_launch(s.h, p.T, H, add, L.mlp_norm, static_cast<float>(cfg_.rms_norm_eps), s.x16, 2 * hp_,
                                   hp_, s.x32, launch_));
  return Status::ok_status();
}

Status CudaBackend::moe_block(const StepPlan& p, int layer, ResidualAdd* moe_out) {
  const LayerDev& L = dev_->layers[static_cast<size_t>(layer)];
  Scratch& s = scratch_;
  const int H = static_cast<int>(cfg_.hidden_size), E = static_cast<int>(cfg_.num_local_experts);
  const int K = static_cast<int>(cfg_.num_experts_per_tok), I = static_cast<int>(cfg_.intermediate_size);
  const int P = p.T * K;
  RouterStatsDev st;
  if (p.stats) {
    st.counts = s.stat_counts + static_cast<size_t>(layer) * E;
    st.top1 = s.stat_top1 + layer;
    st.entropy = s.stat_entropy + layer;
    st.tokens = s.stat_tokens + layer;
  }
  const GemmPlan g1 = gemm_plan_moe(L.mlp1.rows, L.mlp1.kblocks, P, E, sm_count_);
  // Decode steps run the tensor-core decode kernel: per (token, expert) pair straight from the
  // router's top-k (no grouping) up to pair_max_tokens_, else on the grouping's tiles.
  const bool decode = p.T <= decode_max_tokens_;
  const bool per_pair = decode && p.T <= pair_max_tokens_;
  MoeGroupOut grp;
  grp.nt = decode ? kMoeDecodeTileTokens : g1.nt;
  grp.max_tiles = decode ? moe_max_tiles(P, E, kMoeDecodeTileTokens) : g1.max_tiles;
  grp.sorted_token = s.sorted_token, grp.sorted_pair = s.sorted_pair, grp.tiles = s.tiles, grp.n_tiles = s.n_tiles;
  const bool fused = !per_pair && router_fuses_grouping(p.T, H, E);
  GPTOSS_LAUNCH(fused ? "router + top-k + grouping" : "router + top-k", static_cast<double>(E) * H * 2,
                router_launch(s.x32, p.T, H, L.router_w, L.router_b, E, K, s.topk_idx, s.topk_w, st,
                              fused ? &grp : nullptr, RouterWork{s.router_logits, s.router_counters}, launch_));
  if (!per_pair && !fused) GPTOSS_LAUNCH("expert grouping", 0, moe_group_launch(s.topk_idx, p.T, K, E, grp, launch_));
  const float alpha = static_cast<float>(cfg_.swiglu_alpha), limit = static_cast<float>(cfg_.swiglu_limit);
  *moe_out = ResidualAdd{};
  moe_out->stride = H;
  moe_out->top_k = K;
  moe_out->experts = s.topk_idx;
  moe_out->weights = s.topk_w;
  moe_out->expert_bias = L.mlp2.bias;
  moe_out->expert_bias_stride = L.mlp2.rows_p;
  moe_out->parts = s.y;
  if (decode) {
    // gate/up + SwiGLU → a16 (row = pair p, or the pair's sorted position); down → y (row = pair).
    MoeDecodeArgs d1 = decode_args(L.mlp1, s.x16, hp_), d2 = decode_args(L.mlp2, s.a16, ip_);
    if (per_pair) {
      d1.experts = d2.experts = s.topk_idx;
      d1.pairs = d2.pairs = P;
      d1.x_row_div = K;
    } else {
      d1.tiles = d2.tiles = s.tiles;
      d1.n_tiles = d2.n_tiles = s.n_tiles;
      d1.max_tiles = d2.max_tiles = grp.max_tiles;
      d1.x_gather = s.sorted_token;
      d2.out_scatter = s.sorted_pair;
    }
    swiglu_out(d1, L.mlp1, s.a16, ip_, alpha, limit);
    d2.out = s.y;
    d2.out_stride = H;
    const int reads = per_pair ? P : std::min(P, E);  // expert matrices read (at most)
    GPTOSS_LAUNCH("experts gate/up + SwiGLU (decode)", reads * expert_bytes(L.mlp1, 1, 1),
                  moe_decode_launch(d1, launch_));
    GPTOSS_LAUNCH("experts down (decode)", reads * expert_bytes(L.mlp2, 1, 1), moe_decode_launch(d2, launch_));
    moe_out->nparts = 1;
    moe_out->part_stride = static_cast<int64_t>(P) * H;
    return Status::ok_status();
  }

  GemmArgs a1 = expert_args(L.mlp1, g1, s);
  a1.x = s.x16;
  a1.x_stride = 2 * hp_;
  a1.x_lo = hp_;
  a1.x_gather = s.sorted_token;
  if (g1.split) {
    a1.mode = GemmOut::kPartial;
    a1.out = s.mlp1;
    a1.out_stride = L.mlp1.rows;
    a1.part_stride = static_cast<int64_t>(P) * L.mlp1.rows;
  } else {
    a1.mode = GemmOut::kSwiglu;
    swiglu_out(a1, L.mlp1, s.a16, ip_, alpha, limit);
  }
  GPTOSS_LAUNCH(g1.split ? "experts gate/up (split)" : "experts gate/up + SwiGLU", expert_bytes(L.mlp1, P, E),
                gemm_launch(a1, g1.nt, launch_));
  if (g1.split)
    GPTOSS_LAUNCH("experts SwiGLU", 0,
                  swiglu_parts_launch(s.mlp1, g1.nseg, a1.part_stride, L.mlp1.rows, I, s.tiles, s.n_tiles, g1.max_tiles,
                                      L.mlp1.bias, L.mlp1.rows_p, alpha, limit, s.a16, 2 * ip_, ip_, launch_));

  const GemmPlan g2 = gemm_plan_moe(L.mlp2.rows, L.mlp2.kblocks, P, E, sm_count_);
  GemmArgs a2 = expert_args(L.mlp2, g2, s);
  a2.max_tiles = g1.max_tiles;  // the tiles were built with g1's column tile (same for both)
  a2.x = s.a16;
  a2.x_stride = 2 * ip_;
  a2.x_lo = ip_;
  a2.out_scatter = s.sorted_pair;
  a2.mode = g2.split ? GemmOut::kPartial : GemmOut::kStore;
  a2.out = s.y;
  a2.out_stride = H;
  a2.part_stride = static_cast<int64_t>(P) * H;
  GPTOSS_LAUNCH("experts down", expert_bytes(L.mlp2, P, E), gemm_launch(a2, g1.nt, launch_));

  moe_out->nparts = g2.nparts();
  moe_out->part_stride = a2.part_stride;
  return Status::ok_status();
}

Status CudaBackend::enqueue_layers(const StepPlan& p) {
  Scratch& s = scratch_;
  const int H = static_cast<int>(cfg_.hidden_size);
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  GPTOSS_LAUNCH("embedding", 0, embed_launch(dev_->embed, H, meta_tokens(p), p.T, s.h, launch_));
  ResidualAdd pending;  // the previous layer's expert outputs, added by the next norm
  for (int l = 0; l < static_cast<int>(dev_->layers.size()); ++l) {
    GPTOSS_LAUNCH("residual add + norm", 0,
                  add_rmsnorm_launch(s.h, p.T, H, pending, dev_->layers[static_cast<size_t>(l)].attn_norm, eps, s.x16,
                                     2 * hp_, hp_, nullptr, launch_));
    GPTOSS_RETURN_IF_ERROR(attention_block(p, l));
    GPTOSS_RETURN_IF_ERROR(moe_block(p, l, &pending));
  }
  GPTOSS_LAUNCH("residual add + norm", 0,
                add_rmsnorm_launch(s.h, p.T, H, pending, dev_->final_norm, eps, s.x16, 2 * hp_, hp_, nullptr, launch_));
  return Status::ok_status();
}

Status CudaBackend::enqueue_outputs(const StepPlan& p, const StepOutputs& out) {
  Scratch& s = scratch_;
  const int64_t V = cfg_.vocab_size;
  const auto* sample_rows = reinterpret_cast<const SampleRowDev*>(dev_sample_.data());
  const auto* sample_edits = reinterpret_cast<const PenaltyEdit*>(dev_sample_.data() + sample_edits_off_);
  auto* sampled = reinterpret_cast<int32_t*>(dev_sample_.data() + sample_out_off_);
  size_t j0 = 0;  // first sample row of this chunk (rows are increasing)
  for (int r0 = 0; r0 < p.R; r0 += s.logit_rows) {
    const int n = std::min(s.logit_rows, p.R - r0);
    GemmPlan g = gemm_plan_dense(dev_->lm_head.rows, dev_->lm_head.kblocks, n, sm_count_);
    g.split = false;  // plain stores: the logits buffer holds one partial per row only
    GemmArgs a = dense_args(dev_->lm_head, g, s.x16, hp_, n, s.logits, V);
    a.x_gather = meta_out_rows(p) + r0;
    GPTOSS_LAUNCH("lm_head", dense_bytes(dev_->lm_head), gemm_launch(a, g.nt, launch_));
    GPTOSS_LAUNCH("argmax", static_cast<double>(n) * V * 4,
                  argmax_launch(s.logits, n, V, s.argmax_keys, s.argmax, launch_));
    GPTOSS_CUDA_TRY(cudaMemcpyAsync(host_argmax_.data() + static_cast<size_t>(r0) * 4, s.argmax,
                                    static_cast<size_t>(n) * 4, cudaMemcpyDeviceToHost, stream_),
                    "copying argmax");
    if (out.logits)
      GPTOSS_CUDA_TRY(cudaMemcpyAsync(out.logits + static_cast<size_t>(r0) * V, s.logits,
                                      static_cast<size_t>(n * V) * 4, cudaMemcpyDeviceToHost, stream_),
                      "copying logits");
    // Sampling edits the logits in place, after the copy above.
    size_t j1 = j0;
    while (j1 < out.sample.size() && out.sample[j1].row < r0 + n) ++j1;
    if (j1 > j0) {
      const int ns = static_cast<int>(j1 - j0);
      // The rules from the host copy of the rows (upload_samples)
      const SampleRules rules = sample_rules(reinterpret_cast<const SampleRowDev*>(host_sample_.data()) + j0, ns);
      GPTOSS_LAUNCH("sampling", static_cast<double>(ns) * V * 4,
                    sample_launch(s.logits, V, sample_rows + j0, ns, sample_edits, sampled + j0,
                                  SampleSplit{s.sample_parts, sample_chunks(ns, sm_count_)}, rules, launch_));
    }
    j0 = j1;
  }
  if (!out.sample.empty())
    GPTOSS_CUDA_TRY(cudaMemcpyAsync(host_sample_.data() + sample_out_off_, sampled, out.sample.size() * 4,
                                    cudaMemcpyDeviceToHost, stream_),
                    "copying sampled tokens");
  return Status::ok_status();
}

}  // namespace gptoss::cuda
