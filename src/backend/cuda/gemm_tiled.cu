// The GEMM for wide column tiles (prefill: ≥ 64 columns per expert or matrix), with register
// blocking. A block of 4 warps computes 64·MT weight rows × 64 columns; warp w owns 16·MT rows ×
// all 64 columns, so every B fragment read from shared memory feeds MT m-tiles and every decoded A
// fragment feeds 8 n-tiles. Each chunk of CB blocks of 32 (A: fp16 rows, or MXFP4 codes + scales;
// B: the activations' hi and lo halves) is copied with cp.async into a 2-stage ring, one barrier per
// chunk, from source addresses each thread sets up once; each warp decodes its A fragments from
// shared memory. Two blocks share an SM (≤ 255 registers, ≤ 100 KB of shared memory each), so one
// block's barrier waits and copies overlap the other's mma. Every output gets exactly gemm_kernel's
// sequence of mma (mma_phase order per block, segment sums added in order), so the two kernels give
// the same bits and choosing between them keeps every result batch-invariant.
#include "backend/cuda/gemm_common.cuh"
#include "backend/cuda/launch.cuh"

namespace gptoss::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kBlocksPerSm = 2;
constexpr int kStages = 2;
constexpr int kCols = 64;  // columns per block tile
constexpr int kNs = kCols / 8;

// One pipeline stage (byte offsets). B: hi then lo halves, [64 columns][smem_row_halfs<CB>]. A dense
// (CB = 2): [block][row][64 bytes], so lane t's 16 bytes of rows g and g+8 are one conflict-free read;
// MXFP4 (CB = 4, one group of the device layout): [row][64 bytes], then the scales [row][4].
template <GemmWeights WT, int MT>
struct Stage {
  static constexpr int kCB = WT == GemmWeights::kF16 ? 2 : 4;
  static constexpr int kRows = kWarps * 16 * MT;
  static constexpr int kBRow = smem_row_halfs<kCB>();
  static constexpr int kA = 2 * kCols * kBRow * 2;
  static constexpr int kS = kA + kRows * kCB * (WT == GemmWeights::kF16 ? 64 : 16);
  static constexpr int kBytes = kS + (WT == GemmWeights::kF16 ? 0 : kRows * kCB);
};

// One thread's share of every chunk's copies, set up once per block: the same 16-byte piece q of
// B columns j0, j0 + kBJ, ... and of A rows r0, r0 + kAJ, ...; the chunk at kb0 adds kb0 times
// the bytes per block to each source. B columns past `count` and A rows past a.rows read nothing
// (size 0, zero-filled) from a valid base address.
template <GemmWeights WT, int MT>
struct Copier {
  using S = Stage<WT, MT>;
  static constexpr int kBQ = S::kCB * 4;                                // B pieces per column and chunk
  static constexpr int kBJ = kThreads / kBQ, kBP = kCols / kBJ;         // column step, pieces per thread
  static constexpr int kAQ = WT == GemmWeights::kF16 ? S::kCB * 4 : 4;  // A pieces per row and chunk
  static constexpr int kAJ = kThreads / kAQ, kAP = S::kRows / kAJ;      // row step, pieces per thread
  // A bytes per block along a row: dense 64; MXFP4 256 (a 16-row tile's group of 4 blocks is 1 KB).
  static constexpr int kABlock = WT == GemmWeights::kF16 ? 64 : 256;

  const uint16_t* b[kBP];  // hi halves at kb0 = 0 (lo at + x_lo); a.x where invalid
  const uint8_t* a0;       // A piece 0 at kb0 = 0 (piece k: + k·a_step)
  const uint8_t* w;        // valid base for A rows past a.rows
  const uint8_t* s;        // MXFP4 scales of row `tid` at kb0 = 0 (threads < kRows; + 16 per block)
  int64_t a_step;
  uint32_t b_valid = 0, a_valid = 0;
  bool s_valid;
  uint32_t b_dst, a_dst, s_dst;  // offsets within a stage

