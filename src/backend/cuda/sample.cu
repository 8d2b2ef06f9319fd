// Token sampling on the device, bit for bit the rules of backend/sampling.h with the arithmetic of
// sampling_math.h: the penalty edits in place, the row's greedy token and maximum, exact integer
// sums of the weights (order-free, so deterministic), the top-k and top-p boundaries by a radix
// select over the order keys (ties resolved in id order), and the draw as a walk over the kept
// tokens in id order. Three launches: the edits and each chunk's greedy key, then each chunk's
// weight sum (both on `chunks` blocks per row, so a batch-1 row spreads over the device), then one
// block per row for the selects and the draw, which locates the chunk holding the drawn position
// from the chunk sums and walks only that chunk (without top-k / top-p / min-p). Only the token id
// leaves the device.
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
  unsigned long long warp_best[kSampleWarps];
  unsigned long long above;
  int digit;
  int32_t found;
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

// The first token, in (key desc, id asc) order over the tokens under f, where the cumulative count
// or weight reaches target (1 ≤ target ≤ the total under f): a radix select over the 32-bit keys,
// 8 bits per pass, then the tokens of the selected key in id order.
__device__ Boundary select(const float* row, int64_t vocab, Filter f, const SampleRowMath& m, unsigned long long target,
                           SampleShared& sh) {
  const int lane = threadIdx.x & 31;
  unsigned long long above = 0;  // weight of the tokens with a larger key than the selected prefix
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < kHistCopies * 256; i += kSampleThreads) sh.hist[i] = 0;
    __syncthreads();
    unsigned long long* hist = sh.hist + (lane % kHistCopies) * 256;
    for (int64_t i = threadIdx.x; i < vocab; i += kSampleThreads) {
      uint32_t key;
      const unsigned long long c = contribution(f, m, row[i], static_cast<int32_t>(i), &key);
      if (c) atomicAdd(&hist[(key >> shift) & 255u], c);
    }
    __syncthreads();
    if (threadIdx.x < 256) {
      unsigned long long t = 0;
      for (int c = 0; c < kHistCopies; ++c) t += sh.hist[c * 256 + threadIdx.x];
      sh.tot[threadIdx.x] = t;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int d = 255;
      while (d > 0 && above + sh.tot[d] < target) above += sh.tot[d--];
      sh.digit = d;
      sh.above = above;
    }
    __syncthreads();
    above = sh.above;
    f.prefix |= static_cast<uint32_t>(sh.digit) << shift;
    f.mask |= 0xffu << shift;
  }
  range_sum(row, 0, vocab, f, m, sh);
  return Boundary{f.prefix, locate(row, 0, vocab, f, m, target - above - 1, sh)};
}

// Ids [lo, hi) of chunk c of `chunks` over a row of `vocab` (chunks of whole warps' worth of ids;
// trailing chunks may be empty).
__device__ __forceinline__ void chunk_range(int64_t vocab, int chunks, int c, int64_t* lo, int64_t* hi) {
  const int64_t len = ((vocab + chunks - 1) / chunks + 31) / 32 * 32;
  *lo = c * len < vocab ? c * len : vocab;
  *hi = *lo + len < vocab ? *lo + len : vocab;
}

// The parts of row i: greedy keys, weights, counts, each [n][chunks].
struct Parts {
  unsigned long long *best, *weight, *count;
  __device__ Parts(const SampleSplit& sp, int n, int i) {
    best = sp.parts + static_cast<int64_t>(i) * sp.chunks;
    weight = best + static_cast<int64_t>(n) * sp.chunks;
    count = weight + static_cast<int64_t>(n) * sp.chunks;
  }
};

// The row's greedy key from the chunks' (every thread).
__device__ __forceinline__ unsigned long long row_best(const Parts& pt, int chunks) {
  unsigned long long best = 0;
  for (int c = 0; c < chunks; ++c) best = max(best, pt.best[c]);
  return best;
}

