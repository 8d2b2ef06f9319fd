// bf16 / f16 conversions against independent references (round to nearest even, NaN, inf,
// subnormals, overflow), plus dtype names and sizes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/dtype.h"

namespace gptoss {
namespace {

uint32_t bits_of(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}
float float_of(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// Magnitude of a bf16 pattern as used for rounding decisions: the overflow pattern 0x7f80 stands
// for 2^128 (IEEE rounding behaves as if the exponent range were unbounded).
double bf16_mag(uint16_t b) {
  if ((b & 0x7fff) == 0x7f80) return std::ldexp(1.0, 128);
  return std::fabs(static_cast<double>(float_of(static_cast<uint32_t>(b & 0x7fff) << 16)));
}

// Reference f32 → bf16: compare the two neighbouring bf16 values in double arithmetic.
uint16_t ref_f32_to_bf16(float f) {
  const uint32_t b = bits_of(f);
  const uint16_t sign = static_cast<uint16_t>((b >> 16) & 0x8000);
  const uint16_t lo = static_cast<uint16_t>((b >> 16) & 0x7fff);  // truncation (toward zero)
  if (lo >= 0x7f80) return static_cast<uint16_t>(b >> 16);        // inf stays inf (NaN checked apart)
  const uint16_t hi = static_cast<uint16_t>(lo + 1);
  const double a = std::fabs(static_cast<double>(f));
  const double dlo = a - bf16_mag(lo), dhi = bf16_mag(hi) - a;
  uint16_t r;
  if (dlo < dhi)
    r = lo;
  else if (dhi < dlo)
    r = hi;
  else
    r = (lo & 1) ? hi : lo;
  return static_cast<uint16_t>(sign | r);
}

TEST(BF16, EveryValueSurvivesARoundTrip) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = bf16_to_f32(static_cast<uint16_t>(h));
    EXPECT_EQ(bits_of(f), h << 16);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(f)))) << h;
    } else {
      ASSERT_EQ(f32_to_bf16(f), h) << std::hex << h;
    }
  }
}

TEST(BF16, RoundsToNearestEvenOnEveryExponentAndTieCase) {
  // Low halves: exact, just above/below the tie, the tie itself, and extremes. Combined with all
  // 65536 upper halves this covers every exponent, sign, subnormals and the overflow edge.
  const uint32_t lows[] = {0x0000, 0x0001, 0x3fff, 0x7fff, 0x8000, 0x8001, 0xbfff, 0xffff};
  for (uint32_t hi = 0; hi < 65536; ++hi) {
    for (uint32_t low : lows) {
      const float f = float_of((hi << 16) | low);
      if (std::isnan(f)) continue;
      ASSERT_EQ(f32_to_bf16(f), ref_f32_to_bf16(f)) << std::hex << ((hi << 16) | low);
    }
  }
}

TEST(BF16, SpecialValues) {
  EXPECT_EQ(f32_to_bf16(0.0f), 0x0000);
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_bf16(INFINITY), 0x7f80);
  EXPECT_EQ(f32_to_bf16(-INFINITY), 0xff80);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds up past the max
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(float_of(0x3f808000)), 0x3f80);  // tie, even stays
  EXPECT_EQ(f32_to_bf16(float_of(0x3f818000)), 0x3f82);  // tie, odd rounds up
  // NaNs (including one whose payload lives only in the low half) stay NaN with their sign.
  for (uint32_t nan : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu}) {
    const uint16_t r = f32_to_bf16(float_of(nan));
    EXPECT_TRUE(std::isnan(bf16_to_f32(r))) << std::hex << nan;
    EXPECT_EQ(r & 0x8000, (nan >> 16) & 0x8000);
  }
  // Smallest bf16 subnormal is 2^-133.
  EXPECT_EQ(bf16_to_f32(0x0001), std::ldexp(1.0f, -133));
}

// f16 value from the bit fields, computed in double without the library's decoder.
double ref_f16_value(uint16_t h) {
  const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  const double sign = (h & 0x8000) ? -1.0 : 1.0;
  if (e == 0) return sign * m / 16777216.0;  // m · 2^-24
  double scale = 1.0;
  for (int i = 15; i < e; ++i) scale *= 2.0;
  for (int i = e; i < 15; ++i) scale /= 2.0;
  return sign * scale * (1.0 + m / 1024.0);
}

