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

// One block per token. The residual row is updated in place and the squares are summed in f32
// by a fixed-order block reduction.
__global__ void add_rmsnorm_kernel(float* h, int dim, const ResidualAdd add, const float* gain, float eps,
                                   uint16_t* x16, int64_t x16_stride, float* x32) {
  __shared__ float scratch[32];
  const int t = blockIdx.x;
  float* hr = h + static_cast<int64_t>(t) * dim;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    float v = hr[i];
    if (add.nparts > 0) {
      if (add.top_k == 0) {
        float d = sum_parts(add.parts + t * add.stride + i, add.nparts, add.part_stride);
        if (add.bias) d += add.bias[i];
        v += d;
      } else {
        float moe = 0.0f;
        for (int j = 0; j < add.top_k; ++j) {
          const int pair = t * add.top_k + j;
          const int e = add.experts[pair];
          const float y = sum_parts(add.parts + pair * add.stride + i, add.nparts, add.part_stride) +
                          add.expert_bias[e * add.expert_bias_stride + i];
          moe += add.weights[pair] * y;
        }
        v += moe;
      }
      hr[i] = v;
    }
    ss += v * v;
  }
  ss = block_sum(ss, scratch);
  const float inv = rsqrtf(ss / static_cast<float>(dim) + eps);
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    const float y = gain[i] * (hr[i] * inv);
    reinterpret_cast<__half*>(x16)[t * x16_stride + i] = f32_to_f16_sat(y);
    if (x32) x32[static_cast<int64_t>(t) * dim + i] = y;
  }
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

__global__ void argmax_kernel(const float* logits, int64_t vocab, int32_t* out) {
  __shared__ float sv[32];
  __shared__ int si[32];
  const float* row = logits + blockIdx.x * vocab;
  float best = -FLT_MAX;
  int bi = -1;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = row[i];
    if (v > best || (bi < 0 && !(v != v))) best = v, bi = static_cast<int>(i);  // first index wins ties
  }
  // Reduce (value desc, index asc); -1 means "no number seen".
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (oi >= 0 && (bi < 0 || ov > best || (ov == best && oi < bi))) best = ov, bi = oi;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sv[warp] = best, si[warp] = bi;
  __syncthreads();
  if (warp == 0) {
    const int nw = blockDim.x >> 5;
    best = lane < nw ? sv[lane] : -FLT_MAX;
    bi = lane < nw ? si[lane] : -1;
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, best, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (oi >= 0 && (bi < 0 || ov > best || (ov == best && oi < bi))) best = ov, bi = oi;
    }
    if (lane == 0) out[blockIdx.x] = bi < 0 ? 0 : bi;
  }
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

cudaError_t add_rmsnorm_launch(float* h, int n, int dim, const ResidualAdd& add, const float* gain, float eps,
                               uint16_t* x16, int64_t x16_stride, float* x32, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (add.nparts > 0 && add.top_k > 0 && (add.experts == nullptr || add.weights == nullptr || !add.expert_bias))
    return cudaErrorInvalidValue;
  add_rmsnorm_kernel<<<n, kNormThreads, 0, stream>>>(h, dim, add, gain, eps, x16, x16_stride, x32);
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

cudaError_t argmax_launch(const float* logits, int rows, int64_t vocab, int32_t* out, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  argmax_kernel<<<rows, 1024, 0, stream>>>(logits, vocab, out);
  return cudaGetLastError();
}

}  // namespace gptoss::cuda
