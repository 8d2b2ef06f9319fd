#include "core/mxfp4.h"

#include <algorithm>

namespace gptoss {

void mxfp4_dequantize_row(const uint8_t* blocks, const uint8_t* scales, int cols, float* out) {
  const int nblocks = cols / kMxfp4BlockSize;
  for (int g = 0; g < nblocks; ++g) {
    const float s = e8m0_to_f32(scales[g]);
    const uint8_t* b = blocks + static_cast<size_t>(g) * kMxfp4BytesPerBlock;
    float* o = out + static_cast<size_t>(g) * kMxfp4BlockSize;
    for (int j = 0; j < kMxfp4BytesPerBlock; ++j) {
      o[2 * j] = kFp4Values[b[j] & 0xf] * s;
      o[2 * j + 1] = kFp4Values[b[j] >> 4] * s;
    }
  }
}

uint8_t fp4_encode(float x) {
  const uint8_t sign = std::signbit(x) ? 8 : 0;
  const float a = std::fabs(x);
  if (std::isnan(a)) return 0;
  if (a >= 6.0f) return static_cast<uint8_t>(sign | 7);  // saturate (also ±inf, where every error ties)
  // Magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6 → codes 0..7; pick nearest, ties to the even code.
  uint8_t best = 0;
  float best_err = a;
  for (uint8_t c = 1; c < 8; ++c) {
    const float err = std::fabs(a - kFp4Values[c]);
    if (err < best_err || (err == best_err && (c % 2 == 0))) {
      best = c;
      best_err = err;
    }
  }
  return static_cast<uint8_t>(sign | best);
}

void mxfp4_quantize_row(const float* in, int cols, uint8_t* blocks, uint8_t* scales) {
  const int nblocks = cols / kMxfp4BlockSize;
  for (int g = 0; g < nblocks; ++g) {
    const float* x = in + static_cast<size_t>(g) * kMxfp4BlockSize;
    float amax = 0.0f;
    for (int t = 0; t < kMxfp4BlockSize; ++t) amax = std::max(amax, std::fabs(x[t]));
    // OCP MX rule: shared exponent = floor(log2(amax)) - emax(E2M1)=2, clamped to E8M0 range.
    // ilogb is exact; log2 rounds up for values just below a power of two (nextafter(8, 0) → 3).
    int e = amax > 0.0f ? std::ilogb(amax) - 2 : -127;
    e = std::clamp(e, -127, 127);
    scales[g] = static_cast<uint8_t>(e + 127);
    const float inv = std::ldexp(1.0f, -e);
    uint8_t* b = blocks + static_cast<size_t>(g) * kMxfp4BytesPerBlock;
    for (int j = 0; j < kMxfp4BytesPerBlock; ++j) {
      const uint8_t lo = fp4_encode(x[2 * j] * inv);
      const uint8_t hi = fp4_encode(x[2 * j + 1] * inv);
      b[j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

}  // namespace gptoss