TEST(F16, DecodeMatchesBitFieldsAndEncodeInvertsItExhaustively) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint16_t v = static_cast<uint16_t>(h);
    const float f = f16_to_f32(v);
    const int e = (h >> 10) & 0x1f;
    if (e == 31) {
      if (h & 0x3ff) {
        EXPECT_TRUE(std::isnan(f));
        EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f))));
      } else {
        EXPECT_TRUE(std::isinf(f));
        EXPECT_EQ(f32_to_f16(f), v);
      }
      continue;
    }
    ASSERT_EQ(static_cast<double>(f), ref_f16_value(v)) << std::hex << h;
    ASSERT_EQ(f32_to_f16(f), v) << std::hex << h;
    EXPECT_EQ(std::signbit(f), (h & 0x8000) != 0);
  }
}

// Reference f32 → f16 by search over the sorted positive f16 values; 0x7c00 stands for 65536.
uint16_t ref_f32_to_f16(float x, const std::vector<double>& mags) {
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double a = std::fabs(static_cast<double>(x));
  if (a >= mags.back()) return sign | 0x7c00;
  size_t lo = 0, hi = mags.size() - 1;  // invariant mags[lo] <= a < mags[hi]
  while (hi - lo > 1) {
    const size_t mid = (lo + hi) / 2;
    (mags[mid] <= a ? lo : hi) = mid;
  }
  const double dlo = a - mags[lo], dhi = mags[hi] - a;
  const size_t pick = dlo < dhi ? lo : dhi < dlo ? hi : (lo % 2 == 0 ? lo : hi);
  return static_cast<uint16_t>(sign | pick);
}

TEST(F16, EncodeRoundsToNearestEvenIncludingSubnormalsAndOverflow) {
  std::vector<double> mags;
  for (uint32_t h = 0; h <= 0x7bff; ++h) mags.push_back(ref_f16_value(static_cast<uint16_t>(h)));
  mags.push_back(65536.0);
  std::vector<float> xs;
  // Every midpoint between neighbours (exact ties) and one float ulp either side of it.
  for (size_t i = 0; i + 1 < mags.size(); ++i) {
    const float mid = static_cast<float>((mags[i] + mags[i + 1]) / 2);
    xs.insert(xs.end(), {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, INFINITY)});
  }
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> exps(90, 145);  // 2^-37 .. 2^18 covers underflow to overflow
  std::uniform_int_distribution<uint32_t> mant(0, 0x7fffff);
  for (int i = 0; i < 200000; ++i) xs.push_back(float_of((exps(rng) << 23) | mant(rng)));
  xs.insert(xs.end(), {65504.0f, 65519.99f, 65520.0f, 1e9f, std::ldexp(1.0f, -25), std::ldexp(1.0f, -26), 0.0f});
  for (float x : xs) {
    ASSERT_EQ(f32_to_f16(x), ref_f32_to_f16(x, mags)) << x;
    ASSERT_EQ(f32_to_f16(-x), ref_f32_to_f16(-x, mags)) << -x;
  }
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(NAN))));
  EXPECT_EQ(f32_to_f16(INFINITY), 0x7c00);
  EXPECT_EQ(f32_to_f16(-INFINITY), 0xfc00);
}

TEST(DType, NamesAndSizesRoundTrip) {
  for (DType t : {DType::kBF16, DType::kF16, DType::kF32, DType::kU8, DType::kI32}) {
    auto back = dtype_from_name(dtype_name(t));
    ASSERT_TRUE(back.has_value());
    EXPECT_EQ(*back, t);
  }
  EXPECT_EQ(dtype_size(DType::kBF16), 2u);
  EXPECT_EQ(dtype_size(DType::kF16), 2u);
  EXPECT_EQ(dtype_size(DType::kF32), 4u);
  EXPECT_EQ(dtype_size(DType::kI32), 4u);
  EXPECT_EQ(dtype_size(DType::kU8), 1u);
  EXPECT_FALSE(dtype_from_name("F64").has_value());
  EXPECT_FALSE(dtype_from_name("bf16").has_value());  // safetensors names are upper case
  EXPECT_FALSE(dtype_from_name("").has_value());
}

}  // namespace
}  // namespace gptoss
