// Token sampling as a backend step output (StepOutputs::sample): one SampleRow per logits row to
// sample from, prepared by the engine's Sampler (penalty edits, one random draw) and finished where
// the logits are, so only the sampled ids come back. sample_row() is the reference every backend
// matches bit for bit (the CPU backend calls it; the CUDA kernel shares its arithmetic through
// sampling_math.h).
//
// The rules, in order, on a row of logits l:
//  1. Penalty edits (PenaltyEdit) change the listed tokens' logits.
//  2. Greedy (temperature 0): the largest logit, lowest id on ties, NaN never (0 if every logit is NaN).
//  3. Weights: q = ⌊e^((l − lmax)/T) · 2^S⌋ (sampling_math.h), integers with exact sums. Tokens with
//     q = 0 are dropped; if none is left (every logit NaN or −inf, or lmax = ±inf) the greedy token.
//  4. Tokens are ordered by (logit descending, id ascending). top_k > 0 keeps the first top_k.
//  5. top_p < 1 keeps the shortest prefix whose weight reaches ⌈top_p · M⌉, M = the weight top_k kept.
//  6. min_p > 0 drops the tokens with e^((l − lmax)/T) < min_p (p < min_p · p_max).
//  7. The draw: with M' the kept weight and pos = ⌊M' · random / 2^64⌋, the kept tokens are walked in
//     id order and the first whose cumulative weight exceeds pos is the token. P(token) = q / M'
//     (up to 2^−64): the walk order changes which `random` gives which token, not the distribution.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "backend/sampling_math.h"
#include "core/status.h"

namespace gptoss {

struct SampleRow {
  int32_t row = 0;                          // output row of the step (batch order, see StepOutputs)
  float temperature = 1.0f;                 // 0: greedy
  int32_t top_k = 0;                        // 0: off
  float top_p = 1.0f;                       // (0, 1]
  float min_p = 0.0f;                       // [0, 1)
  float repetition_penalty = 1.0f;          // the r of edits with `repeat` set
  uint64_t random = 0;                      // the draw (one Rng::next()); unused when greedy
  std::span<const PenaltyEdit> edits = {};  // distinct tokens < vocab
};

// Checks rows against a step of `n_rows` output rows: rows strictly increasing in [0, n_rows),
// temperature finite ≥ 0, top_k ≥ 0, top_p in (0, 1], min_p in [0, 1), repetition_penalty finite
// > 0, edit tokens in [0, vocab) and distinct within a row. Errors name the entry and the field.
Status validate_sample_rows(std::span<const SampleRow> rows, int64_t n_rows, int64_t vocab);

// Working memory of sample_row (the row's candidate tokens, up to the vocabulary): a caller that
// samples row after row keeps one and passes it to every call, so it is allocated once.
struct SampleScratch {
  struct Candidate {
    uint32_t key;  // sample_order_key of the logit
    int32_t id;
    uint64_t q;  // integer weight
    double w;    // e^((l − lmax)/T)
  };
  std::vector<Candidate> c;
};

// The reference: applies r's edits to logits [vocab] in place and returns the token of rules 2–7.
int32_t sample_row(float* logits, int64_t vocab, const SampleRow& r, SampleScratch& scratch);
// The same with working memory of its own (one-off calls).
int32_t sample_row(float* logits, int64_t vocab, const SampleRow& r);

}  // namespace gptoss
