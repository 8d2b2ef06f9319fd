// Per-token kernels: embedding gather, residual add fused with RMSNorm (summing split-K partials and
// the weighted expert outputs in a fixed order), SwiGLU of split partials, and argmax.
#include <cfloat>

#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"

namespace gptoss::cuda {
namespace {

constexpr int kNormThreads = 256;

__global__ void embed_kernel(const uint16_t* table, int64_t dim, const int32_t* tokens, float* h) {
  const int t = blockIdx.x;
  const uint16_t* row = table + static_cast<int64_t>(tokens[t]) * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) h[t * dim + i] = bf16_bits_to_f32(row[i]);
}

__device__ __forceinline__ float sum_parts(const float* p, int nparts, int64_t part_stride) {
  float v = p[0];
  for (int s = 1; s < nparts; ++s) v += p[s * part_stride];
  return v;
}

__device__ __forceinline__ float residual_value(const float* hr, int t, int i, const ResidualAdd& add) {
  float v = hr[i];
  if (add.nparts == 0) return v;
  if (add.top_k == 0) {
    float d = sum_parts(add.parts + t * add.stride + i, add.nparts, add.part_stride);
    if (add.bias) d += add.bias[i];
    return v + d;
  }
  float moe = 0.0f;
  for (int j = 0; j < add.top_k; ++j) {
    const int pair = t * add.top_k + j;
    const float y = sum_parts(add.parts + pair * add.stride + i, add.nparts, add.part_stride) +
                    add.expert_bias[add.experts[pair] * add.expert_bias_stride + i];
    moe += add.weights[pair] * y;
  }
  return v + moe;
}

// grid (token, chunk of kNormThreads elements). Each block updates its chunk of the residual and
// publishes the chunk's sum of squares; the last block of a token to finish adds the chunk sums in
// chunk order (a fixed order whatever the arrival order or batch) and normalises the whole row.
__global__ void add_rmsnorm_kernel(float* h, int dim, const ResidualAdd add, const float* gain, float eps,
                                   uint16_t* x16, int64_t x16_stride, float* x32, float* partials,
                                   unsigned int* counters) {
  __shared__ float scratch[32];
  __shared__ bool last;
  const int t = blockIdx.x, chunk = blockIdx.y, chunks = gridDim.y;
  float* hr = h + static_cast<int64_t>(t) * dim;
  const int i = chunk * kNormThreads + threadIdx.x;
  float v = 0.0f;
  if (i < dim) {
    v = residual_value(hr, t, i, add);
    if (add.nparts > 0) hr[i] = v;
  }
  __threadfence();  // this block's residual writes are visible before the arrival count below
  const float ss = block_sum(v * v, scratch);
  if (threadIdx.x == 0) {
    partials[static_cast<int64_t>(t) * chunks + chunk] = ss;
    __threadfence();
    last = atomicAdd(&counters[t], 1u) == static_cast<unsigned>(chunks - 1);
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  float total = 0.0f;
  for (int c = 0; c < chunks; ++c) total += __ldcg(&partials[static_cast<int64_t>(t) * chunks + c]);
  const float inv = rsqrtf(total / static_cast<float>(dim) + eps);
  for (int k = threadIdx.x; k < dim; k += blockDim.x) {
    const float y = gain[k] * (__ldcg(&hr[k]) * inv);
    reinterpret_cast<__half*>(x16)[t * x16_stride + k] = f32_to_f16_sat(y);
    if (x32) x32[static_cast<int64_t>(t) * dim + k] = y;
  }
  if (threadIdx.x == 0) counters[t] = 0;  // ready for the next launch
}

// One block per (tile, output chunk): tile columns are pairs in sorted order.
__global__ void swiglu_parts_kernel(const float* parts, int nparts, int64_t part_stride, int64_t rows_p, int inter,
                                    const int32_t* tiles, const int32_t* n_tiles, const float* bias,
                                    int64_t bias_expert_stride, float alpha, float limit, uint16_t* a16,
                                    int64_t out_stride) {
  if (static_cast<int>(blockIdx.x) >= *n_tiles) return;
  const int4 tl = reinterpret_cast<const int4*>(tiles)[blockIdx.x];
  const float* b = bias + tl.x * bias_expert_stride;
  for (int idx = threadIdx.x; idx < tl.z * inter; idx += blockDim.x) {
    const int c = idx / inter, jj = idx - c * inter;
    const int pair = tl.y + c;
    const float* p = parts + pair * rows_p;
    const float gate = sum_parts(p + 2 * jj, nparts, part_stride) + b[2 * jj];
    const float up = sum_parts(p + 2 * jj + 1, nparts, part_stride) + b[2 * jj + 1];
    const float g = fminf(gate, limit), l = fminf(fmaxf(up, -limit), limit);
    const float v = g / (1.0f + expf(-alpha * g)) * (l + 1.0f);
    reinterpret_cast<__half*>(a16)[pair * out_stride + jj] = __float2half_rn(v);
  }
}

// Orders (value desc, index asc) as one unsigned 64-bit key: larger key wins. NaN never enters.
__device__ __forceinline__ unsigned long long argmax_key(float v, int64_t i) {
  const uint32_t u = __float_as_uint(v);
  const uint32_t ord = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (static_cast<unsigned long long>(ord) << 32) | (0xffffffffu - static_cast<uint32_t>(i));
}

// grid (row chunk, row): each block reduces a slice with 16-byte loads and merges by atomicMax.
__global__ void argmax_kernel(const float* logits, int64_t vocab, int64_t per_block, unsigned long long* keys) {
  __shared__ unsigned long long sk[32];
  const float* row = logits + blockIdx.y * vocab;
  const int64_t lo = blockIdx.x * per_block, hi = min(vocab, lo + per_block);
  unsigned long long best = 0;
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    const float v = row[i];
    if (!(v != v)) best = max(best, argmax_key(v, i));
  }
  for (int o = 16; o > 0; o >>= 1) best = max(best, __shfl_xor_sync(0xffffffffu, best, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sk[warp] = best;
  __syncthreads();
  if (warp == 0) {
    best = lane < static_cast<int>(blockDim.x >> 5) ? sk[lane] : 0;
    for (int o = 16; o > 0; o >>= 1) best = max(best, __shfl_xor_sync(0xffffffffu, best, o));
    if (lane == 0 && best) atomicMax(&keys[blockIdx.y], best);
  }
}

__global__ void argmax_finish_kernel(unsigned long long* keys, int rows, int32_t* out) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const unsigned long long k = keys[r];
  out[r] = k ? static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(k & 0xffffffffu)) : 0;
  keys[r] = 0;  // ready for the next launch
}

}  // namespace

