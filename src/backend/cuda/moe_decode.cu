// MXFP4 expert products of decode steps (few tokens per expert) on tensor cores.
//
// One warp = one 16-row tile of one expert × the tokens of one work item, over the whole
// reduction; a block holds W such warps (consecutive row tiles of the same expert and item:
// W = 1 for single pairs, kGroupWarps for grouped tiles), which share a ring of kStages
// shared-memory stages of one 4-block group each. A stage holds each warp's 1 KB of codes for the
// group (contiguous in the device layout, so each copy instruction of a warp reads 512
// consecutive bytes) and 64 bytes of scales, and once for the whole block the group's activations
// of the item's tokens. The copies (cp.async) run kStages − 1 groups ahead of the math; one
// barrier per group publishes them and retires the stage read before.
//
// Weights are the m16n8k16 A operand, decoded in registers to value·2^-14 half2 (exact; 2.25
// integer operations per half2, mxfp4_pair_x2m14, the only per-weight ALU work). The activations
// are the B operand as fp16 pairs: column 2j holds token j's hi half, column 2j+1 its lo half (4
// tokens per n8 tile), so the lane that owns column pair (2t, 2t+1) of the accumulator holds both
// halves of token t. Each 32-block is multiplied into a zero accumulator and folded into the
// running f32 sum with one FMA by its scale 2^(s−127)·2^14 (a power of two), in block order. A
// token's output depends only on its own column and that order, so it is the same bits in every
// batch, in both modes (per pair or grouped by expert) and for any W.
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.cuh"

namespace gptoss::cuda {
namespace {

constexpr int kRows = kMxfp4TileRows;  // weight rows per warp (one m16 tile)
constexpr int kGroupWarps = 4;         // warps per block of grouped tiles
// Ring stages (4-block groups) of a block of W warps. Single pairs: 6 (H100, same call: tg128 435.8 →
// 441.1 tok/s and 120b 309.7 → 313.8 against 4 stages; on the H200 of the third session 8 and 12
// had lost to 4).
constexpr int ring_stages(int W) {
  return W == 1 ? 6 : 3;
}
constexpr uint32_t kScaleBias = 0x0E0E0E0Eu;  // + 14 on each E8M0 byte of a scale word

// One ring stage of a block of W warps whose items hold up to TOK tokens. act[32·j + p]: piece p
// of token j, p = 8·b + 4·h + t = elements 8t..8t+7 (storage order) of the group's block b, hi
// (h = 0) or lo half: a warp's B-fragment load reads 128 consecutive bytes per quarter warp.
template <int W, int TOK>
struct Stage {
  uint4 code[W][2][32];      // per warp, the group's codes: lane-indexed words of rows g and g+8
  uint32_t scale[W][kRows];  // per warp, the group's scale words, row by row
  uint4 act[TOK * 32];
};

// Asynchronous 16-byte copy global → shared through L2 only (the weights are read once).
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most S − 2 of this thread's commit groups are pending (a ring of S stages).
template <int S>
__device__ __forceinline__ void cp_async_wait_ring() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(S - 2) : "memory");
}

