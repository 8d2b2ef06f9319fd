// Token sampling on the device, bit for bit the rules of backend/sampling.h with the arithmetic of
// sampling_math.h: the penalty edits in place, the row's greedy token and maximum, exact integer
// sums of the weights (order-free, so deterministic), the top-k and top-p boundaries by a radix
// select over the order keys (ties resolved in id order), and the draw as a walk over the kept
// tokens in id order. Every pass over a row runs on `chunks` blocks per row, so a batch-1 row
// spreads over the device: the edits and each chunk's greedy key, then each chunk's weight sum.
// With top-k / top-p / min-p, each select is four radix passes (the chunks' histograms summed by
// integer atomics, so in any order to the same totals; the row's last block to finish picks the
// digit) and a boundary pass (the tokens of the selected key in id order). The draw: a row a rule
// filters sums its kept weight per chunk and its last block draws; any other row draws in one block
// from pass 2's chunk sums. Either way the drawn position's chunk is found from the chunk sums and
// only that chunk is walked. Only the token id leaves the device.
#include <cuda_runtime.h>

#include <algorithm>

#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.cuh"

namespace gptoss::cuda {
namespace {

constexpr int kSampleThreads = 512;
constexpr int kSampleWarps = kSampleThreads / 32;
constexpr int kHistCopies = 8;  // radix histogram copies by lane % kHistCopies: fewer lanes per address

// A position in the token order (key descending, id ascending).
struct Boundary {
  uint32_t key;
  int32_t id;
};

// The tokens a pass looks at: weight q > 0, order key equal to `prefix` under `mask`, at or before
// the top-k / top-p boundaries when set, w ≥ min_w. Each counts 1 (`count`) or q.
struct Filter {
  uint32_t mask = 0, prefix = 0;
  bool has_k = false, has_p = false;
  Boundary k{0, 0}, p{0, 0};
  double min_w = 0;
  bool count = false;
};

struct Sums {
  unsigned long long count, weight;
};

struct SampleShared {
  unsigned long long hist[kHistCopies * 256];
  unsigned long long tot[256];
  unsigned long long warp_weight[kSampleWarps];  // the last range_sum's per-part weights (id order)
  unsigned long long warp_count[kSampleWarps];
  unsigned long long above;
  int digit;
  int32_t found;
  bool last;
};

__device__ __forceinline__ bool at_or_before(uint32_t key, int32_t id, Boundary b) {
  return key > b.key || (key == b.key && id <= b.id);
}

// Token (v, id)'s share under f (0 when outside the set); *key gets its order key.
__device__ __forceinline__ unsigned long long contribution(const Filter& f, const SampleRowMath& m, float v, int32_t id,
                                                           uint32_t* key) {
  if (v != v) return 0;
  const uint32_t k = sample_order_key(v);
  if ((k & f.mask) != f.prefix) return 0;
  if (f.has_k && !at_or_before(k, id, f.k)) return 0;
  if (f.has_p && !at_or_before(k, id, f.p)) return 0;
  double w = 0;
  const uint64_t q = sample_units(v, m, &w);
  if (q == 0 || w < f.min_w) return 0;
  *key = k;
  return f.count ? 1ull : static_cast<unsigned long long>(q);
}

__device__ __forceinline__ unsigned long long warp_sum_u64(unsigned long long v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Ids [lo, hi) in kSampleWarps contiguous parts, one per warp, of `span` ids each (a multiple of 32).
__device__ __forceinline__ int64_t part_span(int64_t lo, int64_t hi) {
  return ((hi - lo + kSampleWarps - 1) / kSampleWarps + 31) / 32 * 32;
}

// Count and weight of the tokens under f in ids [lo, hi); leaves the weight of each warp's part in
// sh for locate().
__device__ Sums range_sum(const float* row, int64_t lo, int64_t hi, const Filter& f, const SampleRowMath& m,
                          SampleShared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t span = part_span(lo, hi), begin = lo + warp * span, end = begin + span < hi ? begin + span : hi;
  unsigned long long count = 0, weight = 0;
  for (int64_t i = begin + lane; i < end; i += 32) {
    uint32_t key;
    const unsigned long long c = contribution(f, m, row[i], static_cast<int32_t>(i), &key);
    weight += c;
    count += c != 0;
  }
  weight = warp_sum_u64(weight);
  count = warp_sum_u64(count);
  __syncthreads();  // earlier readers of the part sums are done
  if (lane == 0) sh.warp_weight[warp] = weight, sh.warp_count[warp] = count;
  __syncthreads();
  Sums s{0, 0};
  for (int w = 0; w < kSampleWarps; ++w) s.count += sh.warp_count[w], s.weight += sh.warp_weight[w];
  __syncthreads();
  return s;
}

// The token at cumulative position pos of the tokens under f in ids [lo, hi) walked in id order;
// pos must be below the weight of the range_sum just made over [lo, hi) with the same f. Narrows to
// the part holding pos and sums its parts again until at most 128 ids are left, which one warp walks.
__device__ int32_t locate(const float* row, int64_t lo, int64_t hi, const Filter& f, const SampleRowMath& m,
                          unsigned long long pos, SampleShared& sh) {
  for (;;) {
    const int64_t span = part_span(lo, hi);
    int w = 0;
    while (w < kSampleWarps - 1 && pos >= sh.warp_weight[w]) pos -= sh.warp_weight[w++];
    lo += w * span;
    hi = lo + span < hi ? lo + span : hi;
    if (hi - lo <= 128) break;
    range_sum(row, lo, hi, f, m, sh);
  }
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    for (int64_t base = lo; base < hi; base += 32) {
      const int64_t i = base + lane;
      uint32_t key;
      const unsigned long long c = i < hi ? contribution(f, m, row[i], static_cast<int32_t>(i), &key) : 0;
      unsigned long long incl = c;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const unsigned long long t = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += t;
      }
      const unsigned long long total = __shfl_sync(0xffffffffu, incl, 31);
      if (pos < total) {
        const unsigned hit = __ballot_sync(0xffffffffu, incl > pos);
        if (lane == __ffs(hit) - 1) sh.found = static_cast<int32_t>(i);
        break;
      }
      pos -= total;
    }
  }
  __syncthreads();
  const int32_t id = sh.found;
  __syncthreads();
  return id;
}

// Ids [lo, hi) of chunk c of `chunks` over a row of `vocab` (chunks of whole warps' worth of ids;
// trailing chunks may be empty).
__device__ __forceinline__ void chunk_range(int64_t vocab, int chunks, int c, int64_t* lo, int64_t* hi) {
  const int64_t len = ((vocab + chunks - 1) / chunks + 31) / 32 * 32;
  *lo = c * len < vocab ? c * len : vocab;
  *hi = *lo + len < vocab ? *lo + len : vocab;
}

// The truncation state of a row (after the per-chunk words of the parts buffer): the running radix
// select, the boundaries found so far, and the arrival counter that elects each launch's last block.
struct SelectState {
  unsigned long long hist[256];                // the current radix pass: the chunks' histograms, summed
  unsigned long long chunk[kSampleMaxChunks];  // per-chunk sums of the boundary and draw passes
  unsigned long long above;                    // the select's count or weight of the keys above its prefix
  unsigned long long target;                   // the select's target position (≥ 1)
  uint32_t mask, prefix;                       // the select's key bits fixed so far
  Boundary k, p;                               // the top-k and top-p boundaries, when has_k / has_p
  int32_t has_k, has_p;
  int32_t active;     // the current select runs for this row
  uint32_t arrivals;  // blocks of the row done with the current launch (0 between launches)
};
static_assert(sizeof(SelectState) <= kSampleSelectWords * sizeof(unsigned long long), "kSampleSelectWords");

// The parts of row i: greedy keys, weights, counts, each [n][chunks], then the select states [n].
struct Parts {
  unsigned long long *best, *weight, *count;
  SelectState* st;
  __device__ Parts(const SampleSplit& sp, int n, int i) {
    best = sp.parts + static_cast<int64_t>(i) * sp.chunks;
    weight = best + static_cast<int64_t>(n) * sp.chunks;
    count = weight + static_cast<int64_t>(n) * sp.chunks;
    st = reinterpret_cast<SelectState*>(sp.parts + 3 * static_cast<int64_t>(n) * sp.chunks) + i;
  }
};

// The row's greedy key from the chunks' (every thread).
__device__ __forceinline__ unsigned long long row_best(const Parts& pt, int chunks) {
  unsigned long long best = 0;
  for (int c = 0; c < chunks; ++c) best = max(best, pt.best[c]);
  return best;
}

// The row's count and weight of the tokens with q > 0, from pass 2's chunk sums.
__device__ __forceinline__ Sums row_sums(const Parts& pt, int chunks) {
  Sums all{0, 0};
  for (int c = 0; c < chunks; ++c) all.count += pt.count[c], all.weight += pt.weight[c];
  return all;
}

// What every pass after the sums knows of a row: whether it samples at all (rule 3: a finite largest
// logit, T > 0 and some weight), its greedy token and its weight arithmetic. The same in every
// block of the row.
struct RowView {
  SampleRowDev rq;
  const float* row;
  unsigned long long best;
  Sums all;
  SampleRowMath m;
  bool samples;
};
__device__ RowView row_view(const float* logits, int64_t vocab, const SampleRowDev* rows, const Parts& pt, int chunks,
                            int i) {
  RowView v;
  v.rq = rows[i];
  v.row = logits + static_cast<int64_t>(v.rq.row) * vocab;
  v.best = row_best(pt, chunks);
  v.samples = v.best != 0 && v.rq.temperature != 0.0f;
  v.all = Sums{0, 0};
  if (v.samples) {
    v.m = sample_row_math(sample_key_value(static_cast<uint32_t>(v.best >> 32)), v.rq.temperature, vocab);
    v.all = row_sums(pt, chunks);
    v.samples = v.all.weight != 0;
  }
  return v;
}

// The filter of the boundaries found so far (every token with q > 0 before the first).
__device__ __forceinline__ Filter kept_by(const SelectState& st) {
  Filter f;
  f.has_k = st.has_k != 0, f.k = st.k;
  f.has_p = st.has_p != 0, f.p = st.p;
  return f;
}

// The tokens select `which` ranks (0, top-k: by count, every token with q > 0; 1, top-p: by weight,
// the tokens top-k kept) under the key bits fixed so far.
__device__ __forceinline__ Filter select_filter(int which, const SelectState& st, uint32_t mask) {
  Filter f = which == 0 ? Filter{} : kept_by(st);
  f.count = which == 0;
  f.mask = mask, f.prefix = st.prefix;
  return f;
}

// Called by every thread after the block's results for the row are written (plain stores or
// atomics): true in the last block of the row's `blocks` to get here, which then sees every block's
// results (read them with __ldcg). The counter is left 0 for the next launch.
__device__ bool last_arrival(SelectState* st, int blocks, SampleShared& sh) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    sh.last = atomicAdd(&st->arrivals, 1u) == static_cast<unsigned>(blocks - 1);
    if (sh.last) st->arrivals = 0;
  }
  __syncthreads();
  const bool last = sh.last;
  if (last) __threadfence();
  return last;
}

