// MoE routing on the device: router logits in f32 over bf16 weights (the same inputs as the CPU
// reference, so expert choices agree), top-k + softmax over the k, optional statistics, and the
// grouping of (token, expert) pairs by expert into column tiles for the expert GEMMs.
#include <algorithm>
#include <cfloat>

#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"

namespace gptoss::cuda {
namespace {

constexpr int kRouterThreads = 1024;
constexpr int kRouterMaxTokens = 4;
constexpr int kMaxExpertsPerLane = 8;  // experts ≤ 256

// Block: up to kRouterMaxTokens tokens, one warp per expert (round-robin), 16-byte weight loads
// (8 bf16) so a decode step's router is a couple of memory latencies, not one per element.
template <int TT>
__global__ void __launch_bounds__(kRouterThreads)
    router_kernel(const float* x, int n, int dim, const uint16_t* w, const float* b, int experts, int top_k,
                  int32_t* idx, float* weight, RouterStatsDev stats) {
  extern __shared__ float sm[];
  float* xs = sm;                 // [TT][dim]
  float* logits = sm + TT * dim;  // [TT][experts]
  const int t0 = blockIdx.x * TT;
  const int nt = min(TT, n - t0);
  for (int i = threadIdx.x; i < nt * dim; i += blockDim.x) xs[i] = x[static_cast<int64_t>(t0) * dim + i];
  __syncthreads();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  for (int e = warp; e < experts; e += nw) {
    const uint4* wr = reinterpret_cast<const uint4*>(w + static_cast<int64_t>(e) * dim);
    float acc[TT];
#pragma unroll
    for (int tt = 0; tt < TT; ++tt) acc[tt] = 0.0f;
#pragma unroll 4
    for (int i = lane; i < dim / 8; i += 32) {
      const uint4 q = __ldg(wr + i);
      const uint32_t u[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float w0 = __uint_as_float(u[k] << 16), w1 = __uint_as_float(u[k] & 0xffff0000u);
#pragma unroll
        for (int tt = 0; tt < TT; ++tt) {
          const float2 xv = *reinterpret_cast<const float2*>(xs + tt * dim + 8 * i + 2 * k);
          acc[tt] = fmaf(w0, xv.x, acc[tt]);
          acc[tt] = fmaf(w1, xv.y, acc[tt]);
        }
      }
    }
#pragma unroll
    for (int tt = 0; tt < TT; ++tt) {
      const float s = warp_sum(acc[tt]);
      if (lane == 0) logits[tt * experts + e] = s + b[e];
    }
  }
  __syncthreads();
  if (warp >= nt) return;
  // Warp `warp` selects the top-k of token t0 + warp: k rounds of a warp argmax (ties → lower index).
  const int t = t0 + warp;
  float v[kMaxExpertsPerLane];
#pragma unroll
  for (int i = 0; i < kMaxExpertsPerLane; ++i) {
    const int e = lane + 32 * i;
    v[i] = e < experts ? logits[warp * experts + e] : -INFINITY;
  }
  float sel_logit[8];
  int sel_idx[8];
  uint32_t taken = 0;  // bit i: expert lane + 32·i already selected
  for (int k = 0; k < top_k; ++k) {
    float best = -INFINITY;
    int bi = 0x7fffffff;
#pragma unroll
    for (int i = 0; i < kMaxExpertsPerLane; ++i) {
      const int e = lane + 32 * i;
      if (e < experts && !(taken >> i & 1u) && (v[i] > best || (v[i] == best && e < bi))) best = v[i], bi = e;
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float ob = __shfl_xor_sync(0xffffffffu, best, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ob > best || (ob == best && oi < bi)) best = ob, bi = oi;
    }
    if (bi >= experts) bi = 0;  // only when every logit is NaN
    sel_logit[k] = best, sel_idx[k] = bi;
    if ((bi & 31) == lane) taken |= 1u << (bi >> 5);
  }
  if (lane != 0) return;
  float denom = 0.0f;
  for (int k = 0; k < top_k; ++k) denom += expf(sel_logit[k] - sel_logit[0]);
  double ent = 0.0;
  for (int k = 0; k < top_k; ++k) {
    const float wk = expf(sel_logit[k] - sel_logit[0]) / denom;
    idx[t * top_k + k] = sel_idx[k];
    weight[t * top_k + k] = wk;
    if (stats.counts) {
      atomicAdd(&stats.counts[sel_idx[k]], 1ULL);
      if (wk > 0.0f) ent -= static_cast<double>(wk) * log(static_cast<double>(wk));
    }
  }
  if (stats.counts) {
    atomicAdd(stats.top1, static_cast<double>(1.0f / denom));
    atomicAdd(stats.entropy, ent);
    atomicAdd(stats.tokens, 1ULL);
  }
}

__global__ void moe_group_kernel(const int32_t* idx, int pairs, int top_k, int experts, int nt, int32_t* sorted_token,
                                 int32_t* sorted_pair, int4* tiles, int32_t* n_tiles, int max_tiles) {
  extern __shared__ int gsm[];
  int* counts = gsm;
  int* offsets = gsm + experts;
  int* cursor = gsm + 2 * experts;
  for (int e = threadIdx.x; e < experts; e += blockDim.x) counts[e] = 0, cursor[e] = 0;
  __syncthreads();
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) atomicAdd(&counts[idx[p]], 1);
  __syncthreads();
  if (threadIdx.x == 0) {
    int off = 0, nt_total = 0;
    for (int e = 0; e < experts; ++e) {
      offsets[e] = off;
      for (int s = 0; s < counts[e] && nt_total < max_tiles; s += nt)
        tiles[nt_total++] = make_int4(e, off + s, min(nt, counts[e] - s), 0);
      off += counts[e];
    }
    *n_tiles = nt_total;
  }
  __syncthreads();
  // Order inside one expert's range is arbitrary: every column of the expert GEMM is independent.
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int e = idx[p];
    const int at = offsets[e] + atomicAdd(&cursor[e], 1);
    sorted_token[at] = p / top_k;
    sorted_pair[at] = p;
  }
}

}  // namespace

