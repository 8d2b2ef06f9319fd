// Helpers for the CUDA tests: device arrays, deterministic random data and fp16 conversions (the
// error metrics and fixture helpers come from the CPU tests' test_util.h).
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "backend/cuda/kernels.h"
#include "backend/test_util.h"  // rel_l2, golden fixtures, chunked feeding (shared with the CPU tests)
#include "core/dtype.h"

namespace gptoss::testing {

#define CUDA_ASSERT(expr) ASSERT_EQ((expr), cudaSuccess) << #expr << ": " << cudaGetErrorString(cudaGetLastError())

// A device copy of a host vector (RAII). Sized at construction; download() syncs the device.
template <typename T>
class DevArray {
 public:
  explicit DevArray(size_t n) : n_(n) {
    if (cudaMalloc(reinterpret_cast<void**>(&p_), std::max<size_t>(n, 1) * sizeof(T)) != cudaSuccess) p_ = nullptr;
    if (p_) cudaMemset(p_, 0, std::max<size_t>(n, 1) * sizeof(T));
  }
  explicit DevArray(const std::vector<T>& host) : DevArray(host.size()) { upload(host); }
  ~DevArray() { cudaFree(p_); }
  DevArray(const DevArray&) = delete;
  DevArray& operator=(const DevArray&) = delete;
  void upload(const std::vector<T>& host) {
    if (p_ && !host.empty()) cudaMemcpy(p_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  }
  // Fills every byte with `byte` (poison before a kernel that must write everything it should).
  void fill_bytes(int byte) { cudaMemset(p_, byte, std::max<size_t>(n_, 1) * sizeof(T)); }
  std::vector<T> download() const {
    std::vector<T> h(n_);
    cudaDeviceSynchronize();
    if (p_ && n_) cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost);
    return h;
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

// splitmix64: the next value of a tiny, portable generator whose state is s.
uint64_t next_u64(uint64_t& s);
// Uniform values in [-scale, scale) from a seeded generator (own arithmetic: portable).
std::vector<float> random_f32(size_t n, uint64_t seed, float scale = 1.0f);
std::vector<uint16_t> random_bf16(size_t n, uint64_t seed, float scale = 1.0f);
// Uniform bytes in [lo, lo + span) (MXFP4 codes; scale bytes in a chosen range).
std::vector<uint8_t> random_bytes(size_t n, uint64_t seed, int lo = 0, int span = 256);
inline float f16_round(float v) {
  return f16_to_f32(f32_to_f16(v));
}
std::vector<uint16_t> to_f16(const std::vector<float>& v);
std::vector<float> from_f16(const std::vector<uint16_t>& v);
// An f32 KV cache's layout of rows of dp values: each row's hi halves fp16(x), then its lo halves
// fp16(x − hi) (kernels.h KvLayer).
std::vector<uint16_t> kv_cache_planes(const std::vector<float>& v, int dp);

// True when a CUDA device is usable by this process.
bool have_gpu();

// The launch target of the current device on `stream`, as the backend finds it (launch_target);
// a test failure when the binary holds no kernel code for the device.
cuda::Launch test_launch(cudaStream_t stream = nullptr);

}  // namespace gptoss::testing
