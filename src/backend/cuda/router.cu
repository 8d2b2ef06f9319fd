// MoE routing on the device: router logits in f32 over bf16 weights (the same inputs as the CPU
// reference, so expert choices agree), top-k + softmax over the k, optional statistics, and the
// grouping of (token, expert) pairs by expert into column tiles for the expert GEMMs (fused into
// the router when one block routes every token, i.e. decode steps).
#include <algorithm>
#include <cfloat>

#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.cuh"

namespace gptoss::cuda {
namespace {

constexpr int kRouterThreads = 256;  // 8 warps: 8 experts per block
constexpr int kRouterMaxTokens = 4;
constexpr int kMaxExpertsPerLane = 8;  // experts ≤ 256

// Groups the pairs idx[0, pairs) by expert (whole block; counts/offsets/cursor: 3·experts ints of
// shared memory). Order inside one expert's range is arbitrary: every GEMM column is independent.
__device__ void group_pairs(const int32_t* idx, int pairs, int top_k, int experts, const MoeGroupOut& g, int* gsm) {
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
      for (int s = 0; s < counts[e] && nt_total < g.max_tiles; s += g.nt)
        reinterpret_cast<int4*>(g.tiles)[nt_total++] = make_int4(e, off + s, min(g.nt, counts[e] - s), 0);
      off += counts[e];
    }
    *g.n_tiles = nt_total;
  }
  __syncthreads();
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int e = idx[p];
    const int at = offsets[e] + atomicAdd(&cursor[e], 1);
    g.sorted_token[at] = p / top_k;
    g.sorted_pair[at] = p;
  }
}

// Warp-wide top-k of one token's logits (ties → lower index) and softmax over the k; lane 0 writes.
__device__ void topk_softmax(const float* logits, int experts, int top_k, int t, int32_t* idx, float* weight,
                             const RouterStatsDev& stats) {
  const int lane = threadIdx.x & 31;
  float v[kMaxExpertsPerLane];
#pragma unroll
  for (int i = 0; i < kMaxExpertsPerLane; ++i) {
    const int e = lane + 32 * i;
    v[i] = e < experts ? logits[e] : -INFINITY;
  }
  // (The k loops are unrolled to 8 with an exit, so the selections stay in registers, not local memory.)
  float sel_logit[8];
  int sel_idx[8];
  uint32_t taken = 0;  // bit i: expert lane + 32·i already selected
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    if (k >= top_k) break;
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
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    if (k >= top_k) break;
    denom += expf(sel_logit[k] - sel_logit[0]);
  }
  double ent = 0.0;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    if (k >= top_k) break;
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

// One lane's batch of weight loads of an expert row (uint4 = 8 bf16): vectors lane + 32·j from i0.
constexpr int kRouterLoads = 8;  // weight loads per lane in flight
__device__ __forceinline__ void load_w_batch(uint4 (&q)[kRouterLoads], const uint4* wr, int i0, int nvec) {
#pragma unroll
  for (int j = 0; j < kRouterLoads; ++j)
    if (i0 + 32 * j < nvec) q[j] = __ldg(wr + i0 + 32 * j);
}

// The router's activation rows in shared memory: each group of 32 weight vectors (256 values) holds
// the first halves (values 8i..8i+3) of its 32 vectors, then their second halves, so that the 32
// lanes of a warp, one vector each, read 512 contiguous bytes per half (conflict-free). Floats per row:
// dim rounded up to whole groups. (The plain layout, 32 bytes between lanes, made half of all shared
// wavefronts bank conflicts: H100 ncu, pp2048.)
__host__ __device__ constexpr int router_row_floats(int dim) {
  return (dim + 255) / 256 * 256;
}
__device__ __forceinline__ int router_x4(int i, int h) {  // float4 of half h of vector i
  return (i >> 5) * 64 + h * 32 + (i & 31);
}

