// Helpers shared by the CPU op tests (ops_test.cpp, ops_attention_test.cpp): seeded normal data and
// the f32 unit roundoff their tolerances are written in.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "core/dtype.h"

namespace gptoss::cpu {

inline constexpr double kEps32 = 1.0 / (1 << 24);  // unit roundoff of f32

inline std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

inline std::vector<uint16_t> randn_bf16(size_t n, uint32_t seed, float scale = 1.0f) {
  std::vector<uint16_t> v(n);
  const std::vector<float> f = randn(n, seed, scale);
  for (size_t i = 0; i < n; ++i) v[i] = f32_to_bf16(f[i]);
  return v;
}

}  // namespace gptoss::cpu
