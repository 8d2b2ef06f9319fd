// Attention on the device: qkv bias + YaRN RoPE + KV-cache store; a flash-style kernel with sinks
// and sliding windows on tensor cores for items of several query tokens (prefill); a flash-decoding
// kernel on tensor cores, its operands straight from the cache in registers, for one query token per
// item (decode); both optionally split over the keys, and the merge of key-split partials.
#include <cmath>

#include <type_traits>

#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.cuh"

namespace gptoss::cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t& r0, uint32_t& r1, const void* p) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r0), "=r"(r1) : "r"(s));
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// ---------------------------------------------------------------------------------------------
// Element idx of token t: the rotated (i, i + D/2) pairs of every q and k head, then the v values,
// then the zero padding up to dp of q, k and v.
__device__ __forceinline__ void qkv_rope_element(const QkvRopeArgs& a, const AttnShape& s, const KvLayer& kv, int t,
                                                 int idx) {
  const int d = s.head_dim, half = d / 2, pad = s.dp - d;
  const int n_rot = (s.n_heads + s.n_kv_heads) * half, n_v = s.n_kv_heads * d;
  const int p = a.pos[t];
  const float* row = a.parts + static_cast<int64_t>(t) * a.stride;
  auto value = [&](int col) {  // partial sums in segment order, loads issued together
    float q[8];
#pragma unroll
    for (int sp = 0; sp < 8; ++sp)
      if (sp < a.nparts) q[sp] = row[sp * a.part_stride + col];
    float v = q[0];
#pragma unroll
    for (int sp = 1; sp < 8; ++sp)
      if (sp < a.nparts) v += q[sp];
    for (int sp = 8; sp < a.nparts; ++sp) v += row[sp * a.part_stride + col];
    return v + a.bias[col];
  };

  const int64_t cache_row = static_cast<int64_t>(p % kv.cap);
  auto store = [&](int head, int i, float x) {  // element i of a q head, then k heads, then v heads
    if (head < s.n_heads) {
      a.q32[(static_cast<int64_t>(t) * s.n_heads + head) * s.dp + i] = x;
      return;
    }
    const bool is_k = head < s.n_heads + s.n_kv_heads;
    const int kvh = is_k ? head - s.n_heads : head - s.n_heads - s.n_kv_heads;
    const int64_t row = (static_cast<int64_t>(a.slot[t]) * s.n_kv_heads + kvh) * kv.cap + cache_row;
    __half* dst = static_cast<__half*>(is_k ? kv.k : kv.v) + row * kv_planes(kv.f16) * s.dp + i;
    if (kv.f16) {
      constexpr float kMax = 65504.0f;  // saturate: the largest finite fp16 (NaN stays NaN)
      dst[0] = __float2half_rn(x < -kMax ? -kMax : x > kMax ? kMax : x);
    } else {
      const __half hi = __float2half_rn(x);  // split2's halves
      dst[0] = hi;
      dst[s.dp] = __float2half_rn(x - __half2float(hi));
    }
  };
  if (idx < n_rot) {
    const int head = idx / half, i = idx - head * half;
    const float angle = static_cast<float>(p) * a.inv_freq[i];
    const float c = cosf(angle) * a.concentration, sn = sinf(angle) * a.concentration;
    const int col = head * d;  // k heads follow the q heads in the fused projection
    const float x0 = value(col + i), x1 = value(col + i + half);
    store(head, i, x0 * c - x1 * sn);
    store(head, i + half, x1 * c + x0 * sn);
  } else if (idx < n_rot + n_v) {
    const int j = idx - n_rot, kvh = j / d, i = j - kvh * d;
    store(s.n_heads + s.n_kv_heads + kvh, i, value(s.n_heads * d + s.n_kv_heads * d + j));
  } else {
    // Zero padding keeps the padded dot products exact.
    const int j = idx - n_rot - n_v, head = j / pad;
    store(head, d + j - head * pad, 0.0f);
  }
}

// grid (token group, element chunk of 128): each block handles its 128 elements of `per_block`
// consecutive tokens (prefill: fewer, longer-lived blocks; each element's arithmetic is the same).
__global__ void qkv_rope_kernel(const QkvRopeArgs a, const AttnShape s, const KvLayer kv, int n, int per_block,
                                int elements) {
  if (threadIdx.x < 32)  // weights: no kernel writes them
    l2_prefetch(a.prefetch.p, a.prefetch.bytes, blockIdx.y * gridDim.x + blockIdx.x, gridDim.x * gridDim.y);
  pdl_wait();
  const int idx = blockIdx.y * blockDim.x + threadIdx.x;
  if (idx >= elements) return;
  const int t0 = blockIdx.x * per_block, t1 = min(n, t0 + per_block);
  for (int t = t0; t < t1; ++t) qkv_rope_element(a, s, kv, t, idx);
}

