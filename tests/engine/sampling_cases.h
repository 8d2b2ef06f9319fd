// The sampling settings the engine tests on each backend run through the backend's sampler and
// the host Sampler: each rule alone, the rules together, the penalties, and greedy with penalties.
#pragma once

#include <vector>

#include "engine/sampler.h"

namespace gptoss::test {

inline std::vector<SamplingParams> sampling_rule_cases() {
  return {
      {.temperature = 1.0f, .seed = 1},
      {.temperature = 0.7f, .top_p = 0.9f, .seed = 2},
      {.temperature = 1.2f, .top_k = 40, .seed = 3},
      {.temperature = 0.8f, .top_p = 0.5f, .top_k = 100, .min_p = 0.05f, .seed = 4},
      {.temperature = 1.0f, .repetition_penalty = 1.3f, .presence_penalty = 0.5f, .frequency_penalty = 0.3f, .seed = 5},
      {.temperature = 0, .repetition_penalty = 1.5f, .frequency_penalty = 1.0f}};
}

}  // namespace gptoss::test
