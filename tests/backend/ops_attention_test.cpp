// CPU ops against independent derivations, part 2: YaRN RoPE (the spec's constants and a float64
// derivation), attention with sinks vs a float64 softmax, router top-k, clamped SwiGLU, embedding
// lookup and argmax.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cpu/ops.h"
#include "backend/ops_test_util.h"
#include "core/dtype.h"
#include "model/config.h"

namespace gptoss::cpu {
namespace {

// ---------------------------------------------------------------------------------------------
// RoPE

TEST(RopeTable, MatchesSpecYarnConstants) {
  const Config c;  // the published gpt-oss values: head_dim 64, θ 150000, factor 32, β 32/1
  const RopeTable rope = rope_table(c);
  ASSERT_EQ(rope.inv_freq.size(), 32u);
  EXPECT_NEAR(rope.low, 8.092779115512402, 1e-12);
  EXPECT_NEAR(rope.high, 17.39802450158856, 1e-12);
  EXPECT_NEAR(rope.concentration, 1.3465735902799727, 1.5 * kEps32);
  const std::pair<int, double> spec[] = {{0, 1.0},          {8, 5.081327e-2},  {9, 3.170570e-2}, {12, 6.794959e-3},
                                         {17, 1.293187e-4}, {18, 3.830881e-5}, {31, 3.023511e-7}};
  for (const auto& [i, omega] : spec) {
    // The spec prints 7 significant digits; f32 evaluation adds a few ulp.
    EXPECT_NEAR(rope.inv_freq[i], omega, 1e-6 * omega) << "omega_" << i;
  }
}

// ω_i written out from spec §4.4 in float64 for other head sizes.
TEST(RopeTable, MatchesFloat64DerivationForOtherHeadDims) {
  for (int64_t dim : {8, 16, 32, 64, 128}) {
    Config c;
    c.head_dim = dim;
    const RopeTable rope = rope_table(c);
    const double theta = 150000.0, factor = 32.0;
    auto corr = [&](double beta) {
      return static_cast<double>(dim) * std::log(4096.0 / (beta * 2 * std::numbers::pi)) / (2 * std::log(theta));
    };
    const double low = std::max(corr(32.0), 0.0), high = std::min(corr(1.0), static_cast<double>(dim - 1));
    for (int64_t i = 0; i < dim / 2; ++i) {
      const double f = std::pow(theta, 2.0 * static_cast<double>(i) / static_cast<double>(dim));
      const double r = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
      const double omega = (1.0 / (factor * f)) * r + (1.0 / f) * (1.0 - r);
      EXPECT_NEAR(rope.inv_freq[static_cast<size_t>(i)], omega, 2e-6 * omega) << "dim " << dim << " i " << i;
    }
  }
}

TEST(RopeTable, TruncateRoundsTheCorrectionRange) {
  Config c;
  c.rope_scaling.truncate = true;
  const RopeTable rope = rope_table(c);
  EXPECT_EQ(rope.low, 8.0);
  EXPECT_EQ(rope.high, 18.0);
  // With truncation dims 8 and 17 change: 8 keeps its original frequency, 17 moves toward ω/32.
  const RopeTable plain = rope_table(Config{});
  EXPECT_FLOAT_EQ(rope.inv_freq[8], 1.0f / std::pow(150000.0f, 16.0f / 64.0f));
  EXPECT_NE(rope.inv_freq[17], plain.inv_freq[17]);
}

TEST(RopeCosSin, PositionZeroIsConcentrationAndZero) {
  const RopeTable rope = rope_table(Config{});
  std::vector<float> cs(32), sn(32);
  rope_cos_sin(rope, 0, cs.data(), sn.data());
  for (int i = 0; i < 32; ++i) {
    EXPECT_EQ(cs[i], rope.concentration);
    EXPECT_EQ(sn[i], 0.0f);
  }
}

// The angle is the f32 product p·ω (as HF and the references form it); at large positions this
// differs measurably from the float64 angle, so the test pins the f32 rounding.
TEST(RopeCosSin, AngleIsFormedInFloat32) {
  const RopeTable rope = rope_table(Config{});
  std::vector<float> cs(32), sn(32);
  for (int64_t pos : {1, 127, 4095, 100003, 131071}) {
    rope_cos_sin(rope, pos, cs.data(), sn.data());
    for (int i = 0; i < 32; ++i) {
      const float angle = static_cast<float>(pos) * rope.inv_freq[static_cast<size_t>(i)];
      const double m = rope.concentration;
      EXPECT_NEAR(cs[i], std::cos(static_cast<double>(angle)) * m, 4 * kEps32) << "pos " << pos << " i " << i;
      EXPECT_NEAR(sn[i], std::sin(static_cast<double>(angle)) * m, 4 * kEps32) << "pos " << pos << " i " << i;
    }
  }
}

TEST(RopeApply, RotatesHalvesAndMatchesCosSinPlusRotate) {
  for (int64_t hd : {8, 64}) {
    Config c;
    c.head_dim = hd;
    const RopeTable rope = rope_table(c);
    const int64_t heads = 3, half = hd / 2, pos = 777;
    const auto x = randn(static_cast<size_t>(heads * hd), 30);
    std::vector<float> a = x, b = x, cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
    rope_apply(a.data(), heads, rope, pos);
    rope_cos_sin(rope, pos, cs.data(), sn.data());
    rope_rotate(b.data(), heads, hd, cs.data(), sn.data());
    EXPECT_EQ(a, b);
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < half; ++i) {
        const double p = x[h * hd + i], q = x[h * hd + i + half];
        const double c0 = cs[i], s0 = sn[i];
        EXPECT_NEAR(a[h * hd + i], p * c0 - q * s0, 1e-5);
        EXPECT_NEAR(a[h * hd + i + half], q * c0 + p * s0, 1e-5);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Attention with sinks

struct AttnCase {
  int64_t heads, kv_heads, hd, first, last;
};

// Float64 softmax over {scores} ∪ {sink} (spec §4.4.7); use_sink=false drops the sink column.
std::vector<double> naive_attention(const std::vector<float>& q, const std::vector<float>& k,
                                    const std::vector<float>& v, const AttnCase& c, const std::vector<float>& sinks,
                                    double scale, bool use_sink) {
  std::vector<double> out(static_cast<size_t>(c.heads * c.hd), 0.0);
  const int64_t kvd = c.kv_heads * c.hd, group = c.heads / c.kv_heads;
  for (int64_t h = 0; h < c.heads; ++h) {
    const int64_t g = h / group;
    std::vector<double> s;
    for (int64_t j = c.first; j <= c.last; ++j) {
      double d = 0;
      for (int64_t i = 0; i < c.hd; ++i) d += static_cast<double>(q[h * c.hd + i]) * k[j * kvd + g * c.hd + i];
      s.push_back(d * scale);
    }
    double mx = use_sink ? sinks[h] : -1e300;
    for (double x : s) mx = std::max(mx, x);
    double z = use_sink ? std::exp(sinks[h] - mx) : 0.0;
    for (double x : s) z += std::exp(x - mx);
    for (size_t u = 0; u < s.size(); ++u) {
      const double p = std::exp(s[u] - mx) / z;
      const int64_t j = c.first + static_cast<int64_t>(u);
      for (int64_t i = 0; i < c.hd; ++i) out[h * c.hd + i] += p * v[j * kvd + g * c.hd + i];
    }
  }
  return out;
}

std::vector<float> run_attention(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                                 const AttnCase& c, const std::vector<float>& sinks, float scale) {
  const int64_t kvd = c.kv_heads * c.hd;
  std::vector<float> out(static_cast<size_t>(c.heads * c.hd), -1.0f);
  attention_sinks(
      q.data(), c.heads, c.kv_heads, c.hd, c.first, c.last, [&](int64_t j) { return k.data() + j * kvd; },
      [&](int64_t j) { return v.data() + j * kvd; }, sinks.data(), scale, out.data());
  return out;
}

TEST(AttentionSinks, MatchesFloat64Softmax) {
  const AttnCase cases[] = {{6, 2, 8, 0, 0},    {4, 4, 16, 3, 7},      {3, 1, 32, 0, 63}, {3, 1, 32, 0, 64},
                            {8, 2, 64, 5, 204}, {64, 8, 64, 100, 227}, {2, 1, 64, 0, 129}};
  uint32_t seed = 40;
  for (const AttnCase& c : cases) {
    const int64_t n_pos = c.last + 1, kvd = c.kv_heads * c.hd;
    const auto q = randn(static_cast<size_t>(c.heads * c.hd), ++seed, 1.5f);
    const auto k = randn(static_cast<size_t>(n_pos * kvd), ++seed, 1.5f);
    const auto v = randn(static_cast<size_t>(n_pos * kvd), ++seed);
    const auto sinks = randn(static_cast<size_t>(c.heads), ++seed, 2.0f);
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.hd)));
    const auto got = run_attention(q, k, v, c, sinks, scale);
    const auto ref = naive_attention(q, k, v, c, sinks, scale, true);
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_NEAR(got[i], ref[i], 2e-5) << "heads " << c.heads << " kv " << c.kv_heads << " hd " << c.hd << " keys ["
                                        << c.first << ", " << c.last << "] at " << i;
  }
}

TEST(AttentionSinks, VeryNegativeSinkIsPlainSoftmax) {
  const AttnCase c{4, 2, 16, 2, 90};
  const int64_t kvd = c.kv_heads * c.hd;
  const auto q = randn(static_cast<size_t>(c.heads * c.hd), 1), k = randn(static_cast<size_t>(91 * kvd), 2);
  const auto v = randn(static_cast<size_t>(91 * kvd), 3);
  const std::vector<float> sinks(static_cast<size_t>(c.heads), -1e30f);
  const auto got = run_attention(q, k, v, c, sinks, 0.25f);
  const auto ref = naive_attention(q, k, v, c, sinks, 0.25, false);
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], ref[i], 2e-5);
}