// ---------------------------------------------------------------------------------------------
// Per key tile, the cache rows land in shared memory by cp.async (one or two stages) as the fp16
// tiles the products read: an f32 cache's hi and lo planes (scores Qh·Kh + Qh·Kl + Ql·Kh, outputs
// Ph·Vh + Ph·Vl + Pl·Vh: the dropped lo·lo terms are ~2^-22 relative, i.e. near-f32 attention on
// tensor cores), or an f16 cache's one plane (Qh·K + Ql·K and Ph·V + Pl·V).
// fp16 tile row strides (halfs): K rows are read as 8-byte pieces (stride ≡ 32 bytes mod 128
// spreads a half-warp over all banks), V rows by ldmatrix (stride ≡ 16 bytes mod 128).
template <int DP, bool F16>
struct AttnLayout {
  static constexpr int kK = DP + (((32 - DP * 2) % 128 + 128) % 128) / 2;
  static constexpr int kV = DP + (((16 - DP * 2) % 128 + 128) % 128) / 2;
  static constexpr int kPlanes = kv_planes(F16);
  // One stage: the K tiles of the planes, then their V tiles.
  static constexpr int kStageHalfs = kPlanes * kAttnKeyTile * (kK + kV);
  static constexpr int k_tile(int plane) { return plane * kAttnKeyTile * kK; }
  static constexpr int v_tile(int plane) { return kPlanes * kAttnKeyTile * kK + plane * kAttnKeyTile * kV; }
  // With RS stages (2: tile i+1 lands while tile i is multiplied; 1: for devices with less shared
  // memory): at DP = 64, 78 / 39 KB with two planes, 39 / 19.5 KB with one.
  static constexpr size_t smem_bytes(int rs) { return rs * kStageHalfs * sizeof(uint16_t); }
};

// The fp16 tiles attn_tile reads: K and V (hi halves or an f16 cache's values) and, for an f32
// cache, their lo halves.
struct KvTiles {
  const uint16_t *kh, *kl, *vh, *vl;
};

struct RowInfo {
  bool valid;
  int token, head, pos, lo;
};

// hi/lo fp16 pairs of (a, b): hi = fp16 rounding, lo = fp16 of the remainder.
__device__ __forceinline__ void split2(float a, float b, uint32_t& hi, uint32_t& lo) {
  const __half2 h = __floats2half2_rn(a, b);
  const float2 f = __half22float2(h);
  const __half2 l = __floats2half2_rn(a - f.x, b - f.y);
  hi = *reinterpret_cast<const uint32_t*>(&h);
  lo = *reinterpret_cast<const uint32_t*>(&l);
}

// Copies keys kt … kt + kAttnKeyTile − 1 (zeros past ke) of one head's K and V rows, plane by plane,
// into the tiles of the stage at `dst` (kbase, vbase: the head's first cache row).
template <int DP, bool F16>
__device__ __forceinline__ void attn_issue_tile(const uint16_t* kbase, const uint16_t* vbase, int64_t cap, int kt,
                                                int ke, uint16_t* dst) {
  using L = AttnLayout<DP, F16>;
  constexpr int kPieces = DP / 8;  // 16-byte pieces of a plane's row
  for (int i = threadIdx.x; i < kAttnKeyTile * L::kPlanes * kPieces; i += blockDim.x) {
    const int key = i / (L::kPlanes * kPieces), r = i - key * (L::kPlanes * kPieces);
    const int plane = r / kPieces, c = r - plane * kPieces;
    const int j = kt + key;
    const bool valid = j <= ke;
    const int64_t off = valid ? (j % cap) * L::kPlanes * DP + plane * DP + c * 8 : 0;  // halves
    cp_async16(dst + L::k_tile(plane) + key * L::kK + c * 8, kbase + off, valid);
    cp_async16(dst + L::v_tile(plane) + key * L::kV + c * 8, vbase + off, valid);
  }
  cp_async_commit();
}

// Q fragments (hi and lo) of the warp's rows: [step][a0 a1 a2 a3].
template <int DP>
struct QFrag {
  uint32_t hi[DP / 16][4], lo[DP / 16][4];
};

// Scores of one 64-key tile for the warp's 16 rows, masked, folded into the running softmax
// state, and accumulated into acc (P·V). LO: the K and V tiles have lo halves (an f32 cache).
template <int DP, bool LO>
__device__ __forceinline__ void attn_tile(const QFrag<DP>& q, const KvTiles& f, int kt, int ks, int ke,
                                          const RowInfo (&ri)[2], float scale_log2, float (&m)[2], float (&l)[2],
                                          float (&acc)[DP / 8][4], int lane) {
  using L = AttnLayout<DP, !LO>;
  const int g = lane >> 2, t = lane & 3;
  float sc[8][4];
#pragma unroll
  for (int ns = 0; ns < 8; ++ns) {
    sc[ns][0] = sc[ns][1] = sc[ns][2] = sc[ns][3] = 0.0f;
#pragma unroll
    for (int s = 0; s < DP / 16; ++s) {
      const int at = (ns * 8 + g) * L::kK + s * 16 + t * 4;
      const uint2 kh = *reinterpret_cast<const uint2*>(f.kh + at);
      uint2 kl;
      if constexpr (LO) kl = *reinterpret_cast<const uint2*>(f.kl + at);
      mma_f16(sc[ns], q.hi[s][0], q.hi[s][1], q.hi[s][2], q.hi[s][3], kh.x, kh.y);
      if constexpr (LO) mma_f16(sc[ns], q.hi[s][0], q.hi[s][1], q.hi[s][2], q.hi[s][3], kl.x, kl.y);
      mma_f16(sc[ns], q.lo[s][0], q.lo[s][1], q.lo[s][2], q.lo[s][3], kh.x, kh.y);
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = -INFINITY;
#pragma unroll
    for (int ns = 0; ns < 8; ++ns)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int j = kt + ns * 8 + 2 * t + c;
        const bool ok = ri[r].valid && j >= ks && j <= ke && j >= ri[r].lo && j <= ri[r].pos;
        const float v = ok ? sc[ns][2 * r + c] * scale_log2 : -INFINITY;
        sc[ns][2 * r + c] = v;
        mx = fmaxf(mx, v);
      }
    mx = quad_max(mx);
    const float m_new = fmaxf(m[r], mx);
    const float m_use = m_new == -INFINITY ? 0.0f : m_new;
    const float corr = exp2f(m[r] - m_use);
    m[r] = m_new;
    l[r] *= corr;
#pragma unroll
    for (int nd = 0; nd < DP / 8; ++nd) acc[nd][2 * r] *= corr, acc[nd][2 * r + 1] *= corr;
#pragma unroll
    for (int ns = 0; ns < 8; ++ns)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const float p = exp2f(sc[ns][2 * r + c] - m_use);
        sc[ns][2 * r + c] = p;
        l[r] += p;
      }
  }
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    uint32_t ah[4], al[4];
    split2(sc[2 * kk][0], sc[2 * kk][1], ah[0], al[0]);
    split2(sc[2 * kk][2], sc[2 * kk][3], ah[1], al[1]);
    split2(sc[2 * kk + 1][0], sc[2 * kk + 1][1], ah[2], al[2]);
    split2(sc[2 * kk + 1][2], sc[2 * kk + 1][3], ah[3], al[3]);