cudaError_t kernels_available() {
  cudaFuncAttributes attr;
  return cudaFuncGetAttributes(&attr, embed_kernel);
}

cudaError_t embed_launch(const uint16_t* table, int64_t dim, const int32_t* tokens, int n, float* h,
                         cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  embed_kernel<<<n, kNormThreads, 0, stream>>>(table, dim, tokens, h);
  return cudaGetLastError();
}

int add_rmsnorm_chunks(int dim) {
  return (dim + kNormThreads - 1) / kNormThreads;
}

cudaError_t add_rmsnorm_launch(float* h, int n, int dim, const ResidualAdd& add, const float* gain, float eps,
                               uint16_t* x16, int64_t x16_stride, float* x32, float* partials, unsigned int* counters,
                               cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (add.nparts > 0 && add.top_k > 0 && (add.experts == nullptr || add.weights == nullptr || !add.expert_bias))
    return cudaErrorInvalidValue;
  const dim3 grid(n, add_rmsnorm_chunks(dim));
  add_rmsnorm_kernel<<<grid, kNormThreads, 0, stream>>>(h, dim, add, gain, eps, x16, x16_stride, x32, partials,
                                                        counters);
  return cudaGetLastError();
}

cudaError_t swiglu_parts_launch(const float* parts, int nparts, int64_t part_stride, int64_t rows_p, int inter,
                                const int32_t* tiles, const int32_t* n_tiles, int max_tiles, const float* bias,
                                int64_t bias_expert_stride, float alpha, float limit, uint16_t* a16, int64_t out_stride,
                                cudaStream_t stream) {
  if (max_tiles <= 0) return cudaSuccess;
  swiglu_parts_kernel<<<max_tiles, kNormThreads, 0, stream>>>(parts, nparts, part_stride, rows_p, inter, tiles, n_tiles,
                                                              bias, bias_expert_stride, alpha, limit, a16, out_stride);
  return cudaGetLastError();
}

cudaError_t argmax_launch(const float* logits, int rows, int64_t vocab, unsigned long long* keys, int32_t* out,
                          cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  const int64_t per_block = 256 * 16;
  const dim3 grid(static_cast<unsigned>((vocab + per_block - 1) / per_block), rows);
  argmax_kernel<<<grid, 256, 0, stream>>>(logits, vocab, per_block, keys);
  argmax_finish_kernel<<<(rows + 127) / 128, 128, 0, stream>>>(keys, rows, out);
  return cudaGetLastError();
}

}  // namespace gptoss::cuda
