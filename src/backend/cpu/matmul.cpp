// Dot-product kernels of the CPU backend: bf16 and MXFP4 weight matmuls and dot_f32, all in the
// canonical summation order described in ops.h (AVX2/FMA when compiled in, else an exact scalar
// emulation of the same eight lanes).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/ops.h"
#include "backend/cpu/parallel.h"
#include "core/dtype.h"
#include "core/mxfp4.h"
#include "core/status.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define GPTOSS_CPU_AVX2 1
#endif

namespace gptoss::cpu {
namespace {

constexpr int kLanes = 8;
constexpr int kRowTile = 4;                // weight rows per micro-tile
constexpr int kTokTile = 3;                // tokens per micro-tile (kRowTile·kTokTile accumulators ≤ 12 registers)
constexpr int64_t kTokBlock = 64;          // tokens whose partial sums stay on the stack (their x rows stay in L2)
constexpr int64_t kColChunk = 512;         // weight columns decoded to f32 at once (multiple of 32; stays in L1)
constexpr int64_t kMinTaskMacs = 1 << 15;  // smallest share of a matmul worth handing to a thread

// Reduction of the eight lanes, in the order a 256→128→64→32-bit horizontal add produces.
inline float lanes_sum(const float* l) {
  return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

// Partial sums of one token × one row: acc[(t·kRowTile + r)·8 + lane].
// Micro-kernel: NT token rows x[t] (pointing at the chunk start) × NR decoded weight rows
// (w + r·ldw), len % 8 == 0; acc continues the lanes of earlier chunks.
template <int NT, int NR>
void tile_kernel(const float* const* x, const float* w, int64_t ldw, int64_t len, float* acc) {
#ifdef GPTOSS_CPU_AVX2
  __m256 a[NT][NR];
#pragma GCC unroll 4
  for (int t = 0; t < NT; ++t)
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) a[t][r] = _mm256_load_ps(acc + (t * kRowTile + r) * kLanes);
  for (int64_t i = 0; i < len; i += kLanes) {
    __m256 wv[NR];
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) wv[r] = _mm256_load_ps(w + r * ldw + i);
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) {
      const __m256 xv = _mm256_loadu_ps(x[t] + i);
#pragma GCC unroll 4
      for (int r = 0; r < NR; ++r) a[t][r] = _mm256_fmadd_ps(xv, wv[r], a[t][r]);
    }
  }
#pragma GCC unroll 4
  for (int t = 0; t < NT; ++t)
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) _mm256_store_ps(acc + (t * kRowTile + r) * kLanes, a[t][r]);
#else
  for (int t = 0; t < NT; ++t) {
    for (int r = 0; r < NR; ++r) {
      float* l = acc + (t * kRowTile + r) * kLanes;
      for (int64_t i = 0; i < len; i += kLanes)
        for (int k = 0; k < kLanes; ++k) l[k] = std::fma(x[t][i + k], w[r * ldw + i + k], l[k]);
    }
  }
#endif
}

using TileFn = void (*)(const float* const*, const float*, int64_t, int64_t, float*);
template <int NT>
constexpr TileFn kTileRow[kRowTile] = {&tile_kernel<NT, 1>, &tile_kernel<NT, 2>, &tile_kernel<NT, 3>,
                                       &tile_kernel<NT, 4>};
constexpr const TileFn* kTiles[kTokTile] = {kTileRow<1>, kTileRow<2>, kTileRow<3>};

// y[t, r] for the row tiles [tile0, tile1) and all n tokens. `decode(row, c0, len, dst)` writes the
// exact f32 weights W[row, c0 .. c0+len) to dst.
template <class Decode>
void matmul_row_tiles(const float* x, int64_t n, int64_t in, int64_t out, const Decode& decode, const uint16_t* bias,
                      int64_t tile0, int64_t tile1, float* y) {
  alignas(32) float wbuf[kRowTile * kColChunk];
  alignas(32) float acc[kTokBlock * kRowTile * kLanes];
  float wtail[kLanes];
  const int64_t in8 = in & ~int64_t{kLanes - 1};
  for (int64_t t0 = 0; t0 < n; t0 += kTokBlock) {
    const int64_t nt = std::min(kTokBlock, n - t0);
    for (int64_t tile = tile0; tile < tile1; ++tile) {
      const int64_t r0 = tile * kRowTile;
      const int nr = static_cast<int>(std::min<int64_t>(kRowTile, out - r0));
      std::fill(acc, acc + nt * kRowTile * kLanes, 0.0f);
      for (int64_t c0 = 0; c0 < in8; c0 += kColChunk) {
        const int64_t len = std::min(kColChunk, in8 - c0);
        for (int r = 0; r < nr; ++r) decode(r0 + r, c0, len, wbuf + r * kColChunk);
        for (int64_t t = 0; t < nt; t += kTokTile) {
          const int ntt = static_cast<int>(std::min<int64_t>(kTokTile, nt - t));
          const float* xp[kTokTile];
          for (int u = 0; u < ntt; ++u) xp[u] = x + (t0 + t + u) * in + c0;
          kTiles[ntt - 1][nr - 1](xp, wbuf, kColChunk, len, acc + t * kRowTile * kLanes);
        }
      }
      for (int r = 0; r < nr; ++r) {
        if (in > in8) decode(r0 + r, in8, in - in8, wtail);
        for (int64_t t = 0; t < nt; ++t) {
          float s = lanes_sum(acc + (t * kRowTile + r) * kLanes);
          const float* xt = x + (t0 + t) * in + in8;
          for (int64_t i = 0; i < in - in8; ++i) s = std::fma(xt[i], wtail[i], s);
          if (bias) s += bf16_to_f32(bias[r0 + r]);
          y[(t0 + t) * out + r0 + r] = s;
        }
      }
    }
  }
}

