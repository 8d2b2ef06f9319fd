// The arithmetic of token sampling, shared bit for bit by the host reference (sampling.cpp, the
// engine's Sampler) and the CUDA kernel (cuda/sample.cu): the order of a row's tokens, their integer
// weights and the draw. Only IEEE-754 operations that every conforming machine rounds the same way
// appear here (+, −, ×, ÷, explicit fma, ceil, rint, exact scaling, integer arithmetic), and no
// product feeds a sum a compiler could fuse, so the host and the device compute identical weights,
// sums and decisions. Plain C++17 (nvcc compiles it too).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define GPTOSS_HD __host__ __device__
#else
#define GPTOSS_HD
#endif

namespace gptoss {

// One penalty edit of a logits row, prepared on the host: with `repeat` set the logit l becomes
// l > 0 ? l / r : l · r (r = the row's repetition penalty), then l −= delta (presence and frequency
// penalties: delta = frequency · count + presence, computed once on the host). One edit per token.
struct PenaltyEdit {
  int32_t token = 0;
  int32_t repeat = 0;
  float delta = 0.0f;
};

// The product and the difference must stay two roundings (no fused multiply-add): the device uses
// the round-to-nearest intrinsics, and the host's one caller (sampling.cpp) is compiled with
// -ffp-contract=off.
GPTOSS_HD inline float apply_penalty_edit(float l, const PenaltyEdit& e, float repetition_penalty) {
#ifdef __CUDA_ARCH__
  if (e.repeat) l = l > 0.0f ? __fdiv_rn(l, repetition_penalty) : __fmul_rn(l, repetition_penalty);
  return __fsub_rn(l, e.delta);
#else
  if (e.repeat) l = l > 0.0f ? l / repetition_penalty : l * repetition_penalty;
  return l - e.delta;
#endif
}

// Order key of a non-NaN logit: larger logit ⇔ larger key, −0 and +0 equal. Tokens are ordered by
// (key descending, id ascending), a total order.
GPTOSS_HD inline uint32_t sample_order_key(float v) {
  if (v == 0.0f) v = 0.0f;  // −0 → +0
#ifdef __CUDA_ARCH__
  const uint32_t u = __float_as_uint(v);
#else
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
#endif
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

GPTOSS_HD inline float sample_key_value(uint32_t key) {
  const uint32_t u = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float v;
  std::memcpy(&v, &u, sizeof v);
  return v;
#endif
}

// Greedy order (rule 2): the token with the largest key of (order key, −id) wins, so ties go to the
// lower id; 0 is below every token's key (NaN logits take no part). sample_greedy_id decodes the id.
GPTOSS_HD inline uint64_t sample_greedy_key(float v, int64_t id) {
  return (uint64_t{sample_order_key(v)} << 32) | (0xffffffffu - static_cast<uint32_t>(id));
}
GPTOSS_HD inline int32_t sample_greedy_id(uint64_t key) {
  return static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(key));
}

// e^x for x in [−700, 0], the same bits on every IEEE-754 machine: x = k·ln2 + r with |r| ≤ ln2/2
// (Cody–Waite, fma), a degree-13 Taylor polynomial of e^r by Horner with fma, then an exact 2^k
// scaling. Relative error below 1e-15; exactly 1 at x = 0.
GPTOSS_HD inline double sample_exp(double x) {
  const double k = rint(x * 1.4426950408889634);
  double r = fma(-k, 6.93147180369123816490e-01, x);
  r = fma(-k, 1.90821492927058770002e-10, r);
  double p = 1.6059043836821613e-10;
  p = fma(p, r, 2.08767569878681e-09);
  p = fma(p, r, 2.505210838544172e-08);
  p = fma(p, r, 2.755731922398589e-07);
  p = fma(p, r, 2.7557319223985893e-06);
  p = fma(p, r, 2.48015873015873e-05);
  p = fma(p, r, 0.0001984126984126984);
  p = fma(p, r, 0.001388888888888889);
  p = fma(p, r, 0.008333333333333333);
  p = fma(p, r, 0.041666666666666664);
  p = fma(p, r, 0.16666666666666666);
  p = fma(p, r, 0.5);
  p = fma(p, r, 1.0);
  p = fma(p, r, 1.0);
  return ldexp(p, static_cast<int>(k));
}

// Integer weights. A token's weight is w = e^((l − lmax)/T) ∈ (0, 1] (lmax: the row's largest logit)
// in units of 2^−S: q = ⌊w · 2^S⌋ with S = sample_weight_shift(vocab) = 64 − bit_width(vocab), so a
// row's total stays below 2^64 and sums are exact and order-free. Tokens with q = 0 (w < 2^−S, about
// 32·T below the top logit for gpt-oss's vocabulary: S = 46) are never drawn; the truncation moves a
// row's distribution by at most vocab·2^−S / Σw ≈ 3e-9 in total variation for gpt-oss.
GPTOSS_HD inline int sample_weight_shift(int64_t vocab) {
  int bits = 0;
  while (bits < 63 && (vocab >> bits) != 0) ++bits;
  return 64 - bits;
}

struct SampleRowMath {
  double lmax = 0;     // the row's largest logit
  double inv_t = 0;    // 1 / temperature
  double scale = 0;    // 2^S
  double x_floor = 0;  // below this exponent q is 0 for sure (e^x · 2^S < 1/2), so e^x is skipped
};

GPTOSS_HD inline SampleRowMath sample_row_math(float lmax, float temperature, int64_t vocab) {
  const int s = sample_weight_shift(vocab);
  SampleRowMath m;
  m.lmax = static_cast<double>(lmax);
  m.inv_t = 1.0 / static_cast<double>(temperature);
  m.scale = ldexp(1.0, s);
  m.x_floor = -0.6931471805599453 * static_cast<double>(s + 1);
  return m;
}

// q of a logit (0 for NaN, −inf, and every token when lmax is ±inf); *w gets its weight in (0, 1].
GPTOSS_HD inline uint64_t sample_units(float v, const SampleRowMath& m, double* w) {
  const double x = (static_cast<double>(v) - m.lmax) * m.inv_t;
  if (!(x >= m.x_floor)) return 0;  // also NaN
  *w = sample_exp(x);
  return static_cast<uint64_t>(*w * m.scale);
}

// Smallest prefix mass that satisfies top_p of `mass` (≥ 1): ⌈top_p · mass⌉ in double arithmetic.
// A result above `mass` means top_p keeps everything.
GPTOSS_HD inline uint64_t sample_top_p_target(float top_p, uint64_t mass) {
  const double t = ceil(static_cast<double>(top_p) * static_cast<double>(mass));
  if (!(t < 18446744073709551616.0)) return ~uint64_t{0};
  return t < 1.0 ? 1 : static_cast<uint64_t>(t);
}

// The draw: position ⌊mass · random / 2^64⌋ ∈ [0, mass) of the kept tokens' cumulative weights.
GPTOSS_HD inline uint64_t sample_draw_position(uint64_t mass, uint64_t random) {
#ifdef __CUDA_ARCH__
  return __umul64hi(mass, random);
#else
  return static_cast<uint64_t>((static_cast<unsigned __int128>(mass) * random) >> 64);
#endif
}

}  // namespace gptoss