// Stages the row's chunk sums (sums[c], in chunk order) into sh.tot and returns their total (every
// thread).
__device__ unsigned long long stage_chunk_sums(const unsigned long long* sums, int chunks, SampleShared& sh) {
  if (threadIdx.x < chunks) sh.tot[threadIdx.x] = __ldcg(sums + threadIdx.x);
  __syncthreads();
  unsigned long long total = 0;
  for (int c = 0; c < chunks; ++c) total += sh.tot[c];
  return total;
}

// The chunk whose staged sums (stage_chunk_sums) hold position *pos; *pos becomes the position
// inside it (every thread returns the same chunk).
__device__ int find_chunk(int chunks, unsigned long long* pos, const SampleShared& sh) {
  int c = 0;
  while (c < chunks - 1 && *pos >= sh.tot[c]) *pos -= sh.tot[c++];
  __syncthreads();  // sh.tot is free again
  return c;
}

// The token at position pos of the tokens under f in chunk c of the row, walked in id order.
__device__ int32_t locate_in_chunk(const float* row, int64_t vocab, int chunks, int c, const Filter& f,
                                   const SampleRowMath& m, unsigned long long pos, SampleShared& sh) {
  int64_t lo, hi;
  chunk_range(vocab, chunks, c, &lo, &hi);
  range_sum(row, lo, hi, f, m, sh);
  return locate(row, lo, hi, f, m, pos, sh);
}