// Splits the row tiles of an [n, in] × [out, in]ᵀ product over the pool.
template <class Decode>
void matmul_dispatch(const float* x, int64_t n, int64_t in, int64_t out, const Decode& decode, const uint16_t* bias,
                     float* y, ThreadPool* pool) {
  if (n <= 0 || out <= 0) return;
  const int64_t tiles = (out + kRowTile - 1) / kRowTile;
  auto run = [&](int64_t b, int64_t e) { matmul_row_tiles(x, n, in, out, decode, bias, b, e, y); };
  const int64_t macs_per_tile = std::max<int64_t>(1, kRowTile * std::max<int64_t>(in, 1) * n);
  parallel_ranges(pool, tiles, (kMinTaskMacs + macs_per_tile - 1) / macs_per_tile, run);
}

void decode_bf16(const uint16_t* src, int64_t len, float* dst) {
  int64_t i = 0;
#ifdef GPTOSS_CPU_AVX2
  for (; i + kLanes <= len; i += kLanes) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
  }
#endif
  for (; i < len; ++i) dst[i] = bf16_to_f32(src[i]);
}

// Twice the E2M1 values, so they are small integers (the scale is halved to compensate; both are
// exact, so value·scale is the same float as kFp4Values[code]·2^(s−127)).
constexpr int8_t kFp4Twice[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// 2^(s−128) as a float, built from bits (ldexp per block would dominate the decode).
inline float e8m0_half(uint8_t s) {
  uint32_t bits;
  if (s >= 2) {
    bits = static_cast<uint32_t>(s - 1) << 23;
  } else {
    bits = s == 1 ? 0x00400000u : 0x00200000u;  // 2^-127 and 2^-128 are subnormal
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

#ifdef GPTOSS_CPU_AVX2
// One MXFP4 block (16 bytes + scale) → its 32 exact f32 weights in four registers, in order.
inline void decode_block_avx2(const uint8_t* block, uint8_t scale, __m256 w[4]) {
  const __m128i lut = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kFp4Twice));
  const __m128i low_mask = _mm_set1_epi8(0x0f);
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block));
  const __m128i lo = _mm_shuffle_epi8(lut, _mm_and_si128(b, low_mask));
  const __m128i hi = _mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16(b, 4), low_mask));
  // Low nibble is the even element: interleave to get elements 0..15 and 16..31 in order.
  const __m128i e0 = _mm_unpacklo_epi8(lo, hi), e1 = _mm_unpackhi_epi8(lo, hi);
  const __m256 s = _mm256_set1_ps(e8m0_half(scale));
  w[0] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(e0)), s);
  w[1] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(e0, 8))), s);
  w[2] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(e1)), s);
  w[3] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(e1, 8))), s);
}

// Single-token MXFP4 rows r0 .. r0+NR-1: each block is decoded in registers and consumed at once. Same
// values and the same per-row FMA order as the tiled path, so the results are bitwise equal.
template <int NR>
void mxfp4_vec_tile(const uint8_t* blocks, const uint8_t* scales, const uint16_t* bias, int64_t nb, const float* x,
                    int64_t r0, float* y) {
  __m256 acc[NR] = {};  // zeros
  for (int64_t g = 0; g < nb; ++g) {
    const float* xg = x + g * kMxfp4BlockSize;
    const __m256 x0 = _mm256_loadu_ps(xg), x1 = _mm256_loadu_ps(xg + 8), x2 = _mm256_loadu_ps(xg + 16),
                 x3 = _mm256_loadu_ps(xg + 24);
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) {
      const int64_t at = (r0 + r) * nb + g;
      __m256 w[4];
      decode_block_avx2(blocks + at * kMxfp4BytesPerBlock, scales[at], w);
      acc[r] = _mm256_fmadd_ps(x0, w[0], acc[r]);
      acc[r] = _mm256_fmadd_ps(x1, w[1], acc[r]);
      acc[r] = _mm256_fmadd_ps(x2, w[2], acc[r]);
      acc[r] = _mm256_fmadd_ps(x3, w[3], acc[r]);
    }
  }
  alignas(32) float l[kLanes];
  for (int r = 0; r < NR; ++r) {
    _mm256_store_ps(l, acc[r]);
    float v = lanes_sum(l);
    if (bias) v += bf16_to_f32(bias[r0 + r]);
    y[r0 + r] = v;
  }
}