#pragma unroll
    for (int nd = 0; nd < DP / 8; ++nd) {
      const int at = (kk * 16 + (lane & 15)) * L::kV + nd * 8;
      uint32_t bh0, bh1, bl0, bl1;
      ldmatrix_x2_trans(bh0, bh1, f.vh + at);
      if constexpr (LO) ldmatrix_x2_trans(bl0, bl1, f.vl + at);
      mma_f16(acc[nd], ah[0], ah[1], ah[2], ah[3], bh0, bh1);
      if constexpr (LO) mma_f16(acc[nd], ah[0], ah[1], ah[2], ah[3], bl0, bl1);
      mma_f16(acc[nd], al[0], al[1], al[2], al[3], bh0, bh1);
    }
  }
}

template <int DP>
__device__ __forceinline__ void attn_epilogue(const AttnArgs& a, const AttnShape& s, const RowInfo (&ri)[2],
                                              float (&m)[2], float (&l)[2], float (&acc)[DP / 8][4], int t) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float lsum = quad_sum(l[r]);
    if (!ri[r].valid) continue;
    if (a.splits == 1) {
      const float sink = a.sinks[ri[r].head] * kLog2e;
      const float mm = fmaxf(m[r], sink);
      const float f = exp2f(m[r] - mm);
      const float inv = f / (lsum * f + exp2f(sink - mm));
      __half* o = reinterpret_cast<__half*>(a.o16) + static_cast<int64_t>(ri[r].token) * a.o_stride;
      const int col = ri[r].head * s.head_dim;  // o-proj input column of d = 0 (stored in k_phys order)
#pragma unroll
      for (int nd = 0; nd < DP / 8; ++nd) {
        const int d = nd * 8 + 2 * t;
        if (d < s.head_dim) {
          store_f16_pair(o + k_phys(col + d), a.o_lo, acc[nd][2 * r] * inv);
          store_f16_pair(o + k_phys(col + d + 1), a.o_lo, acc[nd][2 * r + 1] * inv);
        }
      }
    } else {
      // Partials of one (token, head) are contiguous over the splits: [token][head][split].
      const int64_t row = (static_cast<int64_t>(ri[r].token) * s.n_heads + ri[r].head) * a.splits + blockIdx.z;
      float* po = a.part_o + row * DP;
#pragma unroll
      for (int nd = 0; nd < DP / 8; ++nd)
        *reinterpret_cast<float2*>(po + nd * 8 + 2 * t) = make_float2(acc[nd][2 * r], acc[nd][2 * r + 1]);
      if (t == 0) *reinterpret_cast<float2*>(a.part_ml + row * 2) = make_float2(m[r], lsum);
    }
  }
}

