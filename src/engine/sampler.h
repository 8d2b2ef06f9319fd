// Token sampling: greedy, temperature, top-k, top-p, min-p, repetition/presence/frequency
// penalties, deterministic for a given seed (own RNG arithmetic, no std distributions).
#pragma once

#include <cstdint>
#include <span>
#include <utility>
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
  // True when any penalty changes the logits (then greedy still needs the full logits row).
  bool has_penalties() const {
    return repetition_penalty != 1.0f || presence_penalty != 0.0f || frequency_penalty != 0.0f;
  }
};

// xoshiro256** seeded through splitmix64: the same seed gives the same stream on every platform.
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t next();
  // Uniform double in [0, 1) from the top 53 bits of next().
  double uniform();

 private:
  uint64_t s_[4];
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // Picks the next token from logits [vocab] (modified in place by penalties/temperature).
  // `history` is the sequence so far (prompt + generated). The repetition penalty looks at all of
  // it (HF rule); presence/frequency penalties count only history[generated_from:] (OpenAI counts
  // the tokens sampled so far, not the prompt). Order: penalties → greedy argmax (temperature 0,
  // lowest id on ties) or temperature → top-k → top-p → min-p → draw.
  int32_t sample(float* logits, int64_t vocab, std::span<const int32_t> history, size_t generated_from = 0);
  const SamplingParams& params() const { return params_; }

 private:
  void apply_penalties(float* logits, int64_t vocab, std::span<const int32_t> history, size_t generated_from);
  // Fills scratch_ with the kept (probability, id) candidates sorted by probability descending
  // (ties: lower id first) and returns their total mass.
  double select_candidates(const float* logits, int64_t vocab);

  SamplingParams params_;
  Rng rng_;
  std::vector<std::pair<double, int32_t>> scratch_;
  std::vector<std::pair<int32_t, int32_t>> counts_;  // (token, count) scratch for penalties
};

}  // namespace gptoss
