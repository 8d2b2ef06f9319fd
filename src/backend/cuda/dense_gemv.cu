// Decode-time dense products (≤ kDenseGemvTokens tokens) on tensor cores: one block per (16-row
// tile, reduction segment), its 4 warps splitting the segment's blocks of 32. A warp issues every
// weight and activation load of its share before the first mma (≈ 4 KB per warp in flight, no
// barrier until the reduction). Token j's activation pair goes into B columns 2j (hi) and 2j + 1 (lo),
// so one m16n8k16 covers four tokens at near-f32 accuracy; each output is (Σ hi products) +
// (Σ lo products) summed over the warps in a fixed order, so a token's result does not depend on
// the other tokens of the step.
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.cuh"

namespace gptoss::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kMaxWarpBlocks = 4;  // blocks of 32 per warp: segments are ≤ 16 blocks (gemm_segments)

__global__ void __launch_bounds__(kWarps * 32) dense_gemv_kernel(const GemmArgs a) {
  __shared__ float4 red[kWarps][32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int row0 = blockIdx.x * 16;
  const int seg_begin = blockIdx.y * a.seg_blocks;
  const int seg_end = min(a.kblocks, seg_begin + a.seg_blocks);
  const int per_warp = (a.seg_blocks + kWarps - 1) / kWarps;
  const int kb0 = seg_begin + warp * per_warp;
  const int nb = max(0, min(per_warp, seg_end - kb0));

  const int64_t rs = static_cast<int64_t>(a.kblocks) * 64;  // bytes per weight row
  const uint8_t* wp = static_cast<const uint8_t*>(a.w) + (row0 + g) * rs + t * 16;
  // B column g: token g / 2, hi (even g) or lo (odd g) half of its pair; columns past the tokens are 0.
  const bool has_col = g < 2 * a.n;
  const uint16_t* xp = a.x + (g >> 1) * a.x_stride + (g & 1) * a.x_lo + t * 8;

  // The weights depend on no earlier kernel: all of the warp's loads are issued before pdl_wait(),
  // so they stream while the previous kernel finishes; the activations are read after it.
  uint4 w_lo[kMaxWarpBlocks], w_hi[kMaxWarpBlocks], b[kMaxWarpBlocks];
#pragma unroll
  for (int i = 0; i < kMaxWarpBlocks; ++i) {
    if (i < nb) {
      const int kb = kb0 + i;
      w_lo[i] = __ldg(reinterpret_cast<const uint4*>(wp + kb * 64));
      w_hi[i] = __ldg(reinterpret_cast<const uint4*>(wp + kb * 64 + 8 * rs));
    }
  }
  pdl_wait();
#pragma unroll
  for (int i = 0; i < kMaxWarpBlocks; ++i)
    if (i < nb) b[i] = has_col ? *reinterpret_cast<const uint4*>(xp + (kb0 + i) * 32) : make_uint4(0, 0, 0, 0);
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int i = 0; i < kMaxWarpBlocks; ++i) {
    if (i < nb) {
      mma_f16(acc, w_lo[i].x, w_hi[i].x, w_lo[i].y, w_hi[i].y, b[i].x, b[i].y);
      mma_f16(acc, w_lo[i].z, w_hi[i].z, w_lo[i].w, w_hi[i].w, b[i].z, b[i].w);
    }
  }
  red[warp][lane] = make_float4(acc[0], acc[1], acc[2], acc[3]);
  __syncthreads();
  if (warp != 0 || t >= a.n) return;
  float4 s = red[0][lane];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) {
    const float4 v = red[w][lane];
    s.x += v.x, s.y += v.y, s.z += v.z, s.w += v.w;
  }
  // Lane (g, t) holds rows g and g + 8 of token t: columns 2t (hi) and 2t + 1 (lo).
  float* out = a.out + (a.mode == GemmOut::kPartial ? blockIdx.y * a.part_stride : 0) + t * a.out_stride;
  if (row0 + g < a.rows) out[row0 + g] = s.x + s.y;
  if (row0 + g + 8 < a.rows) out[row0 + g + 8] = s.z + s.w;
}

}  // namespace

cudaError_t dense_gemv_launch(const GemmArgs& a, const Launch& ln) {
  if (a.n <= 0 || a.rows <= 0) return cudaSuccess;
  if (a.weights != GemmWeights::kF16 || a.n > kDenseGemvTokens || a.kblocks <= 0 || a.seg_blocks <= 0 ||
      a.seg_blocks > kWarps * kMaxWarpBlocks || a.nseg != (a.kblocks + a.seg_blocks - 1) / a.seg_blocks ||
      a.x_gather != nullptr || a.out_scatter != nullptr || a.tiles != nullptr || a.w == nullptr || a.x == nullptr ||
      a.out == nullptr)
    return cudaErrorInvalidValue;
  if (a.mode != GemmOut::kPartial && !(a.mode == GemmOut::kStore && a.nseg == 1)) return cudaErrorInvalidValue;
  if (a.x_lo < static_cast<int64_t>(a.kblocks) * 32 || a.x_stride < a.x_lo + static_cast<int64_t>(a.kblocks) * 32)
    return cudaErrorInvalidValue;
  const dim3 grid((a.rows + 15) / 16, a.nseg);
  return launch_kernel(dense_gemv_kernel, grid, dim3(kWarps * 32), 0, ln, a);
}

}  // namespace gptoss::cuda