// grid: (item, kv head × head chunk, key split); block: 1..kAttnMaxWarps warps of 16 (token, head)
// rows; RS stages of tiles (the same arithmetic either way); F16: an fp16 cache. Every
// warp's rows share the staged tiles, so the more rows a block holds, the fewer copies and splits
// per row.
template <int DP, int RS, bool F16>
__global__ void __launch_bounds__(kAttnMaxWarps * 32, DP <= 64 ? 2 : 1)
    attention_kernel(const AttnArgs a, const AttnShape s, const KvLayer kv, int n_chunks, int hc) {
  using L = AttnLayout<DP, F16>;
  extern __shared__ uint4 attn_smem[];
  uint16_t* stages = reinterpret_cast<uint16_t*>(attn_smem);  // RS stages of K and V tiles
  pdl_wait();
  const AttnItem item = a.items[blockIdx.x];
  const int chunk = blockIdx.y % n_chunks, kvh = blockIdx.y / n_chunks;
  const int group = s.n_heads / s.n_kv_heads;
  const int head0 = kvh * group + chunk * hc, heads_here = min(hc, group - chunk * hc);
  const int p0 = a.pos[item.first];
  const int hi = p0 + item.count - 1;
  const int lo = kv.window > 0 ? max(0, p0 - kv.window + 1) : 0;
  const int per_split = ((hi - lo + a.splits) / a.splits + kAttnKeyTile - 1) / kAttnKeyTile * kAttnKeyTile;
  const int ks = lo + static_cast<int>(blockIdx.z) * per_split;
  const int ke = min(hi, ks + per_split - 1);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  RowInfo ri[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int rr = warp * 16 + g + 8 * r, i = rr / hc, hh = rr - i * hc;
    ri[r].valid = i < item.count && hh < heads_here;
    ri[r].token = item.first + i;
    ri[r].head = head0 + hh;
    ri[r].pos = p0 + i;
    ri[r].lo = kv.window > 0 ? ri[r].pos - kv.window + 1 : 0;
  }
  QFrag<DP> q;
#pragma unroll
  for (int sidx = 0; sidx < DP / 16; ++sidx)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (ri[r].valid)
        v = *reinterpret_cast<const float4*>(a.q32 + (static_cast<int64_t>(ri[r].token) * s.n_heads + ri[r].head) * DP +
                                             sidx * 16 + t * 4);
      // a0 (row g) / a1 (row g+8): dims 4t, 4t+1 of the 16-dim step; a2 / a3: dims 4t+2, 4t+3.
      split2(v.x, v.y, q.hi[sidx][r], q.lo[sidx][r]);
      split2(v.z, v.w, q.hi[sidx][2 + r], q.lo[sidx][2 + r]);
    }
  float acc[DP / 8][4];
