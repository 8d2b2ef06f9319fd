// Per-token kernels: embedding gather, residual add fused with RMSNorm (summing split-K partials and
// the weighted expert outputs in a fixed order), SwiGLU of split partials, and argmax.
#include <cooperative_groups.h>

#include <cfloat>

#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.cuh"
#include "backend/sampling_math.h"

namespace gptoss::cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kNormThreads = 512;
// add_rmsnorm: blocks per token (one thread block cluster) and threads per block.
constexpr int kNormCluster = 8;
constexpr int kNormBlockThreads = 128;
// Steps of at least this many tokens (prefill) run the block kernel with 256 threads a token. (H100,
// same call: from 64 tokens, pp2048 +0.9 % and 120b pp2048 +1.6 %, but 64-sequence decode -3.0 %.)
constexpr int kNormWideTokens = 256;

__global__ void embed_kernel(const uint16_t* table, int64_t dim, const int32_t* tokens, float* h) {
  pdl_wait();
  const int t = blockIdx.x;
  const uint16_t* row = table + static_cast<int64_t>(tokens[t]) * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) h[t * dim + i] = bf16_bits_to_f32(row[i]);
}

__device__ __forceinline__ float sum_parts(const float* p, int nparts, int64_t part_stride) {
  float v = p[0];
  for (int s = 1; s < nparts; ++s) v += p[s * part_stride];
  return v;
}

constexpr int kNormMaxVec = 3;  // float4s per add_rmsnorm thread: dim ≤ 8·128·3·4 = 12288

// Σ_s parts[s·stride] of 4 consecutive floats, in segment order (loads issued kLoads at a time; the
// sums are the same for any kLoads).
template <int kLoads>
__device__ __forceinline__ float4 sum_parts4(const float* p, int nparts, int64_t part_stride) {
  float4 v = *reinterpret_cast<const float4*>(p);
  for (int s0 = 1; s0 < nparts; s0 += kLoads) {
    float4 q[kLoads];
#pragma unroll
    for (int s = 0; s < kLoads; ++s)
      if (s0 + s < nparts) q[s] = *reinterpret_cast<const float4*>(p + (s0 + s) * part_stride);
#pragma unroll
    for (int s = 0; s < kLoads; ++s)
      if (s0 + s < nparts) v.x += q[s].x, v.y += q[s].y, v.z += q[s].z, v.w += q[s].w;
  }
  return v;
}

__device__ __forceinline__ float4 ld4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}

// The residual plus this step's contribution at [i, i+4) of token t (kLoads: see sum_parts4).
template <int kLoads>
__device__ __forceinline__ float4 residual4(const float* hr, int t, int i, const ResidualAdd& add) {
  float4 v = ld4(hr + i);
  if (add.nparts == 0) return v;
  if (add.top_k == 0) {
    float4 d = sum_parts4<kLoads>(add.parts + t * add.stride + i, add.nparts, add.part_stride);
    if (add.bias) {
      const float4 b = ld4(add.bias + i);
      d.x += b.x, d.y += b.y, d.z += b.z, d.w += b.w;
    }
    return make_float4(v.x + d.x, v.y + d.y, v.z + d.z, v.w + d.w);
  }
  // Unrolled over the (≤ 8) experts with the indices read first, so every load is in flight at once.
  int e[8];
  float w[8];
#pragma unroll
  for (int j = 0; j < 8; ++j)
    if (j < add.top_k) e[j] = add.experts[t * add.top_k + j], w[j] = add.weights[t * add.top_k + j];
  float4 moe = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    if (j >= add.top_k) break;
    const float4 y = sum_parts4<kLoads>(add.parts + (t * add.top_k + j) * add.stride + i, add.nparts, add.part_stride);
    const float4 b = ld4(add.expert_bias + e[j] * add.expert_bias_stride + i);
    moe.x += w[j] * (y.x + b.x), moe.y += w[j] * (y.y + b.y), moe.z += w[j] * (y.z + b.z), moe.w += w[j] * (y.w + b.w);
  }
  return make_float4(v.x + moe.x, v.y + moe.y, v.z + moe.z, v.w + moe.w);
}

// add_rmsnorm in slices: each token's row of float4s is cut into kNormCluster contiguous slices,
// slice r handled by 128 threads (block r of the token's cluster, or threads 128·r.. of the token's
// single block); thread j of a slice updates float4s j, j + 128, j + 256 of it and adds their
// squares (sum_sq4) in that order.
struct NormSlice {
  int t, lo, hi, j;  // token, slice [lo, hi) of float4s, thread 0..127 of the slice
  __device__ __forceinline__ NormSlice(int token, int rank, int thread, int dim) : t(token), j(thread) {
    const int nvec = dim / 4, per = (nvec + kNormCluster - 1) / kNormCluster;
    lo = rank * per, hi = min(nvec, lo + per);
  }
  __device__ __forceinline__ int f(int c) const { return lo + c * kNormBlockThreads + j; }
};

