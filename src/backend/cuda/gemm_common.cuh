// Device pieces shared by the GEMM kernels (gemm.cu: any column tile; gemm_tiled.cu: wide column
// tiles; moe_wgmma.cu: MXFP4 expert tiles on the warpgroup MMA): MXFP4 decoding, A fragments of one 32-block, the
// canonical mma sequence of one block (which fixes every output's rounding, so both kernels give the same bits) and the
// epilogues.
#pragma once

#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"

namespace gptoss::cuda {

// Shared-memory row of one B column holding CB blocks: + 64 bytes keeps 16-byte reads conflict-free.
template <int CB>
constexpr int smem_row_halfs() {
  return CB * 32 + 32;
}

// A fragments of one 32-block for rows g and g+8 of a 16-row tile, as 4 half2 per row: [0],[1] feed
// k-step 0 (a0/a2), [2],[3] k-step 1. Lane t owns the block's elements 8t..8t+7 in storage order
// (the same k permutation is applied to B, so the dot products are unchanged).
struct AFrag {
  uint32_t lo[4], hi[4];
};

// Scales the decoded value·2^-14 pairs of one row by its block scale 2^(s−127): one multiply by
// 2^(s−113) while that is a normal fp16 (s ≤ 128, i.e. every realistic weight), else 2^14 first.
__device__ __forceinline__ void scale_row(uint32_t (&h)[4], uint32_t s) {
  if (s <= 128) {
    const uint32_t f = pow2_half2(static_cast<int>(s) - 113);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = hmul2_bits(h[i], f);
  } else {
    const uint32_t f = pow2_half2(static_cast<int>(s) - 127);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = hmul2_bits(hmul2_bits(h[i], 0x74007400u), f);
  }
}

__device__ __forceinline__ uint32_t word_of(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// One code word (elements 8t..8t+7 of a block, storage order) as 4 fp16 pairs value·2^-14 (scale_row
// then applies the block scale): pairs (e0,e4), (e1,e5), (e2,e6), (e3,e7) match the activations'
// storage order (k_phys).
__device__ __forceinline__ void mxfp4_pairs(uint32_t w, uint32_t (&h)[4]) {
  h[0] = mxfp4_pair_x2m14<0>(w), h[1] = mxfp4_pair_x2m14<1>(w);
  h[2] = mxfp4_pair_x2m14<2>(w), h[3] = mxfp4_pair_x2m14<3>(w);
}

// Fragments of one MXFP4 block from lane t's code word of rows g (ql) and g+8 (qh) and their E8M0
// scales.
__device__ __forceinline__ AFrag mxfp4_frag(uint32_t ql, uint32_t qh, uint32_t sl, uint32_t sh) {
  AFrag f;
  mxfp4_pairs(ql, f.lo);
  mxfp4_pairs(qh, f.hi);
  scale_row(f.lo, sl);
  scale_row(f.hi, sh);
  return f;
}

// Phase p of the products of one 32-block with 8 columns (bh/bl: lane t's 8 hi / lo activations
// of column g in storage order): 0, 1 = hi k-steps 0, 1; 2, 3 = lo k-steps 0, 1. Each accumulator
// must see the phases in this order (it is part of the results' bits); different accumulators'
// phases may interleave.
__device__ __forceinline__ void mma_phase(float (&acc)[4], const AFrag& f, int p, const uint4& bh, const uint4& bl) {
  const uint4& b = p < 2 ? bh : bl;
  if (p % 2 == 0) {
    mma_f16(acc, f.lo[0], f.hi[0], f.lo[1], f.hi[1], b.x, b.y);
  } else {
    mma_f16(acc, f.lo[2], f.hi[2], f.lo[3], f.hi[3], b.z, b.w);
  }
}

// All four phases of one 32-block for one accumulator.
__device__ __forceinline__ void mma_hilo(float (&acc)[4], const AFrag& f, const uint4& bh, const uint4& bl) {
#pragma unroll
  for (int p = 0; p < 4; ++p) mma_phase(acc, f, p, bh, bl);
}

// Gate/up rows are interleaved (row 2j = gate j, 2j+1 = up j): lanes with even g hold gates and
// fetch the matching ups from the lane of row g+1 (lane ^ 4). acc holds rows row0 + g, row0 + g + 8.
template <int NS>
__device__ __forceinline__ void store_swiglu(const GemmArgs& a, const float (&acc)[NS][4], int expert, int start,
                                             int count, int row0, int g, int t) {
  const float* bias = a.bias + expert * a.bias_expert_stride;
#pragma unroll
  for (int ns = 0; ns < NS; ++ns) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const float up_lo = __shfl_xor_sync(0xffffffffu, acc[ns][c], 4);
      const float up_hi = __shfl_xor_sync(0xffffffffu, acc[ns][2 + c], 4);
      const int j = ns * 8 + 2 * t + c;
      if ((g & 1) || j >= count) continue;
      const int64_t orow = a.out_scatter ? a.out_scatter[start + j] : start + j;
      __half* out = reinterpret_cast<__half*>(a.out16) + orow * a.out16_stride;
      const int r_lo = row0 + g, r_hi = row0 + g + 8;
      if (r_lo < a.rows)
        store_f16_pair(out + k_phys(r_lo / 2), a.out16_lo,
                       swiglu_clamped(acc[ns][c] + bias[r_lo], up_lo + bias[r_lo + 1], a.swiglu_alpha, a.swiglu_limit));
      if (r_hi < a.rows)
        store_f16_pair(
            out + k_phys(r_hi / 2), a.out16_lo,
            swiglu_clamped(acc[ns][2 + c] + bias[r_hi], up_hi + bias[r_hi + 1], a.swiglu_alpha, a.swiglu_limit));
    }
  }
}

template <int NS>
__device__ __forceinline__ void store_f32(const GemmArgs& a, const float (&acc)[NS][4], int start, int count, int row0,
                                          float* out_base, int g, int t) {
#pragma unroll
  for (int ns = 0; ns < NS; ++ns) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int j = ns * 8 + 2 * t + c;
      if (j >= count) continue;
      const int64_t orow = a.out_scatter ? a.out_scatter[start + j] : start + j;
      float* out = out_base + orow * a.out_stride;
      if (row0 + g < a.rows) out[row0 + g] = acc[ns][c];
      if (row0 + g + 8 < a.rows) out[row0 + g + 8] = acc[ns][2 + c];
    }
  }
}

}  // namespace gptoss::cuda