TEST(AttentionSinks, HugeSinkAbsorbsEverything) {
  const AttnCase c{4, 1, 8, 0, 70};
  const int64_t kvd = c.kv_heads * c.hd;
  const auto q = randn(static_cast<size_t>(c.heads * c.hd), 4), k = randn(static_cast<size_t>(71 * kvd), 5);
  const auto v = randn(static_cast<size_t>(71 * kvd), 6);
  const std::vector<float> sinks(static_cast<size_t>(c.heads), 1e4f);
  for (float o : run_attention(q, k, v, c, sinks, 0.35f)) EXPECT_LE(std::fabs(o), 1e-30f);
}

// The sink logit is not multiplied by the score scale: with q = 0 every score is 0, so the single
// key gets exp(0)/(exp(0) + exp(σ)) of its value.
TEST(AttentionSinks, SinkLogitIsUnscaled) {
  const AttnCase c{1, 1, 8, 0, 0};
  const std::vector<float> q(8, 0.0f), k(8, 1.0f), v(8, 2.0f), sinks = {1.0f};
  const auto got = run_attention(q, k, v, c, sinks, 0.125f);
  const double p = 1.0 / (1.0 + std::exp(1.0));
  for (float o : got) EXPECT_NEAR(o, 2.0 * p, 1e-6);
}

