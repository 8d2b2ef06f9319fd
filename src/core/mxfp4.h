// MXFP4 (OCP microscaling FP4): E2M1 codes, two per byte (low nibble = even element), one E8M0
// scale byte per 32 values along the reduction dimension. See spec §3.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace gptoss {

inline constexpr int kMxfp4BlockSize = 32;      // values per scale
inline constexpr int kMxfp4BytesPerBlock = 16;  // packed payload bytes per block

// E2M1 code → value (bit3 sign, bits2-1 exponent with bias 1, bit0 mantissa).
inline constexpr float kFp4Values[16] = {+0.0f, +0.5f, +1.0f, +1.5f, +2.0f, +3.0f, +4.0f, +6.0f,
                                         -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

// E8M0 byte → 2^(s-127). 255 (NaN in OCP) is treated as 2^128 = inf, like ldexp in the references.
inline float e8m0_to_f32(uint8_t s) {
  return std::ldexp(1.0f, static_cast<int>(s) - 127);
}

// Dequantizes one row of `cols` values (cols % 32 == 0) from its packed blocks and scales.
void mxfp4_dequantize_row(const uint8_t* blocks, const uint8_t* scales, int cols, float* out);

// Quantizes one row of `cols` values (cols % 32 == 0) to MXFP4: per block of 32, the scale is
// chosen from the block's max |x| so that max maps into the E2M1 range (OCP rule: 2^(floor(log2
// amax) - 2)), values are rounded to the nearest E2M1 value (ties to even code), saturating at ±6.
void mxfp4_quantize_row(const float* in, int cols, uint8_t* blocks, uint8_t* scales);

// Nearest E2M1 code for x (already divided by the block scale); ties go to the even code.
uint8_t fp4_encode(float x);

}  // namespace gptoss
