// Float64 reference forward pass (see reference_model.h). Deliberately naive: plain loops, no
// shared code with the backend, every formula as the spec states it.
#include "reference_model.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <numeric>

#include "core/dtype.h"

namespace gptoss::testing {
namespace {

using Mat = std::vector<double>;  // row-major

Mat to_double(const Weight& w, size_t n) {
  Mat out(n);
  for (size_t i = 0; i < n; ++i) out[i] = bf16_to_f32(w.bf16()[i]);
  return out;
}

// Spec §3: low nibble = even element, value = E2M1 · 2^(scale − 127).
Mat dequant_expert(const Mxfp4Experts& m, int64_t e, int64_t rows, int64_t cols) {
  static const double kMag[8] = {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0};
  Mat w(static_cast<size_t>(rows * cols));
  const int64_t nb = cols / 32;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t g = c / 32, j = (c % 32) / 2;
      const uint8_t byte = m.blocks.u8()[((e * rows + r) * nb + g) * 16 + j];
      const int code = c % 2 == 0 ? byte & 0xf : byte >> 4;
      const double v = (code & 8) ? -kMag[code & 7] : kMag[code & 7];
      w[static_cast<size_t>(r * cols + c)] = std::ldexp(v, m.scales.u8()[(e * rows + r) * nb + g] - 127);
    }
  }
  return w;
}

// y = W x + b for W [out, in].
std::vector<double> affine(const Mat& w, const double* b, const double* x, int64_t out, int64_t in) {
  std::vector<double> y(static_cast<size_t>(out));
  for (int64_t o = 0; o < out; ++o) {
    double s = b ? b[o] : 0.0;
    for (int64_t i = 0; i < in; ++i) s += w[static_cast<size_t>(o * in + i)] * x[i];
    y[static_cast<size_t>(o)] = s;
  }
  return y;
}

std::vector<double> rmsnorm(const double* x, int64_t n, const Mat& gain, double eps) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const double inv = 1.0 / std::sqrt(ss / static_cast<double>(n) + eps);
  std::vector<double> y(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) y[static_cast<size_t>(i)] = gain[static_cast<size_t>(i)] * x[i] * inv;
  return y;
}

// Spec §4.4.4: f_i = θ^(2i/d) in f32, NTK-by-parts blend with un-rounded low/high.
std::vector<float> yarn_omegas(const Config& c) {
  const int64_t d = c.head_dim;
  const double f = c.rope_scaling.factor, orig = static_cast<double>(c.rope_scaling.original_max_position_embeddings);
  auto corr = [&](double beta) {
    return static_cast<double>(d) * std::log(orig / (beta * 2.0 * std::numbers::pi)) / (2.0 * std::log(c.rope_theta));
  };
  const double low = std::max(0.0, corr(c.rope_scaling.beta_fast));
  const double high = std::min(static_cast<double>(d - 1), corr(c.rope_scaling.beta_slow));
  std::vector<float> w(static_cast<size_t>(d / 2));
  for (int64_t i = 0; i < d / 2; ++i) {
    const float base = std::pow(static_cast<float>(c.rope_theta), static_cast<float>(2 * i) / static_cast<float>(d));
    const float r = static_cast<float>(std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0));
    w[static_cast<size_t>(i)] = (1.0f / (static_cast<float>(f) * base)) * r + (1.0f / base) * (1.0f - r);
  }
  return w;
}

void rope(double* z, int64_t n_heads, int64_t d, int64_t pos, const std::vector<float>& omega, double m) {
  for (int64_t h = 0; h < n_heads; ++h) {
    double* v = z + h * d;
    for (int64_t i = 0; i < d / 2; ++i) {
      const double angle = static_cast<float>(pos) * omega[static_cast<size_t>(i)];  // formed in f32
      const double cs = std::cos(angle) * m, sn = std::sin(angle) * m;
      const double a = v[i], b = v[i + d / 2];
      v[i] = a * cs - b * sn;
      v[i + d / 2] = b * cs + a * sn;
    }
  }
}

