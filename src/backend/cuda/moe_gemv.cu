// Decode-time MXFP4 expert products on CUDA cores: one (token, expert) pair per grid row, f32
// activations in shared memory, weight rows streamed with 16-byte loads that are all issued before
// the activations are staged, and f32 FMAs (the FP4 values and their power-of-two scales are exact
// in f32, so only the f32 summation rounds).
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.cuh"

namespace gptoss::cuda {
namespace {

// Each warp owns kGemvRowsPerWarp consecutive rows; lane l reads the 16-byte chunks l, l + 32, ...
// of each (chunk c = bytes 4t..4t+3 of blocks 4g..4g+3 with g = c / 4, t = c % 4, see
// mxfp4_repack_row). Chunks per lane held in registers per pass:
constexpr int kChunksPerLane = 3;  // 96 chunks = 96 blocks of 32 (2880-long rows in one pass)
constexpr int kStageGroups = 3;    // activation groups of 8 staged per thread and step

// Shared-memory index of activation storage position ks (k_phys order): 4 floats of padding per
// 128 so that the 8 lanes of one 16-byte load phase hit distinct banks.
__device__ __forceinline__ int xs_index(int ks) {
  return ks + (ks >> 7) * 4;
}

// 2^(s − 127) for byte b of a word of four E8M0 scales: the byte moved into the f32 exponent field
// (one shift and one mask). s = 0 gives 0 instead of 2^-127: such a block's products (≤ 6·2^-127·|x|)
// are far below the f32 rounding of any output.
template <int B>
__device__ __forceinline__ float e8m0_byte_to_f32(uint32_t w) {
  const uint32_t e = B < 3 ? w << (23 - 8 * B) : w >> 1;
  return __uint_as_float(e & 0x7F800000u);
}

__device__ __forceinline__ uint32_t word_at(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// Σ over the 8 elements of one code word (nibble k = element k, decoded as value·2^-14) times the
// activations at xa, xb in k_phys order ([e0, e4, e1, e5, e2, e6, e3, e7], stored times 2^14).
__device__ __forceinline__ float dot8(uint32_t w, const float4& xa, const float4& xb) {
  const float2 w0 = unpack_half2(fp4_pair_x2m14<0>(w)), w1 = unpack_half2(fp4_pair_x2m14<1>(w));
  const float2 w2 = unpack_half2(fp4_pair_x2m14<2>(w)), w3 = unpack_half2(fp4_pair_x2m14<3>(w));
  float s = w0.x * xa.x;
  s = fmaf(w0.y, xa.y, s);
  s = fmaf(w1.x, xa.z, s);
  s = fmaf(w1.y, xa.w, s);
  s = fmaf(w2.x, xb.x, s);
  s = fmaf(w2.y, xb.y, s);
  s = fmaf(w3.x, xb.z, s);
  return fmaf(w3.y, xb.w, s);
}

__device__ __forceinline__ float swiglu_f32(float gate, float up, float alpha, float limit) {
  const float g = fminf(gate, limit);
  const float l = fminf(fmaxf(up, -limit), limit);
  return g / (1.0f + expf(-alpha * g)) * (l + 1.0f);
}

// Block B of chunk i for every row of the warp: acc[r] += 2^(s−127)·Σ w·x.
template <int B>
__device__ __forceinline__ void block4(float (&acc)[kGemvRowsPerWarp],
                                       const uint4 (&q)[kGemvRowsPerWarp][kChunksPerLane],
                                       const uint32_t (&sc)[kGemvRowsPerWarp][kChunksPerLane], int i, const float* xp) {
  const float4 xa = *reinterpret_cast<const float4*>(xp);
  const float4 xb = *reinterpret_cast<const float4*>(xp + 4);
#pragma unroll
  for (int r = 0; r < kGemvRowsPerWarp; ++r)
    acc[r] = fmaf(dot8(word_at(q[r][i], B), xa, xb), e8m0_byte_to_f32<B>(sc[r][i]), acc[r]);
}

template <bool SWIGLU>
__global__ void __launch_bounds__(kGemvWarps * 32, kGemvMinBlocks) moe_gemv_kernel(const MoeGemvArgs a) {
  extern __shared__ float4 xs_raw[];
  float* xs = reinterpret_cast<float*>(xs_raw);
  pdl_wait();  // the experts (hence which weights to load) come from the router
  pdl_launch_dependents();
  const int p = blockIdx.y;
  const int expert = a.experts[p];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int row0 = (blockIdx.x * kGemvWarps + warp) * kGemvRowsPerWarp;
  const int64_t rs = static_cast<int64_t>(a.kblocks) * 16;  // code bytes per row
  const uint8_t* wrow = a.w + expert * a.w_expert_bytes + row0 * rs;
  const uint8_t* srow = a.scales + expert * a.s_expert_bytes + static_cast<int64_t>(row0) * a.kblocks;
  const int nchunks = a.kblocks;  // 16-byte chunks per row

  uint4 q[kGemvRowsPerWarp][kChunksPerLane];
  uint32_t sc[kGemvRowsPerWarp][kChunksPerLane];
  auto load_pass = [&](int c0) {
#pragma unroll
    for (int i = 0; i < kChunksPerLane; ++i) {
      const int c = c0 + lane + 32 * i;
      if (c >= nchunks) break;
#pragma unroll
      for (int r = 0; r < kGemvRowsPerWarp; ++r) {
        q[r][i] = __ldg(reinterpret_cast<const uint4*>(wrow + r * rs + c * 16));
        sc[r][i] = __ldg(reinterpret_cast<const uint32_t*>(srow + r * a.kblocks + (c & ~3)));
      }
    }
  };
  load_pass(0);  // weight bytes in flight while the activations are staged

  // Activations ×2^14 (exact), one group of 8 per thread and step: all loads before the stores.
  const float* x = a.x + static_cast<int64_t>(p / a.x_row_div) * a.x_stride;
  const int groups = a.kblocks * 4;
  for (int g0 = 0; g0 < groups; g0 += kStageGroups * blockDim.x) {
    float v[kStageGroups][8];
#pragma unroll
    for (int j = 0; j < kStageGroups; ++j) {
      const int k0 = (g0 + j * blockDim.x + threadIdx.x) * 8;
#pragma unroll
      for (int i = 0; i < 8; ++i) v[j][i] = k0 + i < a.cols ? __ldg(x + k0 + i) * 16384.0f : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kStageGroups; ++j) {
      const int g = g0 + j * blockDim.x + threadIdx.x;
      if (g >= groups) break;
      float* d = xs + xs_index(g * 8);
      *reinterpret_cast<float4*>(d) = make_float4(v[j][0], v[j][4], v[j][1], v[j][5]);
      *reinterpret_cast<float4*>(d + 4) = make_float4(v[j][2], v[j][6], v[j][3], v[j][7]);
    }
  }
  __syncthreads();

  float acc[kGemvRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kGemvRowsPerWarp; ++r) acc[r] = 0.0f;
  for (int c0 = 0; c0 < nchunks; c0 += 32 * kChunksPerLane) {
    if (c0 > 0) load_pass(c0);
#pragma unroll
    for (int i = 0; i < kChunksPerLane; ++i) {
      const int c = c0 + lane + 32 * i;
      if (c >= nchunks) break;
      const int g = c >> 2, t = c & 3;
      block4<0>(acc, q, sc, i, xs + xs_index(g * 128 + 8 * t));
      block4<1>(acc, q, sc, i, xs + xs_index(g * 128 + 32 + 8 * t));
      block4<2>(acc, q, sc, i, xs + xs_index(g * 128 + 64 + 8 * t));
      block4<3>(acc, q, sc, i, xs + xs_index(g * 128 + 96 + 8 * t));
    }
  }
#pragma unroll
  for (int r = 0; r < kGemvRowsPerWarp; ++r) acc[r] = warp_sum(acc[r]);
  if (lane != 0) return;
  float* out = a.out + static_cast<int64_t>(p) * a.out_stride;
  if constexpr (SWIGLU) {
    const float* bias = a.bias + expert * a.bias_expert_stride;
#pragma unroll
    for (int r = 0; r < kGemvRowsPerWarp; r += 2)
      if (row0 + r + 1 < a.rows)
        out[(row0 + r) / 2] =
            swiglu_f32(acc[r] + bias[row0 + r], acc[r + 1] + bias[row0 + r + 1], a.swiglu_alpha, a.swiglu_limit);
  } else {
#pragma unroll
    for (int r = 0; r < kGemvRowsPerWarp; ++r)
      if (row0 + r < a.rows) out[row0 + r] = acc[r];
  }
}

}  // namespace

cudaError_t moe_gemv_launch(const MoeGemvArgs& a, cudaStream_t stream) {
  if (a.pairs <= 0 || a.rows <= 0) return cudaSuccess;
  if (a.kblocks <= 0 || a.kblocks % 4 != 0 || a.cols > a.kblocks * 32 || a.x_row_div < 1 || a.w == nullptr ||
      a.scales == nullptr || a.experts == nullptr || a.x == nullptr || a.out == nullptr)
    return cudaErrorInvalidValue;
  if (a.bias != nullptr && a.rows % 2 != 0) return cudaErrorInvalidValue;
  const int rows_per_block = kGemvWarps * kGemvRowsPerWarp;
  const dim3 grid((a.rows + rows_per_block - 1) / rows_per_block, a.pairs);
  const int ks = a.kblocks * 32;
  const size_t smem = static_cast<size_t>(ks + (ks / 128 + 1) * 4) * sizeof(float);
  if (smem > 48 * 1024) return cudaErrorInvalidValue;
  return launch_kernel(a.bias != nullptr ? moe_gemv_kernel<true> : moe_gemv_kernel<false>, grid, kGemvWarps * 32, smem,
                       stream, a);
}

}  // namespace gptoss::cuda