  __device__ __forceinline__ Copier(const GemmArgs& g, const int* xrow, int count, const uint8_t* wbase,
                                    const uint8_t* sbase, int row_base) {
    const int tid = threadIdx.x;
    const int bq = tid % kBQ, j0 = tid / kBQ;
#pragma unroll
    for (int k = 0; k < kBP; ++k) {
      const int j = j0 + k * kBJ;
      const bool v = j < count;
      b[k] = v ? g.x + static_cast<int64_t>(xrow[j]) * g.x_stride + bq * 8 : g.x;
      b_valid |= static_cast<uint32_t>(v) << k;
    }
    b_dst = (j0 * S::kBRow + bq * 8) * 2;
    const int aq = tid % kAQ, r0 = tid / kAQ;
    if constexpr (WT == GemmWeights::kF16) {
      const int64_t rs = static_cast<int64_t>(g.kblocks) * kABlock;
      a0 = wbase + (row_base + r0) * rs + aq * 16;
      a_step = kAJ * rs;
    } else {
      // kAJ is a multiple of 16 rows: piece k lies kAJ / 16 tiles after piece 0, at the same place.
      static_assert(kAJ % kMxfp4TileRows == 0);
      a0 = wbase + mxfp4_code_offset(row_base + r0, 0, g.kblocks) + aq * 16;
      a_step = mxfp4_code_offset(kAJ, 0, g.kblocks);
    }
    w = wbase;
#pragma unroll
    for (int k = 0; k < kAP; ++k) a_valid |= static_cast<uint32_t>(row_base + r0 + k * kAJ < g.rows) << k;
    if constexpr (WT == GemmWeights::kF16) {
      a_dst = S::kA + ((aq / 4) * S::kRows + r0) * 64 + (aq % 4) * 16;
    } else {
      a_dst = S::kA + r0 * 64 + aq * 16;
    }
    s_valid = tid < S::kRows && row_base + tid < g.rows;
    s = s_valid ? sbase + mxfp4_scale_offset(row_base + tid, 0, g.kblocks) : sbase;
    s_dst = S::kS + tid * 4;
  }

  // Issues the copies of blocks [kb0, kb0 + CB) into the stage at shared address st (not committed).
  __device__ __forceinline__ void issue(const GemmArgs& g, uint32_t st, int kb0) const {
#pragma unroll
    for (int k = 0; k < kBP; ++k) {
      const bool v = (b_valid >> k) & 1;
      const uint16_t* p = b[k] + (v ? kb0 * 32 : 0);
      const uint32_t d = st + b_dst + k * kBJ * S::kBRow * 2;
      cp_async16s(d, p, v);
      cp_async16s(d + kCols * S::kBRow * 2, p + (v ? g.x_lo : 0), v);
    }
#pragma unroll
    for (int k = 0; k < kAP; ++k) {
      const bool v = (a_valid >> k) & 1;
      cp_async16s(st + a_dst + k * kAJ * 64, v ? a0 + k * a_step + kb0 * kABlock : w, v);
    }
    if constexpr (WT == GemmWeights::kMxfp4) {
      if (threadIdx.x < S::kRows) cp_async4s(st + s_dst, s + (s_valid ? kb0 * 16 : 0), s_valid);
    }
  }
};

template <GemmWeights WT, int MT, GemmOut MODE>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) gemm_tiled_kernel(const GemmArgs a) {
  using S = Stage<WT, MT>;
  constexpr int CB = S::kCB;
  extern __shared__ uint4 smem_raw[];
  const uint8_t* smem = reinterpret_cast<const uint8_t*>(smem_raw);
  const uint32_t smem_s = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  __shared__ int xrow[kCols];

  // Long-running kernel: nothing is worth loading before the previous kernel completes.
  pdl_wait();
  int expert = 0, start, count;
  if (a.tiles) {
    if (static_cast<int>(blockIdx.y) >= *a.n_tiles) return;
    const int4 tl = reinterpret_cast<const int4*>(a.tiles)[blockIdx.y];
    expert = tl.x, start = tl.y, count = tl.z;
  } else {
    start = blockIdx.y * kCols;
    count = min(kCols, a.n - start);
  }
  for (int j = threadIdx.x; j < kCols; j += kThreads)
    xrow[j] = j < count ? (a.x_gather ? a.x_gather[start + j] : start + j) : 0;

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int row_base = blockIdx.x * S::kRows;
  const int wrow = warp * 16 * MT + g;  // the warp's row g within the block tile
  const uint8_t* wbase = static_cast<const uint8_t*>(a.w) + expert * a.w_expert_bytes;
  const uint8_t* sbase = a.scales ? a.scales + expert * a.s_expert_bytes : nullptr;

  float part[MT][kNs][4], total[MT][kNs][4];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int ns = 0; ns < kNs; ++ns)
