// Token sampling: greedy, temperature, top-k, top-p, min-p, repetition/presence/frequency
// penalties, deterministic for a given seed (own RNG arithmetic, no std distributions).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "backend/sampling.h"
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
  // True when any penalty changes the logits (then a greedy token needs the penalty edits too).
  bool has_penalties() const {
    return repetition_penalty != 1.0f || presence_penalty != 0.0f || frequency_penalty != 0.0f;
  }
};

// xoshiro256** seeded through splitmix64: the same seed gives the same stream on every platform.
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t next();

 private:
  uint64_t s_[4];
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // The next token's SampleRow (backend/sampling.h) for a backend to finish where the logits are:
  // the penalty edits of `history` (kept by the sampler: the row's edits stay valid until its next
  // prepare() or sample()) and, unless greedy, one Rng::next() as its draw (row is left 0 for the
  // caller). `history` is the sequence so far (prompt + generated); the repetition penalty looks at
  // all of it (HF rule), presence/frequency penalties only at history[generated_from:] (OpenAI counts
  // the sampled tokens, not the prompt).
  SampleRow prepare(int64_t vocab, std::span<const int32_t> history, size_t generated_from);
  // The same on the host: prepare() then sample_row() over logits [vocab] (modified in place by the
  // penalties). Rules: penalties → greedy argmax (temperature 0, lowest id on ties) or weights →
  // top-k → top-p → min-p → a draw that walks the kept tokens in id order (sampling.h). Each
  // non-greedy sample takes exactly one Rng::next(), so a seed gives the same tokens on every backend.
  int32_t sample(float* logits, int64_t vocab, std::span<const int32_t> history, size_t generated_from = 0);
  const SamplingParams& params() const { return params_; }

 private:
  // Fills edits_ with the penalty edits of `history` (only called when a penalty is on).
  void collect_edits(int64_t vocab, std::span<const int32_t> history, size_t generated_from);

  SamplingParams params_;
  Rng rng_;
  std::vector<int32_t> edit_index_;  // per-vocabulary scratch: edit index + 1 (0 = none), cleared after use
  std::vector<int32_t> count_;       // generated-token counts of the edits
  std::vector<PenaltyEdit> edits_;   // the last prepare()'s edits
  SampleScratch scratch_;            // sample()'s candidate list, reused
};

}  // namespace gptoss
