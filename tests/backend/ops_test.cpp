// CPU ops against independent derivations: float64 references written from the spec, the spec's
// YaRN constants, exact properties (batch invariance, canonical summation order) and edge cases.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cpu/ops.h"
#include "backend/ops_test_util.h"
#include "core/dtype.h"
#include "model/config.h"

namespace gptoss::cpu {
namespace {

// The canonical order of ops.h, emulated lane by lane with std::fma.
float canonical_dot(const float* a, const float* b, int64_t n) {
  float l[8] = {};
  const int64_t n8 = n / 8 * 8;
  for (int64_t i = 0; i < n8; i += 8)
    for (int k = 0; k < 8; ++k) l[k] = std::fma(a[i + k], b[i + k], l[k]);
  float s = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
  for (int64_t i = n8; i < n; ++i) s = std::fma(a[i], b[i], s);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Dot products

TEST(DotF32, FollowsTheCanonicalOrderExactly) {
  for (int64_t n : {0, 1, 7, 8, 9, 31, 64, 100, 2880}) {
    const auto a = randn(static_cast<size_t>(n), 1), b = randn(static_cast<size_t>(n), 2);
    EXPECT_EQ(dot_f32(a.data(), b.data(), n), canonical_dot(a.data(), b.data(), n)) << "n=" << n;
  }
}

TEST(DotF32, RowsVariantEqualsSingleDots) {
  for (int64_t len : {1, 8, 13, 64, 67}) {
    for (int64_t n : {1, 3, 4, 9}) {
      const auto a = randn(static_cast<size_t>(len), 3);
      const auto b = randn(static_cast<size_t>(len * n), 4);
      std::vector<const float*> rows;
      for (int64_t j = 0; j < n; ++j) rows.push_back(b.data() + (n - 1 - j) * len);  // any row order
      std::vector<float> out(static_cast<size_t>(n));
      dot_f32_rows(a.data(), rows.data(), n, len, out.data());
      for (int64_t j = 0; j < n; ++j) EXPECT_EQ(out[j], dot_f32(a.data(), rows[j], len)) << len << " " << n;
    }
  }
}

// |computed − exact| ≤ γ·Σ|x||w| with γ = (in/8 + 10)·u bounds any summation of this shape
// (chunks of 8 per lane, a 3-level lane reduction, the tail and the bias add).
double dot_error_bound(int64_t in, double abs_sum, double bias) {
  return (static_cast<double>(in) / 8.0 + 10.0) * kEps32 * (abs_sum + std::fabs(bias)) + 1e-30;
}

TEST(MatmulBf16, MatchesFloat64OnAwkwardShapes) {
  ThreadPool pool(2);
  uint32_t seed = 10;
  for (int64_t n : {1, 7, 63, 64, 65}) {
    for (int64_t in : {32, 37, 96, 2880}) {
      for (int64_t out : {1, 5, 769}) {
        if (n * in * out > 40'000'000) continue;  // keep the sweep quick
        const auto x = randn(static_cast<size_t>(n * in), ++seed);
        const auto w = randn_bf16(static_cast<size_t>(out * in), ++seed, 0.05f);
        const auto bias = randn_bf16(static_cast<size_t>(out), ++seed);
        std::vector<float> y(static_cast<size_t>(n * out));
        matmul_bf16(x.data(), n, in, w.data(), bias.data(), out, y.data(), &pool);
        for (int64_t t = 0; t < n; ++t) {
          for (int64_t o = 0; o < out; ++o) {
            double exact = bf16_to_f32(bias[o]), abs_sum = 0;
            for (int64_t i = 0; i < in; ++i) {
              const double p = static_cast<double>(x[t * in + i]) * bf16_to_f32(w[o * in + i]);
              exact += p;
              abs_sum += std::fabs(p);
            }
            ASSERT_NEAR(y[t * out + o], exact, dot_error_bound(in, abs_sum, bf16_to_f32(bias[o])))
                << "n=" << n << " in=" << in << " out=" << out << " t=" << t << " o=" << o;
          }
        }
      }
    }
  }
}

// Every element equals the canonical dot of its row, whatever the batch size, tiling or threads:
// this is what makes batched and solo sequences bitwise equal.
TEST(MatmulBf16, IsBatchInvariantAndCanonical) {
  ThreadPool pool(3);
  const int64_t in = 203, out = 71, n = 67;
  const auto x = randn(static_cast<size_t>(n * in), 5);
  const auto w = randn_bf16(static_cast<size_t>(out * in), 6);
  std::vector<float> wf(w.size());
  for (size_t i = 0; i < w.size(); ++i) wf[i] = bf16_to_f32(w[i]);
  std::vector<float> all(static_cast<size_t>(n * out)), one(static_cast<size_t>(out));
  matmul_bf16(x.data(), n, in, w.data(), nullptr, out, all.data(), &pool);
  for (int64_t t = 0; t < n; ++t) {
    matmul_bf16(x.data() + t * in, 1, in, w.data(), nullptr, out, one.data(), nullptr);
    for (int64_t o = 0; o < out; ++o) {
      ASSERT_EQ(all[t * out + o], one[o]) << "t=" << t << " o=" << o;
      ASSERT_EQ(one[o], canonical_dot(x.data() + t * in, wf.data() + o * in, in));
    }
  }
}

TEST(MatmulBf16, BiasIsAddedAfterTheDot) {
  const int64_t in = 16, out = 3;
  std::vector<float> x(in, 0.0f);
  std::vector<uint16_t> w(out * in, f32_to_bf16(1.0f));
  const std::vector<uint16_t> bias = {f32_to_bf16(1.5f), f32_to_bf16(-2.0f), f32_to_bf16(0.0f)};
  std::vector<float> y(out);
  matmul_bf16(x.data(), 1, in, w.data(), bias.data(), out, y.data(), nullptr);
  EXPECT_EQ(y, (std::vector<float>{1.5f, -2.0f, 0.0f}));
  x.assign(in, 0.25f);
  matmul_bf16(x.data(), 1, in, w.data(), nullptr, out, y.data(), nullptr);
  EXPECT_EQ(y, (std::vector<float>{4.0f, 4.0f, 4.0f}));
}

// ---------------------------------------------------------------------------------------------
// MXFP4

// Spec §3.1 table, written out independently of core/mxfp4.h.
double fp4_value(int code) {
  static const double kMag[8] = {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0};
  return (code & 8) ? -kMag[code & 7] : kMag[code & 7];
}
double spec_weight(const uint8_t* blocks, const uint8_t* scales, int64_t cols, int64_t r, int64_t c) {
  const int64_t nb = cols / 32, g = c / 32, j = (c % 32) / 2;
  const uint8_t byte = blocks[(r * nb + g) * 16 + j];
  const int code = (c % 2 == 0) ? (byte & 0xf) : (byte >> 4);  // low nibble = even element
  return std::ldexp(fp4_value(code), static_cast<int>(scales[r * nb + g]) - 127);
}

struct RandomMxfp4 {
  std::vector<uint8_t> blocks, scales;
  std::vector<uint16_t> bias;
  RandomMxfp4(int64_t rows, int64_t cols, uint32_t seed) {
    std::mt19937 rng(seed);
    blocks.resize(static_cast<size_t>(rows * cols / 2));
    scales.resize(static_cast<size_t>(rows * cols / 32));
    for (auto& b : blocks) b = static_cast<uint8_t>(rng() & 0xff);
    // Scales around 2^-6 with spread, plus the extremes of the normal range.
    for (auto& s : scales) s = static_cast<uint8_t>(121 + static_cast<int>(rng() % 5) - 2);
    if (!scales.empty()) scales[0] = 1;  // 2^-126 · value: still exact in f32
    bias = randn_bf16(static_cast<size_t>(rows), seed + 1);
  }
};

TEST(Mxfp4Matmul, MatchesDequantizeThenDotInFloat64) {
  ThreadPool pool(2);
  uint32_t seed = 100;
  for (int64_t rows : {1, 7, 65}) {
    for (int64_t cols : {32, 96, 2880}) {
      for (int64_t n : {1, 3, 65}) {
        const RandomMxfp4 m(rows, cols, ++seed);
        const auto x = randn(static_cast<size_t>(n * cols), ++seed);
        std::vector<float> y(static_cast<size_t>(n * rows));
        mxfp4_matmul(m.blocks.data(), m.scales.data(), m.bias.data(), rows, cols, x.data(), n, y.data(), &pool);
        for (int64_t t = 0; t < n; ++t) {
          for (int64_t r = 0; r < rows; ++r) {
            const double b = bf16_to_f32(m.bias[r]);
            double exact = b, abs_sum = 0;
            for (int64_t c = 0; c < cols; ++c) {
              const double p = spec_weight(m.blocks.data(), m.scales.data(), cols, r, c) * x[t * cols + c];
              exact += p;
              abs_sum += std::fabs(p);
            }
            ASSERT_NEAR(y[t * rows + r], exact, dot_error_bound(cols, abs_sum, b))
                << "rows=" << rows << " cols=" << cols << " n=" << n << " t=" << t << " r=" << r;
          }
        }
      }
    }
  }
}

// The dequantization is exact, so the result equals the canonical dot of the dequantized row
// bitwise, for every batch size (the expert path of batched and solo tokens agrees exactly).
TEST(Mxfp4Matmul, EqualsCanonicalDotOfDequantizedRows) {
  ThreadPool pool(2);
  const int64_t rows = 37, cols = 608, n = 70;
  const RandomMxfp4 m(rows, cols, 7);
  const auto x = randn(static_cast<size_t>(n * cols), 8);
  std::vector<float> w(static_cast<size_t>(cols)), all(static_cast<size_t>(n * rows)), one(static_cast<size_t>(rows));
  mxfp4_matmul(m.blocks.data(), m.scales.data(), nullptr, rows, cols, x.data(), n, all.data(), &pool);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      w[c] = static_cast<float>(spec_weight(m.blocks.data(), m.scales.data(), cols, r, c));
    }
    for (int64_t t = 0; t < n; ++t) ASSERT_EQ(all[t * rows + r], canonical_dot(x.data() + t * cols, w.data(), cols));
  }
  for (int64_t t = 0; t < n; t += 13) {
    mxfp4_matvec(m.blocks.data(), m.scales.data(), nullptr, rows, cols, x.data() + t * cols, one.data());
    for (int64_t r = 0; r < rows; ++r) ASSERT_EQ(one[r], all[t * rows + r]);
  }
}

TEST(Mxfp4Matmul, DecodesEveryCodeAndNibbleOrder) {
  // One row, one block: byte j holds codes (2j mod 16) low and (2j+1 mod 16) high; x picks one
  // element at a time, so y is exactly that element's weight.
  const int64_t cols = 32;
  std::vector<uint8_t> blocks(16), scales = {130};  // scale 2^3
  for (int j = 0; j < 16; ++j) blocks[j] = static_cast<uint8_t>(((2 * j) % 16) | (((2 * j + 1) % 16) << 4));
  for (int64_t c = 0; c < cols; ++c) {
    std::vector<float> x(cols, 0.0f);
    x[c] = 1.0f;
    float y = 0;
    mxfp4_matvec(blocks.data(), scales.data(), nullptr, 1, cols, x.data(), &y);
    EXPECT_EQ(y, static_cast<float>(fp4_value(static_cast<int>(c % 16)) * 8.0)) << "element " << c;
  }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

// The f16 KV cache's rounding: nearest fp16, ties to even, subnormals, saturation at ±65504
// instead of infinities, NaN kept.
TEST(RoundToF16, NearestEvenSaturatingAndNaNKept) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> x = {1.0f,
                          1.0f + std::ldexp(1.0f, -11),      // halfway 1 … 1 + 2^-10: even → 1
                          1.0f + 3 * std::ldexp(1.0f, -11),  // halfway 1 + 2^-10 … 1 + 2^-9: even → 1 + 2^-9
                          -2.5f,
                          65519.0f,  // below the halfway point to 65536: 65504
                          70000.0f,
                          -1e30f,
                          std::numeric_limits<float>::infinity(),
                          std::ldexp(1.0f, -26),      // below half the smallest subnormal: 0
                          3 * std::ldexp(1.0f, -25),  // 1.5 × 2^-24: even → 2^-23
                          0.1f,
                          nan};
  round_to_f16(x.data(), static_cast<int64_t>(x.size()));
  EXPECT_EQ(x[0], 1.0f);
  EXPECT_EQ(x[1], 1.0f);
  EXPECT_EQ(x[2], 1.0f + std::ldexp(1.0f, -9));
  EXPECT_EQ(x[3], -2.5f);
  EXPECT_EQ(x[4], 65504.0f);
  EXPECT_EQ(x[5], 65504.0f);
  EXPECT_EQ(x[6], -65504.0f);
  EXPECT_EQ(x[7], 65504.0f);
  EXPECT_EQ(x[8], 0.0f);
  EXPECT_EQ(x[9], std::ldexp(1.0f, -23));
  EXPECT_EQ(x[10], 0.0999755859375f);  // 1638 × 2^-14, the fp16 nearest to 0.1
  EXPECT_TRUE(std::isnan(x[11]));
}

TEST(RmsNorm, MatchesFloat64) {
  for (int64_t dim : {1, 7, 64, 2880}) {
    const int64_t n = 3;
    const auto x = randn(static_cast<size_t>(n * dim), 20, 3.0f);
    const auto gain = randn_bf16(static_cast<size_t>(dim), 21);
    std::vector<float> y(x.size());
    rmsnorm(x.data(), n, dim, gain.data(), 1e-5f, y.data());
    for (int64_t t = 0; t < n; ++t) {
      double ss = 0;
      for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(x[t * dim + i]) * x[t * dim + i];
      const double inv = 1.0 / std::sqrt(ss / static_cast<double>(dim) + 1e-5);
      for (int64_t i = 0; i < dim; ++i) {
        const double ref = static_cast<double>(bf16_to_f32(gain[i])) * x[t * dim + i] * inv;
        ASSERT_NEAR(y[t * dim + i], ref, 4 * kEps32 * std::fabs(ref) + 1e-30) << "dim=" << dim;
      }
    }
    // In place gives the same result.
    std::vector<float> z = x;
    rmsnorm(z.data(), n, dim, gain.data(), 1e-5f, z.data());
    EXPECT_EQ(z, y);
  }
}

TEST(RmsNorm, EpsilonKeepsZeroInputFinite) {
  const std::vector<float> x(8, 0.0f);
  const std::vector<uint16_t> gain(8, f32_to_bf16(1.0f));
  std::vector<float> y(8, 1.0f);
  rmsnorm(x.data(), 1, 8, gain.data(), 1e-5f, y.data());
  for (float v : y) EXPECT_EQ(v, 0.0f);
}

}  // namespace
}  // namespace gptoss::cpu