// ---------------------------------------------------------------------------------------------
// Router

TEST(RouterTopk, EqualLogitsPickLowestIndices) {
  const std::vector<float> logits(9, 0.5f);
  for (int64_t k = 1; k <= 4; ++k) {
    std::vector<int32_t> idx(static_cast<size_t>(k));
    std::vector<float> w(static_cast<size_t>(k));
    router_topk_softmax(logits.data(), 9, k, idx.data(), w.data());
    for (int64_t s = 0; s < k; ++s) {
      EXPECT_EQ(idx[s], s);
      EXPECT_FLOAT_EQ(w[s], 1.0f / static_cast<float>(k));
    }
  }
}

TEST(RouterTopk, PartialTiesKeepIndexOrder) {
  const std::vector<float> logits = {1.0f, 3.0f, 3.0f, 2.0f, 3.0f, -1.0f};
  std::vector<int32_t> idx(4);
  std::vector<float> w(4);
  router_topk_softmax(logits.data(), 6, 4, idx.data(), w.data());
  EXPECT_EQ(idx, (std::vector<int32_t>{1, 2, 4, 3}));
  EXPECT_FLOAT_EQ(w[0], w[1]);
  EXPECT_FLOAT_EQ(w[1], w[2]);
  EXPECT_NEAR(w[3] / w[0], std::exp(-1.0), 1e-6);
}

