// Dense products of prefill-sized steps through cuBLAS (measured faster than the own GEMM there, see
// docs/PERFORMANCE.md "cuBLAS for the qkv and o products"). The activations stay fp16 pairs, so the
// product keeps the own kernels' near-f32 precision: one fp16 GEMM with f32 accumulation
// (CUBLAS_COMPUTE_32F) over the 2n columns hi₀, lo₀, hi₁, lo₁, … reads the weights once and writes
// W·hi and W·lo of each token as two f32 partial sums, which the consumer adds.
#include <cublas_v2.h>

#include "backend/cuda/cuda_internal.h"

namespace gptoss::cuda {

Status cublas_error(cublasStatus_t s, const std::string& what) {
  const ErrorCode code = s == CUBLAS_STATUS_ALLOC_FAILED ? ErrorCode::kResourceExhausted : ErrorCode::kInternal;
  return Status(code, what + ": cuBLAS " + cublasGetStatusName(s) + " (" + cublasGetStatusString(s) + ")");
}

#define GPTOSS_CUBLAS_TRY(expr, what)                                                 \
  do {                                                                                \
    const cublasStatus_t _s = (expr);                                                 \
    if (_s != CUBLAS_STATUS_SUCCESS) return ::gptoss::cuda::cublas_error(_s, (what)); \
  } while (0)

CublasHandle::~CublasHandle() {
  if (h_) cublasDestroy(h_);
}

CublasHandle& CublasHandle::operator=(CublasHandle&& o) noexcept {
  if (this != &o) {
    if (h_) cublasDestroy(h_);
    h_ = o.h_, o.h_ = nullptr;
    workspace_ = std::move(o.workspace_);
  }
  return *this;
}

Result<CublasHandle> CublasHandle::create(cudaStream_t stream) {
  CublasHandle c;
  GPTOSS_CUBLAS_TRY(cublasCreate(&c.h_), "creating a cuBLAS handle");
  GPTOSS_CUBLAS_TRY(cublasSetStream(c.h_, stream), "binding cuBLAS to the stream");
  // A workspace of its own, so cuBLAS never allocates during a step (32 MiB: NVIDIA's advice for Hopper).
  GPTOSS_ASSIGN_OR_RETURN(c.workspace_, DeviceBuffer::alloc(size_t{32} << 20, "the cuBLAS workspace"));
  GPTOSS_CUBLAS_TRY(cublasSetWorkspace(c.h_, c.workspace_.data(), c.workspace_.size()), "setting the cuBLAS workspace");
  // Deterministic results: no atomics in any reduction.
  GPTOSS_CUBLAS_TRY(cublasSetAtomicsMode(c.h_, CUBLAS_ATOMICS_NOT_ALLOWED), "configuring cuBLAS");
  return c;
}

Status cublas_dense(const CublasHandle& h, const GemmArgs& a) {
  if (a.weights != GemmWeights::kF16 || a.mode != GemmOut::kPartial || a.x_gather || a.out_scatter || a.tiles ||
      a.rows < 1 || a.n < 1 || a.kblocks < 1 || a.part_stride < a.rows || a.out_stride != 2 * a.part_stride ||
      a.x_lo < int64_t{a.kblocks} * 32 || a.x_stride != 2 * a.x_lo)
    return make_error(
        ErrorCode::kInvalidArgument,
        "cuBLAS dense product: needs fp16 weights, hi/lo partial outputs interleaved by token (out_stride = 2 x "
        "part_stride >= 2 x rows), activations with lo = hi + x_lo and x_stride = 2 x x_lo, no gather/scatter "
        "(rows {}, n {}, kblocks {}, out_stride {}, part_stride {}, x_stride {}, x_lo {})",
        a.rows, a.n, a.kblocks, a.out_stride, a.part_stride, a.x_stride, a.x_lo);
  // Row-major W [rows][K] is the column-major K×rows matrix Wᵀ. The activation halves are the
  // columns of a K×2n matrix at stride x_lo (hi of token t = column 2t, lo = column 2t + 1), and
  // the result's column c lands at out + c·part_stride: token t's hi product at t·out_stride, its
  // lo product one part_stride further.
  const int K = a.kblocks * 32;
  const float one = 1.0f, zero = 0.0f;
  GPTOSS_CUBLAS_TRY(cublasGemmEx(h.get(), CUBLAS_OP_T, CUBLAS_OP_N, a.rows, 2 * a.n, K, &one, a.w, CUDA_R_16F, K, a.x,
                                 CUDA_R_16F, static_cast<int>(a.x_lo), &zero, a.out, CUDA_R_32F,
                                 static_cast<int>(a.part_stride), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                    "cuBLAS dense product");
  return Status::ok_status();
}

}  // namespace gptoss::cuda
