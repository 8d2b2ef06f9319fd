// Tensor-core GEMM for every weight product of the model: dense fp16 weights (attention, lm_head)
// and MXFP4 experts (dequantized in registers), with a fixed segmented reduction order so results
// are batch-invariant, and epilogues for plain stores, split-K partials and the fused SwiGLU. Wide
// column tiles that fill the GPU go to the register-blocked kernel of gemm_tiled.cu (same bits).
#include <algorithm>

#include "backend/cuda/gemm_common.cuh"
#include "backend/cuda/launch.cuh"

namespace gptoss::cuda {
namespace {

constexpr int kStages = 2;  // shared-memory buffers of B (cp.async double buffering)

// 32-blocks per pipeline chunk: 8 for MXFP4 with narrow column tiles (decode: more weight bytes in
// flight per warp), else 4 (dense fp16 already loads 16 bytes per block and row, and 4 keeps its
// registers, hence its occupancy, in check). Always a multiple of the 4-block MXFP4 load group.
template <GemmWeights WT, int NT>
constexpr int chunk_blocks() {
  return WT == GemmWeights::kMxfp4 && NT <= 16 ? 8 : 4;
}

// Raw A registers of one chunk of CB blocks. Dense: one 16-byte load per block and row. MXFP4
// (device layout, mxfp4_code_offset): one 16-byte load per 4 blocks and row (lane t's code word of
// each block) plus the 4 scale bytes.
template <GemmWeights WT, int CB>
struct AChunk {
  static constexpr int kLoads = WT == GemmWeights::kF16 ? CB : CB / 4;
  uint4 lo[kLoads], hi[kLoads];
  uint32_t s_lo[CB / 4], s_hi[CB / 4];
};

// Loads the blocks [kb, kb + cb) of rows row and row + 8 (cb ≤ CB, a multiple of 4 for MXFP4).
template <GemmWeights WT, int CB>
__device__ __forceinline__ void load_a(AChunk<WT, CB>& r, const GemmArgs& a, const uint8_t* wbase, const uint8_t* sbase,
                                       int row, int kb, int cb, int t) {
  if constexpr (WT == GemmWeights::kF16) {
    const int64_t rs = static_cast<int64_t>(a.kblocks) * 64;  // bytes per row
    const uint8_t* p = wbase + row * rs + kb * 64 + t * 16;
#pragma unroll
    for (int i = 0; i < CB; ++i) {
      if (i >= cb) break;
      r.lo[i] = __ldg(reinterpret_cast<const uint4*>(p + i * 64));
      r.hi[i] = __ldg(reinterpret_cast<const uint4*>(p + i * 64 + 8 * rs));
    }
  } else {
    // row is row g of a 16-row tile: row + 8 is 512 code bytes and 32 scale bytes further on.
    const uint8_t* p = wbase + mxfp4_code_offset(row, kb / 4, a.kblocks) + t * 16;
    const uint8_t* s = sbase + mxfp4_scale_offset(row, kb, a.kblocks);
#pragma unroll
    for (int i = 0; i < CB / 4; ++i) {
      if (4 * i >= cb) break;
      r.lo[i] = __ldg(reinterpret_cast<const uint4*>(p + i * 1024));
      r.hi[i] = __ldg(reinterpret_cast<const uint4*>(p + i * 1024 + 512));
      r.s_lo[i] = __ldg(reinterpret_cast<const uint32_t*>(s + 64 * i));
      r.s_hi[i] = __ldg(reinterpret_cast<const uint32_t*>(s + 64 * i + 32));
    }
  }
}

// Fragments of block i of the chunk (i a compile-time constant after unrolling).
template <GemmWeights WT, int CB>
__device__ __forceinline__ AFrag decode_a(const AChunk<WT, CB>& r, int i) {
  AFrag f;
  if constexpr (WT == GemmWeights::kF16) {
    f.lo[0] = r.lo[i].x, f.lo[1] = r.lo[i].y, f.lo[2] = r.lo[i].z, f.lo[3] = r.lo[i].w;
    f.hi[0] = r.hi[i].x, f.hi[1] = r.hi[i].y, f.hi[2] = r.hi[i].z, f.hi[3] = r.hi[i].w;
  } else {
    f = mxfp4_frag(word_of(r.lo[i / 4], i % 4), word_of(r.hi[i / 4], i % 4), (r.s_lo[i / 4] >> (8 * (i % 4))) & 0xffu,
                   (r.s_hi[i / 4] >> (8 * (i % 4))) & 0xffu);
  }
  return f;
}

// Issues the asynchronous copy of B columns [0, NT) × blocks [kb0, kb0 + cb) into a shared-memory
// stage (hi halves, then lo halves; zeros past `count`) as one commit group.
template <int NT, int CB>
__device__ __forceinline__ void issue_b(const GemmArgs& a, const int* xrow, int count, int kb0, int cb,
                                        uint16_t* stage) {
  constexpr int kRow = smem_row_halfs<CB>();
  const int quads = cb * 4;  // 16-byte pieces per column
  for (int i = threadIdx.x; i < NT * quads; i += blockDim.x) {
    const int j = i / quads, q = i - j * quads;
    const bool valid = j < count;
    const uint16_t* src = valid ? a.x + static_cast<int64_t>(xrow[j]) * a.x_stride + kb0 * 32 + q * 8 : a.x;
    cp_async16(stage + j * kRow + q * 8, src, valid);
    cp_async16(stage + (NT + j) * kRow + q * 8, valid ? src + a.x_lo : a.x, valid);
  }
  asm volatile("cp.async.commit_group;\n" ::);
}

// One block of 32: W·(x_hi + x_lo) for every column tile (k-steps 0 and 1 of each half).
template <int NS, int CB>
__device__ __forceinline__ void mma_block(float (&acc)[NS][4], const AFrag& f, const uint16_t* stage, int kbl, int g,
                                          int t) {
  constexpr int kRow = smem_row_halfs<CB>();
#pragma unroll
  for (int ns = 0; ns < NS; ++ns) {
    const uint16_t* p = stage + (ns * 8 + g) * kRow + kbl * 32 + t * 8;
    const uint4 bh = *reinterpret_cast<const uint4*>(p);
    const uint4 bl = *reinterpret_cast<const uint4*>(p + NS * 8 * kRow);
    mma_hilo(acc[ns], f, bh, bl);
  }
}

template <GemmWeights WT, int NT, GemmOut MODE>
__global__ void __launch_bounds__(kGemmWarps * 32) gemm_kernel(const GemmArgs a) {
  constexpr int NS = NT / 8;
  extern __shared__ uint4 smem_raw[];
  uint16_t* smem = reinterpret_cast<uint16_t*>(smem_raw);
  __shared__ int xrow[NT];

  // Dense weights do not depend on earlier kernels: their first chunk is loaded before pdl_wait().
  // MoE tiles (and so the experts' weights) come from the router.
  int expert = 0, start, count;
  if (a.tiles) {
    pdl_wait();
    if (static_cast<int>(blockIdx.y) >= *a.n_tiles) return;
    const int4 tl = reinterpret_cast<const int4*>(a.tiles)[blockIdx.y];
    expert = tl.x, start = tl.y, count = tl.z;
  } else {
    start = blockIdx.y * NT;
    count = min(NT, a.n - start);
  }

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int row0 = blockIdx.x * (kGemmWarps * 16) + warp * 16;
  const uint8_t* wbase = static_cast<const uint8_t*>(a.w) + expert * a.w_expert_bytes;
  const uint8_t* sbase = a.scales ? a.scales + expert * a.s_expert_bytes : nullptr;
  const int kb_begin = MODE == GemmOut::kPartial ? blockIdx.z * a.seg_blocks : 0;
  const int kb_end = MODE == GemmOut::kPartial ? min(a.kblocks, kb_begin + a.seg_blocks) : a.kblocks;

  float part[NS][4], total[NS][4];
#pragma unroll
  for (int ns = 0; ns < NS; ++ns)
#pragma unroll
    for (int i = 0; i < 4; ++i) part[ns][i] = 0.0f, total[ns][i] = 0.0f;

  // Pipeline: while chunk c is multiplied, the B copy of chunk c+1 is in flight (cp.async) and its
  // A fragments are being loaded into registers.
  constexpr int CB = chunk_blocks<WT, NT>();
  constexpr int kStage = 2 * NT * smem_row_halfs<CB>();  // hi and lo halves
  const int nchunks = (kb_end - kb_begin + CB - 1) / CB;
  AChunk<WT, CB> cur, nxt;
  if (nchunks > 0) load_a<WT, CB>(cur, a, wbase, sbase, row0 + g, kb_begin, min(CB, kb_end - kb_begin), t);
  if (!a.tiles) pdl_wait();
  for (int j = threadIdx.x; j < NT; j += blockDim.x)
    xrow[j] = j < count ? (a.x_gather ? a.x_gather[start + j] : start + j) : 0;
  __syncthreads();  // xrow
  if (nchunks > 0) issue_b<NT, CB>(a, xrow, count, kb_begin, min(CB, kb_end - kb_begin), smem);
  for (int c = 0; c < nchunks; ++c) {
    const int kb0 = kb_begin + c * CB, cb = min(CB, kb_end - kb0);
    if (c + 1 < nchunks) {
      const int kn = kb0 + CB, cn = min(CB, kb_end - kn);
      issue_b<NT, CB>(a, xrow, count, kn, cn, smem + ((c + 1) % kStages) * kStage);
      load_a<WT, CB>(nxt, a, wbase, sbase, row0 + g, kn, cn, t);
      asm volatile("cp.async.wait_group 1;\n" ::);
    } else {
      asm volatile("cp.async.wait_group 0;\n" ::);
    }
    __syncthreads();
    const uint16_t* stage = smem + (c % kStages) * kStage;
#pragma unroll
    for (int i = 0; i < CB; ++i) {
      if (i >= cb) break;
      mma_block<NS, CB>(part, decode_a<WT, CB>(cur, i), stage, i, g, t);
      const int kb = kb0 + i;
      if (MODE != GemmOut::kPartial && ((kb + 1) % a.seg_blocks == 0 || kb + 1 == a.kblocks)) {
#pragma unroll
        for (int ns = 0; ns < NS; ++ns)
#pragma unroll
          for (int q = 0; q < 4; ++q) total[ns][q] += part[ns][q], part[ns][q] = 0.0f;
      }
    }
    __syncthreads();  // the stage is refilled two chunks later
    cur = nxt;
  }
  if constexpr (MODE == GemmOut::kPartial) {
    store_f32<NS>(a, part, start, count, row0, a.out + blockIdx.z * a.part_stride, g, t);
  } else if constexpr (MODE == GemmOut::kSwiglu) {
    store_swiglu<NS>(a, total, expert, start, count, row0, g, t);
  } else {
    store_f32<NS>(a, total, start, count, row0, a.out, g, t);
  }
}

template <GemmWeights WT, int NT, GemmOut MODE>
cudaError_t launch_one(const GemmArgs& a, const Launch& ln) {
  const int row_blocks = static_cast<int>((a.rows + kGemmWarps * 16 - 1) / (kGemmWarps * 16));
  const int col_tiles = a.tiles ? a.max_tiles : (a.n + NT - 1) / NT;
  if (row_blocks == 0 || col_tiles == 0) return cudaSuccess;
  const dim3 grid(row_blocks, col_tiles, MODE == GemmOut::kPartial ? a.nseg : 1);
  const size_t smem =
      static_cast<size_t>(kStages) * 2 * NT * smem_row_halfs<chunk_blocks<WT, NT>()>() * sizeof(uint16_t);
  if (smem > 48 * 1024) {
    // Opt in to more than 48 KB of dynamic shared memory, once per instantiation (first launches
    // are eager, never inside a graph capture).
    static const cudaError_t opt_in = cudaFuncSetAttribute(
        gemm_kernel<WT, NT, MODE>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (opt_in != cudaSuccess) return opt_in;
  }
  return launch_kernel(gemm_kernel<WT, NT, MODE>, grid, kGemmWarps * 32, smem, ln, a);
}

template <GemmWeights WT, GemmOut MODE>
cudaError_t launch_nt(const GemmArgs& a, int nt, const Launch& ln) {
  switch (nt) {
    case 8: return launch_one<WT, 8, MODE>(a, ln);
    case 16: return launch_one<WT, 16, MODE>(a, ln);
    case 32: return launch_one<WT, 32, MODE>(a, ln);
    case 64: return launch_one<WT, 64, MODE>(a, ln);
    default: return cudaErrorInvalidValue;
  }
}

template <GemmWeights WT>
cudaError_t launch_mode(const GemmArgs& a, int nt, const Launch& ln) {
  switch (a.mode) {
    case GemmOut::kStore: return launch_nt<WT, GemmOut::kStore>(a, nt, ln);
    case GemmOut::kPartial: return launch_nt<WT, GemmOut::kPartial>(a, nt, ln);
    case GemmOut::kSwiglu:
      // Only MXFP4 gate/up projections have a SwiGLU epilogue.
      if constexpr (WT == GemmWeights::kMxfp4) return launch_nt<WT, GemmOut::kSwiglu>(a, nt, ln);
      return cudaErrorInvalidValue;
  }
  return cudaErrorInvalidValue;
}

}  // namespace

int gemm_tile_cols(int64_t cols_per_group) {
  if (cols_per_group <= 8) return 8;
  if (cols_per_group <= 16) return 16;
  if (cols_per_group <= 32) return 32;
  return 64;
}

bool gemm_use_split(int64_t rows, int64_t col_tiles, int sm_count) {
  const int64_t blocks = (rows + kGemmWarps * 16 - 1) / (kGemmWarps * 16) * col_tiles;
  return blocks < 2LL * sm_count;
}

void gemm_segments(int kblocks, int* seg_blocks, int* nseg) {
  const int target = 16;  // 512 reduction values per segment
  int n = (kblocks + target - 1) / target;
  if (n < 1) n = 1;
  int sb = (kblocks + n - 1) / n;
  sb = (sb + 3) / 4 * 4;  // whole MXFP4 load groups and pipeline chunks
  *seg_blocks = sb;
  *nseg = (kblocks + sb - 1) / sb;
}

cudaError_t gemm_launch(const GemmArgs& a, int nt, const Launch& ln) {
  if (a.kblocks <= 0 || a.seg_blocks <= 0 || a.seg_blocks % 4 != 0 ||
      a.nseg != (a.kblocks + a.seg_blocks - 1) / a.seg_blocks)
    return cudaErrorInvalidValue;
  if (a.x_lo < static_cast<int64_t>(a.kblocks) * 32 || a.x_stride < a.x_lo + static_cast<int64_t>(a.kblocks) * 32)
    return cudaErrorInvalidValue;
  if (a.mode == GemmOut::kSwiglu && a.out16_lo <= 0) return cudaErrorInvalidValue;
  if (a.weights == GemmWeights::kMxfp4 && (a.kblocks % 4 != 0 || a.scales == nullptr)) return cudaErrorInvalidValue;
  if (a.tiles && (a.n_tiles == nullptr || a.max_tiles <= 0)) return cudaErrorInvalidValue;
  if (nt == 64 && moe_wgmma_fits(a, ln)) return moe_wgmma_launch(a, ln);
  if (nt == 64) {
    const int mt = gemm_tiled_mt(a);
    if (mt > 0) return gemm_tiled_launch(a, mt, ln);
  }
  if (a.weights == GemmWeights::kF16) return launch_mode<GemmWeights::kF16>(a, nt, ln);
  return launch_mode<GemmWeights::kMxfp4>(a, nt, ln);
}

}  // namespace gptoss::cuda