__device__ __forceinline__ uint32_t word_at(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// 2^(s − 113) for byte B of a scale word whose bytes hold s + 14 (s ≤ 240): the byte moved into the
// f32 exponent field. This is the block scale 2^(s−127) times the 2^14 of the decoded codes.
template <int B>
__device__ __forceinline__ float scale_factor(uint32_t w) {
  const uint32_t e = B < 3 ? w << (23 - 8 * B) : w >> 1;
  return __uint_as_float(e & 0x7F800000u);
}

// Block B of a group: rows g (code word of qa, scale word sa) and g+8 (qb, sb) times the used
// 4-token tiles, whose B fragments (lane t's 8 activations of column g) are bv[nn].
template <int B, int NN>
__device__ __forceinline__ void block_mma(float (&tot)[NN][2], const uint4& qa, const uint4& qb, uint32_t sa,
                                          uint32_t sb, const uint4 (&bv)[NN], int count) {
  const uint32_t wa = word_at(qa, B), wb = word_at(qb, B);
  // Pairs (e0,e4), (e1,e5) feed k-step 0, (e2,e6), (e3,e7) k-step 1 (the activations' k_phys order).
  const uint32_t a0 = mxfp4_pair_x2m14<0>(wa), a1 = mxfp4_pair_x2m14<0>(wb);
  const uint32_t a2 = mxfp4_pair_x2m14<1>(wa), a3 = mxfp4_pair_x2m14<1>(wb);
  const uint32_t a4 = mxfp4_pair_x2m14<2>(wa), a5 = mxfp4_pair_x2m14<2>(wb);
  const uint32_t a6 = mxfp4_pair_x2m14<3>(wa), a7 = mxfp4_pair_x2m14<3>(wb);
  const float fa = scale_factor<B>(sa), fb = scale_factor<B>(sb);
#pragma unroll
  for (int nn = 0; nn < NN; ++nn) {
    if (nn > 0 && 4 * nn >= count) break;  // tile 0 always holds a token
    float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    mma_f16(d, a0, a1, a2, a3, bv[nn].x, bv[nn].y);
    mma_f16(d, a4, a5, a6, a7, bv[nn].z, bv[nn].w);
    // d[0], d[1]: row g, hi and lo halves of token 4·nn + t; d[2], d[3]: row g+8.
    tot[nn][0] = fmaf(fa, d[0] + d[1], tot[nn][0]);
    tot[nn][1] = fmaf(fb, d[2] + d[3], tot[nn][1]);
  }
}

// Block B of a group with its B fragments read from the stage's activations (bfrag: each tile's
// fragment index at block 0).
template <int B, int NN>
__device__ __forceinline__ void group_mma(float (&tot)[NN][2], const uint4& qa, const uint4& qb, uint32_t sa,
                                          uint32_t sb, const uint4* act, const int (&bfrag)[NN], int count) {
  uint4 bv[NN];
#pragma unroll
  for (int nn = 0; nn < NN; ++nn)
    if (nn == 0 || 4 * nn < count) bv[nn] = act[bfrag[nn] + 8 * B];
  block_mma<B, NN>(tot, qa, qb, sa, sb, bv, count);
}

// PAIRS: items are single (token, expert) pairs (NN = 1, one warp per block); else grouped tiles of
// ≤ 4·NN tokens on blocks of kGroupWarps warps.
template <int NN, bool PAIRS, bool SWIGLU>
__global__ void __launch_bounds__((PAIRS ? 1 : kGroupWarps) * 32) moe_decode_kernel(const MoeDecodeArgs a) {
  constexpr int W = PAIRS ? 1 : kGroupWarps, TOK = PAIRS ? 1 : 4 * NN, kStages = ring_stages(W);
  constexpr int kCopies = (TOK + W - 1) / W;  // activation pieces a thread copies per stage (≤)
  // Static shared memory: 9.6 KB for a pair's warp, 37.6 KB for a block of grouped tiles (3 stages:
  // six blocks per SM, as many as the registers allow).
  static_assert(kStages * sizeof(Stage<W, TOK>) <= 48 * 1024, "a larger ring needs dynamic shared memory");
  __shared__ Stage<W, TOK> ring[kStages];
  pdl_wait();  // the experts (hence the weight addresses) come from the router
  int expert, start, count;
  if constexpr (PAIRS) {
    expert = a.experts[blockIdx.y], start = blockIdx.y, count = 1;
  } else {
    if (static_cast<int>(blockIdx.y) >= *a.n_tiles) return;
    const int4 tl = reinterpret_cast<const int4*>(a.tiles)[blockIdx.y];
    expert = tl.x, start = tl.y, count = tl.z;
  }
  // (W = 1 spelled out as constants: the one-warp kernel's time follows its instruction count, see
  // docs/PERFORMANCE.md "The pair kernel's instruction count".)
  const int warp = W == 1 ? 0 : threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int tid = W == 1 ? lane : threadIdx.x;
  const int row0 = (blockIdx.x * W + warp) * kRows;
  const bool live = W == 1 || row0 < a.rows;  // the last block's warps past the rows only copy activations
  // The next group to copy: lane's 16 bytes of each half of the codes; lanes 0-3 copy 16 bytes of
  // scales each.
  const uint8_t* wnext = a.w + expert * a.w_expert_bytes + mxfp4_code_offset(live ? row0 : 0, 0, a.kblocks) + lane * 16;
  const uint8_t* snext =
      a.scales + expert * a.s_expert_bytes + mxfp4_scale_offset(live ? row0 : 0, 0, a.kblocks) + lane * 16;
  // Activation piece i = tid + c·32·W of the stage (token i / 32, piece i % 32 as in Stage):
  // copied while its token is one of the item's.
  const uint16_t* xnext[kCopies];
#pragma unroll
  for (int c = 0; c < kCopies; ++c) {
    const int i = tid + c * 32 * W, j = min(i >> 5, count - 1), p = i & 31;
    const int64_t row = a.x_gather ? a.x_gather[start + j] : (start + j) / a.x_row_div;
    xnext[c] = a.x + row * a.x_stride + ((p >> 2) & 1) * a.x_lo + (p >> 3) * 32 + (p & 3) * 8;
  }
  // B column g of tile nn: token 4·nn + g/2, its hi (g even) or lo half. Past the item's last token
  // a lane reads that token again: such columns are computed but never stored (the columns of an
  // mma are independent).
  int bfrag[NN];
#pragma unroll
  for (int nn = 0; nn < NN; ++nn) bfrag[nn] = 32 * min(4 * nn + (g >> 1), count - 1) + 4 * (g & 1) + t;

  // Group i goes to stage i % kStages. Every step commits one (possibly empty) copy group, the
  // refill of the stage read in the step before.
  const int groups = a.kblocks / 4;
  int put = 0, get = 0;  // ring stages of the next copy and the next group to multiply
  auto issue = [&](bool copy) {
    if (copy) {
      Stage<W, TOK>& st = ring[put];
      if (live) {
        cp_async16(&st.code[warp][0][lane], wnext);
        cp_async16(&st.code[warp][1][lane], wnext + 512);
        if (lane < 4) cp_async16(&st.scale[warp][4 * lane], snext);
      }
#pragma unroll
      for (int c = 0; c < kCopies; ++c) {
        const int i = tid + c * 32 * W;
        if (i < 32 * count) cp_async16(&st.act[i], xnext[c]);
      }
    }
    cp_async_commit();
    wnext += 1024, snext += 64;
#pragma unroll
    for (int c = 0; c < kCopies; ++c) xnext[c] += 128;
    put = put + 1 == kStages ? 0 : put + 1;
  };
#pragma unroll
  for (int i = 0; i < kStages; ++i) issue(i < groups);

  float tot[NN][2];
#pragma unroll
  for (int nn = 0; nn < NN; ++nn) tot[nn][0] = 0.0f, tot[nn][1] = 0.0f;
  for (int i = 0; i < groups; ++i) {
    cp_async_wait_ring<kStages>();  // this thread's copies of group i have landed
    // ... and every thread's; every warp is done with stage i − 1.
    if constexpr (W == 1) {
      __syncwarp();
    } else {
      __syncthreads();
    }
    if (i > 0) issue(i - 1 + kStages < groups);
    const Stage<W, TOK>& st = ring[get];
    get = get + 1 == kStages ? 0 : get + 1;
    if (!live) continue;
    const uint4 qa = st.code[warp][0][lane], qb = st.code[warp][1][lane];
    const uint32_t fa = st.scale[warp][g] + kScaleBias, fb = st.scale[warp][g + 8] + kScaleBias;
    if constexpr (NN == 1) {
      // One tile: all four B fragments loaded up front (16 registers), the pair kernel's order as
      // measured (tg128 429 tok/s); grouped tiles load them per block to save registers.
      uint4 bv[4][1];
#pragma unroll
      for (int b = 0; b < 4; ++b) bv[b][0] = st.act[bfrag[0] + 8 * b];
      block_mma<0, 1>(tot, qa, qb, fa, fb, bv[0], count);
      block_mma<1, 1>(tot, qa, qb, fa, fb, bv[1], count);
      block_mma<2, 1>(tot, qa, qb, fa, fb, bv[2], count);
      block_mma<3, 1>(tot, qa, qb, fa, fb, bv[3], count);
    } else {
      // Several tiles: each block's fragments just before its products (80 instead of 127
      // registers, so 6 blocks of 4 warps fit an SM).
      group_mma<0, NN>(tot, qa, qb, fa, fb, st.act, bfrag, count);
      group_mma<1, NN>(tot, qa, qb, fa, fb, st.act, bfrag, count);
      group_mma<2, NN>(tot, qa, qb, fa, fb, st.act, bfrag, count);
      group_mma<3, NN>(tot, qa, qb, fa, fb, st.act, bfrag, count);
    }
  }
  if (!live) return;

#pragma unroll
  for (int nn = 0; nn < NN; ++nn) {  // lane (g, t) holds rows row0 + g and row0 + g + 8 of token 4·nn + t
    if (4 * nn >= count) break;
    const int j = 4 * nn + t;
    if constexpr (SWIGLU) {
      // Rows are interleaved gate/up: even g holds gates, lane + 4 (row g + 1) the matching ups.
      const float up0 = __shfl_xor_sync(0xffffffffu, tot[nn][0], 4);
      const float up1 = __shfl_xor_sync(0xffffffffu, tot[nn][1], 4);
      if ((g & 1) || j >= count) continue;
      const int64_t orow = a.out_scatter ? a.out_scatter[start + j] : start + j;
      __half* out = reinterpret_cast<__half*>(a.out16) + orow * a.out16_stride;
      const float* bias = a.bias + expert * a.bias_expert_stride;
      const int r0 = row0 + g, r1 = row0 + g + 8;
      if (r0 < a.rows)
        store_f16_pair(out + k_phys(r0 / 2), a.out16_lo,
                       swiglu_clamped(tot[nn][0] + bias[r0], up0 + bias[r0 + 1], a.swiglu_alpha, a.swiglu_limit));
      if (r1 < a.rows)
        store_f16_pair(out + k_phys(r1 / 2), a.out16_lo,
                       swiglu_clamped(tot[nn][1] + bias[r1], up1 + bias[r1 + 1], a.swiglu_alpha, a.swiglu_limit));
    } else {
      if (j >= count) continue;
      const int64_t orow = a.out_scatter ? a.out_scatter[start + j] : start + j;
      float* out = a.out + orow * a.out_stride;
      if (row0 + g < a.rows) out[row0 + g] = tot[nn][0];
      if (row0 + g + 8 < a.rows) out[row0 + g + 8] = tot[nn][1];
    }
  }
}

template <int NN, bool PAIRS, bool SWIGLU>
cudaError_t launch_mode(const MoeDecodeArgs& a, int items, const Launch& ln) {
  // Single pairs: one warp per block (few items; finer blocks spread better over the SMs). Grouped
  // tiles: kGroupWarps row tiles per block share each stage's activations.
  constexpr int W = PAIRS ? 1 : kGroupWarps;
  const dim3 grid((a.rows + W * kRows - 1) / (W * kRows), items);
  return launch_kernel(moe_decode_kernel<NN, PAIRS, SWIGLU>, grid, dim3(W * 32), 0, ln, a);
}

template <int NN, bool PAIRS>
cudaError_t launch_mode(const MoeDecodeArgs& a, int items, const Launch& ln) {
  return a.bias != nullptr ? launch_mode<NN, PAIRS, true>(a, items, ln) : launch_mode<NN, PAIRS, false>(a, items, ln);
}

}  // namespace