struct Layer {
  Mat attn_norm, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, sinks, mlp_norm, r_w, r_b, b1, b2;
  std::vector<Mat> w1, w2;  // per expert: [2I, H] interleaved gate/up, [H, I]
};

Layer load_layer(const Config& c, const LayerWeights& lw) {
  const auto H = static_cast<size_t>(c.hidden_size), I = static_cast<size_t>(c.intermediate_size);
  const auto qd = static_cast<size_t>(c.q_dim()), kvd = static_cast<size_t>(c.kv_dim());
  const auto E = static_cast<size_t>(c.num_local_experts);
  Layer l;
  l.attn_norm = to_double(lw.attn_norm, H);
  l.q_w = to_double(lw.q_w, qd * H);
  l.q_b = to_double(lw.q_b, qd);
  l.k_w = to_double(lw.k_w, kvd * H);
  l.k_b = to_double(lw.k_b, kvd);
  l.v_w = to_double(lw.v_w, kvd * H);
  l.v_b = to_double(lw.v_b, kvd);
  l.o_w = to_double(lw.o_w, H * qd);
  l.o_b = to_double(lw.o_b, H);
  l.sinks = to_double(lw.sinks, static_cast<size_t>(c.num_attention_heads));
  l.mlp_norm = to_double(lw.mlp_norm, H);
  l.r_w = to_double(lw.router_w, E * H);
  l.r_b = to_double(lw.router_b, E);
  l.b1 = to_double(lw.mlp1.bias, E * 2 * I);
  l.b2 = to_double(lw.mlp2.bias, E * H);
  for (size_t e = 0; e < E; ++e) {
    l.w1.push_back(dequant_expert(lw.mlp1, static_cast<int64_t>(e), c.intermediate_size * 2, c.hidden_size));
    l.w2.push_back(dequant_expert(lw.mlp2, static_cast<int64_t>(e), c.hidden_size, c.intermediate_size));
  }
  return l;
}

// Spec §4.4.5–7 for all positions: causal (and windowed on sliding layers) softmax with the sink.
std::vector<double> attention(const Config& c, const Layer& l, bool sliding, const std::vector<std::vector<double>>& q,
                              const std::vector<std::vector<double>>& k, const std::vector<std::vector<double>>& v,
                              int64_t p) {
  const int64_t d = c.head_dim, group = c.num_attention_heads / c.num_key_value_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> out(static_cast<size_t>(c.q_dim()), 0.0);
  const int64_t first = sliding ? std::max<int64_t>(0, p - c.sliding_window + 1) : 0;
  for (int64_t h = 0; h < c.num_attention_heads; ++h) {
    const int64_t g = h / group;
    std::vector<double> s;
    for (int64_t j = first; j <= p; ++j) {
      double dot = 0;
      for (int64_t i = 0; i < d; ++i) dot += q[p][h * d + i] * k[j][g * d + i];
      s.push_back(dot * scale);
    }
    const double sink = l.sinks[static_cast<size_t>(h)];
    const double mx = std::max(sink, *std::max_element(s.begin(), s.end()));
    double z = std::exp(sink - mx);
    for (double x : s) z += std::exp(x - mx);
    for (int64_t j = first; j <= p; ++j) {
      const double pr = std::exp(s[static_cast<size_t>(j - first)] - mx) / z;
      for (int64_t i = 0; i < d; ++i) out[static_cast<size_t>(h * d + i)] += pr * v[j][g * d + i];
    }
  }
  return out;
}

