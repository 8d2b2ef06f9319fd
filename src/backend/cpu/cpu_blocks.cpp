// The two transformer blocks of the CPU backend (spec §4.2–4.6): attention with sinks, sliding
// windows and the KV cache; the MoE block with top-k routing and MXFP4 experts grouped by expert.
#include <algorithm>
#include <cmath>

#include "backend/cpu/cpu_backend_impl.h"
#include "backend/cpu/ops.h"
#include "backend/cpu/parallel.h"

namespace gptoss::cpu {

void CpuBackend::attention_block(int64_t layer, int64_t T) {
  Scratch& s = scratch_;
  const LayerWeights& w = model_->weights().layers[static_cast<size_t>(layer)];
  const int64_t H = cfg_.hidden_size, qd = cfg_.q_dim(), kvd = cfg_.kv_dim(), hd = cfg_.head_dim;
  rmsnorm(s.h.data(), T, H, w.attn_norm.bf16(), static_cast<float>(cfg_.rms_norm_eps), s.x.data());
  matmul_bf16(s.x.data(), T, H, w.q_w.bf16(), w.q_b.bf16(), qd, s.q.data(), &pool_);
  matmul_bf16(s.x.data(), T, H, w.k_w.bf16(), w.k_b.bf16(), kvd, s.k.data(), &pool_);
  matmul_bf16(s.x.data(), T, H, w.v_w.bf16(), w.v_b.bf16(), kvd, s.v.data(), &pool_);
  for (int64_t r = 0; r < T; ++r) {
    const float* cs = s.rope_cs.data() + r * hd;
    rope_rotate(s.q.data() + r * qd, cfg_.num_attention_heads, hd, cs, cs + hd / 2);
    rope_rotate(s.k.data() + r * kvd, cfg_.num_key_value_heads, hd, cs, cs + hd / 2);
  }
  // An f16 cache: this step's keys and values are rounded before anything reads them, so the new
  // rows attend exactly as they will once cached.
  if (opts_.kv_cache == KvCacheType::kF16) {
    round_to_f16(s.k.data(), T * kvd);
    round_to_f16(s.v.data(), T * kvd);
  }
  attend_rows(layer, T);
  // Written only after every row has attended: a chunk longer than a sliding ring would
  // otherwise overwrite keys its own earlier tokens still need.
  store_kv(layer, T);
  matmul_bf16(s.attn.data(), T, qd, w.o_w.bf16(), w.o_b.bf16(), H, s.tmp.data(), &pool_);
  for (int64_t i = 0; i < T * H; ++i) s.h[static_cast<size_t>(i)] += s.tmp[static_cast<size_t>(i)];
}

void CpuBackend::attend_rows(int64_t layer, int64_t T) {
  Scratch& s = scratch_;
  const LayerWeights& w = model_->weights().layers[static_cast<size_t>(layer)];
  const LayerCache& cache = kv_[static_cast<size_t>(layer)];
  const int64_t nh = cfg_.num_attention_heads, nkv = cfg_.num_key_value_heads, hd = cfg_.head_dim;
  const int64_t qd = cfg_.q_dim(), kvd = cfg_.kv_dim();
  const bool sliding = cfg_.is_sliding(layer);
  // HF: head_dim**-0.5 in double, applied as an f32 multiplier.
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  const uint16_t* sinks = w.sinks.bf16();
  auto work = [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t r = item / nh, h = item % nh;
      const SeqBatch& seq = batch_[static_cast<size_t>(s.row_seq[r])];
      const int64_t p = s.row_pos[r], row0 = s.seq_row0[static_cast<size_t>(s.row_seq[r])];
      const int64_t first = sliding ? std::max<int64_t>(0, p - cfg_.sliding_window + 1) : 0;
      const size_t slot_base = static_cast<size_t>(seq.slot * cache.cap * kvd);
      // Keys of this step come from the fresh rows; older ones from the slot's cache.
      auto k_at = [&](int64_t j) {
        return j >= seq.pos ? s.k.data() + (row0 + j - seq.pos) * kvd
                            : cache.k.data() + slot_base + static_cast<size_t>((j % cache.cap) * kvd);
      };
      auto v_at = [&](int64_t j) {
        return j >= seq.pos ? s.v.data() + (row0 + j - seq.pos) * kvd
                            : cache.v.data() + slot_base + static_cast<size_t>((j % cache.cap) * kvd);
      };
      attention_sinks_head(s.q.data() + r * qd + h * hd, h, nh, nkv, hd, first, p, k_at, v_at, bf16_to_f32(sinks[h]),
                           scale, s.attn.data() + r * qd + h * hd);
    }
  };
  // Work per item grows with the context; a rough grain keeps short decodes on one thread.
  const int64_t typical_keys = std::max<int64_t>(1, s.row_pos[T - 1] + 1);
  const int64_t grain = std::max<int64_t>(1, 16384 / (typical_keys * hd * 2));
  parallel_ranges(&pool_, T * nh, grain, work);
}

void CpuBackend::store_kv(int64_t layer, int64_t T) {
  Scratch& s = scratch_;
  LayerCache& cache = kv_[static_cast<size_t>(layer)];
  const int64_t kvd = cfg_.kv_dim();
  // Rows go in order, so when a chunk wraps the ring the later position wins the entry.
  for (int64_t r = 0; r < T; ++r) {
    const int slot = batch_[static_cast<size_t>(s.row_seq[r])].slot;
    const size_t at = static_cast<size_t>((slot * cache.cap + s.row_pos[r] % cache.cap) * kvd);
    std::copy_n(s.k.data() + r * kvd, kvd, cache.k.data() + at);
    std::copy_n(s.v.data() + r * kvd, kvd, cache.v.data() + at);
  }
}

