// Small device helpers shared by the CUDA kernels: Programmatic Dependent Launch controls, L2
// prefetches, fp16 packing, the clamped SwiGLU, the mma.sync wrapper, zero-filling cp.async copies and
// warp/block reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace gptoss::cuda {

// Programmatic Dependent Launch (sm_90). Every kernel is launched through launch_kernel
// (launch.cuh), so it may start while the previous kernel of the stream still runs. pdl_wait()
// blocks until that kernel has completed and its writes are visible; every kernel calls it before
// its first read of anything an earlier kernel wrote and before its first global write (the
// previous kernel may still be reading), and before it completes (the chain of waits orders every
// kernel after all earlier ones). Only loads of weights that no kernel writes may come before it.
// No kernel triggers its dependents early (griddepcontrol.launch_dependents): the next kernel is
// launched once every block of this one has exited (the implicit trigger), so its launch and its
// pre-wait weight loads overlap this kernel's completion, and its blocks never occupy SM slots
// (spinning in pdl_wait) while this kernel still has blocks to run. Measured on an H100 (same call, 20b): an explicit
// trigger right after pdl_wait gave tg128 409.7 / 407.1 and 32k depth 320.0 tok/s, the implicit trigger 431.9 / 431.7
// and 337.1, no PDL at all 428.4 / 428.3 and 335.0 (64 sequences: 6 391, 6 344, 6 341). Triggers only in the
// latency-bound kernels (norms, RoPE, attention, router), plus in the products after their main loop, gave tg128
// +1.5 % but 120b −1.5 % and 64 sequences −1 % (tenth session, docs/PERFORMANCE.md): not kept either.
// Code compiled for an architecture below sm_90 has no griddepcontrol: pdl_wait is empty there, and
// launch_kernel launches its kernels without the PDL attribute (Launch::pdl is false for such an
// image), so each kernel starts after the previous one has completed, as in any stream.
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// Part `part` of `parts` (equal 16-byte-aligned shares) of the bytes [p, p + bytes) into L2, for a
// later kernel (kernels.h, L2Span): lane i of the calling warp issues pieces i, i + 32, … of at
// most 32 KB each as bulk prefetches (sm_90). Nothing waits for the data, but the issuing kernel
// takes longer the more it issues (on an H100 about 4.7 µs for 23.6 MB, docs/PERFORMANCE.md), so
// spans are kept small. Code for an architecture below sm_90 has no bulk prefetch and issues nothing.
__device__ __forceinline__ void l2_prefetch(const void* p, int64_t bytes, int part, int parts) {
#if __CUDA_ARCH__ >= 900
  constexpr uint64_t kPiece = 32 * 1024;
  const uint64_t first = (__cvta_generic_to_global(p) + 15) & ~uint64_t{15};
  const uint64_t end = (__cvta_generic_to_global(p) + static_cast<uint64_t>(bytes)) & ~uint64_t{15};
  if (bytes <= 0 || end <= first) return;
  const uint64_t share = ((end - first + parts - 1) / parts + 15) & ~uint64_t{15};
  const uint64_t b0 = first + part * share, b1 = min(end, b0 + share);
  for (uint64_t q = b0 + (threadIdx.x & 31) * kPiece; q < b1; q += 32 * kPiece) {
    const uint32_t size = static_cast<uint32_t>(min(kPiece, b1 - q));
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(q), "r"(size) : "memory");
  }
#endif
}

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

__device__ __forceinline__ float2 unpack_half2(uint32_t u) {
  __half2 h = *reinterpret_cast<__half2*>(&u);
  return __half22float2(h);
}

// fp16 of a float, saturated to ±65504 (activations beyond the fp16 range are clamped rather than
// turned into inf; none of gpt-oss's GEMM inputs come near it).
__device__ __forceinline__ __half f32_to_f16_sat(float v) {
  return __float2half_rn(fminf(fmaxf(v, -65504.0f), 65504.0f));
}

// Stores v as an fp16 pair: hi = fp16(v) at p[0] and lo = fp16(v − hi) at p[lo]; hi + lo carries v
// to about 2^-22 relative (products with exact fp16 weights are then near-f32).
__device__ __forceinline__ void store_f16_pair(__half* p, int64_t lo, float v) {
  const __half h = f32_to_f16_sat(v);
  p[0] = h;
  p[lo] = __float2half_rn(v - __half2float(h));
}

// Two values as the fp16 pairs of adjacent elements: one 4-byte store per half (p and p + lo must be
// 4-byte aligned); the same halves as store_f16_pair of each.
__device__ __forceinline__ void store_f16_pair2(__half* p, int64_t lo, float v0, float v1) {
  const __half h0 = f32_to_f16_sat(v0), h1 = f32_to_f16_sat(v1);
  *reinterpret_cast<__half2*>(p) = __halves2half2(h0, h1);
  *reinterpret_cast<__half2*>(p + lo) =
      __halves2half2(__float2half_rn(v0 - __half2float(h0)), __float2half_rn(v1 - __half2float(h1)));
}

// gpt-oss clamped SwiGLU of one gate/up pair: gate clamped above at limit, up to [−limit, limit],
// gate·σ(alpha·gate)·(up + 1).
__device__ __forceinline__ float swiglu_clamped(float gate, float up, float alpha, float limit) {
  const float g = fminf(gate, limit);
  const float l = fminf(fmaxf(up, -limit), limit);
  return g / (1.0f + expf(-alpha * g)) * (l + 1.0f);
}

__device__ __forceinline__ float bf16_bits_to_f32(uint16_t v) {
  return __uint_as_float(static_cast<uint32_t>(v) << 16);
}

// half2 of 2^e in both halves: exact for e in [-24, 15], 0 below, inf above.
__device__ __forceinline__ uint32_t pow2_half2(int e) {
  uint32_t h;
  if (e >= -14) {
    h = static_cast<uint32_t>(min(e, 16) + 15) << 10;
  } else if (e >= -24) {
    h = 1u << (e + 24);
  } else {
    h = 0u;
  }
  return h | (h << 16);
}

__device__ __forceinline__ uint32_t hmul2_bits(uint32_t a, uint32_t b) {
  __half2 r = __hmul2(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b));
  return *reinterpret_cast<uint32_t*>(&r);
}

// D = A·B + D for one m16n8k16 tile (fp16 operands, f32 accumulators).
__device__ __forceinline__ void mma_f16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                        uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Asynchronous global → shared copies that zero-fill the destination when !valid (0 source bytes; src
// must still be a valid address): 16 bytes through L2 only (.cg), and with a shared-window address
// (the `s` forms) 16 bytes the same way or 8 / 4 bytes through L1 (.ca, the only form below 16).
__device__ __forceinline__ void cp_async16s(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async8s(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 8 : 0));
}
__device__ __forceinline__ void cp_async4s(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  cp_async16s(static_cast<uint32_t>(__cvta_generic_to_shared(dst)), src, valid);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Σ of n ≤ 32 warp sums w[0..n) (the second stage of block_sum), computed by every lane of the warp.
__device__ __forceinline__ float warp_sums_total(const float* w, int n) {
  const int lane = threadIdx.x & 31;
  return warp_sum(lane < n ? w[lane] : 0.0f);
}

// Sum over the block (blockDim.x a multiple of 32, ≤ 1024); every thread gets the result. The
// order is fixed by blockDim, so the result is deterministic. `scratch` holds ≥ 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return warp_sums_total(scratch, nw);
}

}  // namespace gptoss::cuda