// Spec §4.5–4.6: top-k of the router logits (ties → lower index), softmax over the k, clamped
// SwiGLU experts, weighted sum.
std::vector<double> moe(const Config& c, const Layer& l, const std::vector<double>& x) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_local_experts, K = c.num_experts_per_tok;
  const std::vector<double> logits = affine(l.r_w, l.r_b.data(), x.data(), E, H);
  std::vector<int64_t> order(static_cast<size_t>(E));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  double z = 0;
  for (int64_t s = 0; s < K; ++s) z += std::exp(logits[order[s]] - logits[order[0]]);
  std::vector<double> out(static_cast<size_t>(H), 0.0);
  const double limit = c.swiglu_limit, alpha = 1.702;
  for (int64_t s = 0; s < K; ++s) {
    const int64_t e = order[static_cast<size_t>(s)];
    const double w = std::exp(logits[e] - logits[order[0]]) / z;
    const std::vector<double> u = affine(l.w1[e], l.b1.data() + e * 2 * I, x.data(), 2 * I, H);
    std::vector<double> a(static_cast<size_t>(I));
    for (int64_t j = 0; j < I; ++j) {
      const double g = std::min(u[2 * j], limit), lin = std::clamp(u[2 * j + 1], -limit, limit);
      a[j] = g / (1.0 + std::exp(-alpha * g)) * (lin + 1.0);
    }
    const std::vector<double> y = affine(l.w2[e], l.b2.data() + e * H, a.data(), H, I);
    for (int64_t i = 0; i < H; ++i) out[i] += w * y[i];
  }
  return out;
}

}  // namespace

std::vector<double> reference_logits(const Model& model, const std::vector<int32_t>& tokens) {
  const Config& c = model.config();
  const ModelWeights& mw = model.weights();
  const int64_t n = static_cast<int64_t>(tokens.size()), H = c.hidden_size, V = c.vocab_size;
  const double eps = c.rms_norm_eps;
  const std::vector<float> omega = yarn_omegas(c);
  const double m = 0.1 * std::log(c.rope_scaling.factor) + 1.0;
  std::vector<std::vector<double>> h(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) {
    h[t].resize(static_cast<size_t>(H));
    for (int64_t i = 0; i < H; ++i) h[t][i] = bf16_to_f32(mw.embed.bf16()[tokens[t] * H + i]);
  }
  for (int64_t li = 0; li < c.num_hidden_layers; ++li) {
    const Layer l = load_layer(c, mw.layers[static_cast<size_t>(li)]);
    std::vector<std::vector<double>> q(n), k(n), v(n);
    for (int64_t t = 0; t < n; ++t) {
      const std::vector<double> x = rmsnorm(h[t].data(), H, l.attn_norm, eps);
      q[t] = affine(l.q_w, l.q_b.data(), x.data(), c.q_dim(), H);
      k[t] = affine(l.k_w, l.k_b.data(), x.data(), c.kv_dim(), H);
      v[t] = affine(l.v_w, l.v_b.data(), x.data(), c.kv_dim(), H);
      rope(q[t].data(), c.num_attention_heads, c.head_dim, t, omega, m);
      rope(k[t].data(), c.num_key_value_heads, c.head_dim, t, omega, m);
    }
    for (int64_t t = 0; t < n; ++t) {
      const std::vector<double> o = attention(c, l, c.is_sliding(li), q, k, v, t);
      const std::vector<double> proj = affine(l.o_w, l.o_b.data(), o.data(), H, c.q_dim());
      for (int64_t i = 0; i < H; ++i) h[t][i] += proj[i];
      const std::vector<double> y = moe(c, l, rmsnorm(h[t].data(), H, l.mlp_norm, eps));
      for (int64_t i = 0; i < H; ++i) h[t][i] += y[i];
    }
  }
  const Mat final_norm = to_double(mw.final_norm, static_cast<size_t>(H));
  std::vector<double> logits(static_cast<size_t>(n * V));
  for (int64_t t = 0; t < n; ++t) {
    const std::vector<double> x = rmsnorm(h[t].data(), H, final_norm, eps);
    for (int64_t r = 0; r < V; ++r) {
      double s = 0;
      for (int64_t i = 0; i < H; ++i) s += static_cast<double>(bf16_to_f32(mw.lm_head.bf16()[r * H + i])) * x[i];
      logits[static_cast<size_t>(t * V + r)] = s;
    }
  }
  return logits;
}

}  // namespace gptoss::testing
