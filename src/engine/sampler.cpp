// Sampler implementation: penalties, truncation filters and a seeded xoshiro256** draw.
#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

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

// Candidate order: higher weight first, lower id on ties; a total order, so every sort and
// selection over it gives the same result on every standard library.
bool candidate_before(const std::pair<double, int32_t>& a, const std::pair<double, int32_t>& b) {
  return a.first != b.first ? a.first > b.first : a.second < b.second;
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

double Rng::uniform() {
  return static_cast<double>(next() >> 11) * 0x1.0p-53;
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

void Sampler::apply_penalties(float* logits, int64_t vocab, std::span<const int32_t> history, size_t generated_from) {
  auto valid = [vocab](int32_t t) { return t >= 0 && t < vocab; };
  // counts_ is a per-vocabulary scratch (first = seen mark, second = count) cleared after use, so
  // each call costs O(history) rather than O(vocab).
  if (static_cast<int64_t>(counts_.size()) < vocab) counts_.assign(static_cast<size_t>(vocab), {0, 0});
  const float r = params_.repetition_penalty;
  if (r != 1.0f) {
    for (int32_t t : history) {
      if (!valid(t) || counts_[t].first) continue;
      counts_[t].first = 1;
      float& l = logits[t];
      l = l > 0.0f ? l / r : l * r;
    }
    for (int32_t t : history)
      if (valid(t)) counts_[t].first = 0;
  }
  const float pres = params_.presence_penalty, freq = params_.frequency_penalty;
  if ((pres != 0.0f || freq != 0.0f) && generated_from < history.size()) {
    auto generated = history.subspan(generated_from);
    for (int32_t t : generated)
      if (valid(t)) ++counts_[t].second;
    for (int32_t t : generated) {
      if (!valid(t) || counts_[t].second == 0) continue;
      logits[t] -= freq * static_cast<float>(counts_[t].second) + pres;
      counts_[t].second = 0;
    }
  }
}

double Sampler::select_candidates(const float* logits, int64_t vocab) {
  const double inv_t = 1.0 / static_cast<double>(params_.temperature);
  double lmax = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < vocab; ++i)
    if (logits[i] > lmax) lmax = logits[i];  // NaN never compares greater, so it is ignored
  scratch_.clear();
  for (int64_t i = 0; i < vocab; ++i) {
    double w = std::isnan(logits[i]) ? 0.0 : std::exp((static_cast<double>(logits[i]) - lmax) * inv_t);
    if (w > 0.0) scratch_.emplace_back(w, static_cast<int32_t>(i));
  }
  auto& c = scratch_;
  bool sorted = false;
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < c.size()) {
    std::nth_element(c.begin(), c.begin() + params_.top_k, c.end(), candidate_before);
    c.resize(static_cast<size_t>(params_.top_k));
    std::sort(c.begin(), c.end(), candidate_before);
    sorted = true;
  }
  double mass = 0.0;
  for (const auto& p : c) mass += p.first;
  if (params_.top_p < 1.0f) {
    // Grow a sorted prefix until it holds top_p of the mass: the nucleus is usually tiny, so this
    // avoids sorting the whole vocabulary.
    const double target = static_cast<double>(params_.top_p) * mass;
    size_t n = sorted ? c.size() : std::min<size_t>(64, c.size());
    for (;;) {
      if (!sorted) {
        std::nth_element(c.begin(), c.begin() + static_cast<std::ptrdiff_t>(n), c.end(), candidate_before);
        std::sort(c.begin(), c.begin() + static_cast<std::ptrdiff_t>(n), candidate_before);
      }
      double acc = 0.0;
      size_t keep = 0;
      while (keep < n && acc < target) acc += c[keep++].first;
      if (acc >= target || n == c.size()) {
        c.resize(std::max<size_t>(keep, 1));
        break;
      }
      n = std::min(c.size(), n * 4);
    }
  }
  if (params_.min_p > 0.0f) {
    // The most likely token has weight exactly 1 (its logit is lmax), so p ≥ min_p · p_max is w ≥ min_p.
    const double cut = static_cast<double>(params_.min_p);
    std::erase_if(c, [cut](const auto& p) { return p.first < cut; });
  }
  double kept = 0.0;
  for (const auto& p : c) kept += p.first;
  return kept;
}

int32_t Sampler::sample(float* logits, int64_t vocab, std::span<const int32_t> history, size_t generated_from) {
  if (vocab <= 0) return -1;
  if (params_.has_penalties()) apply_penalties(logits, vocab, history, generated_from);
  if (params_.greedy()) {
    int64_t best = 0;
    for (int64_t i = 1; i < vocab; ++i)
      if (logits[i] > logits[best] || (std::isnan(logits[best]) && !std::isnan(logits[i]))) best = i;
    return static_cast<int32_t>(best);
  }
  const double total = select_candidates(logits, vocab);
  if (scratch_.empty() || !(total > 0.0)) {
    // Every logit was −inf or NaN: no distribution to draw from; fall back to the lowest id.
    return 0;
  }
  const double u = rng_.uniform() * total;
  double acc = 0.0;
  for (const auto& [w, id] : scratch_) {
    acc += w;
    if (u < acc) return id;
  }
  return scratch_.back().second;  // rounding left u at the very top of the range
}

}  // namespace gptoss