#pragma unroll
  for (int nd = 0; nd < DP / 8; ++nd) acc[nd][0] = acc[nd][1] = acc[nd][2] = acc[nd][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const int64_t head_off = (static_cast<int64_t>(item.slot) * s.n_kv_heads + kvh) * kv.cap * L::kPlanes * DP;
  const uint16_t* kbase = static_cast<const uint16_t*>(kv.k) + head_off;
  const uint16_t* vbase = static_cast<const uint16_t*>(kv.v) + head_off;
  const float scale_log2 = a.scale * kLog2e;
  const int n_tiles = ks <= ke ? (ke - ks) / kAttnKeyTile + 1 : 0;
  // Stage i % RS holds tile i.
  auto stage = [&](int it) { return stages + (RS == 2 ? (it & 1) : 0) * L::kStageHalfs; };
  if (n_tiles > 0) attn_issue_tile<DP, F16>(kbase, vbase, kv.cap, ks, ke, stage(0));
  for (int it = 0; it < n_tiles; ++it) {
    const bool next = it + 1 < n_tiles;
    if (RS == 2 && next) {
      attn_issue_tile<DP, F16>(kbase, vbase, kv.cap, ks + (it + 1) * kAttnKeyTile, ke, stage(it + 1));
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const uint16_t* st = stage(it);
    const KvTiles tiles{st + L::k_tile(0), F16 ? nullptr : st + L::k_tile(1), st + L::v_tile(0),
                        F16 ? nullptr : st + L::v_tile(1)};
    attn_tile<DP, !F16>(q, tiles, ks + it * kAttnKeyTile, ks, ke, ri, scale_log2, m, l, acc, lane);
    __syncthreads();
    // One stage: the next tile lands after this one is consumed.
    if (RS == 1 && next) attn_issue_tile<DP, F16>(kbase, vbase, kv.cap, ks + (it + 1) * kAttnKeyTile, ke, stages);
  }
  attn_epilogue<DP>(a, s, ri, m, l, acc, t);
}

template <int DP, int RS, bool F16>
cudaError_t attention_launch_rs(const AttnArgs& a, const AttnShape& s, const KvLayer& kv, dim3 grid, int warps,
                                int n_chunks, int hc, const Launch& ln) {
  const size_t smem = AttnLayout<DP, F16>::smem_bytes(RS);
  if (smem > 48 * 1024) {
    // Opt in once per instantiation (first launches are eager, never inside a graph capture).
    static const cudaError_t opt_in = cudaFuncSetAttribute(
        attention_kernel<DP, RS, F16>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (opt_in != cudaSuccess) return opt_in;
  }
  return launch_kernel(attention_kernel<DP, RS, F16>, grid, warps * 32, smem, ln, a, s, kv, n_chunks, hc);
}

// Two stages where the device allows the shared memory, else one.
template <int DP, bool F16>
cudaError_t attention_launch_dp(const AttnArgs& a, const AttnShape& s, const KvLayer& kv, dim3 grid, int warps,
                                int n_chunks, int hc, const Launch& ln) {
  using L = AttnLayout<DP, F16>;
  if (L::smem_bytes(2) <= static_cast<size_t>(ln.smem_optin))
    return attention_launch_rs<DP, 2, F16>(a, s, kv, grid, warps, n_chunks, hc, ln);
  if (L::smem_bytes(1) > static_cast<size_t>(ln.smem_optin)) return cudaErrorInvalidConfiguration;
  return attention_launch_rs<DP, 1, F16>(a, s, kv, grid, warps, n_chunks, hc, ln);
}

// ---------------------------------------------------------------------------------------------
// Decode attention (one query token per item), flash-decoding on tensor cores. A block holds the
// ≤ kDecHeads q heads of one chunk of a KV head's group, so each K/V row is read once for all of
// them. Each warp's m16n8k16 products take the heads as A rows (rows 0-7 the fp16 hi halves of q
// or of the probabilities, rows 8-15 their lo halves, so one product gives both and the row pairs
// are added) and 8-key tiles as B, straight from the cache's rows in registers (no shared memory):
// lane (g, t) of a score product holds key g's dims [t·DP/4, (t+1)·DP/4) (k positions 2t, 2t+1,
// 2t+8, 2t+9 of k-step s are dims t·DP/4 + 4s + 0..3, and q's A fragment uses the same map), and
// of a P·V product four keys' dims [g·DP/8, (g+1)·DP/8) (output column n of dim tile nd is dim
// n·DP/8 + nd). The cache's hi and lo planes (an f32 cache) are two B fragments, two products
// each, all four terms kept; an f16 cache's plane is the B fragment. A warp takes kTiles 8-key tiles per iteration
// (its K and V about 64 registers: the next iteration's K is loaded once the scores are done, its
// V once P·V is), the block's warps interleaved over the keys, each with its own running max and
// sum per head; at the end the warps are merged in a fixed order. An item uses
// attention_item_splits(its keys, a.splits) key splits (grid z past that writes empty partials),
// and a one-split result equals what the merge kernel computes from it, so an item's output never
// depends on the other items of the step.
constexpr int kDecHeads = 8;  // q heads per block (the A rows of one half)
constexpr int kDecWarps = 4;

template <int DP, bool F16>
struct DecLayout {
  static constexpr int kPlanes = kv_planes(F16);
  static constexpr int kKEl = DP / 4;  // K halves of a lane per 8-key tile and plane
  static constexpr int kVEl = DP / 8;  // V halves of a lane per key and plane
  static constexpr int kKWords = kKEl / 2, kVWords = kVEl / 2;
  // 8-key tiles per warp iteration, even (a P·V step takes two): K and V ≈ 64 registers.
  static constexpr int kTiles = 256 / (DP * kPlanes) > 2 ? 256 / (DP * kPlanes) : 2;
  static constexpr int kIterKeys = 8 * kTiles;  // keys of one warp iteration
};

// `W` 32-bit words from p (aligned to their size up to 16 bytes), zeros when !valid.
template <int W>
__device__ __forceinline__ void dec_load(uint32_t (&w)[W], const void* p, bool valid) {
  if constexpr (W % 4 == 0) {
#pragma unroll
    for (int i = 0; i < W / 4; ++i) {
      const uint4 v = valid ? static_cast<const uint4*>(p)[i] : make_uint4(0, 0, 0, 0);
      w[4 * i] = v.x, w[4 * i + 1] = v.y, w[4 * i + 2] = v.z, w[4 * i + 3] = v.w;
    }
  } else if constexpr (W == 2) {
    const uint2 v = valid ? *static_cast<const uint2*>(p) : make_uint2(0, 0);
    w[0] = v.x, w[1] = v.y;
  } else {
    static_assert(W == 1, "pieces of 4, 8 or a multiple of 16 bytes");
    w[0] = valid ? *static_cast<const uint32_t*>(p) : 0u;
  }
}

// grid: (item, kv head × head chunk, key split); block: kDecWarps warps.
template <int DP, bool F16>
__global__ void __launch_bounds__(kDecWarps * 32)
    attention_decode_kernel(const AttnArgs a, const AttnShape s, const KvLayer kv, int n_chunks, int hc) {
  using D = DecLayout<DP, F16>;
  constexpr int kTiles = D::kTiles, kKEl = D::kKEl, kVEl = D::kVEl;
  __shared__ float sm[kDecWarps][kDecHeads], sl[kDecWarps][kDecHeads];
  __shared__ __align__(16) float sacc[kDecWarps][kDecHeads][DP];
  pdl_wait();  // q, the step's items and the new K/V rows come from earlier kernels and copies
  const AttnItem item = a.items[blockIdx.x];
  const int chunk = blockIdx.y % n_chunks, kvh = blockIdx.y / n_chunks;
  const int group = s.n_heads / s.n_kv_heads;
  const int head0 = kvh * group + chunk * hc, heads = min(hc, group - chunk * hc);
  const int pos = a.pos[item.first];
  const int lo = kv.window > 0 ? max(0, pos - kv.window + 1) : 0;
  const int n_keys = pos - lo + 1;
  const int splits = attention_item_splits(n_keys, a.splits);
  const int per_split = (n_keys + splits - 1) / splits;
  const int ks = static_cast<int>(blockIdx.z) * per_split;  // key offsets from lo: [ks, ke)
  const int ke = min(n_keys, ks + per_split);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  // q's A fragments: row g = head head0 + g (hi), row g + 8 its lo half; zero past the chunk.
  uint32_t qa[DP / 16][4];
  {
    float q[kKEl];
#pragma unroll
    for (int i = 0; i < kKEl; i += 4) {
      float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (g < heads)
        v = *reinterpret_cast<const float4*>(a.q32 + (static_cast<int64_t>(item.first) * s.n_heads + head0 + g) * DP +
                                             t * kKEl + i);
      q[i] = v.x, q[i + 1] = v.y, q[i + 2] = v.z, q[i + 3] = v.w;
    }
#pragma unroll
    for (int st = 0; st < DP / 16; ++st) {
      split2(q[4 * st], q[4 * st + 1], qa[st][0], qa[st][1]);
      split2(q[4 * st + 2], q[4 * st + 3], qa[st][2], qa[st][3]);
    }
  }
  constexpr int kRowHalfs = D::kPlanes * DP;
  const int64_t head_off = (static_cast<int64_t>(item.slot) * s.n_kv_heads + kvh) * kv.cap * kRowHalfs;
  const uint16_t* kbase = static_cast<const uint16_t*>(kv.k) + head_off + t * kKEl;
  const uint16_t* vbase = static_cast<const uint16_t*>(kv.v) + head_off + g * kVEl;
  const int row0 = static_cast<int>(lo % kv.cap);  // cache row of key offset 0 (a window never exceeds cap)
  auto row_of = [&](int j) {
    int row = row0 + j;
    if (row >= kv.cap) row -= static_cast<int>(kv.cap);
    return static_cast<int64_t>(row) * kRowHalfs;
  };
  // First key of the warp's iteration `it`.
  auto key0 = [&](int it) { return ks + (it * kDecWarps + warp) * D::kIterKeys; };
  // K: key 8·T + g of the iteration, this lane's dims; V: keys 16·i + 8·h + 2t + e (P·V step i,
  // half h, e = 0, 1), this lane's dims; each per plane (hi, lo).
  uint32_t kw[kTiles][D::kPlanes][D::kKWords], vw[kTiles / 2][4][D::kPlanes][D::kVWords];
  auto load_k = [&](int it) {
#pragma unroll
    for (int T = 0; T < kTiles; ++T) {
      const int j = key0(it) + 8 * T + g;
#pragma unroll
      for (int p = 0; p < D::kPlanes; ++p) dec_load(kw[T][p], kbase + (j < ke ? row_of(j) : 0) + p * DP, j < ke);
    }
  };
  auto load_v = [&](int it) {
#pragma unroll
    for (int i = 0; i < kTiles / 2; ++i)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int j = key0(it) + 16 * i + 8 * (c >> 1) + 2 * t + (c & 1);
#pragma unroll
        for (int p = 0; p < D::kPlanes; ++p) dec_load(vw[i][c][p], vbase + (j < ke ? row_of(j) : 0) + p * DP, j < ke);
      }
  };

  const float scale_log2 = a.scale * kLog2e;
  float m = -INFINITY, l = 0.0f;  // head g: running max (log2 units) and this lane's share of the sum
  float acc[DP / 8][4];           // dim tile nd: head g (rows g, g + 8), dims 2t·DP/8 + nd, (2t + 1)·DP/8 + nd
#pragma unroll
  for (int nd = 0; nd < DP / 8; ++nd) acc[nd][0] = acc[nd][1] = acc[nd][2] = acc[nd][3] = 0.0f;
  const int n_iter = ks < ke ? (ke - ks + kDecWarps * D::kIterKeys - 1) / (kDecWarps * D::kIterKeys) : 0;
  if (key0(0) < ke) load_k(0), load_v(0);
  for (int it = 0; it < n_iter; ++it) {
    if (key0(it) >= ke) break;  // this warp's share ended (the others' iterations go on)
    float sc[kTiles][2];        // head g, keys 8·T + 2t, 2t + 1
#pragma unroll
    for (int T = 0; T < kTiles; ++T) {
      float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int st = 0; st < DP / 16; ++st)
#pragma unroll
        for (int p = 0; p < D::kPlanes; ++p)
          mma_f16(c, qa[st][0], qa[st][1], qa[st][2], qa[st][3], kw[T][p][2 * st], kw[T][p][2 * st + 1]);
      const int j = key0(it) + 8 * T + 2 * t;
      sc[T][0] = j < ke ? (c[0] + c[2]) * scale_log2 : -INFINITY;
      sc[T][1] = j + 1 < ke ? (c[1] + c[3]) * scale_log2 : -INFINITY;
    }
    if (it + 1 < n_iter && key0(it + 1) < ke) load_k(it + 1);

    float mx = sc[0][0];
#pragma unroll
    for (int T = 0; T < kTiles; ++T) mx = fmaxf(mx, fmaxf(sc[T][0], sc[T][1]));
    mx = quad_max(mx);
    const float m_new = fmaxf(m, mx);
    const float m_use = m_new == -INFINITY ? 0.0f : m_new;
    const float corr = exp2f(m - m_use);
    m = m_new;
    float ps = 0.0f;
#pragma unroll
    for (int T = 0; T < kTiles; ++T) {
      sc[T][0] = exp2f(sc[T][0] - m_use), sc[T][1] = exp2f(sc[T][1] - m_use);
      ps += sc[T][0] + sc[T][1];
    }
    l = l * corr + ps;
#pragma unroll
    for (int nd = 0; nd < DP / 8; ++nd) acc[nd][0] *= corr, acc[nd][1] *= corr, acc[nd][2] *= corr, acc[nd][3] *= corr;
#pragma unroll
    for (int i = 0; i < kTiles / 2; ++i) {
      uint32_t pa[4];  // rows g (hi) and g + 8 (lo) of P; k 0-7 tile 2i, 8-15 tile 2i + 1
      split2(sc[2 * i][0], sc[2 * i][1], pa[0], pa[1]);
      split2(sc[2 * i + 1][0], sc[2 * i + 1][1], pa[2], pa[3]);
#pragma unroll
      for (int nd = 0; nd < DP / 8; ++nd) {
        const uint32_t sel = nd & 1 ? 0x7632u : 0x5410u;  // the half of dim nd from keys 2t, 2t + 1
#pragma unroll
        for (int p = 0; p < D::kPlanes; ++p) {
          const uint32_t b0 = __byte_perm(vw[i][0][p][nd >> 1], vw[i][1][p][nd >> 1], sel);
          const uint32_t b1 = __byte_perm(vw[i][2][p][nd >> 1], vw[i][3][p][nd >> 1], sel);
          mma_f16(acc[nd], pa[0], pa[1], pa[2], pa[3], b0, b1);
        }
      }
    }
    if (it + 1 < n_iter && key0(it + 1) < ke) load_v(it + 1);
  }

  // The warp's sum per head (its quad), then the warps in order.
  l = quad_sum(l);
#pragma unroll
  for (int nd = 0; nd < DP / 8; ++nd) {
    sacc[warp][g][2 * t * (DP / 8) + nd] = acc[nd][0] + acc[nd][2];
    sacc[warp][g][(2 * t + 1) * (DP / 8) + nd] = acc[nd][1] + acc[nd][3];
  }
  if (t == 0) sm[warp][g] = m, sl[warp][g] = l;
  __syncthreads();
  for (int idx = threadIdx.x; idx < heads * (DP / 4); idx += blockDim.x) {
    const int h = idx / (DP / 4), c = idx - h * (DP / 4);
    float mm = sm[0][h];
#pragma unroll
    for (int w = 1; w < kDecWarps; ++w) mm = fmaxf(mm, sm[w][h]);
    const float m_use = mm == -INFINITY ? 0.0f : mm;
    float lsum = 0.0f;
    float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int w = 0; w < kDecWarps; ++w) {
      const float f = exp2f(sm[w][h] - m_use);
      const float4 x = *reinterpret_cast<const float4*>(&sacc[w][h][4 * c]);
      lsum += sl[w][h] * f;
      o.x += x.x * f, o.y += x.y * f, o.z += x.z * f, o.w += x.w * f;
    }
    const int head = head0 + h;
    if (a.splits == 1) {
      // The merge kernel's arithmetic for one split (no contraction into FMAs), so that an item
      // gives the same bits whether or not other items of its step needed splits.
      const float sink = a.sinks[head] * kLog2e;
      const float ms = fmaxf(sink, mm);
      const float f = exp2f(mm - ms);
      const float den = __fadd_rn(__fmul_rn(lsum, f), exp2f(sink - ms));
      const float out[4] = {__fmul_rn(o.x, f) / den, __fmul_rn(o.y, f) / den, __fmul_rn(o.z, f) / den,
                            __fmul_rn(o.w, f) / den};
      __half* dst = reinterpret_cast<__half*>(a.o16) + static_cast<int64_t>(item.first) * a.o_stride;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int d = 4 * c + e;
        if (d < s.head_dim) store_f16_pair(dst + k_phys(head * s.head_dim + d), a.o_lo, out[e]);
      }
    } else {
      // Partials of one (token, head) are contiguous over the splits: [token][head][split].
      const int64_t row = (static_cast<int64_t>(item.first) * s.n_heads + head) * a.splits + blockIdx.z;
      *reinterpret_cast<float4*>(a.part_o + row * DP + 4 * c) = o;
      if (c == 0) *reinterpret_cast<float2*>(a.part_ml + row * 2) = make_float2(mm, lsum);
    }
  }
}