__device__ __forceinline__ float sum_sq4(float4 v) {
  return v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
}

// Writes the slice's normalised values given the row's sum of squares.
__device__ __forceinline__ void norm_store(const NormSlice& sl, int dim, float ss, float eps,
                                           const float4 (&v)[kNormMaxVec], const float4 (&g)[kNormMaxVec],
                                           uint16_t* x16, int64_t x16_stride, int64_t x16_lo, float* x32) {
  const float inv = rsqrtf(ss / static_cast<float>(dim) + eps);
  __half* xo = reinterpret_cast<__half*>(x16) + sl.t * x16_stride;
#pragma unroll
  for (int c = 0; c < kNormMaxVec; ++c) {
    if (sl.f(c) < sl.hi) {
      const int i = sl.f(c) * 4;
      const float4 y = make_float4(g[c].x * (v[c].x * inv), g[c].y * (v[c].y * inv), g[c].z * (v[c].z * inv),
                                   g[c].w * (v[c].w * inv));
      store_f16_pair(xo + k_phys(i), x16_lo, y.x);
      store_f16_pair(xo + k_phys(i + 1), x16_lo, y.y);
      store_f16_pair(xo + k_phys(i + 2), x16_lo, y.z);
      store_f16_pair(xo + k_phys(i + 3), x16_lo, y.w);
      if (x32) *reinterpret_cast<float4*>(x32 + static_cast<int64_t>(sl.t) * dim + i) = y;
    }
  }
}

// One cluster of kNormCluster blocks per token, block r = slice r, its float4s kept in registers
// between the update and the normalisation (a decode step's handful of tokens spreads its loads over
// many SMs). The sum of squares: per thread, block_sum over the block, then the blocks' sums in rank
// order through distributed shared memory, so every block gets the same value. Clusters need sm_90:
// compiled for an older architecture the kernel only traps (never launched there: such code runs
// with Launch::clusters false).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define GPTOSS_NORM_CLUSTER_DIMS __cluster_dims__(kNormCluster, 1, 1)
#else
#define GPTOSS_NORM_CLUSTER_DIMS
#endif
__global__ void GPTOSS_NORM_CLUSTER_DIMS __launch_bounds__(kNormBlockThreads)
    add_rmsnorm_cluster_kernel(float* h, int dim, const ResidualAdd add, const float* gain, float eps, uint16_t* x16,
                               int64_t x16_stride, int64_t x16_lo, float* x32) {
#if __CUDA_ARCH__ >= 900
  __shared__ float scratch[32];
  __shared__ float block_ss;
  cg::cluster_group cluster = cg::this_cluster();
  const NormSlice sl(static_cast<int>(blockIdx.x) / kNormCluster, static_cast<int>(cluster.block_rank()),
                     static_cast<int>(threadIdx.x), dim);
  float* hr = h + static_cast<int64_t>(sl.t) * dim;
  float4 v[kNormMaxVec], g[kNormMaxVec];
#pragma unroll
  for (int c = 0; c < kNormMaxVec; ++c)
    if (sl.f(c) < sl.hi) g[c] = ld4(gain + sl.f(c) * 4);  // weights: loaded before the previous kernel ends
  pdl_wait();
  float ss = 0.0f;
#pragma unroll
  for (int c = 0; c < kNormMaxVec; ++c) {
    if (sl.f(c) < sl.hi) {
      const int i = sl.f(c) * 4;
      v[c] = residual4<8>(hr, sl.t, i, add);
      if (add.nparts > 0) *reinterpret_cast<float4*>(hr + i) = v[c];
      ss += sum_sq4(v[c]);
    }
  }
  ss = block_sum(ss, scratch);
  if (threadIdx.x == 0) block_ss = ss;
  cluster.sync();
  ss = 0.0f;
#pragma unroll
  for (int r = 0; r < kNormCluster; ++r) ss += *cluster.map_shared_rank(&block_ss, r);
  norm_store(sl, dim, ss, eps, v, g, x16, x16_stride, x16_lo, x32);
  cluster.sync();  // no block leaves while another may still read its block_ss
#else
  __trap();
#endif
}
#undef GPTOSS_NORM_CLUSTER_DIMS

