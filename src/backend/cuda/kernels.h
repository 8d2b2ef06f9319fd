// Launch wrappers and POD argument structs of the CUDA kernels (shared by the .cu files, the CUDA
// backend and the op tests). Plain C++: device buffers of half precision are passed as uint16_t*.
// Every wrapper validates what it can on the host and returns the launch's cudaError_t. On sm_90
// code every kernel is launched with Programmatic Dependent Launch (launch.cuh): it may start while
// the previous kernel of the stream runs and waits for it in the kernel (pdl_wait, device_util.cuh).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "backend/sampling_math.h"

namespace gptoss::cuda {

// Where a launch wrapper enqueues its kernel, and what the kernel code this binary runs on the
// current device may use. launch_target() fills it in; the backend keeps one for its stream.
struct Launch {
  cudaStream_t stream = nullptr;
  // The device runs this binary's sm_90 code (PTX version ≥ 9.0): Programmatic Dependent Launch
  // (else the kernels contain no griddepcontrol and launch without the PDL attribute).
  bool pdl = false;
  // add_rmsnorm as one thread block cluster per token (sm_90 code) for steps of at most
  // cluster_max_tokens tokens; else the single-block kernel (the same bits, see add_rmsnorm_launch).
  // The cluster kernel spreads a token over 8 SMs: a win while the tokens leave SMs idle (batch 1);
  // with more tokens one block per token has enough parallelism (8 blocks a token: ≈ one wave at 16).
  bool clusters = false;
  int cluster_max_tokens = 16;
  // The most dynamic shared memory one block may opt in to on this device (bytes): 227 KB on
  // sm_90, 163 KB on sm_80, 99 KB on sm_86/sm_89. Kernels that can trade pipeline depth for
  // shared memory do so below their preferred size (attention_launch).
  int smem_optin = 0;
  // The device runs this binary's sm_90a code: MXFP4 expert products of wide column tiles run on the
  // warpgroup MMA kernel (moe_wgmma.cu) instead of mma.sync (GPTOSS_CUDA_WGMMA=0 turns it off).
  bool wgmma = false;
};

// Weights to pull into L2 ahead of the kernel that reads them: a kernel that moves little DRAM
// traffic of its own issues the prefetch of a later product's weights, so that memory streams while
// the step's latency-bound kernels run (the o weights during RoPE and attention, see
// CudaBackend::o_prefetch_bytes_). A hint only: no result depends on it. Empty (bytes = 0): nothing.
// The bytes must lie inside one allocation.
struct L2Span {
  const void* p = nullptr;
  int64_t bytes = 0;
};

// Fills *l for `stream` on the current device: cudaErrorNoKernelImageForDevice (or
// cudaErrorInvalidDeviceFunction) when this binary holds no kernel code the device can run. The
// kernel image is asked for its PTX version (cudaFuncGetAttributes): every .cu file is compiled for
// the same architectures, so one kernel speaks for all of them. With "90a-real;80-virtual" an
// H100/H200 runs the sm_90a code, an A100/L40S/RTX 4090 the compute_80 PTX compiled by the driver.
cudaError_t launch_target(cudaStream_t stream, Launch* l);

// Device layout constants shared by the upload code and the kernels.
inline constexpr int kRowTile = 64;   // GEMM weight rows are padded to a multiple of this
inline constexpr int kKPad = 64;      // dense weight columns padded to this
inline constexpr int kActPad = 128;   // fp16 activation row strides: ≥ every GEMM's kblocks·32             // GEMM
                                      // reduction dims (and activation strides) padded to this
inline constexpr int kGemmWarps = 4;  // warps per GEMM block (16 rows each)
inline constexpr int kAttnKeyTile = 64;      // keys staged per attention tile
inline constexpr int kAttnRowsPerWarp = 16;  // (token, head) query rows per attention warp
inline constexpr int kAttnMaxWarps = 8;      // warps of a prefill attention block (at most)
// Warps of a prefill attention block holding `rows` (token, head) query rows.
inline int attention_warps(int rows) {
  return (rows + kAttnRowsPerWarp - 1) / kAttnRowsPerWarp;
}
inline constexpr int kAttnSplitKeys = 256;  // a key split gets at least about this many keys

inline int64_t round_up(int64_t x, int64_t m) {
  return (x + m - 1) / m * m;
}

// Every GEMM reduction dimension (fp16 activations and dense weight columns) is stored with each
// group of 8 permuted to [0, 4, 1, 5, 2, 6, 3, 7]: then the half2 pairs (k, k+4) that the MXFP4
// dequantizer produces from one 32-bit word of codes line up with the activation pairs in memory.
// Returns the storage position of logical index k.
GPTOSS_HD inline int64_t k_phys(int64_t k) {
  return (k & ~int64_t{7}) | ((k & 3) << 1) | ((k >> 2) & 1);
}

// ---------------------------------------------------------------------------------------------
// GEMM: out[n, r] = Σ_k W[r, k]·x[n, k] on tensor cores (fp16 operands, f32 accumulation).
// W is fp16 [E][rows_p][kblocks·32] (dense, columns in k_phys order) or MXFP4 in the device layout
// (mxfp4_code_offset; rows padded to kRowTile, kblocks a multiple of 4). The reduction runs
// over `nseg` segments of `seg_blocks` blocks of 32; each segment is summed on its own and the segment sums are added
// in order, in every mode, so one output never depends on the batch size or on whether the segments ran in one block or
// many. The one exception: MXFP4 expert tiles of 64 columns on the sm_90a image (Launch::wgmma) go to
// moe_wgmma_launch, which sums the whole reduction in one accumulator (other bits, the same error
// bound), so there an expert output depends on whether its step's tiles are 64 columns wide.
enum class GemmWeights { kF16, kMxfp4 };
enum class GemmOut {
  kStore,    // out[orow·out_stride + r] = total (f32)
  kPartial,  // one block per segment: out[seg·part_stride + orow·out_stride + r] = segment sum
  kSwiglu,   // rows 2j/2j+1 are gate/up j (interleaved): out16[orow·out16_stride + j] = SwiGLU(j)
};

struct GemmArgs {
  GemmWeights weights = GemmWeights::kF16;
  const void* w = nullptr;          // fp16 or packed MXFP4 bytes
  const uint8_t* scales = nullptr;  // MXFP4 only
  int64_t w_expert_bytes = 0;       // stride between experts (bytes)
  int64_t s_expert_bytes = 0;
  int rows = 0;        // valid output rows (≤ rows_p of the weight)
  int kblocks = 0;     // reduction length / 32 (padded; a multiple of 4 for MXFP4)
  int seg_blocks = 0;  // blocks per segment (a multiple of 4)
  int nseg = 1;