template <int DP>
cudaError_t attention_decode_launch_dp(const AttnArgs& a, const AttnShape& s, const KvLayer& kv, int n_chunks, int hc,
                                       const Launch& ln) {
  const dim3 grid(a.n_items, s.n_kv_heads * n_chunks, a.splits);
  if (kv.f16)
    return launch_kernel(attention_decode_kernel<DP, true>, grid, dim3(kDecWarps * 32), 0, ln, a, s, kv, n_chunks, hc);
  return launch_kernel(attention_decode_kernel<DP, false>, grid, dim3(kDecWarps * 32), 0, ln, a, s, kv, n_chunks, hc);
}

__global__ void attention_combine_kernel(const AttnArgs a, const AttnShape s) {
  __shared__ float wz[256];
  __shared__ float red[32];
  __shared__ float acc[256];
  pdl_wait();
  const int row = blockIdx.x;  // token · n_heads + head
  const int head = row % s.n_heads, token = row / s.n_heads;
  const float* ml = a.part_ml + static_cast<int64_t>(row) * a.splits * 2;
  const float sink = a.sinks[head] * kLog2e;
  float mm = sink;
  for (int z = threadIdx.x; z < a.splits; z += blockDim.x) mm = fmaxf(mm, ml[2 * z]);
  mm = warp_max(mm);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = mm;
  __syncthreads();
  mm = red[0];
  for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) mm = fmaxf(mm, red[w]);
  float l = 0.0f;
  for (int z = threadIdx.x; z < a.splits; z += blockDim.x) {
    const float f = exp2f(ml[2 * z] - mm);
    wz[z] = f;
    l += ml[2 * z + 1] * f;
  }
  const float lsum = block_sum(l, red) + exp2f(sink - mm);  // block_sum syncs: wz is visible after it
  const int groups = blockDim.x / s.dp, gi = threadIdx.x / s.dp, d = threadIdx.x % s.dp;
  const float* po = a.part_o + static_cast<int64_t>(row) * a.splits * s.dp;
  float o = 0.0f;
  for (int z = gi; z < a.splits; z += groups) o += po[z * s.dp + d] * wz[z];
  acc[threadIdx.x] = o;
  __syncthreads();
  if (gi == 0 && d < s.head_dim) {
    for (int g2 = 1; g2 < groups; ++g2) o += acc[g2 * s.dp + d];
    store_f16_pair(
        reinterpret_cast<__half*>(a.o16) + static_cast<int64_t>(token) * a.o_stride + k_phys(head * s.head_dim + d),
        a.o_lo, o / lsum);
  }
}

}  // namespace

