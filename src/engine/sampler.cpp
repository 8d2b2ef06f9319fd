// Sampler implementation: validation, the seeded xoshiro256** stream and the penalty edits; the
// sampling rules themselves are backend/sampling.cpp's.
#include "engine/sampler.h"

#include <cmath>

namespace gptoss {

namespace {

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}

Status check_range(const char* field, double v, double lo, bool lo_inclusive, double hi, bool hi_inclusive) {
  bool ok = std::isfinite(v) && (lo_inclusive ? v >= lo : v > lo) && (hi_inclusive ? v <= hi : v < hi);
  if (ok) return {};
  return make_error(ErrorCode::kInvalidArgument, "{} must be in {}{}, {}{} (got {})", field, lo_inclusive ? "[" : "(",
                    lo, hi, hi_inclusive ? "]" : ")", v);
}

}  // namespace

Status SamplingParams::validate() const {
  if (!std::isfinite(temperature) || temperature < 0.0f)
    return make_error(ErrorCode::kInvalidArgument, "temperature must be a finite number >= 0 (got {})", temperature);
  GPTOSS_RETURN_IF_ERROR(check_range("top_p", top_p, 0.0, false, 1.0, true));
  if (top_k < 0) return make_error(ErrorCode::kInvalidArgument, "top_k must be >= 0 (got {})", top_k);
  GPTOSS_RETURN_IF_ERROR(check_range("min_p", min_p, 0.0, true, 1.0, false));
  if (!std::isfinite(repetition_penalty) || repetition_penalty <= 0.0f)
    return make_error(ErrorCode::kInvalidArgument, "repetition_penalty must be a finite number > 0 (got {})",
                      repetition_penalty);
  GPTOSS_RETURN_IF_ERROR(check_range("presence_penalty", presence_penalty, -2.0, true, 2.0, true));
  GPTOSS_RETURN_IF_ERROR(check_range("frequency_penalty", frequency_penalty, -2.0, true, 2.0, true));
  return {};
}

Rng::Rng(uint64_t seed) {
  uint64_t x = seed;
  for (auto& s : s_) s = splitmix64(x);
}

uint64_t Rng::next() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

void Sampler::collect_edits(int64_t vocab, std::span<const int32_t> history, size_t generated_from) {
  auto valid = [vocab](int32_t t) { return t >= 0 && t < vocab; };
  // edit_index_ maps a token to its edit (index + 1) and is cleared again below, so each call costs
  // O(history) rather than O(vocab).
  if (static_cast<int64_t>(edit_index_.size()) < vocab) edit_index_.assign(static_cast<size_t>(vocab), 0);
  auto edit_of = [&](int32_t t) -> size_t {
    if (edit_index_[t] == 0) {
      edits_.push_back({.token = t});
      count_.push_back(0);
      edit_index_[t] = static_cast<int32_t>(edits_.size());
    }
    return static_cast<size_t>(edit_index_[t] - 1);
  };
  count_.clear();
  if (params_.repetition_penalty != 1.0f)
    for (int32_t t : history)
      if (valid(t)) edits_[edit_of(t)].repeat = 1;
  const float pres = params_.presence_penalty, freq = params_.frequency_penalty;
  if ((pres != 0.0f || freq != 0.0f) && generated_from < history.size())
    for (int32_t t : history.subspan(generated_from))
      if (valid(t)) ++count_[edit_of(t)];
  for (size_t i = 0; i < edits_.size(); ++i) {
    PenaltyEdit& e = edits_[i];
    if (count_[i] > 0) e.delta = freq * static_cast<float>(count_[i]) + pres;
    edit_index_[e.token] = 0;
  }
}

SampleRow Sampler::prepare(int64_t vocab, std::span<const int32_t> history, size_t generated_from) {
  edits_.clear();
  if (params_.has_penalties()) collect_edits(vocab, history, generated_from);
  SampleRow r;
  r.temperature = params_.temperature;
  r.top_k = params_.top_k;
  r.top_p = params_.top_p;
  r.min_p = params_.min_p;
  r.repetition_penalty = params_.repetition_penalty;
  r.random = params_.greedy() ? 0 : rng_.next();
  r.edits = edits_;
  return r;
}

int32_t Sampler::sample(float* logits, int64_t vocab, std::span<const int32_t> history, size_t generated_from) {
  if (vocab <= 0) return -1;
  return sample_row(logits, vocab, prepare(vocab, history, generated_from), scratch_);
}

}  // namespace gptoss