void mxfp4_vec_rows(const uint8_t* blocks, const uint8_t* scales, const uint16_t* bias, int64_t rows, int64_t nb,
                    const float* x, int64_t tile0, int64_t tile1, float* y) {
  for (int64_t tile = tile0; tile < tile1; ++tile) {
    const int64_t r0 = tile * kRowTile;
    switch (std::min<int64_t>(kRowTile, rows - r0)) {
      case 1: mxfp4_vec_tile<1>(blocks, scales, bias, nb, x, r0, y); break;
      case 2: mxfp4_vec_tile<2>(blocks, scales, bias, nb, x, r0, y); break;
      case 3: mxfp4_vec_tile<3>(blocks, scales, bias, nb, x, r0, y); break;
      default: mxfp4_vec_tile<4>(blocks, scales, bias, nb, x, r0, y); break;
    }
  }
}

// Single-token bf16 rows r0 .. r0+NR-1: weights widened in registers; same per-row order as the
// tiled path (sequential 8-lane FMA chunks, lane reduction, scalar tail, bias).
template <int NR>
void bf16_vec_tile(const uint16_t* w, const uint16_t* bias, int64_t in, const float* x, int64_t r0, float* y) {
  const int64_t in8 = in & ~int64_t{kLanes - 1};
  __m256 acc[NR] = {};  // zeros
  for (int64_t i = 0; i < in8; i += kLanes) {
    const __m256 xv = _mm256_loadu_ps(x + i);
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + (r0 + r) * in + i));
      const __m256 wv = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
      acc[r] = _mm256_fmadd_ps(xv, wv, acc[r]);
    }
  }
  alignas(32) float l[kLanes];
  for (int r = 0; r < NR; ++r) {
    _mm256_store_ps(l, acc[r]);
    float v = lanes_sum(l);
    for (int64_t i = in8; i < in; ++i) v = std::fma(x[i], bf16_to_f32(w[(r0 + r) * in + i]), v);
    if (bias) v += bf16_to_f32(bias[r0 + r]);
    y[r0 + r] = v;
  }
}

void bf16_vec_rows(const uint16_t* w, const uint16_t* bias, int64_t rows, int64_t in, const float* x, int64_t tile0,
                   int64_t tile1, float* y) {
  for (int64_t tile = tile0; tile < tile1; ++tile) {
    const int64_t r0 = tile * kRowTile;
    switch (std::min<int64_t>(kRowTile, rows - r0)) {
      case 1: bf16_vec_tile<1>(w, bias, in, x, r0, y); break;
      case 2: bf16_vec_tile<2>(w, bias, in, x, r0, y); break;
      case 3: bf16_vec_tile<3>(w, bias, in, x, r0, y); break;
      default: bf16_vec_tile<4>(w, bias, in, x, r0, y); break;
    }
  }
}
#endif

// Exact dequantization of n_blocks MXFP4 blocks (32 values each) into dst.
void decode_mxfp4(const uint8_t* blocks, const uint8_t* scales, int64_t n_blocks, float* dst) {
#ifdef GPTOSS_CPU_AVX2
  for (int64_t g = 0; g < n_blocks; ++g) {
    __m256 w[4];
    decode_block_avx2(blocks + g * kMxfp4BytesPerBlock, scales[g], w);
    for (int v = 0; v < 4; ++v) _mm256_storeu_ps(dst + g * kMxfp4BlockSize + v * kLanes, w[v]);
  }
#else
  for (int64_t g = 0; g < n_blocks; ++g) {
    const float s = e8m0_half(scales[g]);
    const uint8_t* b = blocks + g * kMxfp4BytesPerBlock;
    float* o = dst + g * kMxfp4BlockSize;
    for (int j = 0; j < kMxfp4BytesPerBlock; ++j) {
      o[2 * j] = static_cast<float>(kFp4Twice[b[j] & 0xf]) * s;
      o[2 * j + 1] = static_cast<float>(kFp4Twice[b[j] >> 4]) * s;
    }
  }
#endif
}

}  // namespace