int attention_heads_per_chunk(const AttnShape& s) {
  const int group = s.n_heads / s.n_kv_heads;
  return group < 64 ? group : 64;
}

int attention_head_chunks(const AttnShape& s) {
  const int hc = attention_heads_per_chunk(s);
  return (s.n_heads / s.n_kv_heads + hc - 1) / hc;
}

cudaError_t qkv_rope_launch(const QkvRopeArgs& a, int n, const AttnShape& s, const KvLayer& kv, const Launch& ln) {
  if (n <= 0) return cudaSuccess;
  if (s.head_dim % 2 != 0 || s.dp < s.head_dim || s.dp % 16 != 0 || kv.cap <= 0) return cudaErrorInvalidValue;
  if (a.prefetch.bytes < 0 || (a.prefetch.bytes > 0 && a.prefetch.p == nullptr)) return cudaErrorInvalidValue;
  const int items = (s.n_heads + s.n_kv_heads) * (s.head_dim / 2) + s.n_kv_heads * s.head_dim +
                    (s.n_heads + 2 * s.n_kv_heads) * (s.dp - s.head_dim);
  // Prefill-sized steps: 8 tokens a block (H100, pp2048: 45 056 blocks of one token each took 96 µs a
  // layer, scheduling-bound); decode steps keep one token a block.
  const int per_block = n >= 512 ? 8 : 1;
  const dim3 grid((n + per_block - 1) / per_block, (items + 127) / 128);
  return launch_kernel(qkv_rope_kernel, grid, 128, 0, ln, a, s, kv, n, per_block, items);
}