// The summed histogram of a radix pass in sh.tot (bin d at d) becomes its suffix sums: sh.tot[i] =
// Σ bins ≥ 255 − i, so sh.tot[255] is the total (threads < 256 take part, all threads must call).
__device__ void suffix_sums(SampleShared& sh) {
  const int i = threadIdx.x, lane = i & 31, warp = i >> 5;
  unsigned long long v = 0;
  if (i < 256) {
    v = sh.tot[255 - i];  // thread i holds digit 255 − i: prefix sums over i are suffix sums over digits
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const unsigned long long t = __shfl_up_sync(0xffffffffu, v, o);
      if (lane >= o) v += t;
    }
    if (lane == 31) sh.warp_weight[warp] = v;
  }
  __syncthreads();  // (every thread has read its bin)
  if (i < 256) {
    for (int w = 0; w < warp; ++w) v += sh.warp_weight[w];
    sh.tot[i] = v;
  }
  __syncthreads();
}

// The digit of a radix pass from its suffix sums (suffix_sums; all threads must call): walking the
// digits from 255 down, the first d whose bin brings `above` to `target` (0 when none does before
// it), as a serial walk would find it; sets sh.digit and sh.above (the count or weight of the keys
// above the new prefix).
__device__ void pick_digit(SampleShared& sh, unsigned long long above, unsigned long long target) {
  const int i = threadIdx.x;
  if (i == 0) sh.found = 255;
  __syncthreads();
  // Digits ≥ 1 whose suffix sum reaches the target; the walk stops at the largest of them.
  if (i < 255 && above + sh.tot[i] >= target) atomicMin(&sh.found, i);
  __syncthreads();
  if (i == 0) {
    const int first = sh.found;  // 255 when no digit ≥ 1 reaches it: the walk ends at digit 0
    sh.digit = 255 - first;
    sh.above = above + (first > 0 ? sh.tot[first - 1] : 0);
  }
  __syncthreads();
}