float dot_f32(const float* a, const float* b, int64_t n) {
  const int64_t n8 = n & ~int64_t{kLanes - 1};
  alignas(32) float l[kLanes] = {};
#ifdef GPTOSS_CPU_AVX2
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < n8; i += kLanes) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  _mm256_store_ps(l, acc);
#else
  for (int64_t i = 0; i < n8; i += kLanes)
    for (int k = 0; k < kLanes; ++k) l[k] = std::fma(a[i + k], b[i + k], l[k]);
#endif
  float s = lanes_sum(l);
  for (int64_t i = n8; i < n; ++i) s = std::fma(a[i], b[i], s);
  return s;
}

void dot_f32_rows(const float* a, const float* const* b, int64_t n, int64_t len, float* out) {
  const int64_t len8 = len & ~int64_t{kLanes - 1};
  alignas(32) float l[4][kLanes];
  int64_t j = 0;
#ifdef GPTOSS_CPU_AVX2
  // Four rows at a time: four independent FMA chains hide the FMA latency.
  for (; j + 4 <= n; j += 4) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t i = 0; i < len8; i += kLanes) {
      const __m256 av = _mm256_loadu_ps(a + i);
      for (int r = 0; r < 4; ++r) acc[r] = _mm256_fmadd_ps(av, _mm256_loadu_ps(b[j + r] + i), acc[r]);
    }
    for (int r = 0; r < 4; ++r) {
      _mm256_store_ps(l[r], acc[r]);
      float s = lanes_sum(l[r]);
      for (int64_t i = len8; i < len; ++i) s = std::fma(a[i], b[j + r][i], s);
      out[j + r] = s;
    }
  }
#endif
  for (; j < n; ++j) out[j] = dot_f32(a, b[j], len);
}

void matmul_bf16(const float* x, int64_t n, int64_t in, const uint16_t* w, const uint16_t* bias, int64_t out, float* y,
                 ThreadPool* pool) {
#ifdef GPTOSS_CPU_AVX2
  if (n == 1) {
    // Decode steps: widen the weights in registers instead of staging them.
    auto run = [&](int64_t b, int64_t e) { bf16_vec_rows(w, bias, out, in, x, b, e, y); };
    const int64_t tiles = (out + kRowTile - 1) / kRowTile;
    parallel_ranges(pool, tiles, (kMinTaskMacs + kRowTile * in - 1) / std::max<int64_t>(1, kRowTile * in), run);
    return;
  }
#endif
  auto decode = [w, in](int64_t row, int64_t c0, int64_t len, float* dst) { decode_bf16(w + row * in + c0, len, dst); };
  matmul_dispatch(x, n, in, out, decode, bias, y, pool);
}

void mxfp4_matmul(const uint8_t* blocks, const uint8_t* scales, const uint16_t* bias, int64_t rows, int64_t cols,
                  const float* x, int64_t n, float* y, ThreadPool* pool) {
  GPTOSS_CHECK(cols % kMxfp4BlockSize == 0, "mxfp4_matmul: cols {} is not a multiple of 32", cols);
  const int64_t nb = cols / kMxfp4BlockSize;
#ifdef GPTOSS_CPU_AVX2
  if (n == 1) {
    // Decode steps: nothing to amortise the dequantization over, so skip the f32 staging buffer.
    auto run = [&](int64_t b, int64_t e) { mxfp4_vec_rows(blocks, scales, bias, rows, nb, x, b, e, y); };
    const int64_t tiles = (rows + kRowTile - 1) / kRowTile;
    parallel_ranges(pool, tiles, (kMinTaskMacs + kRowTile * cols - 1) / (kRowTile * cols), run);
    return;
  }
#endif
  // Chunks start at multiples of kColChunk (a multiple of 32) and the tail is empty, so every
  // decode call covers whole blocks.
  auto decode = [=](int64_t row, int64_t c0, int64_t len, float* dst) {
    const int64_t g0 = c0 / kMxfp4BlockSize;
    decode_mxfp4(blocks + (row * nb + g0) * kMxfp4BytesPerBlock, scales + row * nb + g0, len / kMxfp4BlockSize, dst);
  };
  matmul_dispatch(x, n, cols, rows, decode, bias, y, pool);
}

void mxfp4_matvec(const uint8_t* blocks, const uint8_t* scales, const uint16_t* bias, int64_t rows, int64_t cols,
                  const float* x, float* y) {
  mxfp4_matmul(blocks, scales, bias, rows, cols, x, 1, y, nullptr);
}

}  // namespace gptoss::cpu
