// MXFP4 expert products of prefill steps (64-token column tiles) on Hopper's warpgroup MMA.
//
// One block = two warpgroups = 256 weight rows of one expert × one tile of ≤ 64 tokens. The tokens
// are wgmma's M (64) and each warpgroup's 128 weight rows its N: each instruction is an m64n128k16
// product with both operands in shared memory, in the K-major layout with the 128-byte swizzle: a
// row (token or weight row) holds the chunk's 64 k values in 128 bytes, 8 rows form a 1 KB atom, and
// 16-byte piece j of row r sits at piece j ^ r of its row (the tensor cores' reads then hit every
// bank once).
//
// The reduction runs in chunks of two 32-blocks (64 k values). A 3-stage cp.async ring, two chunks
// ahead, brings each chunk's activations (the tokens' hi and lo halves, 16-byte pieces), codes (8
// bytes of each lane word of a row: the chunk's two blocks) and scale words. Once the previous
// chunk's products are done, all 256 threads decode the chunk's codes, a row each, into fp16 weights
// (value · 2^(s−127), exact: gemm_common.cuh's scale_row) in the block's weight buffer, in the same
// layout; then each warpgroup issues the chunk's 8 wgmma for its rows: per block, hi k-steps 0 and
// 1, then lo k-steps 0 and 1, all into one f32 accumulator (64 registers a thread). The
// instruction's k order is the storage order (k_phys) on both sides, so the products are those of
// the dot product. Two blocks share an SM (108 KB of shared memory, 122 registers): one decodes
// while the other's products run.
//
// Measured on an H100 (pp2048, same calls, tok/s; the mma.sync kernels give 20 200): this kernel
// 25 000; with one block per SM, two weight buffers and a 4-stage ring (a block decoding while its
// own products run) 22 300; that with the second warpgroup kept from multiplying by a branch 17 600
// (ptxas serialises every wgmma when one lies on a divergent path: "C7518 Potential Performance
// Loss"), and that also without the swizzle 15 300.
#include "backend/cuda/gemm_common.cuh"
#include "backend/cuda/launch.cuh"

namespace gptoss::cuda {
namespace {

constexpr int kThreads = 256;         // two warpgroups: both copy, decode and multiply
constexpr int kTok = 64;              // tokens per block: one column tile, wgmma M
constexpr int kRowsPerBlock = 256;    // weight rows per block: 128 per warpgroup, wgmma N
constexpr int kStages = 3;            // chunk c + 2 is copied into the stage of chunk c − 1 (its products are done)
constexpr int kActHalf = kTok * 128;  // 8 KB: hi or lo half of a chunk
constexpr int kCodes = 2 * kActHalf;  // stage offset of the codes
constexpr int kScales = kCodes + kRowsPerBlock * 32;                     // stage offset of the scale words
constexpr int kStageBytes = kScales + kRowsPerBlock * 4;                 // 25 KB
constexpr int kWeightBytes = kRowsPerBlock * 128;                        // 32 KB: a chunk's decoded weights
constexpr int kSmemBytes = kStages * kStageBytes + kWeightBytes + 1024;  // 108 KB with the alignment slack
static_assert(kTok <= kThreads && kRowsPerBlock == kThreads);
static_assert(kStageBytes % 1024 == 0 && kActHalf % 1024 == 0, "swizzle atoms stay 1 KB aligned");

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GPTOSS_WGMMA 1
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900
// Launch::wgmma takes any sm_90 image for one with this kernel: build Hopper code as sm_90a.
#error "the CUDA backend's Hopper code must be built for sm_90a (GPTOSS_CUDA_ARCHS 90a), not sm_90"
#endif

#ifdef GPTOSS_WGMMA
// Byte offset of 16-byte piece j (k values 8j..8j+7 of the chunk) of row r in a swizzled operand.
__device__ __forceinline__ uint32_t swz(int r, int j) {
  return static_cast<uint32_t>((r >> 3) * 1024 + (r & 7) * 128 + ((j ^ (r & 7)) << 4));
}

// Shared-memory matrix descriptor of a K-major operand with the 128-byte swizzle: start address (the
// k16 step's first piece in the atom's first row), leading offset 16 (unused by this layout), stride
// 1 KB between 8-row atoms, layout type 1 (bits 62-63).
__device__ __forceinline__ uint64_t smem_desc_sw128(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | uint64_t{1} << 16 | uint64_t{1024 >> 4} << 32 |
         uint64_t{1} << 62;
}

// d += A·B for A = 64 × 16 (tokens) and B = 16 × 128 (weight rows), both from shared memory.
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t da, uint64_t db) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, "
      "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "
      "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, "
      "1, 1, 1, 0, 0;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]),
        "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),
        "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),
        "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db));
}