// Pass 1, grid (chunks, n): the row's penalty edits that fall in the chunk, then the chunk's largest
// (key, −id), NaN excluded (0 when none).
__global__ void __launch_bounds__(kSampleThreads)
    sample_best_kernel(float* logits, int64_t vocab, const SampleRowDev* rows, const PenaltyEdit* edits,
                       SampleSplit sp) {
  __shared__ unsigned long long warp_best[kSampleWarps];
  pdl_wait();
  const SampleRowDev rq = rows[blockIdx.y];
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
    Parts(sp, gridDim.y, blockIdx.y).best[blockIdx.x] = best;
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

// Pass 3, one block per row: the rules after the sums, and the draw.
__global__ void __launch_bounds__(kSampleThreads)
    sample_kernel(float* logits, int64_t vocab, const SampleRowDev* rows, SampleSplit sp, int32_t* out) {
  __shared__ SampleShared sh;
  pdl_wait();
  const SampleRowDev rq = rows[blockIdx.x];
  const float* row = logits + static_cast<int64_t>(rq.row) * vocab;
  const Parts pt(sp, gridDim.x, blockIdx.x);
  if (threadIdx.x == 0) sh.found = 0;
  __syncthreads();

  // The greedy token: the largest (key, −id), NaN excluded; 0 when every logit is NaN.
  const unsigned long long best = row_best(pt, sp.chunks);
  const int32_t greedy = best ? sample_greedy_id(best) : 0;
  if (best == 0 || rq.temperature == 0.0f) {
    if (threadIdx.x == 0) out[blockIdx.x] = greedy;
    return;
  }

  const SampleRowMath m = sample_row_math(sample_key_value(static_cast<uint32_t>(best >> 32)), rq.temperature, vocab);
  Filter f;  // every token with q > 0
  Sums all{0, 0};
  for (int c = 0; c < sp.chunks; ++c) all.count += pt.count[c], all.weight += pt.weight[c];
  if (all.weight == 0) {
    if (threadIdx.x == 0) out[blockIdx.x] = greedy;
    return;
  }
  unsigned long long mass = all.weight;
  bool row_parts = false;  // sh holds the part sums of a range_sum over the whole row under f
  if (rq.top_k > 0 && static_cast<unsigned long long>(rq.top_k) < all.count) {
    Filter by_count = f;
    by_count.count = true;
    f.k = select(row, vocab, by_count, m, static_cast<unsigned long long>(rq.top_k), sh);
    f.has_k = true;
    mass = range_sum(row, 0, vocab, f, m, sh).weight;  // also the part sums locate() needs, unless narrowed below
    row_parts = true;
  }
  bool narrowed = false;  // the filter changed since the last range_sum over it
  if (rq.top_p < 1.0f) {
    const uint64_t target = sample_top_p_target(rq.top_p, mass);
    if (target <= mass) {
      f.p = select(row, vocab, f, m, target, sh);
      f.has_p = true;
      narrowed = true;
    }
  }
  if (rq.min_p > 0.0f) {
    f.min_w = static_cast<double>(rq.min_p);
    narrowed = true;
  }
  if (narrowed) mass = range_sum(row, 0, vocab, f, m, sh).weight, row_parts = true;
  unsigned long long pos = sample_draw_position(mass, rq.random);
  int32_t id;
  if (row_parts) {
    id = locate(row, 0, vocab, f, m, pos, sh);
  } else {
    // Every token with q > 0 (f as in pass 2): the chunk holding pos, then the walk inside it.
    int c = 0;
    while (c < sp.chunks - 1 && pos >= pt.weight[c]) pos -= pt.weight[c++];
    int64_t lo, hi;
    chunk_range(vocab, sp.chunks, c, &lo, &hi);
    range_sum(row, lo, hi, f, m, sh);
    id = locate(row, lo, hi, f, m, pos, sh);
  }
  if (threadIdx.x == 0) out[blockIdx.x] = id;
}

}  // namespace

int sample_chunks(int n, int sm_count) {
  return n <= 0 ? 1 : std::clamp(2 * sm_count / n, 1, kSampleMaxChunks);
}

cudaError_t sample_launch(float* logits, int64_t vocab, const SampleRowDev* rows, int n, const PenaltyEdit* edits,
                          int32_t* out, const SampleSplit& split, const Launch& ln) {
  if (n <= 0) return cudaSuccess;
  if (vocab < 1 || vocab >= (int64_t{1} << 31) || split.parts == nullptr || split.chunks < 1 ||
      split.chunks > kSampleMaxChunks || n > 65535)
    return cudaErrorInvalidValue;
  const dim3 grid(split.chunks, n);
  cudaError_t e = launch_kernel(sample_best_kernel, grid, kSampleThreads, 0, ln, logits, vocab, rows, edits, split);
  if (e == cudaSuccess) e = launch_kernel(sample_sum_kernel, grid, kSampleThreads, 0, ln, logits, vocab, rows, split);
  if (e == cudaSuccess) e = launch_kernel(sample_kernel, n, kSampleThreads, 0, ln, logits, vocab, rows, split, out);
  return e;
}

}  // namespace gptoss::cuda