namespace {
// f(std::integral_constant<int, DP>{}) for the head dims the kernels are built for, else `otherwise`.
template <typename R, typename F>
R with_head_dim(int dp, R otherwise, F&& f) {
  switch (dp) {
    case 16: return f(std::integral_constant<int, 16>{});
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    case 128: return f(std::integral_constant<int, 128>{});
    default: return otherwise;
  }
}
}  // namespace

int attention_decode_chunks(const AttnShape& s) {
  return (s.n_heads / s.n_kv_heads + kDecHeads - 1) / kDecHeads;
}

cudaError_t attention_decode_slots(const AttnShape& s, bool kv_f16, int sm_count, int* slots) {
  int per_sm = 0;
  const cudaError_t e = with_head_dim(s.dp, cudaErrorInvalidValue, [&](auto dp) {
    return kv_f16 ? cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, attention_decode_kernel<dp(), true>,
                                                                  kDecWarps * 32, 0)
                  : cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, attention_decode_kernel<dp(), false>,
                                                                  kDecWarps * 32, 0);
  });
  *slots = per_sm * sm_count;
  return e;
}

cudaError_t attention_launch(const AttnArgs& a, const AttnShape& s, const KvLayer& kv, const Launch& ln) {
  if (a.n_items <= 0) return cudaSuccess;
  if (s.n_kv_heads <= 0 || s.n_heads % s.n_kv_heads != 0 || a.splits < 1) return cudaErrorInvalidValue;
  if (a.tokens_per_item == 1) {
    const int n_chunks = attention_decode_chunks(s);
    const int hc = (s.n_heads / s.n_kv_heads + n_chunks - 1) / n_chunks;
    return with_head_dim(s.dp, cudaErrorInvalidValue,
                         [&](auto dp) { return attention_decode_launch_dp<dp()>(a, s, kv, n_chunks, hc, ln); });
  }
  const int hc = attention_heads_per_chunk(s), n_chunks = attention_head_chunks(s);
  const int rows = a.tokens_per_item * hc;
  if (rows <= 0 || rows > kAttnMaxWarps * kAttnRowsPerWarp) return cudaErrorInvalidValue;
  const int warps = attention_warps(rows);
  const dim3 grid(a.n_items, s.n_kv_heads * n_chunks, a.splits);
  return with_head_dim(s.dp, cudaErrorInvalidValue, [&](auto dp) {
    return kv.f16 ? attention_launch_dp<dp(), true>(a, s, kv, grid, warps, n_chunks, hc, ln)
                  : attention_launch_dp<dp(), false>(a, s, kv, grid, warps, n_chunks, hc, ln);
  });
}

size_t attention_smem_bytes(int dp, bool kv_f16, int stages) {
  return with_head_dim(dp, size_t{0}, [&](auto d) {
    return kv_f16 ? AttnLayout<d(), true>::smem_bytes(stages) : AttnLayout<d(), false>::smem_bytes(stages);
  });
}

cudaError_t attention_combine_launch(const AttnArgs& a, const AttnShape& s, const Launch& ln) {
  if (a.n_tokens <= 0 || a.splits <= 1) return cudaSuccess;
  if (a.splits > 256 || s.dp > 256) return cudaErrorInvalidValue;
  return launch_kernel(attention_combine_kernel, a.n_tokens * s.n_heads, 256, 0, ln, a, s);
}

}  // namespace gptoss::cuda