// Keeps the compiler from moving reads or writes of the accumulators across the asynchronous MMA
// (the registers change between issue and wait without the compiler seeing it).
__device__ __forceinline__ void fence_acc(float (&d)[64]) {
#pragma unroll
  for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_wait_all() {
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}
// Shared-memory writes of the generic proxy (st.shared, cp.async) become visible to wgmma's reads.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

#endif

template <GemmOut MODE>
__global__ void __launch_bounds__(kThreads, 2) moe_wgmma_kernel(const GemmArgs a) {
#ifdef GPTOSS_WGMMA
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  __shared__ int xrow[kTok];
  // The swizzle works on address bits: atoms must start at 1 KB boundaries of the shared window.
  const uint32_t raw_s = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t smem_s = (raw_s + 1023) & ~1023u;
  const uint8_t* smem = smem_raw + (smem_s - raw_s);
  const uint32_t wsm = smem_s + kStages * kStageBytes;  // the chunk's decoded weights

  pdl_wait();  // tiles, gathered rows and activations come from earlier kernels
  if (static_cast<int>(blockIdx.y) >= *a.n_tiles) return;
  const int4 tl = reinterpret_cast<const int4*>(a.tiles)[blockIdx.y];
  const int expert = tl.x, start = tl.y, count = tl.z;
  const int tid = threadIdx.x;
  if (tid < kTok) xrow[tid] = tid < count ? (a.x_gather ? a.x_gather[start + tid] : start + tid) : 0;
  __syncthreads();

  // Copies of one chunk. Activations: thread = (token m = tid/4, piece p = tid%4), pieces (half h,
  // p and p + 4): a warp reads 64 contiguous bytes of each of 8 tokens and writes them in 4
  // conflict-free rounds. Codes: row tid, the 8 bytes of each of its 4 lane words (piece
  // (n, t) at ((t/2)·256 + n)·16 + (t%2)·8, so that a row is read back with two conflict-free 16-byte
  // loads). Scales: the row's word of the group (4 blocks).
  const int am = tid >> 2, ap = tid & 3;
  const bool a_ok = am < count;
  const uint16_t* a_src = a.x + (a_ok ? static_cast<int64_t>(xrow[am]) * a.x_stride + ap * 8 : 0);
  const uint32_t a_dst[2] = {swz(am, ap), swz(am, ap + 4)};
  const int row_base = blockIdx.x * kRowsPerBlock;
  const uint8_t* wexp = static_cast<const uint8_t*>(a.w) + expert * a.w_expert_bytes;
  const uint8_t* sexp = a.scales + expert * a.s_expert_bytes;
  const bool r_ok = row_base + tid < a.rows;
  const uint8_t* c_src = r_ok ? wexp + mxfp4_code_offset(row_base + tid, 0, a.kblocks) : wexp;
  const uint8_t* s_src = r_ok ? sexp + mxfp4_scale_offset(row_base + tid, 0, a.kblocks) : sexp;
  auto issue = [&](int c) {
    const uint32_t st = smem_s + (c % kStages) * kStageBytes;
    const int64_t k0 = static_cast<int64_t>(c) * 64;
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int q = 0; q < 2; ++q)
        cp_async16s(st + h * kActHalf + a_dst[q], a_src + (a_ok ? k0 + h * a.x_lo + q * 32 : 0), a_ok);
    const int group = c >> 1, half = c & 1;
    const uint8_t* cs = c_src + (r_ok ? group * 1024 + half * 8 : 0);
#pragma unroll
    for (int t = 0; t < 4; ++t)
      cp_async8s(st + kCodes + ((t >> 1) * kRowsPerBlock + tid) * 16 + (t & 1) * 8, cs + (r_ok ? 16 * t : 0), r_ok);
    cp_async4s(st + kScales + tid * 4, s_src + (r_ok ? group * 64 : 0), r_ok);
  };
  // Warpgroup wg multiplies weight rows 128·wg .. 128·wg + 127 (its B operand starts 16 atoms in).
  // Every thread runs every wgmma instruction: a branch around them (one warpgroup multiplying,
  // the other only decoding) made ptxas serialize them.
  const int wg = tid >> 7;
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;

  const int nchunks = a.kblocks / 2;
  issue(0);
  asm volatile("cp.async.commit_group;\n" ::: "memory");
  if (nchunks > 1) issue(1);
  asm volatile("cp.async.commit_group;\n" ::: "memory");
  for (int c = 0; c < nchunks; ++c) {
    asm volatile("cp.async.wait_group 1;\n" ::: "memory");  // this thread's pieces of chunk c landed
    wgmma_wait_all();  // chunk c − 1's products: the weight buffer and stage (c − 1) % 3 are free
    fence_acc(acc);
    __syncthreads();
    if (c + 2 < nchunks) issue(c + 2);
    asm volatile("cp.async.commit_group;\n" ::: "memory");

    // Decode row tid of both blocks of the chunk, lane word t of block b into piece 4b + t.
    const uint8_t* st = smem + (c % kStages) * kStageBytes;
    const int half = c & 1;
    {
      const uint4 w01 = *reinterpret_cast<const uint4*>(st + kCodes + tid * 16);  // words t0b0 t0b1 t1b0 t1b1
      const uint4 w23 = *reinterpret_cast<const uint4*>(st + kCodes + (kRowsPerBlock + tid) * 16);
      const uint32_t sw = *reinterpret_cast<const uint32_t*>(st + kScales + tid * 4);
      const uint32_t words[2][4] = {{w01.x, w01.z, w23.x, w23.z}, {w01.y, w01.w, w23.y, w23.w}};
#pragma unroll
      for (int b = 0; b < 2; ++b) {
        const uint32_t s = (sw >> (8 * (2 * half + b))) & 0xffu;
#pragma unroll
        for (int t = 0; t < 4; ++t) {
          uint32_t h[4];
          mxfp4_pairs(words[b][t], h);
          scale_row(h, s);
          const uint32_t dst = wsm + swz(tid, 4 * b + t);
          asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst), "r"(h[0]), "r"(h[1]), "r"(h[2]),
                       "r"(h[3])
                       : "memory");
        }
      }
    }
    // One proxy fence covers the chunk's activations (landed above) and its weights.
    fence_proxy_async();
    __syncthreads();  // every thread's weights and activations of chunk c are in place

    const uint32_t act = smem_s + (c % kStages) * kStageBytes, wrows = wsm + wg * (kWeightBytes / 2);
    wgmma_fence();
    fence_acc(acc);