// The same per token in one block (any architecture). The cluster kernel's 8 slices × 4 warps are 32
// "virtual" warps; a block of 32/VW warps runs them, real warp r taking virtual warps r, r + 32/VW, …
// (VW of them). Virtual warp w's lanes are the cluster's threads of slice w / 4, 32·(w % 4) + lane;
// each sums its float4s in the same order, its warp_sum goes to warp_ss[w], and the slices' sums are
// added in order — the cluster kernel's arithmetic exactly, for any VW. VW = 1 (1024 threads, 64
// registers each) spreads a few tokens' loads widely; VW = 4 (256 threads) lets an SM hold several
// tokens' blocks at once, for long steps (H100, pp2048: one 1024-thread block per token was
// ≈ 100 µs a call). The updated residual and the gain are read again for the normalisation.
template <int VW>
__global__ void __launch_bounds__(kNormCluster* kNormBlockThreads / VW, VW)
    add_rmsnorm_block_kernel(float* h, int dim, const ResidualAdd add, const float* gain, float eps, uint16_t* x16,
                             int64_t x16_stride, int64_t x16_lo, float* x32) {
  constexpr int kSliceWarps = kNormBlockThreads / 32, kVirtualWarps = kNormCluster * kSliceWarps;
  constexpr int kRealWarps = kVirtualWarps / VW;
  __shared__ float warp_ss[kVirtualWarps];
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  const int t = static_cast<int>(blockIdx.x);
  auto slice = [&](int i) {  // this thread's slice position in virtual warp warp + i·kRealWarps
    const int vt = (warp + i * kRealWarps) * 32 + lane;
    return NormSlice(t, vt / kNormBlockThreads, vt % kNormBlockThreads, dim);
  };
  float* hr = h + static_cast<int64_t>(t) * dim;
  pdl_wait();
  float ss[VW];
#pragma unroll
  for (int i = 0; i < VW; ++i) ss[i] = 0.0f;
#pragma unroll 1
  for (int c = 0; c < kNormMaxVec; ++c) {
#pragma unroll
    for (int i = 0; i < VW; ++i) {
      const NormSlice sl = slice(i);
      if (sl.f(c) < sl.hi) {
        const int at = sl.f(c) * 4;
        const float4 v = residual4<2>(hr, t, at, add);
        if (add.nparts > 0) *reinterpret_cast<float4*>(hr + at) = v;
        ss[i] += sum_sq4(v);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < VW; ++i) {
    const float w = warp_sum(ss[i]);
    if (lane == 0) warp_ss[warp + i * kRealWarps] = w;
  }
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int r = 0; r < kNormCluster; ++r) total += warp_sums_total(warp_ss + r * kSliceWarps, kSliceWarps);
#pragma unroll 1
  for (int i = 0; i < VW; ++i) {
    const NormSlice sl = slice(i);
    float4 v[kNormMaxVec], g[kNormMaxVec];
#pragma unroll
    for (int c = 0; c < kNormMaxVec; ++c)
      if (sl.f(c) < sl.hi) v[c] = ld4(hr + sl.f(c) * 4), g[c] = ld4(gain + sl.f(c) * 4);
    norm_store(sl, dim, total, eps, v, g, x16, x16_stride, x16_lo, x32);
  }
}

// One block per (tile, output chunk): tile columns are pairs in sorted order.
__global__ void swiglu_parts_kernel(const float* parts, int nparts, int64_t part_stride, int64_t rows_p, int inter,
                                    const int32_t* tiles, const int32_t* n_tiles, const float* bias,
                                    int64_t bias_expert_stride, float alpha, float limit, uint16_t* a16,
                                    int64_t out_stride, int64_t out_lo) {
  pdl_wait();
  if (static_cast<int>(blockIdx.x) >= *n_tiles) return;
  const int4 tl = reinterpret_cast<const int4*>(tiles)[blockIdx.x];
  const float* b = bias + tl.x * bias_expert_stride;
  for (int idx = threadIdx.x; idx < tl.z * inter; idx += blockDim.x) {
    const int c = idx / inter, jj = idx - c * inter;
    const int pair = tl.y + c;
    const float* p = parts + pair * rows_p;
    const float gate = sum_parts(p + 2 * jj, nparts, part_stride) + b[2 * jj];
    const float up = sum_parts(p + 2 * jj + 1, nparts, part_stride) + b[2 * jj + 1];
    store_f16_pair(reinterpret_cast<__half*>(a16) + pair * out_stride + k_phys(jj), out_lo,
                   swiglu_clamped(gate, up, alpha, limit));
  }
}

// grid (row chunk, row): each block reduces a slice with 16-byte loads and merges by atomicMax over
// the greedy keys of sampling_math.h (larger logit first, −0 = +0, ties to the lower id: cpu::argmax).
__global__ void argmax_kernel(const float* logits, int64_t vocab, int64_t per_block, unsigned long long* keys) {
  __shared__ unsigned long long sk[32];
  pdl_wait();
  const float* row = logits + blockIdx.y * vocab;
  const int64_t lo = blockIdx.x * per_block, hi = min(vocab, lo + per_block);
  unsigned long long best = 0;
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    const float v = row[i];
    if (!(v != v)) best = max(best, static_cast<unsigned long long>(sample_greedy_key(v, i)));
  }
  for (int o = 16; o > 0; o >>= 1) best = max(best, __shfl_xor_sync(0xffffffffu, best, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sk[warp] = best;
  __syncthreads();
  if (warp == 0) {
    best = lane < static_cast<int>(blockDim.x >> 5) ? sk[lane] : 0;
    for (int o = 16; o > 0; o >>= 1) best = max(best, __shfl_xor_sync(0xffffffffu, best, o));
    if (lane == 0 && best) atomicMax(&keys[blockIdx.y], best);
  }
}

__global__ void argmax_finish_kernel(unsigned long long* keys, int rows, int32_t* out) {
  pdl_wait();
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const unsigned long long k = keys[r];
  out[r] = k ? sample_greedy_id(k) : 0;
  keys[r] = 0;  // ready for the next launch
}

}  // namespace

cudaError_t launch_target(cudaStream_t stream, Launch* l) {
  cudaFuncAttributes attr;
  cudaError_t e = cudaFuncGetAttributes(&attr, embed_kernel);
  if (e != cudaSuccess) return e;
  int dev = 0;
  if ((e = cudaGetDevice(&dev)) != cudaSuccess) return e;
  int optin = 0;
  if ((e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev)) != cudaSuccess) return e;
  l->stream = stream;
  l->pdl = attr.ptxVersion >= 90;
  l->clusters = attr.ptxVersion >= 90;
  // wgmma exists on sm_90a only: the Hopper image (moe_wgmma.cu refuses to build plain sm_90 code),
  // not the code of later architectures.
  l->wgmma = attr.ptxVersion == 90;
  l->smem_optin = optin;
  return cudaSuccess;
}