// Pass 1, grid (chunks, n): the row's penalty edits that fall in the chunk, then the chunk's largest
// (key, −id), NaN excluded (0 when none). Block 0 of the row also resets its select state.
__global__ void __launch_bounds__(kSampleThreads)
    sample_best_kernel(float* logits, int64_t vocab, const SampleRowDev* rows, const PenaltyEdit* edits,
                       SampleSplit sp) {
  __shared__ unsigned long long warp_best[kSampleWarps];
  pdl_wait();
  const SampleRowDev rq = rows[blockIdx.y];
  const Parts pt(sp, gridDim.y, blockIdx.y);
  if (blockIdx.x == 0) {
    SelectState& st = *pt.st;
    for (int d = threadIdx.x; d < 256; d += kSampleThreads) st.hist[d] = 0;
    if (threadIdx.x == 0) {
      st.above = st.target = 0;
      st.mask = st.prefix = 0;
      st.has_k = st.has_p = st.active = 0;
      st.arrivals = 0;
    }
  }
  float* row = logits + static_cast<int64_t>(rq.row) * vocab;
  int64_t lo, hi;
  chunk_range(vocab, sp.chunks, blockIdx.x, &lo, &hi);
  for (int e = threadIdx.x; e < rq.edit_count; e += kSampleThreads) {
    const PenaltyEdit pe = edits[rq.edit_begin + e];
    if (pe.token >= lo && pe.token < hi) row[pe.token] = apply_penalty_edit(row[pe.token], pe, rq.repetition_penalty);
  }
  __syncthreads();
  unsigned long long best = 0;
  for (int64_t i = lo + threadIdx.x; i < hi; i += kSampleThreads) {
    const float v = row[i];
    if (!(v != v)) best = max(best, static_cast<unsigned long long>(sample_greedy_key(v, i)));
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) best = max(best, __shfl_xor_sync(0xffffffffu, best, o));
  if ((threadIdx.x & 31) == 0) warp_best[threadIdx.x >> 5] = best;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 0; w < kSampleWarps; ++w) best = max(best, warp_best[w]);
    pt.best[blockIdx.x] = best;
  }
}

