// Internals of the CUDA backend shared by its host files: device memory ownership, the uploaded
// weights, and the per-step planning of GEMM and attention launches.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend/cuda/kernels.h"
#include "backend/sampling.h"
#include "core/status.h"
#include "core/threads.h"
#include "model/weights.h"

namespace gptoss::cuda {

// Status for a failed CUDA call: "<what>: <cuda error string>" (kResourceExhausted for OOM).
Status cuda_error(cudaError_t e, const std::string& what);

#define GPTOSS_CUDA_TRY(expr, what)                                       \
  do {                                                                    \
    const cudaError_t _e = (expr);                                        \
    if (_e != cudaSuccess) return ::gptoss::cuda::cuda_error(_e, (what)); \
  } while (0)

// One cudaMalloc'd region, freed on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr, o.bytes_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  // Allocates `bytes` (zeroed); `what` names the buffer in errors.
  static Result<DeviceBuffer> alloc(size_t bytes, const std::string& what);
  uint8_t* data() const { return static_cast<uint8_t*>(ptr_); }
  size_t size() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Page-locked host memory, freed on destruction.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer();
  PinnedBuffer(PinnedBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr, o.bytes_ = 0; }
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  static Result<PinnedBuffer> alloc(size_t bytes, const std::string& what);
  uint8_t* data() const { return static_cast<uint8_t*>(ptr_); }
  size_t size() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// A cuBLAS handle bound to one stream, with its own workspace (dense_cublas.cpp).
class CublasHandle {
 public:
  CublasHandle() = default;
  ~CublasHandle();
  CublasHandle(CublasHandle&& o) noexcept : h_(o.h_), workspace_(std::move(o.workspace_)) { o.h_ = nullptr; }
  CublasHandle& operator=(CublasHandle&& o) noexcept;
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
  static Result<CublasHandle> create(cudaStream_t stream);
  cublasHandle_t get() const { return h_; }
  size_t workspace_bytes() const { return workspace_.size(); }

 private:
  cublasHandle_t h_ = nullptr;
  DeviceBuffer workspace_;
};

// The dense product of `a` through cuBLAS (fp16 weights, fp16-pair activations with x_stride = 2·x_lo,
// no gather/scatter/tiles) as two partial sums per token, in kPartial's layout with the token's
// parts adjacent: W·hi of token t at out + t·out_stride, W·lo at + part_stride, out_stride =
// 2·part_stride. One fp16 GEMM with f32 accumulation on the handle's stream; the consumer adds the
// two parts (hi first), as it adds the own kernels' segment partials. Invalid arguments and cuBLAS
// failures come back as errors.
Status cublas_dense(const CublasHandle& h, const GemmArgs& a);

// The kernel's copy of a SampleRow whose logits are row `row` of the launch and whose edits start at
// `edit_begin` of the launch's edit array.
inline SampleRowDev sample_row_dev(const SampleRow& r, int32_t row, int32_t edit_begin) {
  SampleRowDev d;
  d.row = row;
  d.top_k = r.top_k;
  d.temperature = r.temperature;
  d.top_p = r.top_p;
  d.min_p = r.min_p;
  d.repetition_penalty = r.repetition_penalty;
  d.random = r.random;
  d.edit_begin = edit_begin;
  d.edit_count = static_cast<int32_t>(r.edits.size());
  return d;
}

// A dense weight on the device: fp16 [rows_p][kblocks·32], zero padded.
struct DenseDev {
  const uint16_t* w = nullptr;
  int rows = 0, rows_p = 0, kblocks = 0;
};

// One layer's experts: MXFP4 blocks [E][rows_p][kblocks][16], scales [E][rows_p][kblocks], f32 bias
// [E][rows_p].
struct ExpertsDev {
  const uint8_t* blocks = nullptr;
  const uint8_t* scales = nullptr;
  const float* bias = nullptr;
  int rows = 0, rows_p = 0, kblocks = 0;
};

struct LayerDev {
  const float* attn_norm = nullptr;
  DenseDev qkv;  // q rows, then k rows, then v rows
  const float* qkv_b = nullptr;
  DenseDev o;
  const float* o_b = nullptr;
  const float* sinks = nullptr;
  const float* mlp_norm = nullptr;
  const uint16_t* router_w = nullptr;  // bf16 [E][H] (the router runs in f32 like the reference)
  const float* router_b = nullptr;
  ExpertsDev mlp1, mlp2;
};

struct ModelDev {
  DeviceBuffer arena;               // every weight below points into it
  const uint16_t* embed = nullptr;  // bf16 [V][H]
  const float* final_norm = nullptr;
  DenseDev lm_head;
  std::vector<LayerDev> layers;
  const float* inv_freq = nullptr;  // YaRN frequencies [head_dim/2]
  float concentration = 1.0f;
};

// Uploads every weight of `model` once (pinned staging, async copies): dense matrices as fp16
// (checked to fit fp16), experts kept MXFP4, norms/biases/sinks as f32.
Result<std::unique_ptr<ModelDev>> model_upload(const Model& model, cudaStream_t stream, ThreadPool* pool);

// Per-kernel GPU times for performance work (enabled by GPTOSS_CUDA_PROFILE=1): device events
// around each launch, summed per step kind and kernel name (with the bytes each launch must read,
// for achieved GB/s), reported when the backend is destroyed. While it is on, every step runs
// eagerly (no decode graphs), so each time includes its launch's gap. Not thread-safe (the
// backend's one thread drives it).
class KernelProfiler {
 public:
  ~KernelProfiler();
  void enable(bool on) { on_ = on; }
  bool on() const { return on_; }
  void begin(cudaStream_t stream);
  void end(const std::string& name, double bytes, cudaStream_t stream);
  // After the step's sync: adds the times of the marks recorded since the last collect to the
  // totals of `kind`.
  void collect(const std::string& kind);
  std::string report() const;