cudaError_t embed_launch(const uint16_t* table, int64_t dim, const int32_t* tokens, int n, float* h, const Launch& ln) {
  if (n <= 0) return cudaSuccess;
  return launch_kernel(embed_kernel, n, kNormThreads, 0, ln, table, dim, tokens, h);
}

cudaError_t add_rmsnorm_launch(float* h, int n, int dim, const ResidualAdd& add, const float* gain, float eps,
                               uint16_t* x16, int64_t x16_stride, int64_t x16_lo, float* x32, const Launch& ln) {
  if (n <= 0) return cudaSuccess;
  if (dim % 4 != 0 || dim > kNormCluster * kNormBlockThreads * kNormMaxVec * 4) return cudaErrorInvalidValue;
  if (add.nparts > 0 && add.top_k > 0 && (add.experts == nullptr || add.weights == nullptr || !add.expert_bias))
    return cudaErrorInvalidValue;
  if (add.top_k > 8) return cudaErrorInvalidValue;
  if (ln.clusters && n <= ln.cluster_max_tokens)
    return launch_kernel(add_rmsnorm_cluster_kernel, n * kNormCluster, kNormBlockThreads, 0, ln, h, dim, add, gain, eps,
                         x16, x16_stride, x16_lo, x32);
  const int vw = n >= kNormWideTokens ? 4 : 1;  // virtual warps per real warp
  return launch_kernel(vw == 4 ? add_rmsnorm_block_kernel<4> : add_rmsnorm_block_kernel<1>, n,
                       kNormCluster * kNormBlockThreads / vw, 0, ln, h, dim, add, gain, eps, x16, x16_stride, x16_lo,
                       x32);
}

cudaError_t swiglu_parts_launch(const float* parts, int nparts, int64_t part_stride, int64_t rows_p, int inter,
                                const int32_t* tiles, const int32_t* n_tiles, int max_tiles, const float* bias,
                                int64_t bias_expert_stride, float alpha, float limit, uint16_t* a16, int64_t out_stride,
                                int64_t out_lo, const Launch& ln) {
  if (max_tiles <= 0) return cudaSuccess;
  return launch_kernel(swiglu_parts_kernel, max_tiles, kNormThreads, 0, ln, parts, nparts, part_stride, rows_p, inter,
                       tiles, n_tiles, bias, bias_expert_stride, alpha, limit, a16, out_stride, out_lo);
}

cudaError_t argmax_launch(const float* logits, int rows, int64_t vocab, unsigned long long* keys, int32_t* out,
                          const Launch& ln) {
  if (rows <= 0) return cudaSuccess;
  const int64_t per_block = 256 * 16;
  const dim3 grid(static_cast<unsigned>((vocab + per_block - 1) / per_block), rows);
  const cudaError_t e = launch_kernel(argmax_kernel, grid, 256, 0, ln, logits, vocab, per_block, keys);
  if (e != cudaSuccess) return e;
  return launch_kernel(argmax_finish_kernel, (rows + 127) / 128, 128, 0, ln, keys, rows, out);
}

}  // namespace gptoss::cuda
