// CPU reference ops: elementwise and small ops (norm, RoPE, router, SwiGLU, embedding, argmax).
// The dot-product kernels (matmul_bf16, mxfp4_matmul, dot_f32) live in matmul.cpp.
#include <algorithm>
#include <cmath>
#include <numbers>

#include "backend/cpu/ops.h"
#include "core/dtype.h"

namespace gptoss::cpu {

void rmsnorm(const float* x, int64_t n, int64_t dim, const uint16_t* gain, float eps, float* y) {
  for (int64_t t = 0; t < n; ++t) {
    const float* xr = x + t * dim;
    float* yr = y + t * dim;
    // The mean of squares is summed in double: more accurate than HF's f32 reduction and
    // independent of any vector width.
    double ss = 0.0;
    for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float var = static_cast<float>(ss / static_cast<double>(dim));
    const float inv = 1.0f / std::sqrt(var + eps);
    // HF order: normalise in f32, then multiply by the f32 gain (no cast in between).
    for (int64_t i = 0; i < dim; ++i) yr[i] = bf16_to_f32(gain[i]) * (xr[i] * inv);
  }
}

namespace {
// HF `find_correction_dim`: the rotary dimension whose wavelength completes `rotations` turns over
// the original context.
double yarn_correction_dim(double rotations, double dim, double base, double orig_ctx) {
  return dim * std::log(orig_ctx / (rotations * 2.0 * std::numbers::pi)) / (2.0 * std::log(base));
}
}  // namespace

RopeTable rope_table(const Config& config) {
  RopeTable rope;
  const int64_t dim = config.head_dim;
  const int64_t half = dim / 2;
  const RopeScaling& rs = config.rope_scaling;
  rope.head_dim = dim;
  const double factor = rs.factor;
  rope.concentration = factor > 1.0 ? static_cast<float>(0.1 * std::log(factor) + 1.0) : 1.0f;

  double low = yarn_correction_dim(rs.beta_fast, static_cast<double>(dim), config.rope_theta,
                                   static_cast<double>(rs.original_max_position_embeddings));
  double high = yarn_correction_dim(rs.beta_slow, static_cast<double>(dim), config.rope_theta,
                                    static_cast<double>(rs.original_max_position_embeddings));
  if (rs.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  rope.low = low;
  rope.high = high;
  // HF nudges a degenerate ramp so it does not divide by zero.
  const double ramp_high = (low == high) ? high + 0.001 : high;

  // Everything below is f32 arithmetic, in the order HF's `_compute_yarn_parameters` uses.
  const float base = static_cast<float>(config.rope_theta);
  const float f_factor = static_cast<float>(factor);
  const float f_low = static_cast<float>(low);
  const float f_span = static_cast<float>(ramp_high - low);
  rope.inv_freq.resize(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    const float pos_freq = std::pow(base, static_cast<float>(2 * i) / static_cast<float>(dim));
    const float extrap = 1.0f / pos_freq;
    const float interp = 1.0f / (f_factor * pos_freq);
    const float ramp = std::clamp((static_cast<float>(i) - f_low) / f_span, 0.0f, 1.0f);
    const float extrap_factor = 1.0f - ramp;
    rope.inv_freq[static_cast<size_t>(i)] = interp * (1.0f - extrap_factor) + extrap * extrap_factor;
  }
  return rope;
}

void rope_cos_sin(const RopeTable& rope, int64_t pos, float* cos_out, float* sin_out) {
  const float p = static_cast<float>(pos);
  const int64_t half = rope.head_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float angle = p * rope.inv_freq[static_cast<size_t>(i)];
    cos_out[i] = std::cos(angle) * rope.concentration;
    sin_out[i] = std::sin(angle) * rope.concentration;
  }
}

void rope_rotate(float* x, int64_t n_heads, int64_t head_dim, const float* cos, const float* sin) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    float* z = x + h * head_dim;
    for (int64_t i = 0; i < half; ++i) {
      const float a = z[i], b = z[i + half];
      // Each product is rounded on its own, as in HF's elementwise tensor ops.
      const float ac = a * cos[i], bs = b * sin[i], bc = b * cos[i], as = a * sin[i];
      z[i] = ac - bs;
      z[i + half] = bc + as;
    }
  }
}

void rope_apply(float* x, int64_t n_heads, const RopeTable& rope, int64_t pos) {
  const int64_t half = rope.head_dim / 2;
  const float p = static_cast<float>(pos);
  for (int64_t i = 0; i < half; ++i) {
    // Same arithmetic as rope_cos_sin + rope_rotate, one frequency at a time (no scratch).
    const float angle = p * rope.inv_freq[static_cast<size_t>(i)];
    const float c = std::cos(angle) * rope.concentration, s = std::sin(angle) * rope.concentration;
    for (int64_t h = 0; h < n_heads; ++h) {
      float* z = x + h * rope.head_dim;
      const float a = z[i], b = z[i + half];
      const float ac = a * c, bs = b * s, bc = b * c, as = a * s;
      z[i] = ac - bs;
      z[i + half] = bc + as;
    }
  }
}

void router_topk_softmax(const float* logits, int64_t n_experts, int64_t k, int32_t* idx, float* weight) {
  // Selection by repeated scans keeps ties in index order and needs no scratch; k ≤ E is small.
  for (int64_t s = 0; s < k; ++s) {
    int32_t best = -1;
    for (int64_t e = 0; e < n_experts; ++e) {
      bool taken = false;
      for (int64_t u = 0; u < s; ++u) taken = taken || idx[u] == e;
      if (taken) continue;
      if (best < 0 || logits[e] > logits[best]) best = static_cast<int32_t>(e);
    }
    idx[s] = best;
  }
  const float top = logits[idx[0]];
  float sum = 0.0f;
  for (int64_t s = 0; s < k; ++s) {
    weight[s] = std::exp(logits[idx[s]] - top);
    sum += weight[s];
  }
  for (int64_t s = 0; s < k; ++s) weight[s] /= sum;
}

void round_to_f16(float* x, int64_t n) {
  constexpr float kMax = 65504.0f;  // the largest finite fp16
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i] < -kMax ? -kMax : x[i] > kMax ? kMax : x[i];  // NaN stays NaN
    x[i] = f16_to_f32(f32_to_f16(v));
  }
}

void swiglu_clamp(const float* gate_up, int64_t inter, float alpha, float limit, float* out) {
  for (int64_t j = 0; j < inter; ++j) {
    const float g = std::min(gate_up[2 * j], limit);  // upper clamp only
    const float l = std::clamp(gate_up[2 * j + 1], -limit, limit);
    const float glu = g * (1.0f / (1.0f + std::exp(-(g * alpha))));
    out[j] = (l + 1.0f) * glu;
  }
}

void embed_rows(const uint16_t* table, int64_t dim, const int32_t* tokens, int64_t n, float* out) {
  for (int64_t t = 0; t < n; ++t) {
    const uint16_t* row = table + static_cast<int64_t>(tokens[t]) * dim;
    float* o = out + t * dim;
    for (int64_t i = 0; i < dim; ++i) o[i] = bf16_to_f32(row[i]);
  }
}

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (x[i] > x[best] || (std::isnan(x[best]) && !std::isnan(x[i]))) best = i;
  }
  return static_cast<int32_t>(best);
}

}  // namespace gptoss::cpu