 private:
  struct Mark {
    std::string name;
    double bytes;
    cudaEvent_t start, stop;
  };
  struct Total {
    double ms = 0, bytes = 0;
    int64_t calls = 0;
  };
  cudaEvent_t event();
  void add(std::map<std::string, Total>& totals, const Mark& m, float* step_ms);
  bool on_ = false;
  cudaEvent_t open_ = nullptr;
  std::vector<Mark> marks_;
  std::vector<cudaEvent_t> free_;
  std::map<std::string, std::map<std::string, Total>> totals_;  // kind → kernel → total
  std::map<std::string, int64_t> steps_;
  std::map<std::string, double> step_ms_;
};

// Launch configuration of one GEMM for a given number of columns.
struct GemmPlan {
  int nt = 8;  // column tile
  int seg_blocks = 0, nseg = 1;
  bool split = false;   // segments in separate blocks (kPartial)
  bool cublas = false;  // dense products of large steps: cublas_dense (hi and lo parts per token)
  int max_tiles = 0;    // MoE grid bound
  int nparts() const { return cublas ? 2 : split ? nseg : 1; }
  // Where the product of n columns with rows `width` apart leaves its parts: part s of token t at
  // s·part_stride(n, width) + t·token_stride(width) (segments one after the other; cuBLAS's hi and lo
  // parts side by side).
  int64_t part_stride(int n, int64_t width) const { return cublas ? width : int64_t{n} * width; }
  int64_t token_stride(int64_t width) const { return cublas ? 2 * width : width; }
};
GemmPlan gemm_plan_dense(int rows, int kblocks, int n, int sm_count);
GemmPlan gemm_plan_moe(int rows, int kblocks, int pairs, int experts, int sm_count);

// Key splits of the prefill attention kernel for `items` work items on blocks of `warps` warps:
// enough (warp-weighted) blocks for about 32 warps per SM, where one split is not.
int attention_splits(int items, int kv_heads, int head_chunks, int warps, int sm_count);

}  // namespace gptoss::cuda
