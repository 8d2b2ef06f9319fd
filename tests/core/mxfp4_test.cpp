// MXFP4: the E2M1 table and nibble order against an independent bit-field decoder, E2M1 encoding
// (nearest, ties to even, saturation), and quantisation (OCP scale rule, nearest-grid error bound).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/mxfp4.h"

namespace gptoss {
namespace {

// E2M1 from its bit fields: bit3 sign, bits2-1 exponent (bias 1), bit0 mantissa; exponent 0 is
// subnormal (0.5·m).
double ref_e2m1(int code) {
  const int sign = (code >> 3) & 1, exp = (code >> 1) & 3, man = code & 1;
  const double mag = exp == 0 ? 0.5 * man : std::pow(2.0, exp - 1) * (1.0 + 0.5 * man);
  return sign ? -mag : mag;
}

TEST(Mxfp4, CodeTableMatchesBitFields) {
  for (int c = 0; c < 16; ++c) {
    EXPECT_EQ(static_cast<double>(kFp4Values[c]), ref_e2m1(c)) << c;
    EXPECT_EQ(std::signbit(kFp4Values[c]), c >= 8) << c;
  }
}

TEST(Mxfp4, E8M0ScaleIsAPowerOfTwo) {
  for (int s = 0; s < 255; ++s)
    EXPECT_EQ(static_cast<double>(e8m0_to_f32(static_cast<uint8_t>(s))), std::pow(2.0, s - 127));
}

// Independent element decode: column c of a row lives in block c/32, byte (c%32)/2; the low nibble
// holds the even column.
double ref_element(const std::vector<uint8_t>& blocks, const std::vector<uint8_t>& scales, int c) {
  const int g = c / 32, t = c % 32;
  const uint8_t byte = blocks[static_cast<size_t>(g * 16 + t / 2)];
  const int code = (t % 2 == 0) ? (byte & 0x0f) : (byte >> 4);
  return static_cast<double>(static_cast<float>(ref_e2m1(code) * std::pow(2.0, scales[static_cast<size_t>(g)] - 127)));
}

TEST(Mxfp4, DequantizeMatchesReferenceForManySizesAndAllScales) {
  std::mt19937 rng(3);
  for (int cols : {32, 64, 96, 160, 2880}) {
    const int nb = cols / 32;
    std::vector<uint8_t> blocks(static_cast<size_t>(nb) * 16), scales(static_cast<size_t>(nb));
    for (int rep = 0; rep < 20; ++rep) {
      for (auto& b : blocks) b = static_cast<uint8_t>(rng());
      for (int g = 0; g < nb; ++g) scales[static_cast<size_t>(g)] = static_cast<uint8_t>((rep * 13 + g * 7) % 255);
      std::vector<float> out(static_cast<size_t>(cols));
      mxfp4_dequantize_row(blocks.data(), scales.data(), cols, out.data());
      for (int c = 0; c < cols; ++c)
        ASSERT_EQ(static_cast<double>(out[static_cast<size_t>(c)]), ref_element(blocks, scales, c)) << cols << " " << c;
    }
  }
}

TEST(Mxfp4, NibbleOrderLowIsEven) {
  std::vector<uint8_t> blocks(16, 0), scales(1, 127);
  blocks[0] = 0x72;   // low nibble 2 (+1.0) → element 0, high nibble 7 (+6.0) → element 1
  blocks[15] = 0x9c;  // low 12 (−2.0) → element 30, high 9 (−0.5) → element 31
  std::vector<float> out(32);
  mxfp4_dequantize_row(blocks.data(), scales.data(), 32, out.data());
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], 6.0f);
  EXPECT_EQ(out[30], -2.0f);
  EXPECT_EQ(out[31], -0.5f);
  for (int i = 2; i < 30; ++i) EXPECT_EQ(out[static_cast<size_t>(i)], 0.0f);
}

// Nearest code by brute force; among equally near codes the even one wins.
int ref_encode(double x) {
  int best = -1;
  double best_err = 0;
  const double clamped = std::fmax(-6.0, std::fmin(6.0, x));
  for (int c = 0; c < 16; ++c) {
    if ((c >= 8) != std::signbit(x)) continue;  // keep the sign (−0 for small negatives)
    const double err = std::fabs(clamped - ref_e2m1(c));
    if (best < 0 || err < best_err || (err == best_err && c % 2 == 0 && best % 2 == 1)) {
      best = c;
      best_err = err;
    }
  }
  return best;
}

TEST(Mxfp4, EncodeNearestTiesToEvenAndSaturates) {
  for (int c = 0; c < 16; ++c) EXPECT_EQ(fp4_encode(kFp4Values[c]), c);
  // Exact midpoints: 0.25→0, 0.75→1.0, 1.25→1.0, 1.75→2.0, 2.5→2.0, 3.5→4.0, 5.0→4.0.
  const std::pair<float, int> ties[] = {{0.25f, 0}, {0.75f, 2}, {1.25f, 2}, {1.75f, 4},
                                        {2.5f, 4},  {3.5f, 6},  {5.0f, 6}};
  for (auto [x, code] : ties) {
    EXPECT_EQ(fp4_encode(x), code) << x;
    EXPECT_EQ(fp4_encode(-x), code | 8) << -x;
  }
  EXPECT_EQ(fp4_encode(100.0f), 7);
  EXPECT_EQ(fp4_encode(-1e30f), 15);
  EXPECT_EQ(fp4_encode(INFINITY), 7);
  for (int i = -800; i <= 800; ++i) {
    const double x = i / 100.0 + 0.001;
    EXPECT_EQ(fp4_encode(static_cast<float>(x)), ref_encode(static_cast<float>(x))) << x;
  }
}