#pragma unroll
      for (int i = 0; i < 4; ++i) part[m][ns][i] = 0.0f, total[m][ns][i] = 0.0f;

  __syncthreads();  // xrow
  const Copier<WT, MT> copier(a, xrow, count, wbase, sbase, row_base);
  // Pipeline: chunk c is multiplied while chunk c+1 is in flight. One commit group per chunk (empty
  // past the end), so "all but the newest kStages − 2 groups done" means chunk c landed.
  const int nchunks = a.kblocks / CB;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nchunks) copier.issue(a, smem_s + s * S::kBytes, s * CB);
    asm volatile("cp.async.commit_group;\n" ::);
  }
  // Segments are whole chunks (seg_blocks is a multiple of CB); each one's sum is added to the
  // total after its last chunk, outside the chunk loop (no conditional copies of the accumulators).
  int c = 0;
  for (int seg_begin = 0; seg_begin < a.kblocks; seg_begin += a.seg_blocks) {
    const int seg_chunks = (min(a.kblocks, seg_begin + a.seg_blocks) - seg_begin) / CB;
    for (int sc = 0; sc < seg_chunks; ++sc, ++c) {
      asm volatile("cp.async.wait_group %0;\n" ::"n"(kStages - 2));
      __syncthreads();  // chunk c visible to all warps; chunk c − 1's stage is free again
      const int cn = c + kStages - 1;
      if (cn < nchunks) copier.issue(a, smem_s + (cn % kStages) * S::kBytes, cn * CB);
      asm volatile("cp.async.commit_group;\n" ::);

      const uint8_t* st = smem + (c % kStages) * S::kBytes;
      const uint16_t* b = reinterpret_cast<const uint16_t*>(st) + g * S::kBRow + t * 8;
      uint4 q_lo[MT], q_hi[MT];  // MXFP4: lane t's code words of the chunk's 4 blocks, rows g and g+8
      uint32_t s_lo[MT], s_hi[MT];
      if constexpr (WT == GemmWeights::kMxfp4) {
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          const int r = wrow + m * 16;
          q_lo[m] = *reinterpret_cast<const uint4*>(st + S::kA + r * 64 + t * 16);
          q_hi[m] = *reinterpret_cast<const uint4*>(st + S::kA + (r + 8) * 64 + t * 16);
          s_lo[m] = *reinterpret_cast<const uint32_t*>(st + S::kS + r * 4);
          s_hi[m] = *reinterpret_cast<const uint32_t*>(st + S::kS + (r + 8) * 4);
        }
      }
#pragma unroll
      for (int i = 0; i < CB; ++i) {
        AFrag f[MT];
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          if constexpr (WT == GemmWeights::kF16) {
            const uint8_t* p = st + S::kA + (i * S::kRows + wrow + m * 16) * 64 + t * 16;
            const uint4 lo = *reinterpret_cast<const uint4*>(p), hi = *reinterpret_cast<const uint4*>(p + 8 * 64);
            f[m].lo[0] = lo.x, f[m].lo[1] = lo.y, f[m].lo[2] = lo.z, f[m].lo[3] = lo.w;
            f[m].hi[0] = hi.x, f[m].hi[1] = hi.y, f[m].hi[2] = hi.z, f[m].hi[3] = hi.w;
          } else {
            f[m] = mxfp4_frag(word_of(q_lo[m], i), word_of(q_hi[m], i), (s_lo[m] >> (8 * i)) & 0xffu,
                              (s_hi[m] >> (8 * i)) & 0xffu);
          }
        }
        // Two column tiles at a time, phase by phase: 2·MT independent mma between dependent ones.
#pragma unroll
        for (int n0 = 0; n0 < kNs; n0 += 2) {
          uint4 bh[2], bl[2];
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const uint16_t* p = b + (n0 + j) * 8 * S::kBRow + i * 32;
            bh[j] = *reinterpret_cast<const uint4*>(p);
            bl[j] = *reinterpret_cast<const uint4*>(p + kCols * S::kBRow);
          }
#pragma unroll
          for (int ph = 0; ph < 4; ++ph)
#pragma unroll
            for (int j = 0; j < 2; ++j)
#pragma unroll
              for (int m = 0; m < MT; ++m) mma_phase(part[m][n0 + j], f[m], ph, bh[j], bl[j]);
        }
      }
    }
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int ns = 0; ns < kNs; ++ns)
#pragma unroll
        for (int q = 0; q < 4; ++q) total[m][ns][q] += part[m][ns][q], part[m][ns][q] = 0.0f;
  }