// One lane's partial dot products of an expert row with nt ≤ TT activation rows xs [TT][row floats]
// (router_x4 layout), over the vectors lane, lane + 32, ... in order (q: the first batch, already
// loaded by load_w_batch).
template <int TT>
__device__ __forceinline__ void expert_dot(uint4 (&q)[kRouterLoads], const uint4* wr, int lane, int nvec,
                                           const float* xs, int dim, int nt, float (&acc)[TT]) {
  const float4* xs4 = reinterpret_cast<const float4*>(xs);
  const int row4 = router_row_floats(dim) / 4;
#pragma unroll
  for (int tt = 0; tt < TT; ++tt) acc[tt] = 0.0f;
  for (int i0 = lane;;) {
#pragma unroll
    for (int j = 0; j < kRouterLoads; ++j) {
      const int i = i0 + 32 * j;
      if (i >= nvec) break;
      const float wv[8] = {__uint_as_float(q[j].x << 16), __uint_as_float(q[j].x & 0xffff0000u),
                           __uint_as_float(q[j].y << 16), __uint_as_float(q[j].y & 0xffff0000u),
                           __uint_as_float(q[j].z << 16), __uint_as_float(q[j].z & 0xffff0000u),
                           __uint_as_float(q[j].w << 16), __uint_as_float(q[j].w & 0xffff0000u)};
#pragma unroll
      for (int tt = 0; tt < TT; ++tt) {
        if (tt >= nt) break;
        const float4 x0 = xs4[tt * row4 + router_x4(i, 0)];
        const float4 x1 = xs4[tt * row4 + router_x4(i, 1)];
        const float xv[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
        for (int k = 0; k < 8; ++k) acc[tt] = fmaf(wv[k], xv[k], acc[tt]);
      }
    }
    i0 += 32 * kRouterLoads;
    if (i0 >= nvec) break;
    load_w_batch(q, wr, i0, nvec);
  }
}

// grid (token tile of TT tokens, expert group of 8 experts): each warp computes one expert's logits
// for the tile (16-byte weight loads, kRouterLoads per lane in flight) into the global logits workspace.
// The last block of a tile to finish (arrival counter) selects every token's top-k; with a single
// tile it also groups the pairs. Spreading the weights over several blocks keeps a decode step's
// router from being limited by one SM's bandwidth.
template <int TT>
__global__ void __launch_bounds__(kRouterThreads)
    router_kernel(const float* x, int n, int dim, const uint16_t* w, const float* b, int experts, int top_k,
                  int32_t* idx, float* weight, RouterStatsDev stats, MoeGroupOut group, RouterWork ws) {
  extern __shared__ float4 xs4[];  // [TT][router_row_floats(dim) / 4], router_x4 order
  float* xs = reinterpret_cast<float*>(xs4);
  __shared__ int gsm[3 * 32 * kMaxExpertsPerLane];
  __shared__ bool last;
  const int t0 = blockIdx.x * TT;
  const int nt = min(TT, n - t0);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  const int e = blockIdx.y * nw + warp;
  const uint4* wr = reinterpret_cast<const uint4*>(w + static_cast<int64_t>(e) * dim);
  uint4 q[kRouterLoads];
  if (e < experts) load_w_batch(q, wr, lane, dim / 8);  // weights: in flight before the previous kernel ends
  pdl_wait();
  // Staged in the order of the shared-memory slots (consecutive threads, consecutive 16-byte slots: no
  // bank conflicts on the stores); slot d of a row is half (d % 64) / 32 of vector (d / 64)·32 + d % 32.
  const int row4 = router_row_floats(dim) / 4, nvec = dim / 8;
  const float4* xg = reinterpret_cast<const float4*>(x + static_cast<int64_t>(t0) * dim);
  for (int d = threadIdx.x; d < nt * row4; d += blockDim.x) {
    const int tt = d / row4, slot = d - tt * row4, v = (slot >> 6) * 32 + (slot & 31);
    if (v < nvec) xs4[d] = xg[tt * (dim / 4) + 2 * v + ((slot >> 5) & 1)];
  }
  __syncthreads();
  if (e < experts) {
    float acc[TT];
    expert_dot<TT>(q, wr, lane, dim / 8, xs, dim, nt, acc);
#pragma unroll
    for (int tt = 0; tt < TT; ++tt) {
      if (tt >= nt) break;
      const float s = warp_sum(acc[tt]);
      if (lane == 0) ws.logits[static_cast<int64_t>(t0 + tt) * experts + e] = s + b[e];
    }
  }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&ws.counters[blockIdx.x], 1u) == gridDim.y - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  if (warp < nt) {
    float* lg = xs;  // this block's activations are no longer needed: stage the tile's logits
    for (int k = lane; k < experts; k += 32)
      lg[warp * experts + k] = __ldcg(&ws.logits[static_cast<int64_t>(t0 + warp) * experts + k]);
    __syncwarp();
    topk_softmax(lg + warp * experts, experts, top_k, t0 + warp, idx, weight, stats);
  }
  if (threadIdx.x == 0) ws.counters[blockIdx.x] = 0;  // ready for the next launch
  if (group.tiles == nullptr) return;                 // uniform: grouping is fused only into a single-tile launch
  __syncthreads();
  group_pairs(idx, n * top_k, top_k, experts, group, gsm);
}