TEST(Mxfp4, QuantizeUsesOcpScaleAndNearestGridPoint) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int cols : {32, 96, 2880}) {
    for (float magnitude : {1e-6f, 0.02f, 1.0f, 300.0f}) {
      std::vector<float> x(static_cast<size_t>(cols)), back(static_cast<size_t>(cols));
      for (auto& v : x) v = normal(rng) * magnitude;
      x[5] = 0.0f;  // exact zero inside a block
      std::vector<uint8_t> blocks(static_cast<size_t>(cols / 2)), scales(static_cast<size_t>(cols / 32));
      mxfp4_quantize_row(x.data(), cols, blocks.data(), scales.data());
      mxfp4_dequantize_row(blocks.data(), scales.data(), cols, back.data());
      for (int g = 0; g < cols / 32; ++g) {
        double amax = 0;
        for (int t = 0; t < 32; ++t) amax = std::fmax(amax, std::fabs(x[static_cast<size_t>(g * 32 + t)]));
        int e2;
        std::frexp(amax, &e2);  // amax = m · 2^e2 with m in [0.5, 1) → floor(log2 amax) = e2 − 1
        const int e = e2 - 1 - 2;
        ASSERT_EQ(scales[static_cast<size_t>(g)], e + 127);
        const double s = std::ldexp(1.0, e);
        for (int t = 0; t < 32; ++t) {
          const size_t i = static_cast<size_t>(g * 32 + t);
          const double err = std::fabs(static_cast<double>(back[i]) - x[i]);
          // No other grid value of this block is closer (saturation at ±6·s included) ...
          for (int c = 0; c < 16; ++c) ASSERT_LE(err, std::fabs(ref_e2m1(c) * s - x[i]) + 1e-12 * s);
          // ... so the error is at most half the E2M1 spacing at |x|/s (0.5, 1, 2) times s, or
          // the saturation excess above 6·s (amax < 8·s by the scale rule, so < 2·s).
          const double a = std::fabs(x[i]) / s;
          const double bound = a > 6.0 ? (a - 6.0) * s : (a < 2.0 ? 0.25 : a < 4.0 ? 0.5 : 1.0) * s;
          ASSERT_LE(err, bound * (1 + 1e-12)) << x[i];
        }
      }
    }
  }
}

TEST(Mxfp4, QuantizeIsExactOnRepresentableRowsAndZeroBlocks) {
  std::mt19937 rng(5);
  const int cols = 256;
  std::vector<uint8_t> blocks(cols / 2), scales(cols / 32), blocks2(cols / 2), scales2(cols / 32);
  std::vector<float> a(cols), b(cols);
  for (auto& v : blocks) v = static_cast<uint8_t>(rng());
  for (auto& s : scales) s = static_cast<uint8_t>(100 + rng() % 50);
  mxfp4_dequantize_row(blocks.data(), scales.data(), cols, a.data());
  mxfp4_quantize_row(a.data(), cols, blocks2.data(), scales2.data());
  mxfp4_dequantize_row(blocks2.data(), scales2.data(), cols, b.data());
  for (int i = 0; i < cols; ++i)
    EXPECT_EQ(std::fabs(a[static_cast<size_t>(i)]), std::fabs(b[static_cast<size_t>(i)])) << i;
  std::vector<float> zeros(32, 0.0f), out(32, 1.0f);
  mxfp4_quantize_row(zeros.data(), 32, blocks2.data(), scales2.data());
  EXPECT_EQ(scales2[0], 0);
  mxfp4_dequantize_row(blocks2.data(), scales2.data(), 32, out.data());
  for (float v : out) EXPECT_EQ(v, 0.0f);
}

}  // namespace
}  // namespace gptoss

// A block max just below a power of two must keep the lower exponent: floor(log2(x)) computed
// through a rounded log2 would pick 2^(e+1) and flush the smallest codes to zero.
TEST(Mxfp4, QuantizeScaleExactJustBelowPowerOfTwo) {
  for (float top : {8.0f, 1.0f, 0.25f, 1024.0f}) {
    std::vector<float> x(32, 0.0f);
    x[0] = std::nextafter(top, 0.0f);  // amax in [top/2, top) → exponent ilogb(top) - 1
    const int expect_e = std::ilogb(top) - 1 - 2;
    x[1] = std::ldexp(0.5f, expect_e);  // smallest nonzero E2M1 magnitude at that scale
    std::vector<uint8_t> blocks(16), scales(1);
    std::vector<float> back(32);
    gptoss::mxfp4_quantize_row(x.data(), 32, blocks.data(), scales.data());
    EXPECT_EQ(static_cast<int>(scales[0]) - 127, expect_e) << "top " << top;
    gptoss::mxfp4_dequantize_row(blocks.data(), scales.data(), 32, back.data());
    EXPECT_EQ(back[1], x[1]) << "top " << top;
    EXPECT_EQ(back[0], std::ldexp(6.0f, expect_e)) << "top " << top;  // saturates to the largest code
  }
}
