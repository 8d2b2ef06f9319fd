// Token sampling: greedy, temperature, top-k, top-p, min-p, repetition/presence/frequency
// penalties, deterministic for a given seed (own RNG arithmetic, no std distributions).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/status.h"

namespace gptoss {

struct SamplingParams {
  float temperature = 1.0f;         // 0 = greedy
  float top_p = 1.0f;               // (0, 1]
  int top_k = 0;                    // 0 = off
  float min_p = 0.0f;               // [0, 1): drop tokens with p < min_p · p_max
  float repetition_penalty = 1.0f;  // > 0; 1 = off (HF/llama.cpp rule: logit>0 ÷ r, logit<0 × r)
  float presence_penalty = 0.0f;    // OpenAI: −= presence · [count > 0]
  float frequency_penalty = 0.0f;   // OpenAI: −= frequency · count
  uint64_t seed = 0;

  // Rejects negative temperature, top_p outside (0, 1], negative top_k, min_p outside [0, 1),
  // repetition_penalty ≤ 0, penalties outside [−2, 2], and NaNs; messages name the field.
  Status validate() const;
  bool greedy() const { return temperature == 0.0f; }
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // Picks the next token from logits [vocab] (modified in place by penalties/temperature).
  // `history` is the sequence so far (prompt + generated), used by the penalties.
  int32_t sample(float* logits, int64_t vocab, std::span<const int32_t> history);
  const SamplingParams& params() const { return params_; }

 private:
  double next_uniform();  // [0, 1)
  SamplingParams params_;
  uint64_t state_[4];
  std::vector<std::pair<float, int32_t>> scratch_;
};

}  // namespace gptoss