__global__ void moe_group_kernel(const int32_t* idx, int pairs, int top_k, int experts, MoeGroupOut group) {
  __shared__ int gsm[3 * 32 * kMaxExpertsPerLane];
  pdl_wait();
  group_pairs(idx, pairs, top_k, experts, group, gsm);
}

}  // namespace

// Tokens per router tile: as many as kRouterMaxTokens whose activations (and, in the last block,
// logits) fit in 40 KB of shared memory.
int router_tokens_per_block(int dim, int experts) {
  int tt = kRouterMaxTokens;
  while (tt > 1 && static_cast<size_t>(tt) * std::max(router_row_floats(dim), experts) * sizeof(float) > 40 * 1024)
    tt /= 2;
  return tt;
}

bool router_fuses_grouping(int n, int dim, int experts) {
  return n <= router_tokens_per_block(dim, experts);
}

// Every tile holds ≥ 1 pair and each expert's last tile may be partial.
int moe_max_tiles(int pairs, int experts, int nt) {
  return std::min(pairs, (pairs + nt - 1) / nt + experts);
}

cudaError_t router_launch(const float* x, int n, int dim, const uint16_t* w, const float* b, int experts, int top_k,
                          int32_t* idx, float* weight, const RouterStatsDev& stats, const MoeGroupOut* group,
                          const RouterWork& ws, const Launch& ln) {
  if (n <= 0) return cudaSuccess;
  if (experts > 32 * kMaxExpertsPerLane || top_k > 8 || top_k < 1 || top_k > experts || dim % 8 != 0 || !ws.logits ||
      !ws.counters)
    return cudaErrorInvalidValue;
  MoeGroupOut g;
  if (group) {
    if (!router_fuses_grouping(n, dim, experts) || group->max_tiles < moe_max_tiles(n * top_k, experts, group->nt))
      return cudaErrorInvalidValue;
    g = *group;
  }
  const int tt = router_tokens_per_block(dim, experts);
  const size_t smem = static_cast<size_t>(tt) * std::max(router_row_floats(dim), experts) * sizeof(float);
  if (smem > 40 * 1024) return cudaErrorInvalidValue;
  const dim3 grid((n + tt - 1) / tt, (experts + kRouterThreads / 32 - 1) / (kRouterThreads / 32));
  auto* kernel = tt == 4 ? router_kernel<4> : tt == 2 ? router_kernel<2> : router_kernel<1>;
  return launch_kernel(kernel, grid, kRouterThreads, smem, ln, x, n, dim, w, b, experts, top_k, idx, weight, stats, g,
                       ws);
}

cudaError_t moe_group_launch(const int32_t* idx, int n, int top_k, int experts, const MoeGroupOut& group,
                             const Launch& ln) {
  if (n <= 0) return cudaSuccess;
  const int pairs = n * top_k;
  if (experts > 32 * kMaxExpertsPerLane || group.max_tiles < moe_max_tiles(pairs, experts, group.nt))
    return cudaErrorInvalidValue;
  return launch_kernel(moe_group_kernel, 1, 1024, 0, ln, idx, pairs, top_k, experts, group);
}

}  // namespace gptoss::cuda