  // Activations as fp16 pairs (hi + lo ≈ the f32 value): row r holds hi at x + r·x_stride and lo at
  // x + r·x_stride + x_lo; each has ≥ kblocks·32 elements in k_phys order.
  const uint16_t* x = nullptr;
  int64_t x_stride = 0;
  int64_t x_lo = 0;
  const int32_t* x_gather = nullptr;  // activation row of tile column j (null: identity)

  // Columns: dense → n columns in tiles of NT; MoE → tiles[i] = {expert, start, count, 0}.
  int n = 0;
  const int32_t* tiles = nullptr;    // int4 per tile (MoE), null for dense
  const int32_t* n_tiles = nullptr;  // device count of valid tiles (MoE)
  int max_tiles = 0;                 // grid size bound (MoE)

  GemmOut mode = GemmOut::kStore;
  float* out = nullptr;
  int64_t out_stride = 0;                // elements between output rows (columns of the math)
  int64_t part_stride = 0;               // elements between segment partials (kPartial)
  const int32_t* out_scatter = nullptr;  // output row of tile column j (null: identity)
  uint16_t* out16 = nullptr;             // kSwiglu output (fp16 pairs: lo at + out16_lo)
  int64_t out16_stride = 0;
  int64_t out16_lo = 0;
  const float* bias = nullptr;  // kSwiglu: per-expert gate/up bias [E][bias_expert_stride]
  int64_t bias_expert_stride = 0;
  float swiglu_alpha = 1.702f, swiglu_limit = 7.0f;
};

// Tokens per column tile (8, 16, 32 or 64) the GEMM uses for `cols_per_group` columns per
// expert/matrix on average.
int gemm_tile_cols(int64_t cols_per_group);
// Launches the GEMM with column tile `nt`; kPartial uses grid.z = nseg, the others one block per
// (row tile, column tile). The caller picks the mode (see gemm_use_split). With nt = 64 it runs
// moe_wgmma_launch when moe_wgmma_fits(a, ln) (other bits), else the tiled kernel below when
// gemm_tiled_mt(a) > 0 (same bits either way).
cudaError_t gemm_launch(const GemmArgs& a, int nt, const Launch& ln);
// The GEMM for wide column tiles (gemm_tiled.cu): blocks of 64·mt weight rows × 64 columns, the
// same bits as gemm_launch; kStore and kSwiglu only, dense kblocks even. gemm_tiled_mt picks mt (1 or
// 2) by how the blocks fill the SMs, 0 when the grid is too small for it (or the mode is kPartial).
int gemm_tiled_mt(const GemmArgs& a);
cudaError_t gemm_tiled_launch(const GemmArgs& a, int mt, const Launch& ln);
// MXFP4 expert products of 64-token column tiles on Hopper's warpgroup MMA (moe_wgmma.cu): blocks of
// 256 weight rows × one tile, kStore and kSwiglu. Not the bits of gemm_launch: the whole reduction
// goes into one f32 accumulator (no segments), 16 products per step in storage order. gemm_launch
// takes this kernel for 64-column MoE tiles when moe_wgmma_fits(a, ln).
bool moe_wgmma_fits(const GemmArgs& a, const Launch& ln);
cudaError_t moe_wgmma_launch(const GemmArgs& a, const Launch& ln);
// True when (row blocks × column tiles) is fewer than two blocks per SM: then segments run in
// separate blocks (kPartial). (Measured on H200 decode: splitting the expert down-projection and
// summing its partials in the next norm beats one unsplit pass, 303 vs 281 tok/s.)
bool gemm_use_split(int64_t rows, int64_t col_tiles, int sm_count);
// Segmenting of a reduction of `kblocks` blocks of 32: ≈512 values per segment, multiples of 4 blocks.
void gemm_segments(int kblocks, int* seg_blocks, int* nseg);

// Decode-time dense fp16 products for at most kDenseGemvTokens columns: the output of gemm_launch in
// kPartial mode (or kStore with one segment) for GemmArgs without gather, scatter or tiles, from a
// kernel that streams the weights with more bytes in flight (see dense_gemv.cu). Segments of at most
// 16 blocks (gemm_segments).
inline constexpr int kDenseGemvTokens = 4;
cudaError_t dense_gemv_launch(const GemmArgs& a, const Launch& ln);

// Device layout of the MXFP4 experts. A matrix's rows (padded to kRowTile) form tiles of 16 rows and
// its reduction (padded to kblocks, a multiple of 4) groups of 4 blocks of 32; one (tile, group) is
// 1 KB, row by row, 64 bytes each: lane t of a GEMM quad finds its elements 8t..8t+7 of the group's
// four blocks at + 16·t, one 32-bit word per block. A warp's 16 rows thus stream as one contiguous
// run of the matrix (group after group). The scales of a (tile, group) are 64 bytes, row by row, 4
// blocks each. Both are per expert, zero past the real rows and blocks.
inline constexpr int kMxfp4TileRows = 16;
// Bytes of (row, group) in an expert's codes; the scale byte of (row, block) in its scales.
GPTOSS_HD inline int64_t mxfp4_code_offset(int64_t row, int64_t group, int kblocks) {
  return (row >> 4) * (int64_t{kMxfp4TileRows} * 16 * kblocks) + group * 1024 + (row & 15) * 64;
}
GPTOSS_HD inline int64_t mxfp4_scale_offset(int64_t row, int64_t block, int kblocks) {
  return (row >> 4) * (int64_t{kMxfp4TileRows} * kblocks) + (block >> 2) * 64 + (row & 15) * 4 + (block & 3);
}

// A code word holds the 8 E2M1 codes (sign, e1, e0, m) of elements 8t..8t+7 of one block, placed
// so that each half2 the tensor cores take, (element k, element k+4)·2^-14 for K = k < 4, is cut out
// with at most three integer operations (the fp16 bits of e·2^-14 are the sign at bit 15 and e1, e0,
// m at bits 11..9; 0.5 becomes the subnormal 2^-15, exact): magnitude (e1 e0 m) of element k at bits
// kMxfp4MagBit[k]..+2, its sign at kMxfp4SignBit[k]. K = 0 is a mask, K = 1 a shift and a mask, K = 2
// and 3 a mask, a multiply that adds two shifted copies (magnitudes and signs land apart, and no
// carry reaches a kept bit) and a mask.
inline constexpr int kMxfp4MagBit[8] = {9, 6, 3, 0, 25, 22, 19, 16};
inline constexpr int kMxfp4SignBit[8] = {15, 12, 14, 13, 31, 28, 30, 29};
template <int K>
GPTOSS_HD constexpr uint32_t mxfp4_pair_x2m14(uint32_t w) {
  constexpr uint32_t kHalf2 = 0x8E008E00u;  // sign and e1 e0 m of both halves
  if constexpr (K == 0) {
    return w & kHalf2;
  } else if constexpr (K == 1) {
    return (w << 3) & kHalf2;
  } else if constexpr (K == 2) {
    return ((w & 0x40384038u) * ((1u << 6) + (1u << 1))) & kHalf2;  // magnitudes << 6, signs << 1
  } else {
    return ((w & 0x20072007u) * ((1u << 9) + (1u << 2))) & kHalf2;  // magnitudes << 9, signs << 2
  }
}

// Host functions filling one 16-row tile of the device layout from checkpoint rows (blocks [nrows][nb][16],
// scales [nrows][nb]; nrows ≤ 16): codes [kblocks / 4][16][64] bytes, scales [kblocks / 4][16][4].
void mxfp4_tile_codes(const uint8_t* blocks, int nrows, int nb, int kblocks, uint8_t* out);
void mxfp4_tile_scales(const uint8_t* scales, int nrows, int nb, int kblocks, uint8_t* out);

// The expert-weight fields of GemmArgs or MoeDecodeArgs for E experts of `rows` rows (padded to
// rows_p) in the device layout: codes [E][rows_p][kblocks·16 bytes], scales [E][rows_p][kblocks].
template <typename Args>
void set_mxfp4_experts(Args& a, const uint8_t* codes, const uint8_t* scales, int rows, int rows_p, int kblocks) {
  a.w = codes;
  a.scales = scales;
  a.w_expert_bytes = int64_t{rows_p} * kblocks * 16;
  a.s_expert_bytes = int64_t{rows_p} * kblocks;
  a.rows = rows;
  a.kblocks = kblocks;
}

// ---------------------------------------------------------------------------------------------
// Decode MoE products (few tokens per expert) on tensor cores: out[c, r] = Σ_k W_e[r, k]·x[c, k] for
// the token columns c of each work item, one warp per (16 rows, item). Items are either single
// (token, expert) pairs straight from the router (tiles == null: item p = expert experts[p], column
// p) or the grouping's tiles {expert, start, count ≤ kMoeDecodeTileTokens} (columns start..start +
// count − 1). Column c reads activation row x_gather[c] (null: c / x_row_div) and writes output row
// out_scatter[c] (null: c). With `bias` the rows are interleaved gate/up and the output is the
// clamped SwiGLU as fp16 pairs; else f32. The reduction runs in block order, so every column's
// result is the same bits whatever the batch or the mode (see moe_decode.cu).
inline constexpr int kMoeDecodeTileTokens = 16;  // tokens per grouped tile
struct MoeDecodeArgs {
  const uint8_t* w = nullptr;       // MXFP4 codes in the device layout (mxfp4_code_offset), rows padded to 16
  const uint8_t* scales = nullptr;  // same rows (mxfp4_scale_offset), every byte ≤ 240
  int64_t w_expert_bytes = 0, s_expert_bytes = 0;
  int rows = 0;
  int kblocks = 0;  // a multiple of 4

