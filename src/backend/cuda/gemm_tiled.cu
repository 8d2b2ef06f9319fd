// The GEMM for wide column tiles (prefill: ≥ 64 columns per expert or matrix), with register
// blocking. A block of 8 warps computes 128·MT weight rows × 64 columns; warp w owns 16·MT rows ×
// all 64 columns, so every B fragment read from shared memory feeds MT m-tiles and every decoded A
// fragment feeds 8 n-tiles, and a 64-column B tile is fetched once per 128·MT rows (gemm_kernel:
// once per 64). Each chunk of CB blocks of 32 (A: fp16 rows, or MXFP4 codes + scales; B: the
// activations' hi and lo halves) is copied with cp.async into a 3-stage ring, one barrier per chunk;
// each warp decodes its A fragments from shared memory. Every output gets exactly gemm_kernel's
// sequence of mma (mma_hilo per block, segment sums added in order), so the two kernels give the
// same bits and choosing between them keeps every result batch-invariant.
#include "backend/cuda/gemm_common.cuh"

namespace gptoss::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kCols = 64;  // columns per block tile
constexpr int kNs = kCols / 8;
constexpr int kStages = 3;

// One pipeline stage (byte offsets). B: hi then lo halves, [64 columns][smem_row_halfs<CB>]. A dense
// (CB = 2): [block][row][64 bytes], so lane t's 16 bytes of rows g and g+8 are one conflict-free read;
// MXFP4 (CB = 4, one mxfp4_repack_row load group): [row][64 bytes], then the scales [row][4].
template <GemmWeights WT, int MT>
struct Stage {
  static constexpr int kCB = WT == GemmWeights::kF16 ? 2 : 4;
  static constexpr int kRows = kWarps * 16 * MT;
  static constexpr int kBRow = smem_row_halfs<kCB>();
  static constexpr int kA = 2 * kCols * kBRow * 2;
  static constexpr int kS = kA + kRows * kCB * (WT == GemmWeights::kF16 ? 64 : 16);
  static constexpr int kBytes = kS + (WT == GemmWeights::kF16 ? 0 : kRows * kCB);
};

__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(src), "r"(valid ? 4 : 0));
}

// Issues the copies of blocks [kb0, kb0 + CB) into stage `st` (not committed): B columns past `count`
// and A rows past a.rows are zero-filled.
template <GemmWeights WT, int MT>
__device__ __forceinline__ void stage_chunk(const GemmArgs& a, const int* xrow, int count, const uint8_t* wbase,
                                            const uint8_t* sbase, int row_base, int kb0, uint8_t* st) {
  using S = Stage<WT, MT>;
  constexpr int kQuads = S::kCB * 4;  // 16-byte pieces per B column
  uint16_t* b = reinterpret_cast<uint16_t*>(st);
#pragma unroll
  for (int k = 0; k < kCols * kQuads / kThreads; ++k) {
    const int i = threadIdx.x + k * kThreads, j = i / kQuads, q = i % kQuads;
    const bool valid = j < count;
    const uint16_t* src = valid ? a.x + static_cast<int64_t>(xrow[j]) * a.x_stride + kb0 * 32 + q * 8 : a.x;
    cp_async16(b + j * S::kBRow + q * 8, src, valid);
    cp_async16(b + (kCols + j) * S::kBRow + q * 8, valid ? src + a.x_lo : a.x, valid);
  }
  if constexpr (WT == GemmWeights::kF16) {
    const int64_t rs = static_cast<int64_t>(a.kblocks) * 64;
#pragma unroll
    for (int k = 0; k < S::kRows * kQuads / kThreads; ++k) {
      const int i = threadIdx.x + k * kThreads, r = i / kQuads, q = i % kQuads;
      const bool valid = row_base + r < a.rows;
      const uint8_t* src = valid ? wbase + (row_base + r) * rs + kb0 * 64 + q * 16 : wbase;
      cp_async16(st + S::kA + ((q / 4) * S::kRows + r) * 64 + (q % 4) * 16, src, valid);
    }
  } else {
    const int64_t rs = static_cast<int64_t>(a.kblocks) * 16;
#pragma unroll
    for (int k = 0; k < S::kRows * 4 / kThreads; ++k) {
      const int i = threadIdx.x + k * kThreads, r = i / 4, q = i % 4;
      const bool valid = row_base + r < a.rows;
      const uint8_t* src = valid ? wbase + (row_base + r) * rs + kb0 * 16 + q * 16 : wbase;
      cp_async16(st + S::kA + r * 64 + q * 16, src, valid);
    }
    for (int r = threadIdx.x; r < S::kRows; r += kThreads) {
      const bool valid = row_base + r < a.rows;
      cp_async4(st + S::kS + r * 4, valid ? sbase + static_cast<int64_t>(row_base + r) * a.kblocks + kb0 : sbase,
                valid);
    }
  }
}