// Pass 2, grid (chunks, n): the count and weight of the chunk's tokens with q > 0 (rows that sample).
__global__ void __launch_bounds__(kSampleThreads)
    sample_sum_kernel(const float* logits, int64_t vocab, const SampleRowDev* rows, SampleSplit sp) {
  __shared__ SampleShared sh;
  pdl_wait();
  const SampleRowDev rq = rows[blockIdx.y];
  const Parts pt(sp, gridDim.y, blockIdx.y);
  const unsigned long long best = row_best(pt, sp.chunks);
  if (best == 0 || rq.temperature == 0.0f) return;
  const SampleRowMath m = sample_row_math(sample_key_value(static_cast<uint32_t>(best >> 32)), rq.temperature, vocab);
  int64_t lo, hi;
  chunk_range(vocab, sp.chunks, blockIdx.x, &lo, &hi);
  const Sums s = range_sum(logits + static_cast<int64_t>(rq.row) * vocab, lo, hi, Filter{}, m, sh);
  if (threadIdx.x == 0) pt.weight[blockIdx.x] = s.weight, pt.count[blockIdx.x] = s.count;
}

// One radix pass (8 key bits at `shift`) of the top-k select (which 0: by count over the tokens
// with q > 0) or the top-p select (which 1: by weight over the tokens top-k kept), grid (chunks, n):
// each block adds its chunk's histogram of the digit under the select's prefix to the row's, and the
// last block picks the digit. The first pass decides whether the select runs for the row (top_k
// below the row's count; top_p < 1 with ⌈top_p · M⌉ ≤ M, M the histogram's total).
__global__ void __launch_bounds__(kSampleThreads)
    sample_radix_kernel(const float* logits, int64_t vocab, const SampleRowDev* rows, SampleSplit sp, int which,
                        int shift) {
  __shared__ SampleShared sh;
  pdl_wait();
  const Parts pt(sp, gridDim.y, blockIdx.y);
  const RowView v = row_view(logits, vocab, rows, pt, sp.chunks, blockIdx.y);
  SelectState* st = pt.st;
  bool active;
  if (shift == 24)
    active = v.samples && (which == 0 ? v.rq.top_k > 0 && static_cast<unsigned long long>(v.rq.top_k) < v.all.count
                                      : v.rq.top_p < 1.0f);
  else
    active = st->active != 0;
  if (!active) return;
  const Filter f = select_filter(which, *st, st->mask);

  const int lane = threadIdx.x & 31;
  for (int i = threadIdx.x; i < kHistCopies * 256; i += kSampleThreads) sh.hist[i] = 0;
  __syncthreads();
  int64_t lo, hi;
  chunk_range(vocab, sp.chunks, blockIdx.x, &lo, &hi);
  unsigned long long* hist = sh.hist + (lane % kHistCopies) * 256;
  for (int64_t i = lo + threadIdx.x; i < hi; i += kSampleThreads) {
    uint32_t key;
    const unsigned long long c = contribution(f, v.m, v.row[i], static_cast<int32_t>(i), &key);
    if (c) atomicAdd(&hist[(key >> shift) & 255u], c);
  }
  __syncthreads();
  if (threadIdx.x < 256) {
    unsigned long long t = 0;
    for (int c = 0; c < kHistCopies; ++c) t += sh.hist[c * 256 + threadIdx.x];
    if (t) atomicAdd(&st->hist[threadIdx.x], t);
  }
  if (!last_arrival(st, sp.chunks, sh)) return;

  if (threadIdx.x < 256) {
    sh.tot[threadIdx.x] = __ldcg(&st->hist[threadIdx.x]);
    st->hist[threadIdx.x] = 0;  // ready for the next pass
  }
  __syncthreads();
  suffix_sums(sh);
  unsigned long long target = st->target;
  if (shift == 24) {
    if (which == 0) {
      target = static_cast<unsigned long long>(v.rq.top_k);
    } else {
      const unsigned long long mass = sh.tot[255];  // the weight top-k kept
      target = sample_top_p_target(v.rq.top_p, mass);
      if (target > mass) return;  // top_p keeps every token: no boundary (st->active stays 0)
    }
  }
  pick_digit(sh, st->above, target);
  if (threadIdx.x == 0) {
    st->target = target;
    st->above = sh.above;
    st->prefix |= static_cast<uint32_t>(sh.digit) << shift;
    st->mask |= 0xffu << shift;
    st->active = 1;
  }
}