#pragma unroll
    for (int b = 0; b < 2; ++b)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int s = 0; s < 2; ++s) {
          const uint32_t k = (4 * b + 2 * s) * 16;  // the k16 step's first piece, in bytes
          wgmma_m64n128k16(acc, smem_desc_sw128(act + h * kActHalf + k), smem_desc_sw128(wrows + k));
        }
    wgmma_commit();
  }
  wgmma_wait_all();
  fence_acc(acc);

  // Accumulator r of lane (g, t) in warp w of the warpgroup: token 16w + g (+ 8 for r % 4 ≥ 2),
  // weight rows 128·wg + 8·(r/4) + 2t and + 1: a gate row and its up row (rows interleave gate/up).
  const int warp = (tid >> 5) & 3, g = (tid & 31) >> 2, t = tid & 3;
  const int row0 = row_base + 128 * wg + 2 * t;
#pragma unroll
  for (int hm = 0; hm < 2; ++hm) {
    const int j = 16 * warp + g + 8 * hm;
    if (j >= count) continue;
    const int64_t orow = a.out_scatter ? a.out_scatter[start + j] : start + j;
    if constexpr (MODE == GemmOut::kSwiglu) {
      // Lane t's outputs i = r/2 of q and q + 1 (q even) are i and i + 4 of one group of 8, which
      // k_phys stores side by side (2t, 2t + 1): one 4-byte store per half for both.
      __half* out = reinterpret_cast<__half*>(a.out16) + orow * a.out16_stride;
      const float* bias = a.bias + expert * a.bias_expert_stride;
      const bool wide = a.out16_lo % 2 == 0 && (reinterpret_cast<uintptr_t>(out) & 3) == 0;
      auto act = [&](int r, int q) {  // output r / 2: gate row r, up row r + 1, accumulators of q
        return swiglu_clamped(acc[4 * q + 2 * hm] + bias[r], acc[4 * q + 2 * hm + 1] + bias[r + 1], a.swiglu_alpha,
                              a.swiglu_limit);
      };
#pragma unroll
      for (int q = 0; q < 16; q += 2) {
        const int r = row0 + 8 * q, r1 = r + 8;
        if (r >= a.rows) continue;
        const float v0 = act(r, q);
        if (r1 >= a.rows) {
          store_f16_pair(out + k_phys(r / 2), a.out16_lo, v0);
          continue;
        }
        const float v1 = act(r1, q + 1);
        if (wide) {
          store_f16_pair2(out + k_phys(r / 2), a.out16_lo, v0, v1);  // k_phys(r1 / 2) = k_phys(r / 2) + 1
        } else {
          store_f16_pair(out + k_phys(r / 2), a.out16_lo, v0);
          store_f16_pair(out + k_phys(r1 / 2), a.out16_lo, v1);
        }
      }
    } else {
      // Rows r and r + 1 of lane t as one 8-byte store where the row start allows it.
      float* out = a.out + orow * a.out_stride;
      const bool wide = (reinterpret_cast<uintptr_t>(out) & 7) == 0;
#pragma unroll
      for (int q = 0; q < 16; ++q) {
        const int r = row0 + 8 * q;
        if (r + 1 < a.rows && wide) {
          *reinterpret_cast<float2*>(out + r) = make_float2(acc[4 * q + 2 * hm], acc[4 * q + 2 * hm + 1]);
        } else {
          if (r < a.rows) out[r] = acc[4 * q + 2 * hm];
          if (r + 1 < a.rows) out[r + 1] = acc[4 * q + 2 * hm + 1];
        }
      }
    }
  }