TEST(RouterTopk, MatchesSortAndFloat64Softmax) {
  std::mt19937 rng(9);
  for (int64_t E : {1, 4, 7, 32, 128}) {
    for (int64_t k = 1; k <= std::min<int64_t>(4, E); ++k) {
      const auto logits = randn(static_cast<size_t>(E), static_cast<uint32_t>(rng()), 3.0f);
      std::vector<int32_t> order(static_cast<size_t>(E));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
      std::vector<int32_t> idx(static_cast<size_t>(k));
      std::vector<float> w(static_cast<size_t>(k));
      router_topk_softmax(logits.data(), E, k, idx.data(), w.data());
      double z = 0, sum = 0;
      for (int64_t s = 0; s < k; ++s) z += std::exp(static_cast<double>(logits[order[s]]) - logits[order[0]]);
      for (int64_t s = 0; s < k; ++s) {
        ASSERT_EQ(idx[s], order[s]) << "E " << E << " k " << k;
        EXPECT_NEAR(w[s], std::exp(static_cast<double>(logits[order[s]]) - logits[order[0]]) / z, 1e-6);
        if (s > 0) {
          EXPECT_LE(w[s], w[s - 1]);
        }
        sum += w[s];
      }
      EXPECT_NEAR(sum, 1.0, 1e-6);
      if (k == 1) {
        EXPECT_EQ(w[0], 1.0f);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

// α is the f32 value the op receives (1.702f), so the reference uses exactly that number.
constexpr double kAlpha = static_cast<double>(1.702f);

double swiglu_ref(double g, double l, double alpha, double limit) {
  g = std::min(g, limit);
  l = std::clamp(l, -limit, limit);
  return g / (1.0 + std::exp(-alpha * g)) * (l + 1.0);
}

// f32 rounding of α·g perturbs exp(−α·g) relatively by |α·g|·u; the other ops add a few u.
double swiglu_tol(double g, double ref) {
  return (8.0 + std::fabs(kAlpha * g)) * kEps32 * std::fabs(ref) + 1e-30;
}

TEST(SwigluClamp, ClampsGateAboveOnlyAndLinearBothSides) {
  // Interleaved pairs (gate, up).
  const std::vector<float> gu = {10.0f, 0.5f,    7.0f, 10.0f, 1.0f, -10.0f, -7.5f,
                                 2.0f,  -100.0f, 3.0f, 0.0f,  7.0f, -3.0f,  -7.0f};
  std::vector<float> out(gu.size() / 2);
  swiglu_clamp(gu.data(), static_cast<int64_t>(out.size()), 1.702f, 7.0f, out.data());
  for (size_t j = 0; j < out.size(); ++j) {
    const double ref = swiglu_ref(gu[2 * j], gu[2 * j + 1], kAlpha, 7.0);
    EXPECT_NEAR(out[j], ref, swiglu_tol(gu[2 * j], ref)) << "pair " << j;
    EXPECT_TRUE(std::isfinite(out[j]));
  }
  // Gate 10 acts as 7; up 10 acts as 7 (·8), up −10 as −7 (·−6); gate −7.5 is not raised to −7.
  EXPECT_NEAR(out[0], 7.0 / (1.0 + std::exp(-1.702 * 7.0)) * 1.5, 1e-5);
  EXPECT_NEAR(out[1], 7.0 / (1.0 + std::exp(-1.702 * 7.0)) * 8.0, 1e-5);
  EXPECT_NEAR(out[2], 1.0 / (1.0 + std::exp(-1.702)) * -6.0, 1e-5);
  EXPECT_NEAR(out[3], swiglu_ref(-7.5, 2.0, kAlpha, 7.0), 1e-9);
  EXPECT_LE(std::fabs(out[4]), 1e-30);  // very negative gate → 0
  EXPECT_EQ(out[5], 0.0f);              // zero gate → 0
}

TEST(SwigluClamp, RandomValuesMatchFloat64) {
  const auto gu = randn(2 * 2880, 77, 5.0f);
  std::vector<float> out(2880);
  swiglu_clamp(gu.data(), 2880, 1.702f, 7.0f, out.data());
  for (size_t j = 0; j < out.size(); ++j) {
    const double ref = swiglu_ref(gu[2 * j], gu[2 * j + 1], kAlpha, 7.0);
    ASSERT_NEAR(out[j], ref, swiglu_tol(gu[2 * j], ref)) << j;
  }
}

// ---------------------------------------------------------------------------------------------
// Embedding and argmax

TEST(EmbedRows, CopiesBf16RowsExactly) {
  const int64_t V = 11, D = 5;
  std::vector<uint16_t> table(static_cast<size_t>(V * D));
  for (size_t i = 0; i < table.size(); ++i) table[i] = f32_to_bf16(static_cast<float>(i) * 0.375f - 3.0f);
  const std::vector<int32_t> tokens = {10, 0, 3, 3};
  std::vector<float> out(tokens.size() * D);
  embed_rows(table.data(), D, tokens.data(), 4, out.data());
  for (size_t t = 0; t < tokens.size(); ++t)
    for (int64_t d = 0; d < D; ++d) EXPECT_EQ(out[t * D + d], bf16_to_f32(table[tokens[t] * D + d]));
}

TEST(Argmax, LowestIndexOnTiesAndSkipsNan) {
  EXPECT_EQ(argmax(std::vector<float>{1, 5, 5, 2}.data(), 4), 1);
  EXPECT_EQ(argmax(std::vector<float>{-3, -1, -2}.data(), 3), 1);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(argmax(std::vector<float>{nan, -1, 4, 4}.data(), 4), 2);
  EXPECT_EQ(argmax(std::vector<float>{7}.data(), 1), 0);
}

}  // namespace
}  // namespace gptoss::cpu