void CpuBackend::route_tokens(int64_t layer, int64_t T, RouterStats* stats) {
  Scratch& s = scratch_;
  const LayerWeights& w = model_->weights().layers[static_cast<size_t>(layer)];
  const int64_t H = cfg_.hidden_size, E = cfg_.num_local_experts, K = cfg_.num_experts_per_tok;
  matmul_bf16(s.x.data(), T, H, w.router_w.bf16(), w.router_b.bf16(), E, s.router_logits.data(), &pool_);
  std::fill(s.ex_count.begin(), s.ex_count.begin() + E + 1, 0);
  for (int64_t r = 0; r < T; ++r) {
    int32_t* idx = s.topk_idx.data() + r * K;
    float* wt = s.topk_w.data() + r * K;
    router_topk_softmax(s.router_logits.data() + r * E, E, K, idx, wt);
    for (int64_t c = 0; c < K; ++c) ++s.ex_count[static_cast<size_t>(idx[c]) + 1];
    if (stats) {
      double entropy = 0.0;
      for (int64_t c = 0; c < K; ++c) {
        ++stats->counts[static_cast<size_t>(layer * E + idx[c])];
        if (wt[c] > 0.0f) entropy -= static_cast<double>(wt[c]) * std::log(static_cast<double>(wt[c]));
      }
      stats->top1_weight_sum[static_cast<size_t>(layer)] += wt[0];
      stats->entropy_sum[static_cast<size_t>(layer)] += entropy;
      ++stats->tokens[static_cast<size_t>(layer)];
    }
  }
  // Counting sort: tokens grouped by expert, in row order within each expert.
  for (int64_t e = 0; e < E; ++e) s.ex_count[static_cast<size_t>(e + 1)] += s.ex_count[static_cast<size_t>(e)];
  for (int64_t r = 0; r < T; ++r) {
    for (int64_t c = 0; c < K; ++c) {
      const int32_t e = s.topk_idx[static_cast<size_t>(r * K + c)];
      s.ex_token[static_cast<size_t>(s.ex_count[static_cast<size_t>(e)]++)] = static_cast<int32_t>(r * K + c);
    }
  }
  // The fill loop advanced each offset to the next expert's start; shift back.
  for (int64_t e = E; e > 0; --e) s.ex_count[static_cast<size_t>(e)] = s.ex_count[static_cast<size_t>(e - 1)];
  s.ex_count[0] = 0;
}

void CpuBackend::run_expert(int64_t layer, int64_t e, int64_t begin, int64_t end) {
  Scratch& s = scratch_;
  const LayerWeights& w = model_->weights().layers[static_cast<size_t>(layer)];
  const int64_t H = cfg_.hidden_size, I = cfg_.intermediate_size, K = cfg_.num_experts_per_tok;
  const int64_t n = end - begin;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = s.ex_token[static_cast<size_t>(begin + i)] / K;
    std::copy_n(s.x.data() + r * H, H, s.ex_x.data() + i * H);
  }
  // Shapes from the config: gate_up is [2I, H], down is [H, I], each blocked by 32 along its input.
  const Mxfp4Experts& m1 = w.mlp1;
  const Mxfp4Experts& m2 = w.mlp2;
  const int64_t nb1 = H / 32, nb2 = I / 32;
  mxfp4_matmul(m1.blocks.u8() + e * 2 * I * nb1 * 16, m1.scales.u8() + e * 2 * I * nb1, m1.bias.bf16() + e * 2 * I,
               2 * I, H, s.ex_x.data(), n, s.ex_gu.data(), &pool_);
  for (int64_t i = 0; i < n; ++i) {
    swiglu_clamp(s.ex_gu.data() + i * 2 * I, I, static_cast<float>(cfg_.swiglu_alpha),
                 static_cast<float>(cfg_.swiglu_limit), s.ex_act.data() + i * I);
  }
  mxfp4_matmul(m2.blocks.u8() + e * H * nb2 * 16, m2.scales.u8() + e * H * nb2, m2.bias.bf16() + e * H, H, I,
               s.ex_act.data(), n, s.ex_y.data(), &pool_);
  // Experts run in index order, so every token sums its experts in ascending index order (as HF's
  // index_add loop does) whatever else is in the batch.
  for (int64_t i = 0; i < n; ++i) {
    const int32_t slot = s.ex_token[static_cast<size_t>(begin + i)];
    const int64_t r = slot / K;
    const float wt = s.topk_w[static_cast<size_t>(slot)];
    float* o = s.moe.data() + r * H;
    const float* y = s.ex_y.data() + i * H;
    for (int64_t d = 0; d < H; ++d) o[d] += wt * y[d];
  }
}

void CpuBackend::moe_block(int64_t layer, int64_t T, RouterStats* stats) {
  Scratch& s = scratch_;
  const LayerWeights& w = model_->weights().layers[static_cast<size_t>(layer)];
  const int64_t H = cfg_.hidden_size;
  rmsnorm(s.h.data(), T, H, w.mlp_norm.bf16(), static_cast<float>(cfg_.rms_norm_eps), s.x.data());
  route_tokens(layer, T, stats);
  std::fill(s.moe.begin(), s.moe.begin() + T * H, 0.0f);
  for (int64_t e = 0; e < cfg_.num_local_experts; ++e) {
    const int64_t begin = s.ex_count[static_cast<size_t>(e)], end = s.ex_count[static_cast<size_t>(e + 1)];
    if (end > begin) run_expert(layer, e, begin, end);
  }
  for (int64_t i = 0; i < T * H; ++i) s.h[static_cast<size_t>(i)] += s.moe[static_cast<size_t>(i)];
}

}  // namespace gptoss::cpu