cudaError_t router_launch(const float* x, int n, int dim, const uint16_t* w, const float* b, int experts, int top_k,
                          int32_t* idx, float* weight, const RouterStatsDev& stats, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (experts > 32 * kMaxExpertsPerLane || top_k > 8 || top_k < 1 || top_k > experts || dim % 8 != 0)
    return cudaErrorInvalidValue;
  int tt = kRouterMaxTokens;
  while (tt > 1 && static_cast<size_t>(tt) * (dim + experts) * sizeof(float) > 48 * 1024) tt /= 2;
  const size_t smem = static_cast<size_t>(tt) * (dim + experts) * sizeof(float);
  if (smem > 48 * 1024) return cudaErrorInvalidValue;
  const int blocks = (n + tt - 1) / tt;
  switch (tt) {
    case 4:
      router_kernel<4><<<blocks, kRouterThreads, smem, stream>>>(x, n, dim, w, b, experts, top_k, idx, weight, stats);
      break;
    case 2:
      router_kernel<2><<<blocks, kRouterThreads, smem, stream>>>(x, n, dim, w, b, experts, top_k, idx, weight, stats);
      break;
    default:
      router_kernel<1><<<blocks, kRouterThreads, smem, stream>>>(x, n, dim, w, b, experts, top_k, idx, weight, stats);
  }
  return cudaGetLastError();
}

// Every tile holds ≥ 1 pair and each expert's last tile may be partial.
int moe_max_tiles(int pairs, int experts, int nt) {
  return std::min(pairs, (pairs + nt - 1) / nt + experts);
}

cudaError_t moe_group_launch(const int32_t* idx, int n, int top_k, int experts, int nt, int32_t* sorted_token,
                             int32_t* sorted_pair, int32_t* tiles, int32_t* n_tiles, int max_tiles,
                             cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const int pairs = n * top_k;
  if (max_tiles < moe_max_tiles(pairs, experts, nt)) return cudaErrorInvalidValue;
  const size_t smem = static_cast<size_t>(3) * experts * sizeof(int);
  moe_group_kernel<<<1, 1024, smem, stream>>>(idx, pairs, top_k, experts, nt, sorted_token, sorted_pair,
                                              reinterpret_cast<int4*>(tiles), n_tiles, max_tiles);
  return cudaGetLastError();
}

}  // namespace gptoss::cuda
