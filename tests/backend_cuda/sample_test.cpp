// The sampling kernel against the host reference (backend/sampling.h), bit for bit: the sampled
// tokens and the penalty-edited logits, on awkward vocabulary sizes (1, 7, 1000, 4097, 201088),
// flat, peaked, tied, masked (NaN, ±inf, ±0) and offset rows, every rule with its edge values
// (top_k = 1, = the candidates, above the vocabulary; top_p tiny; min_p), penalty edits, and rows
// sampled out of a larger block of logits; the row passes on 1, 5 and 64 chunks per row (empty
// chunks included), with the truncation passes the rows need and with all of them.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "backend/cuda/cuda_internal.h"
#include "backend/cuda/kernels.h"
#include "backend/sampling.h"
#include "backend_cuda/cuda_test_util.h"

namespace gptoss::testing {
namespace {

// Row logits of one of six shapes.
void fill_row(float* row, int64_t vocab, int shape, uint64_t seed) {
  const std::vector<float> u = random_f32(static_cast<size_t>(vocab), seed);
  const float inf = std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < vocab; ++i) {
    switch (shape % 6) {
      case 0: row[i] = 2.0f * u[i]; break;              // flat: the nucleus spans much of the row
      case 1: row[i] = 12.0f * u[i]; break;             // peaked
      case 2: row[i] = std::round(3.0f * u[i]); break;  // seven values: long runs of ties
      case 3:                                           // masked, with signed zeros
        row[i] = i % 3 == 0 ? -inf : i % 7 == 0 ? std::nanf("") : i % 11 == 0 ? (i % 2 ? 0.0f : -0.0f) : 4.0f * u[i];
        break;
      case 4: row[i] = 2.0f * u[i] - 1000.0f; break;  // far from 0
      default: row[i] = i % 2 ? 0.0f : -0.0f;         // all equal
    }
  }
}

struct Batch {
  int64_t vocab = 0;
  std::vector<float> logits;  // [n_rows][vocab]
  std::vector<SampleRow> rows;
  std::vector<std::vector<PenaltyEdit>> edits;
};

// n_rows rows of logits, and a SampleRow for every `every`-th one, with parameters cycling through
// the cases (seeded by `seed`).
Batch make_batch(int64_t vocab, int n_rows, int every, uint64_t seed) {
  Batch b;
  b.vocab = vocab;
  b.logits.resize(static_cast<size_t>(vocab) * n_rows);
  const float temps[] = {0.0f, 1.0f, 0.7f, 1.6f, 0.05f};
  const int64_t ks[] = {0, 1, 2, 37, vocab - 1, vocab, vocab + 5};
  const float ps[] = {1.0f, 0.9f, 0.5f, 0.02f, 1.0f};
  const float min_ps[] = {0.0f, 0.0f, 0.05f, 0.3f};
  const float deltas[] = {0.0f, 0.5f, -0.25f, 1.5f};
  uint64_t s = seed;
  b.edits.resize(static_cast<size_t>(n_rows));
  for (int r = 0; r < n_rows; ++r) {
    fill_row(&b.logits[static_cast<size_t>(r) * vocab], vocab, r / 2 + static_cast<int>(seed), seed * 101 + r);
    if (r % every) continue;
    SampleRow q;
    q.row = r;
    q.temperature = temps[r % 5];
    q.top_k = static_cast<int32_t>(std::max<int64_t>(0, ks[(r * 3) % 7]));
    q.top_p = ps[(r * 7) % 5];
    q.min_p = min_ps[r % 4];
    q.repetition_penalty = r % 3 == 0 ? 1.3f : 1.0f;
    q.random = next_u64(s);
    if (r % 2) {
      // Distinct tokens: a stride-7 walk modulo vocab (7 is prime to every vocab tested above 20).
      std::vector<PenaltyEdit>& e = b.edits[static_cast<size_t>(r)];
      const int64_t n = std::min<int64_t>(vocab, 20), stride = vocab > 20 ? 7 : 1;
      for (int64_t i = 0; i < n; ++i)
        e.push_back({.token = static_cast<int32_t>((i * stride + r) % vocab),
                     .repeat = static_cast<int32_t>(next_u64(s) & 1),
                     .delta = deltas[next_u64(s) % 4]});
      q.edits = e;
    }
    b.rows.push_back(q);
  }
  return b;
}

// Runs the kernels on b with `chunks` chunks per row and checks every token and every edited logit
// against sample_row(), twice on the same parts buffer (a launch must leave nothing behind that
// changes the next): first with the rules the rows use, then with every truncation pass launched
// (rows that no rule applies to pass through them).
void expect_matches_reference(const Batch& b, const std::string& what, int chunks) {
  const int n = static_cast<int>(b.rows.size());
  const Status valid = validate_sample_rows(b.rows, static_cast<int64_t>(b.logits.size()) / b.vocab, b.vocab);
  ASSERT_TRUE(valid.ok()) << valid.to_string();
  std::vector<cuda::SampleRowDev> rows;
  std::vector<PenaltyEdit> edits;
  for (const SampleRow& r : b.rows) {
    rows.push_back(cuda::sample_row_dev(r, r.row, static_cast<int32_t>(edits.size())));
    edits.insert(edits.end(), r.edits.begin(), r.edits.end());
  }
  std::vector<float> host = b.logits;
  std::vector<int32_t> want(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    const SampleRow& r = b.rows[static_cast<size_t>(i)];
    want[static_cast<size_t>(i)] = sample_row(&host[static_cast<size_t>(r.row) * b.vocab], b.vocab, r);
  }
  DevArray<cuda::SampleRowDev> drows(rows);
  DevArray<PenaltyEdit> dedits(edits);
  DevArray<unsigned long long> parts(cuda::sample_part_words(n, chunks));
  parts.fill_bytes(0x5a);  // no initial value is needed
  const cuda::SampleRules used = cuda::sample_rules(rows.data(), n);
  for (const cuda::SampleRules& rules : {used, cuda::SampleRules{true, true, true}}) {
    const std::string how = what + " (" + std::to_string(chunks) + " chunks, " +
                            (rules.top_k && rules.top_p && rules.min_p ? "every pass" : "the rows' rules") + ")";
    DevArray<float> logits(b.logits);
    DevArray<int32_t> out(static_cast<size_t>(n));
    out.fill_bytes(0xff);  // −1: every row must be written
    CUDA_ASSERT(cuda::sample_launch(logits.get(), b.vocab, drows.get(), n, dedits.get(), out.get(),
                                    cuda::SampleSplit{parts.get(), chunks}, rules, test_launch()));
    const std::vector<int32_t> got = out.download();
    const std::vector<float> edited = logits.download();
    CUDA_ASSERT(cudaGetLastError());
    for (int i = 0; i < n; ++i) {
      const SampleRow& r = b.rows[static_cast<size_t>(i)];
      EXPECT_EQ(got[static_cast<size_t>(i)], want[static_cast<size_t>(i)])
          << how << " row " << r.row << ": T " << r.temperature << " top_k " << r.top_k << " top_p " << r.top_p
          << " min_p " << r.min_p << " edits " << r.edits.size();
    }
    // Edited rows equal bit for bit (a NaN may carry another payload on the device); the other rows
    // are untouched.
    size_t differ = 0;
    for (size_t i = 0; i < host.size(); ++i)
      if (!(std::isnan(host[i]) && std::isnan(edited[i])) && std::memcmp(&host[i], &edited[i], sizeof(float)) != 0)
        ++differ;
    EXPECT_EQ(differ, 0u) << how << ": edited logits";
  }
}

class CudaSample : public ::testing::TestWithParam<int64_t> {};

TEST_P(CudaSample, MatchesReferenceBitForBit) {
  const int64_t vocab = GetParam();
  const int n_rows = vocab > 100000 ? 24 : 70;
  for (int chunks : {1, 5, cuda::kSampleMaxChunks}) {
    for (uint64_t seed : {1u, 2u}) expect_matches_reference(make_batch(vocab, n_rows, 1, seed), "every row", chunks);
    expect_matches_reference(make_batch(vocab, n_rows, 3, 5), "every third row", chunks);
  }
  // One row at T = 1 without truncation (batch-1 chat decoding), with penalty edits, on the chunks
  // the backend gives it, for 16 draws: the drawn positions land in chunks all over the row.
  const Batch base = make_batch(vocab, 4, 1, 7);
  uint64_t s = 11;
  for (int draw = 0; draw < 16; ++draw) {
    Batch one = base;
    SampleRow r = base.rows[1];  // an odd row: it has penalty edits
    r.temperature = 1.0f, r.top_k = 0, r.top_p = 1.0f, r.min_p = 0.0f, r.random = next_u64(s);
    one.rows = {r};
    expect_matches_reference(one, "one row, draw " + std::to_string(draw), cuda::sample_chunks(1, 132));
  }
}

INSTANTIATE_TEST_SUITE_P(Vocab, CudaSample, ::testing::Values(1, 7, 1000, 4097, 201088),
                         [](const auto& info) { return std::string("v") += std::to_string(info.param); });

TEST(CudaSampleRows, DegenerateRowsAndManyDraws) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
  Batch b;
  b.vocab = 9;
  const std::vector<std::vector<float>> rows = {
      {nan, nan, nan, nan, nan, nan, nan, nan, nan},                   // no candidate: 0
      {nan, -inf, -inf, nan, -inf, -inf, -inf, -inf, -inf},            // all −inf: the lowest id
      {1.0f, 2.0f, inf, 0.0f, inf, -1.0f, 3.0f, 4.0f, 5.0f},           // +inf: no weights, greedy
      {0.0f, -0.0f, 0.0f, -0.0f, -60.0f, -inf, nan, -0.0f, 0.0f},      // signed-zero ties
      {1e30f, -1e30f, 3e38f, -3e38f, 0.0f, 1.0f, -1.0f, 2e38f, 2e38f}  // extreme values
  };
  for (const auto& r : rows) b.logits.insert(b.logits.end(), r.begin(), r.end());
  // Many draws of each row under several rules: the draw position covers the whole range.
  uint64_t s = 99;
  for (int draw = 0; draw < 64; ++draw) {
    Batch d = b;
    for (int r = 0; r < static_cast<int>(rows.size()); ++r)
      d.rows.push_back({.row = r,
                        .temperature = draw % 4 == 0 ? 0.0f : 0.5f * static_cast<float>(draw % 4),
                        .top_k = draw % 3,
                        .top_p = draw % 5 == 0 ? 0.3f : 1.0f,
                        .min_p = draw % 7 == 0 ? 0.5f : 0.0f,
                        .random = draw == 1   ? 0
                                  : draw == 2 ? ~uint64_t{0}
                                              : next_u64(s)});
    expect_matches_reference(d, "degenerate rows, draw " + std::to_string(draw), 1 + draw % 3);
  }
}

}  // namespace
}  // namespace gptoss::testing
