// The reference sampler of backend/sampling.h: a plain host implementation of rules 1–7.
#include "backend/sampling.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace gptoss {

namespace {

using Candidate = SampleScratch::Candidate;

// (logit descending, id ascending): a total order, so every selection over it is unique.
bool before(const Candidate& a, const Candidate& b) {
  return a.key != b.key ? a.key > b.key : a.id < b.id;
}

bool finite_at_least(float v, float lo, bool inclusive) {
  return std::isfinite(v) && (inclusive ? v >= lo : v > lo);
}

// Keeps the shortest prefix (in `before` order) of c whose weight reaches target ≤ Σq. The prefix
// is grown by partial sorts, as the nucleus is usually small.
void keep_top_p(std::vector<Candidate>& c, uint64_t target) {
  size_t n = std::min<size_t>(64, c.size());
  for (;;) {
    std::nth_element(c.begin(), c.begin() + static_cast<std::ptrdiff_t>(n), c.end(), before);
    std::sort(c.begin(), c.begin() + static_cast<std::ptrdiff_t>(n), before);
    uint64_t acc = 0;
    size_t keep = 0;
    while (keep < n && acc < target) acc += c[keep++].q;
    if (acc >= target) {
      c.resize(keep);
      return;
    }
    n = std::min(c.size(), n * 4);
  }
}

}  // namespace

Status validate_sample_rows(std::span<const SampleRow> rows, int64_t n_rows, int64_t vocab) {
  std::vector<int32_t> tokens;  // one row's edit tokens, sorted to find a repeat
  int64_t prev = -1;
  for (size_t i = 0; i < rows.size(); ++i) {
    const SampleRow& r = rows[i];
    if (r.row <= prev || r.row >= n_rows)
      return make_error(ErrorCode::kInvalidArgument,
                        "sample entry {}: row {} must be in [0, {}) and above the previous entry's row", i, r.row,
                        n_rows);
    prev = r.row;
    if (!finite_at_least(r.temperature, 0.0f, true))
      return make_error(ErrorCode::kInvalidArgument, "sample entry {}: temperature {} must be finite and >= 0", i,
                        r.temperature);
    if (r.top_k < 0)
      return make_error(ErrorCode::kInvalidArgument, "sample entry {}: top_k {} must be >= 0", i, r.top_k);
    if (!finite_at_least(r.top_p, 0.0f, false) || r.top_p > 1.0f)
      return make_error(ErrorCode::kInvalidArgument, "sample entry {}: top_p {} must be in (0, 1]", i, r.top_p);
    if (!finite_at_least(r.min_p, 0.0f, true) || r.min_p >= 1.0f)
      return make_error(ErrorCode::kInvalidArgument, "sample entry {}: min_p {} must be in [0, 1)", i, r.min_p);
    if (!finite_at_least(r.repetition_penalty, 0.0f, false))
      return make_error(ErrorCode::kInvalidArgument, "sample entry {}: repetition_penalty {} must be finite and > 0", i,
                        r.repetition_penalty);
    tokens.clear();
    for (const PenaltyEdit& e : r.edits) {
      if (e.token < 0 || e.token >= vocab)
        return make_error(ErrorCode::kInvalidArgument, "sample entry {}: penalty edit token {} outside [0, {})", i,
                          e.token, vocab);
      tokens.push_back(e.token);
    }
    std::sort(tokens.begin(), tokens.end());
    if (const auto d = std::adjacent_find(tokens.begin(), tokens.end()); d != tokens.end())
      return make_error(ErrorCode::kInvalidArgument, "sample entry {}: token {} has two penalty edits", i, *d);
  }
  return Status::ok_status();
}

int32_t sample_row(float* logits, int64_t vocab, const SampleRow& r) {
  SampleScratch scratch;
  return sample_row(logits, vocab, r, scratch);
}

int32_t sample_row(float* logits, int64_t vocab, const SampleRow& r, SampleScratch& scratch) {
  for (const PenaltyEdit& e : r.edits) logits[e.token] = apply_penalty_edit(logits[e.token], e, r.repetition_penalty);
  // Greedy token: the largest (key, −id), NaN excluded.
  uint64_t best = 0;
  for (int64_t i = 0; i < vocab; ++i)
    if (!std::isnan(logits[i])) best = std::max(best, sample_greedy_key(logits[i], i));
  if (best == 0) return 0;
  const int32_t greedy = sample_greedy_id(best);
  if (r.temperature == 0.0f) return greedy;

  const SampleRowMath m = sample_row_math(sample_key_value(static_cast<uint32_t>(best >> 32)), r.temperature, vocab);
  std::vector<Candidate>& c = scratch.c;
  c.clear();
  for (int64_t i = 0; i < vocab; ++i) {
    double w = 0;
    const uint64_t q = sample_units(logits[i], m, &w);
    if (q > 0) c.push_back({sample_order_key(logits[i]), static_cast<int32_t>(i), q, w});
  }
  if (c.empty()) return greedy;
  bool id_order = true;  // c is built in id order; the selections below reorder it
  if (r.top_k > 0 && static_cast<size_t>(r.top_k) < c.size()) {
    std::nth_element(c.begin(), c.begin() + r.top_k, c.end(), before);
    c.resize(static_cast<size_t>(r.top_k));
    id_order = false;
  }
  if (r.top_p < 1.0f) {
    uint64_t mass = 0;
    for (const Candidate& x : c) mass += x.q;
    const uint64_t target = sample_top_p_target(r.top_p, mass);
    if (target <= mass) {
      keep_top_p(c, target);
      id_order = false;
    }
  }
  if (r.min_p > 0.0f) {
    const double cut = static_cast<double>(r.min_p);
    std::erase_if(c, [cut](const Candidate& x) { return x.w < cut; });
  }
  if (!id_order) std::sort(c.begin(), c.end(), [](const Candidate& a, const Candidate& b) { return a.id < b.id; });
  uint64_t mass = 0;
  for (const Candidate& x : c) mass += x.q;
  const uint64_t pos = sample_draw_position(mass, r.random);
  uint64_t acc = 0;
  for (const Candidate& x : c) {
    acc += x.q;
    if (pos < acc) return x.id;
  }
  return c.back().id;  // not reached: pos < mass
}

}  // namespace gptoss