#pragma unroll
  for (int m = 0; m < MT; ++m) {
    const int row0 = row_base + warp * 16 * MT + m * 16;
    if constexpr (MODE == GemmOut::kSwiglu) {
      store_swiglu<kNs>(a, total[m], expert, start, count, row0, g, t);
    } else {
      store_f32<kNs>(a, total[m], start, count, row0, a.out, g, t);
    }
  }
}

template <GemmWeights WT, int MT, GemmOut MODE>
cudaError_t launch(const GemmArgs& a, const Launch& ln) {
  using S = Stage<WT, MT>;
  const int row_blocks = (a.rows + S::kRows - 1) / S::kRows;
  const int col_tiles = a.tiles ? a.max_tiles : (a.n + kCols - 1) / kCols;
  if (row_blocks == 0 || col_tiles == 0) return cudaSuccess;
  constexpr int smem = kStages * S::kBytes;
  // Above the default 48 KB: opt in once per instantiation (first launches are eager, never inside
  // a graph capture).
  static const cudaError_t opt_in =
      cudaFuncSetAttribute(gemm_tiled_kernel<WT, MT, MODE>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (opt_in != cudaSuccess) return opt_in;
  return launch_kernel(gemm_tiled_kernel<WT, MT, MODE>, dim3(row_blocks, col_tiles), dim3(kThreads), smem, ln, a);
}

template <GemmWeights WT, int MT>
cudaError_t launch_mode(const GemmArgs& a, const Launch& ln) {
  if (a.mode == GemmOut::kStore) return launch<WT, MT, GemmOut::kStore>(a, ln);
  if constexpr (WT == GemmWeights::kMxfp4) {
    if (a.mode == GemmOut::kSwiglu) return launch<WT, MT, GemmOut::kSwiglu>(a, ln);
  }
  return cudaErrorInvalidValue;
}

int sm_count() {
  int dev = 0, n = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    return 0;
  return n;
}

}  // namespace

int gemm_tiled_mt(const GemmArgs& a) {
  static const int sms = sm_count();
  const int cb = a.weights == GemmWeights::kF16 ? 2 : 4;
  if (sms <= 0 || a.mode == GemmOut::kPartial || a.kblocks % cb != 0 || a.seg_blocks % cb != 0) return 0;
  const int64_t tiles = a.tiles ? a.max_tiles : (a.n + kCols - 1) / kCols;
  // Waves of blocks (slots: blocks resident per SM × SMs), weighted by the rows per block: the
  // wider tile unless the narrower one fills the last wave clearly better; gemm_kernel when even
  // the narrower tile leaves slots idle.
  const int slots = sms * kBlocksPerSm, rows1 = kWarps * 16;
  const int64_t b1 = (a.rows + rows1 - 1) / rows1 * tiles, b2 = (a.rows + 2 * rows1 - 1) / (2 * rows1) * tiles;
  if (b1 < slots) return 0;
  const int64_t cost1 = (b1 + slots - 1) / slots, cost2 = 2 * ((b2 + slots - 1) / slots);
  return 8 * cost2 <= 9 * cost1 ? 2 : 1;
}

cudaError_t gemm_tiled_launch(const GemmArgs& a, int mt, const Launch& ln) {
  const int cb = a.weights == GemmWeights::kF16 ? 2 : 4;
  if (a.kblocks <= 0 || a.kblocks % cb != 0 || a.seg_blocks <= 0 || a.seg_blocks % cb != 0 ||
      (a.weights == GemmWeights::kMxfp4 && a.scales == nullptr) ||
      (a.tiles && (a.n_tiles == nullptr || a.max_tiles <= 0)))
    return cudaErrorInvalidValue;
  if (mt == 1)
    return a.weights == GemmWeights::kF16 ? launch_mode<GemmWeights::kF16, 1>(a, ln)
                                          : launch_mode<GemmWeights::kMxfp4, 1>(a, ln);
  if (mt == 2)
    return a.weights == GemmWeights::kF16 ? launch_mode<GemmWeights::kF16, 2>(a, ln)
                                          : launch_mode<GemmWeights::kMxfp4, 2>(a, ln);
  return cudaErrorInvalidValue;
}

}  // namespace gptoss::cuda