template <GemmWeights WT, int MT, GemmOut MODE>
__global__ void __launch_bounds__(kThreads, 1) gemm_tiled_kernel(const GemmArgs a) {
  using S = Stage<WT, MT>;
  constexpr int CB = S::kCB;
  extern __shared__ uint4 smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>(smem_raw);
  __shared__ int xrow[kCols];

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

  // Pipeline: chunk c is multiplied while chunks c+1 and c+2 are in flight. One commit group per
  // chunk (empty past the end), so "all but the newest kStages − 2 groups done" means chunk c landed.
  const int nchunks = a.kblocks / CB;
  __syncthreads();  // xrow
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nchunks) stage_chunk<WT, MT>(a, xrow, count, wbase, sbase, row_base, s * CB, smem + s * S::kBytes);
    asm volatile("cp.async.commit_group;\n" ::);
  }
  for (int c = 0; c < nchunks; ++c) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kStages - 2));
    __syncthreads();  // chunk c visible to all warps; chunk c − 1's stage is free again
    const int cn = c + kStages - 1;
    if (cn < nchunks)
      stage_chunk<WT, MT>(a, xrow, count, wbase, sbase, row_base, cn * CB, smem + (cn % kStages) * S::kBytes);
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
#pragma unroll
      for (int ns = 0; ns < kNs; ++ns) {
        const uint16_t* p = b + ns * 8 * S::kBRow + i * 32;
        const uint4 bh = *reinterpret_cast<const uint4*>(p);
        const uint4 bl = *reinterpret_cast<const uint4*>(p + kCols * S::kBRow);
#pragma unroll
        for (int m = 0; m < MT; ++m) mma_hilo(part[m][ns], f[m], bh, bl);
      }
    }
    // Segments are whole chunks (seg_blocks is a multiple of CB).
    const int kb_end = (c + 1) * CB;
    if (kb_end % a.seg_blocks == 0 || kb_end == a.kblocks) {
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int ns = 0; ns < kNs; ++ns)
#pragma unroll
          for (int q = 0; q < 4; ++q) total[m][ns][q] += part[m][ns][q], part[m][ns][q] = 0.0f;
    }
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
cudaError_t launch(const GemmArgs& a, cudaStream_t stream) {
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
  gemm_tiled_kernel<WT, MT, MODE><<<dim3(row_blocks, col_tiles), kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

template <GemmWeights WT, int MT>
cudaError_t launch_mode(const GemmArgs& a, cudaStream_t stream) {
  if (a.mode == GemmOut::kStore) return launch<WT, MT, GemmOut::kStore>(a, stream);
  if constexpr (WT == GemmWeights::kMxfp4) {
    if (a.mode == GemmOut::kSwiglu) return launch<WT, MT, GemmOut::kSwiglu>(a, stream);
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
  // Waves of blocks, weighted by the rows per block: the wider tile unless the narrower one fills
  // the last wave clearly better; gemm_kernel when even the narrower tile leaves SMs idle.
  const int64_t b1 = (a.rows + 127) / 128 * tiles, b2 = (a.rows + 255) / 256 * tiles;
  if (b1 < sms) return 0;
  const int64_t cost1 = (b1 + sms - 1) / sms, cost2 = 2 * ((b2 + sms - 1) / sms);
  return 8 * cost2 <= 9 * cost1 ? 2 : 1;
}

cudaError_t gemm_tiled_launch(const GemmArgs& a, int mt, cudaStream_t stream) {
  const int cb = a.weights == GemmWeights::kF16 ? 2 : 4;
  if (a.kblocks <= 0 || a.kblocks % cb != 0 || a.seg_blocks <= 0 || a.seg_blocks % cb != 0 ||
      (a.weights == GemmWeights::kMxfp4 && a.scales == nullptr) ||
      (a.tiles && (a.n_tiles == nullptr || a.max_tiles <= 0)))
    return cudaErrorInvalidValue;
  if (mt == 1)
    return a.weights == GemmWeights::kF16 ? launch_mode<GemmWeights::kF16, 1>(a, stream)
                                          : launch_mode<GemmWeights::kMxfp4, 1>(a, stream);
  if (mt == 2)
    return a.weights == GemmWeights::kF16 ? launch_mode<GemmWeights::kF16, 2>(a, stream)
                                          : launch_mode<GemmWeights::kMxfp4, 2>(a, stream);
  return cudaErrorInvalidValue;
}

}  // namespace gptoss::cuda