#endif
}

template <GemmOut MODE>
cudaError_t launch(const GemmArgs& a, const Launch& ln) {
  static const cudaError_t opt_in =
      cudaFuncSetAttribute(moe_wgmma_kernel<MODE>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  if (opt_in != cudaSuccess) return opt_in;
  const dim3 grid((a.rows + kRowsPerBlock - 1) / kRowsPerBlock, a.max_tiles);
  return launch_kernel(moe_wgmma_kernel<MODE>, grid, dim3(kThreads), kSmemBytes, ln, a);
}

}  // namespace

bool moe_wgmma_fits(const GemmArgs& a, const Launch& ln) {
  return ln.wgmma && ln.smem_optin >= kSmemBytes && a.weights == GemmWeights::kMxfp4 && a.tiles != nullptr &&
         (a.mode == GemmOut::kStore || a.mode == GemmOut::kSwiglu);
}

cudaError_t moe_wgmma_launch(const GemmArgs& a, const Launch& ln) {
  if (!moe_wgmma_fits(a, ln) || a.rows <= 0 || a.kblocks <= 0 || a.kblocks % 4 != 0 || a.scales == nullptr ||
      a.n_tiles == nullptr || a.max_tiles <= 0 || a.x == nullptr || a.x_lo % 8 != 0 || a.x_stride % 8 != 0 ||
      a.x_lo < static_cast<int64_t>(a.kblocks) * 32 || a.x_stride < a.x_lo + static_cast<int64_t>(a.kblocks) * 32)
    return cudaErrorInvalidValue;
  if (a.mode == GemmOut::kSwiglu) {
    if (a.bias == nullptr || a.out16 == nullptr || a.out16_lo <= 0 || a.rows % 2 != 0) return cudaErrorInvalidValue;
    return launch<GemmOut::kSwiglu>(a, ln);
  }
  if (a.out == nullptr) return cudaErrorInvalidValue;
  return launch<GemmOut::kStore>(a, ln);
}

}  // namespace gptoss::cuda
