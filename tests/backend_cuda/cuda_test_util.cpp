// Helpers for the CUDA tests (see cuda_test_util.h).
#include "backend_cuda/cuda_test_util.h"

namespace gptoss::testing {

uint64_t next_u64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

std::vector<float> random_f32(size_t n, uint64_t seed, float scale) {
  std::vector<float> v(n);
  uint64_t s = seed * 0x2545f4914f6cdd1dULL + 1;
  for (float& x : v) x = scale * (static_cast<float>(next_u64(s) >> 40) / static_cast<float>(1ULL << 23) - 1.0f);
  return v;
}

std::vector<uint8_t> random_bytes(size_t n, uint64_t seed, int lo, int span) {
  std::vector<uint8_t> v(n);
  uint64_t s = seed;
  for (uint8_t& b : v) b = static_cast<uint8_t>(lo + static_cast<int>(next_u64(s) % static_cast<uint64_t>(span)));
  return v;
}

std::vector<uint16_t> random_bf16(size_t n, uint64_t seed, float scale) {
  std::vector<float> f = random_f32(n, seed, scale);
  std::vector<uint16_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = f32_to_bf16(f[i]);
  return v;
}

std::vector<uint16_t> to_f16(const std::vector<float>& v) {
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = f32_to_f16(v[i]);
  return h;
}

std::vector<float> from_f16(const std::vector<uint16_t>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = f16_to_f32(v[i]);
  return f;
}

std::vector<uint16_t> kv_cache_planes(const std::vector<float>& v, int dp) {
  std::vector<uint16_t> p(2 * v.size());
  for (size_t r = 0; r < v.size() / static_cast<size_t>(dp); ++r)
    for (int i = 0; i < dp; ++i) {
      const float x = v[r * dp + i];
      const uint16_t hi = f32_to_f16(x);
      p[r * 2 * dp + i] = hi;
      p[r * 2 * dp + dp + i] = f32_to_f16(x - f16_to_f32(hi));
    }
  return p;
}

bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

cuda::Launch test_launch(cudaStream_t stream) {
  cuda::Launch l;
  const cudaError_t e = cuda::launch_target(stream, &l);
  if (e != cudaSuccess) ADD_FAILURE() << "launch_target: " << cudaGetErrorString(e);
  return l;
}

}  // namespace gptoss::testing