// The end of a select (which as in sample_radix_kernel), grid (chunks, n): the key is known; each
// block sums its chunk's tokens of that key, and the last block walks them in id order to the
// select's position: the boundary. Resets the select state for the next select.
__global__ void __launch_bounds__(kSampleThreads)
    sample_boundary_kernel(const float* logits, int64_t vocab, const SampleRowDev* rows, SampleSplit sp, int which) {
  __shared__ SampleShared sh;
  pdl_wait();
  const Parts pt(sp, gridDim.y, blockIdx.y);
  const RowView v = row_view(logits, vocab, rows, pt, sp.chunks, blockIdx.y);
  SelectState* st = pt.st;
  if (!v.samples || st->active == 0) return;
  const Filter f = select_filter(which, *st, ~0u);
  int64_t lo, hi;
  chunk_range(vocab, sp.chunks, blockIdx.x, &lo, &hi);
  const Sums s = range_sum(v.row, lo, hi, f, v.m, sh);
  if (threadIdx.x == 0) st->chunk[blockIdx.x] = s.weight;
  if (!last_arrival(st, sp.chunks, sh)) return;

  unsigned long long pos = st->target - st->above - 1;
  stage_chunk_sums(st->chunk, sp.chunks, sh);
  const int c = find_chunk(sp.chunks, &pos, sh);
  const Boundary b{st->prefix, locate_in_chunk(v.row, vocab, sp.chunks, c, f, v.m, pos, sh)};
  if (threadIdx.x == 0) {
    if (which == 0) {
      st->k = b, st->has_k = 1;
    } else {
      st->p = b, st->has_p = 1;
    }
    st->above = st->target = 0;
    st->mask = st->prefix = 0;
    st->active = 0;
  }
}

