// CPU reference ops for gpt-oss (f32 activations, f32 accumulation). The CPU backend is built from
// these, and every CUDA kernel is tested against them (tests/backend). Matrices are row-major;
// weights are nn.Linear style [out, in]. `pool` may be null (single-threaded).
//
// Dot products (matmul_bf16, mxfp4_matmul, dot_f32) share one canonical summation order: eight
// f32 lanes accumulate chunks of 8 consecutive products with FMA in order, the lanes are reduced
// pairwise ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), then the remaining (len % 8) products are added
// one by one, then the bias. The result of one output element therefore never depends on the
// batch size, the tiling, the thread count or whether the SIMD or the scalar path was compiled.
#pragma once

#include <cstdint>
#include <vector>

#include "core/threads.h"
#include "model/config.h"

namespace gptoss::cpu {

// Σ a[i]·b[i] in the canonical order above.
float dot_f32(const float* a, const float* b, int64_t n);
// out[j] = dot_f32(a, b[j], len) for j < n: several dots against one vector at once (bitwise the
// same results, more instruction-level parallelism).
void dot_f32_rows(const float* a, const float* const* b, int64_t n, int64_t len, float* out);

// y[t, o] = Σ_i x[t, i] · W[o, i] (+ bias[o]);  x [n, in] f32, W [out, in] bf16, bias [out] bf16 or
// null, y [n, out] f32. Each y element is computed the same way whatever n is (batch-invariant).
void matmul_bf16(const float* x, int64_t n, int64_t in, const uint16_t* w, const uint16_t* bias, int64_t out, float* y,
                 ThreadPool* pool);

// y[t] = gain ⊙ x[t] / sqrt(mean(x[t]²) + eps), all f32 (gain bf16 up-cast); x, y [n, dim].
// x and y may alias.
void rmsnorm(const float* x, int64_t n, int64_t dim, const uint16_t* gain, float eps, float* y);

// YaRN (NTK-by-parts, truncate=false unless the config says true) frequencies and concentration.
struct RopeTable {
  std::vector<float> inv_freq;  // [head_dim/2] ω_i, f32
  float concentration = 1.0f;   // m = 0.1·ln(factor) + 1
  int64_t head_dim = 0;
  double low = 0, high = 0;  // YaRN correction range (dims), after truncation when enabled
};
RopeTable rope_table(const Config& config);
// cos/sin for one position: cos_out[i] = cos(p·ω_i)·m, sin_out[i] = sin(p·ω_i)·m (angle in f32).
// Each output has head_dim/2 entries.
void rope_cos_sin(const RopeTable& rope, int64_t pos, float* cos_out, float* sin_out);
// Half-split rotation of n_heads vectors of head_dim with precomputed cos/sin [head_dim/2], in place:
// a = x[i], b = x[i + d/2] → x[i] = a·cos_i − b·sin_i, x[i + d/2] = b·cos_i + a·sin_i.
void rope_rotate(float* x, int64_t n_heads, int64_t head_dim, const float* cos, const float* sin);
// rope_cos_sin + rope_rotate at one position, in place.
void rope_apply(float* x, int64_t n_heads, const RopeTable& rope, int64_t pos);

// Each x[i] rounded to the nearest fp16 value (ties to even), saturating at ±65504 (the f16 KV
// cache: CUDA stores these values, the CPU reference attends over them).
void round_to_f16(float* x, int64_t n);

// Attention of one query token (all heads) against keys/values at positions
// [first, last] (inclusive) of one sequence, with per-head sink logits.
//   q    [n_heads, head_dim] (post-RoPE)
//   k_at(j), v_at(j): pointers to [n_kv_heads, head_dim] f32 for position j
//   out  [n_heads, head_dim]
// score_j = (q_h · k_{h/group, j}) · scale; sink σ_h joins the softmax and takes no value.
template <typename KAt, typename VAt>
void attention_sinks(const float* q, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, int64_t first, int64_t last,
                     KAt k_at, VAt v_at, const float* sinks, float scale, float* out);
// The same for one query head h (q and out point at that head's [head_dim] vectors).
template <typename KAt, typename VAt>
void attention_sinks_head(const float* q, int64_t h, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim,
                          int64_t first, int64_t last, KAt k_at, VAt v_at, float sink, float scale, float* out);

// Top-k of logits [E] (descending; ties → lower expert index first), then softmax over the k
// selected logits. idx [k], weight [k].
void router_topk_softmax(const float* logits, int64_t n_experts, int64_t k, int32_t* idx, float* weight);

// Clamped SwiGLU on interleaved gate/up [2·I]: g = min(u[2j], limit), l = clamp(u[2j+1], ±limit),
// out[j] = g·sigmoid(alpha·g)·(l + 1).
void swiglu_clamp(const float* gate_up, int64_t inter, float alpha, float limit, float* out);

// y[t, r] = Σ_c W[r, c]·x[t, c] (+ bias[r]) for an MXFP4 matrix [rows, cols] given by its blocks
// [rows, cols/32, 16] and scales [rows, cols/32]; bias bf16 or null; x [n, cols], y [n, rows];
// cols % 32 == 0. The weights are dequantized exactly (FP4 value · 2^(scale−127)) and dotted in the
// canonical order, so the result is the same as dequantize-then-matmul and is batch-invariant.
void mxfp4_matmul(const uint8_t* blocks, const uint8_t* scales, const uint16_t* bias, int64_t rows, int64_t cols,
                  const float* x, int64_t n, float* y, ThreadPool* pool);
// mxfp4_matmul for one input vector: x [cols], y [rows].
void mxfp4_matvec(const uint8_t* blocks, const uint8_t* scales, const uint16_t* bias, int64_t rows, int64_t cols,
                  const float* x, float* y);

// out[t, :] = embedding row tokens[t] (bf16 → f32).
void embed_rows(const uint16_t* table, int64_t dim, const int32_t* tokens, int64_t n, float* out);

// Index of the largest value (lowest index on ties; NaN is never chosen over a number).
int32_t argmax(const float* x, int64_t n);

}  // namespace gptoss::cpu

#include "backend/cpu/attention-inl.h"
