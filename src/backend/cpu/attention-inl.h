// Attention with per-head sinks (template bodies of ops.h): f32 scores and an online softmax over
// key chunks whose running maximum starts at the sink logit, so the sink joins the denominator.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace gptoss::cpu {

namespace attention_detail {
inline constexpr int64_t kKeyChunk = 64;  // scores kept on the stack between max and exp passes
}  // namespace attention_detail

template <typename KAt, typename VAt>
void attention_sinks_head(const float* q, int64_t h, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim,
                          int64_t first, int64_t last, KAt k_at, VAt v_at, float sink, float scale, float* out) {
  using attention_detail::kKeyChunk;
  const int64_t kvh = h / (n_heads / n_kv_heads);
  const int64_t kv_off = kvh * head_dim;
  // Running max starts at the (unscaled) sink logit with its exp(σ − m) = 1 already in the sum:
  // the sink takes probability mass but contributes no value.
  float m = sink;
  float z = 1.0f;
  for (int64_t d = 0; d < head_dim; ++d) out[d] = 0.0f;
  float s[kKeyChunk];
  const float* keys[kKeyChunk];
  for (int64_t j0 = first; j0 <= last; j0 += kKeyChunk) {
    const int64_t nj = std::min(kKeyChunk, last - j0 + 1);
    for (int64_t u = 0; u < nj; ++u) keys[u] = k_at(j0 + u) + kv_off;
    dot_f32_rows(q, keys, nj, head_dim, s);
    float cmax = m;
    for (int64_t u = 0; u < nj; ++u) {
      s[u] *= scale;
      cmax = std::max(cmax, s[u]);
    }
    if (cmax > m) {
      // Rescale what was accumulated under the old maximum.
      const float f = std::exp(m - cmax);
      z *= f;
      for (int64_t d = 0; d < head_dim; ++d) out[d] *= f;
      m = cmax;
    }
    for (int64_t u = 0; u < nj; ++u) {
      const float p = std::exp(s[u] - m);
      z += p;
      const float* v = v_at(j0 + u) + kv_off;
      for (int64_t d = 0; d < head_dim; ++d) out[d] += p * v[d];
    }
  }
  const float inv = 1.0f / z;
  for (int64_t d = 0; d < head_dim; ++d) out[d] *= inv;
}

template <typename KAt, typename VAt>
void attention_sinks(const float* q, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, int64_t first, int64_t last,
                     KAt k_at, VAt v_at, const float* sinks, float scale, float* out) {
  for (int64_t h = 0; h < n_heads; ++h) {
    attention_sinks_head(q + h * head_dim, h, n_heads, n_kv_heads, head_dim, first, last, k_at, v_at, sinks[h], scale,
                         out + h * head_dim);
  }
}

}  // namespace gptoss::cpu