cudaError_t moe_decode_launch(const MoeDecodeArgs& a, const Launch& ln) {
  const int items = a.tiles ? a.max_tiles : a.pairs;
  if (items <= 0 || a.rows <= 0) return cudaSuccess;
  if (a.kblocks <= 0 || a.kblocks % 4 != 0 || a.w == nullptr || a.scales == nullptr || a.x == nullptr ||
      a.x_lo < static_cast<int64_t>(a.kblocks) * 32 || a.x_stride < a.x_lo + static_cast<int64_t>(a.kblocks) * 32 ||
      a.x_lo % 8 != 0 || a.x_stride % 8 != 0)  // 16-byte activation loads
    return cudaErrorInvalidValue;
  if (a.x_row_div < 1 || (a.tiles ? a.n_tiles == nullptr : a.experts == nullptr)) return cudaErrorInvalidValue;
  if (a.bias != nullptr ? (a.rows % 2 != 0 || a.out16 == nullptr || a.out16_lo <= 0) : a.out == nullptr)
    return cudaErrorInvalidValue;
  // Grouped tiles hold up to kMoeDecodeTileTokens tokens; a pair is one token.
  return a.tiles ? launch_mode<kMoeDecodeTileTokens / 4, false>(a, items, ln) : launch_mode<1, true>(a, items, ln);
}

}  // namespace gptoss::cuda