// The draw, grid (chunks or 1, n). Rows that do not sample get their greedy token from block 0. A
// row some truncation rule filters (its boundaries, min_p) sums its chunks' kept weight, one block
// a chunk, and the last block draws; every other row draws in block 0 from pass 2's chunk sums. The
// draw: the position in the kept weight, the chunk holding it, then the walk inside that chunk.
__global__ void __launch_bounds__(kSampleThreads)
    sample_draw_kernel(const float* logits, int64_t vocab, const SampleRowDev* rows, SampleSplit sp, int32_t* out) {
  __shared__ SampleShared sh;
  pdl_wait();
  const Parts pt(sp, gridDim.y, blockIdx.y);
  const RowView v = row_view(logits, vocab, rows, pt, sp.chunks, blockIdx.y);
  if (!v.samples) {
    if (blockIdx.x == 0 && threadIdx.x == 0) out[blockIdx.y] = v.best ? sample_greedy_id(v.best) : 0;
    return;
  }
  SelectState* st = pt.st;
  Filter f = kept_by(*st);
  if (v.rq.min_p > 0.0f) f.min_w = static_cast<double>(v.rq.min_p);
  const unsigned long long* sums = pt.weight;  // every token with q > 0: pass 2's sums
  if (f.has_k || f.has_p || f.min_w > 0) {     // (launched on every chunk: some rule applies)
    int64_t lo, hi;
    chunk_range(vocab, sp.chunks, blockIdx.x, &lo, &hi);
    const Sums s = range_sum(v.row, lo, hi, f, v.m, sh);
    if (threadIdx.x == 0) st->chunk[blockIdx.x] = s.weight;
    if (!last_arrival(st, sp.chunks, sh)) return;
    sums = st->chunk;
  } else if (blockIdx.x != 0) {
    return;
  }
  unsigned long long pos = sample_draw_position(stage_chunk_sums(sums, sp.chunks, sh), v.rq.random);
  const int c = find_chunk(sp.chunks, &pos, sh);
  const int32_t id = locate_in_chunk(v.row, vocab, sp.chunks, c, f, v.m, pos, sh);
  if (threadIdx.x == 0) out[blockIdx.y] = id;
}

}  // namespace

int sample_chunks(int n, int sm_count) {
  return n <= 0 ? 1 : std::clamp(2 * sm_count / n, 1, kSampleMaxChunks);
}

SampleRules sample_rules(const SampleRowDev* rows, int n) {
  SampleRules r;
  for (int i = 0; i < n; ++i) {
    if (rows[i].temperature == 0.0f) continue;  // greedy: no rule applies
    r.top_k = r.top_k || rows[i].top_k > 0;
    r.top_p = r.top_p || rows[i].top_p < 1.0f;
    r.min_p = r.min_p || rows[i].min_p > 0.0f;
  }
  return r;
}

cudaError_t sample_launch(float* logits, int64_t vocab, const SampleRowDev* rows, int n, const PenaltyEdit* edits,
                          int32_t* out, const SampleSplit& split, const SampleRules& rules, const Launch& ln) {
  if (n <= 0) return cudaSuccess;
  if (vocab < 1 || vocab >= (int64_t{1} << 31) || split.parts == nullptr || split.chunks < 1 ||
      split.chunks > kSampleMaxChunks || n > 65535)
    return cudaErrorInvalidValue;
  const dim3 grid(split.chunks, n);
  cudaError_t e = launch_kernel(sample_best_kernel, grid, kSampleThreads, 0, ln, logits, vocab, rows, edits, split);
  if (e == cudaSuccess) e = launch_kernel(sample_sum_kernel, grid, kSampleThreads, 0, ln, logits, vocab, rows, split);
  if (!rules.top_k && !rules.top_p && !rules.min_p) {
    // Nothing truncates: block 0 of each row draws from pass 2's chunk sums.
    if (e == cudaSuccess)
      e = launch_kernel(sample_draw_kernel, dim3(1, n), kSampleThreads, 0, ln, logits, vocab, rows, split, out);
    return e;
  }
  // Truncation: the selects the rows need (a row a select does not apply to passes through), then
  // the draw over the kept tokens.
  for (int which = 0; which < 2; ++which) {
    if (which == 0 ? !rules.top_k : !rules.top_p) continue;
    for (int shift = 24; shift >= 0 && e == cudaSuccess; shift -= 8)
      e = launch_kernel(sample_radix_kernel, grid, kSampleThreads, 0, ln, logits, vocab, rows, split, which, shift);
    if (e == cudaSuccess)
      e = launch_kernel(sample_boundary_kernel, grid, kSampleThreads, 0, ln, logits, vocab, rows, split, which);
  }
  if (e == cudaSuccess)
    e = launch_kernel(sample_draw_kernel, grid, kSampleThreads, 0, ln, logits, vocab, rows, split, out);
  return e;
}

}  // namespace gptoss::cuda