  // Activations as fp16 pairs (hi at x + row·x_stride, lo at + x_lo; ≥ kblocks·32 each, k_phys order).
  const uint16_t* x = nullptr;
  int64_t x_stride = 0, x_lo = 0;
  const int32_t* x_gather = nullptr;
  int x_row_div = 1;

  const int32_t* experts = nullptr;  // per-pair items: expert of pair p, [pairs]
  int pairs = 0;
  const int32_t* tiles = nullptr;  // grouped items: int4 per tile
  const int32_t* n_tiles = nullptr;
  int max_tiles = 0;  // grid size bound

  const int32_t* out_scatter = nullptr;
  float* out = nullptr;  // f32 [.][out_stride] (no bias)
  int64_t out_stride = 0;
  uint16_t* out16 = nullptr;  // SwiGLU output: fp16 pairs, lo at + out16_lo, k_phys order
  int64_t out16_stride = 0, out16_lo = 0;
  const float* bias = nullptr;  // SwiGLU mode: f32 [E][bias_expert_stride]
  int64_t bias_expert_stride = 0;
  float swiglu_alpha = 1.702f, swiglu_limit = 7.0f;
};
cudaError_t moe_decode_launch(const MoeDecodeArgs& a, const Launch& ln);

// ---------------------------------------------------------------------------------------------
// Per-token elementwise kernels.

// h[t, :] = embed[tokens[t], :] (bf16 → f32).
cudaError_t embed_launch(const uint16_t* table, int64_t dim, const int32_t* tokens, int n, float* h, const Launch& ln);

// What add_rmsnorm adds to the residual before normalising.
struct ResidualAdd {
  // Dense contribution: Σ_s parts[s·part_stride + t·stride + i] + bias[i] (nparts = 0: none).
  const float* parts = nullptr;
  int nparts = 0;
  int64_t part_stride = 0, stride = 0;
  const float* bias = nullptr;
  // MoE contribution (parts indexed by pair t·k + j): Σ_j w[t,j]·(Σ_s parts + expert_bias[e_tj]).
  int top_k = 0;
  const int32_t* experts = nullptr;  // [n, top_k]
  const float* weights = nullptr;    // [n, top_k]
  const float* expert_bias = nullptr;
  int64_t expert_bias_stride = 0;
};
// h[t] += contribution (in place), then x = gain ⊙ h / rms(h): x16 fp16 pairs (row t at
// t·x16_stride, lo at + x16_lo, k_phys order) and, when x32 is not null, f32 [n, dim]; dim % 4 == 0
// and dim ≤ 12288. With Launch::clusters and at most Launch::cluster_max_tokens tokens, one cluster
// of 8 blocks of 128 threads per token (sm_90), else one block per token that does what the cluster's 8·128 threads
// do (1024 threads, or 256 threads running 4 of the cluster's warps each from 256 tokens). Either way the sum of
// squares is summed per thread, over each 128 threads in block_sum's order, then over the 8 slices in order, and every
// element gets the same operations: the kernels give the same bits (when compiled for the same architecture),
// independent of the batch.
cudaError_t add_rmsnorm_launch(float* h, int n, int dim, const ResidualAdd& add, const float* gain, float eps,
                               uint16_t* x16, int64_t x16_stride, int64_t x16_lo, float* x32, const Launch& ln);

// SwiGLU of split-mode gate/up partials: parts [nparts][pairs][rows_p] f32 (interleaved gate/up),
// written as fp16 pairs (lo at + out_lo) like the fused epilogue,
// bias [E][rows_p] (expert of each pair from the tile list), out a16 [pairs][out_stride].
cudaError_t swiglu_parts_launch(const float* parts, int nparts, int64_t part_stride, int64_t rows_p, int inter,
                                const int32_t* tiles, const int32_t* n_tiles, int max_tiles, const float* bias,
                                int64_t bias_expert_stride, float alpha, float limit, uint16_t* a16, int64_t out_stride,
                                int64_t out_lo, const Launch& ln);

// argmax over each row of logits [rows, vocab] (lowest index on ties, −0 equal to +0, NaN never
// wins). keys [rows] is a workspace that must be zero before the first launch (it is left zero).
cudaError_t argmax_launch(const float* logits, int rows, int64_t vocab, unsigned long long* keys, int32_t* out,
                          const Launch& ln);

// ---------------------------------------------------------------------------------------------
// Sampling (backend/sampling.h's rules 1–7, bit for bit). Each row's penalty edits are applied to
// its logits in place, then its token is written to out[i].
struct SampleRowDev {
  int32_t row = 0;  // logits row of the launch
  int32_t top_k = 0;
  float temperature = 0, top_p = 1, min_p = 0, repetition_penalty = 1;
  uint64_t random = 0;
  int32_t edit_begin = 0, edit_count = 0;  // the row's edits in the launch's edit array
};
// Every pass runs on `chunks` blocks per row: the penalty edits and the greedy token, the weight
// sums, and with truncation the radix passes of the top-k / top-p selects, their boundaries and the
// draw (each block adds its chunk's share; the row's last block to finish decides). Their results go
// to `parts` (sample_part_words(n, chunks) u64, no initial value needed). Without truncation the
// draw runs on one block per row.
inline constexpr int kSampleMaxChunks = 64;
inline constexpr size_t kSampleSelectWords = 328;  // a row's select state (sample.cu)
struct SampleSplit {
  unsigned long long* parts = nullptr;
  int chunks = 1;  // 1 … kSampleMaxChunks
};
inline size_t sample_part_words(int n, int chunks) {
  return (3 * static_cast<size_t>(chunks) + kSampleSelectWords) * static_cast<size_t>(n);
}
// Chunks per row for n rows on sm_count SMs: two blocks per SM in all, at most kSampleMaxChunks.
int sample_chunks(int n, int sm_count);
// The truncation rules any sampling row of a launch uses (top_k > 0, top_p < 1, min_p > 0), from
// host copies of its rows: a launch runs only the selects some row needs.
struct SampleRules {
  bool top_k = false, top_p = false, min_p = false;
};
SampleRules sample_rules(const SampleRowDev* rows, int n);
// logits [rows][vocab] (vocab in [1, 2^31)); rows [n], edits (distinct tokens per row), out [n];
// rules from sample_rules() of the same rows (or a superset).
cudaError_t sample_launch(float* logits, int64_t vocab, const SampleRowDev* rows, int n, const PenaltyEdit* edits,
                          int32_t* out, const SampleSplit& split, const SampleRules& rules, const Launch& ln);

// ---------------------------------------------------------------------------------------------
// Router: logits = W x + b (f32 math over bf16 weights), top-k (ties → lower index), softmax over
// the k. Optional statistics (per layer slice): counts[E] (u64), top1 and entropy sums (double),
// tokens (u64).
struct RouterStatsDev {
  unsigned long long* counts = nullptr;
  double* top1 = nullptr;
  double* entropy = nullptr;
  unsigned long long* tokens = nullptr;
};

// Pairs (token, k) grouped by expert: sorted_token[i] / sorted_pair[i] (= token·top_k + k) for the
// pairs of expert 0, then expert 1, ...; tiles of ≤ nt columns {expert, start, count, 0}; n_tiles.
// max_tiles must be ≥ moe_max_tiles(pairs, experts, nt).
struct MoeGroupOut {
  int nt = 8;
  int32_t* sorted_token = nullptr;
  int32_t* sorted_pair = nullptr;
  int32_t* tiles = nullptr;
  int32_t* n_tiles = nullptr;
  int max_tiles = 0;
};
int moe_max_tiles(int pairs, int experts, int nt);

// Workspace of the router: logits [n][experts] f32 and one arrival counter per token tile
// (router_max_tiles(n)); counters must be zero before the first launch and are left zero.
struct RouterWork {
  float* logits = nullptr;
  unsigned int* counters = nullptr;
};
// True when router_launch can also do the grouping (all n tokens in one token tile).
bool router_fuses_grouping(int n, int dim, int experts);
// `group` (optional, only when router_fuses_grouping) is filled in the same launch.
cudaError_t router_launch(const float* x, int n, int dim, const uint16_t* w, const float* b, int experts, int top_k,
                          int32_t* idx, float* weight, const RouterStatsDev& stats, const MoeGroupOut* group,
                          const RouterWork& ws, const Launch& ln);
// The grouping as its own single-block launch (idx [n, top_k]); experts ≤ 256.
cudaError_t moe_group_launch(const int32_t* idx, int n, int top_k, int experts, const MoeGroupOut& group,
                             const Launch& ln);

// ---------------------------------------------------------------------------------------------
// Attention. KV cache of one layer: K and V each [slots][kv_heads][cap] rows, position p of a slot
// at row p % cap (cap = max_context on full layers: no wrap), a row holding dp values (head_dim
// rounded up to 16, 32, 64 or 128, zero padding): by default as two fp16 planes, the dp hi halves
// fp16(x) then the dp lo halves fp16(x − hi) (x ≈ hi + lo to 2^-22; the operands the tensor-core
// attention multiplies, 4 bytes a value like f32), or with f16 set one plane of fp16(x) (rounded to
// nearest, saturated at ±65504).
struct KvLayer {
  void* k = nullptr;
  void* v = nullptr;
  int64_t cap = 0;
  int window = 0;    // 0: full attention; else keys j with p − window < j ≤ p
  bool f16 = false;  // one fp16 plane (the f16 cache), else hi and lo planes (the f32 cache)
};
// fp16 planes of a cache row (2: hi and lo of f32 values; 1: fp16 values).
GPTOSS_HD constexpr int kv_planes(bool f16) {
  return f16 ? 1 : 2;
}

struct AttnShape {
  int n_heads = 0, n_kv_heads = 0, head_dim = 0, dp = 0;
};

// Sums the qkv partials, adds the bias, applies YaRN RoPE (cos/sin of pos·inv_freq in f32, times
// the concentration) to q and k, writes q32 [n][n_heads][dp] (f32) and k, v into the cache of each
// token's slot at its position (as hi/lo planes, or rounded to fp16 in an f16 cache).
struct QkvRopeArgs {
  const float* parts = nullptr;
  int nparts = 1;
  int64_t part_stride = 0, stride = 0;
  const float* bias = nullptr;
  const int32_t* pos = nullptr;
  const int32_t* slot = nullptr;
  const float* inv_freq = nullptr;  // [head_dim/2]
  float concentration = 1.0f;
  float* q32 = nullptr;
  L2Span prefetch;  // issued by the blocks before they wait for the qkv product (the o weights)
};
cudaError_t qkv_rope_launch(const QkvRopeArgs& a, int n, const AttnShape& s, const KvLayer& kv, const Launch& ln);

// One work item: `count` consecutive query tokens of one sequence, starting at step token `first`
// (positions pos[first..]), slot `slot`.
struct AttnItem {
  int32_t first, count, slot, unused;
};

struct AttnArgs {
  const float* q32 = nullptr;       // [n][n_heads][dp]
  const int32_t* pos = nullptr;     // [n]
  const AttnItem* items = nullptr;  // [n_items]
  int n_items = 0;
  int tokens_per_item = 0;       // 1: decode kernel; else ≤ rows per block / heads per chunk
  const float* sinks = nullptr;  // [n_heads]
  float scale = 0.125f;
  int splits = 1;           // key splits (grid z; 1: final output written directly), see below
  uint16_t* o16 = nullptr;  // fp16 pairs [n][o_stride], lo at + o_lo, k_phys order
  int64_t o_stride = 0;
  int64_t o_lo = 0;
  float* part_o = nullptr;   // [n][n_heads][splits][dp] (splits > 1)
  float* part_ml = nullptr;  // [n][n_heads][splits][2]
  int n_tokens = 0;          // n (for partial strides)
};
// Key splits for `keys` keys with at most `cap` splits: doubling while a split keeps more than
// kAttnSplitKeys keys. Items of one token (decode) each use attention_item_splits(their keys,
// a.splits), so a.splits must be that of the item with the most keys; items of several tokens all
// split their keys a.splits ways.
GPTOSS_HD inline int attention_item_splits(int keys, int cap) {
  int s = 1;
  while (s < cap && s * kAttnSplitKeys < keys) s *= 2;
  return s < cap ? s : cap;
}
// Heads per block-chunk (≤ 64) of the `n_heads / n_kv_heads` query heads per KV head, for items of
// several tokens.
int attention_heads_per_chunk(const AttnShape& s);
// Head chunks per KV head of items of several tokens (blocks per KV head and key split).
int attention_head_chunks(const AttnShape& s);
// Items of one token run the decode kernel: blocks per KV head (chunks of ≤ 8 q heads) and the
// number of its blocks the device holds at once (for an f16 cache when kv_f16).
int attention_decode_chunks(const AttnShape& s);
cudaError_t attention_decode_slots(const AttnShape& s, bool kv_f16, int sm_count, int* slots);
cudaError_t attention_launch(const AttnArgs& a, const AttnShape& s, const KvLayer& kv, const Launch& ln);
// Dynamic shared memory per block of the kernel for items of several tokens with `stages` (2 or 1)
// stages of K/V tiles (hi and lo planes, or one fp16 plane with kv_f16): attention_launch takes 2
// stages where Launch::smem_optin allows it, else 1 (the same bits), else fails with
// cudaErrorInvalidConfiguration.
size_t attention_smem_bytes(int dp, bool kv_f16, int stages);
// Merges split partials (with the sinks) into o16.
cudaError_t attention_combine_launch(const AttnArgs& a, const AttnShape& s, const Launch& ln);

}  // namespace gptoss::cuda
