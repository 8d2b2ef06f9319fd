// CPU backend against Hugging Face goldens for every fixture under tests/fixtures: one-pass logits,
// greedy decoding of the golden continuation, chunked prefill and batch invariance.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <span>

#include "backend/cpu/ops.h"
#include "test_util.h"

namespace gptoss::testing {
namespace {

// The fixtures' goldens are f32 HF runs; an f32 engine computing the same formulas lands within
// a few 1e-6 (an independent float64 implementation reproduces them to 1e-6..6e-6, spec §5.1).
constexpr double kMaxRelL2 = 1e-4;

class GoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto m = Model::load(GetParam());
    ASSERT_TRUE(m.ok()) << m.status().to_string();
    model_ = *m;
    golden_ = load_golden(GetParam());
    ASSERT_EQ(golden_.vocab, model_->config().vocab_size);
  }
  int64_t vocab() const { return golden_.vocab; }
  const float* golden_row(int64_t pos) const { return golden_.logits.data() + pos * vocab(); }

  // Checks logits [n, vocab] for positions [pos0, pos0 + n) against the golden: the whole block's
  // relative L2 error and the argmax of every row. Reports the worst row.
  void expect_matches_golden(const std::vector<float>& logits, int64_t pos0, const std::string& what) const {
    const int64_t n = static_cast<int64_t>(logits.size()) / vocab();
    double worst = -1;
    int64_t worst_pos = -1;
    for (int64_t i = 0; i < n; ++i) {
      const double e = rel_l2(logits.data() + i * vocab(), golden_row(pos0 + i), vocab());
      if (e > worst) worst = e, worst_pos = pos0 + i;
      EXPECT_EQ(cpu::argmax(logits.data() + i * vocab(), vocab()), cpu::argmax(golden_row(pos0 + i), vocab()))
          << what << ": argmax differs at position " << pos0 + i;
    }
    const double total = rel_l2(logits.data(), golden_row(pos0), n * vocab());
    EXPECT_LE(total, kMaxRelL2) << what << ": worst position " << worst_pos << " rel err " << worst;
  }

  std::shared_ptr<const Model> model_;
  Golden golden_;
};

TEST_P(GoldenTest, OnePassLogitsMatchHf) {
  const std::vector<float> logits = one_pass_logits(model_, golden_.tokens);
  ASSERT_EQ(logits.size(), golden_.logits.size());
  expect_matches_golden(logits, 0, "one pass");
}

// Prefill the prompt, then feed back each greedy token: the argmax output must reproduce HF's
// generate() continuation exactly, and each step's logits must match the golden row.
TEST_P(GoldenTest, GreedyDecodeReproducesContinuation) {
  auto backend = backend_create(model_, test_options(static_cast<int64_t>(golden_.tokens.size())));
  ASSERT_TRUE(backend.ok()) << backend.status().to_string();
  std::vector<float> row(static_cast<size_t>(vocab()));
  int32_t next = -1;
  SeqBatch seq;
  seq.tokens = std::span<const int32_t>(golden_.tokens.data(), static_cast<size_t>(golden_.prompt_len));
  StepOutputs out;
  out.logits = row.data();
  out.argmax = &next;
  ASSERT_TRUE((*backend)->forward(std::span<const SeqBatch>(&seq, 1), out).ok());
  for (int64_t i = 0; i < golden_.n_new; ++i) {
    const int64_t pos = golden_.prompt_len + i;
    ASSERT_EQ(next, golden_.tokens[static_cast<size_t>(pos)]) << "greedy token " << i << " (position " << pos << ")";
    EXPECT_LE(rel_l2(row.data(), golden_row(pos - 1), vocab()), kMaxRelL2) << "decode step " << i;
    if (i + 1 == golden_.n_new) break;
    seq.pos = pos;
    const int32_t fed = next;  // `next` is overwritten by the step's argmax
    seq.tokens = std::span<const int32_t>(&fed, 1);
    ASSERT_TRUE((*backend)->forward(std::span<const SeqBatch>(&seq, 1), out).ok());
  }
  EXPECT_EQ((*backend)->slot_length(0), static_cast<int64_t>(golden_.tokens.size()) - 1);
}

// Uneven chunks (including chunks of 1 and chunks longer than small sliding windows) must give
// bitwise the logits of one pass: every op is computed per row in a fixed order.
TEST_P(GoldenTest, ChunkedPrefillEqualsOnePass) {
  const std::vector<float> whole = one_pass_logits(model_, golden_.tokens);
  for (const std::vector<int64_t>& chunks : {std::vector<int64_t>{7, 1, 50, 3, 129}, std::vector<int64_t>{1}}) {
    auto backend = backend_create(model_, test_options(static_cast<int64_t>(golden_.tokens.size())));
    ASSERT_TRUE(backend.ok());
    const std::vector<float> chunked = run_chunks(**backend, 0, 0, golden_.tokens, chunks, vocab());
    ASSERT_EQ(chunked.size(), whole.size());
    for (size_t i = 0; i < whole.size(); ++i) {
      ASSERT_EQ(chunked[i], whole[i]) << "chunks starting " << chunks[0] << ": position "
                                      << i / static_cast<size_t>(vocab());
    }
    expect_matches_golden(chunked, 0, "chunked");
  }
}

// Two sequences in one forward give bitwise the logits each gets alone, including a prefill
// mixed with a decode step of another slot and with a thread count different from the solo run.
TEST_P(GoldenTest, BatchedSequencesEqualSoloRuns) {
  const std::vector<int32_t>& a = golden_.tokens;
  std::vector<int32_t> b(golden_.tokens.rbegin(), golden_.tokens.rend());
  b.resize(std::max<size_t>(1, b.size() / 2 + 3));
  const std::vector<float> solo_a = one_pass_logits(model_, a, 1);
  const std::vector<float> solo_b = one_pass_logits(model_, b, 2);

  auto backend = backend_create(model_, test_options(static_cast<int64_t>(a.size()), 2));
  ASSERT_TRUE(backend.ok());
  // Step 1: b's first token (decode-like) in slot 0 alongside all but the last token of a in slot 1.
  std::vector<float> step1((a.size() - 1 + 1) * static_cast<size_t>(vocab()));
  SeqBatch seqs[2];
  seqs[0].slot = 0;
  seqs[0].tokens = std::span<const int32_t>(b.data(), 1);
  seqs[0].all_logits = true;
  seqs[1].slot = 1;
  seqs[1].tokens = std::span<const int32_t>(a.data(), a.size() - 1);
  seqs[1].all_logits = true;
  StepOutputs out;
  out.logits = step1.data();
  ASSERT_TRUE((*backend)->forward(seqs, out).ok());
  EXPECT_TRUE(std::equal(step1.begin(), step1.begin() + vocab(), solo_b.begin()));
  EXPECT_TRUE(std::equal(step1.begin() + vocab(), step1.end(), solo_a.begin()));
  // Step 2: the rest of b (last-row logits only) and a's last token, order swapped in the batch.
  std::vector<float> step2(2 * static_cast<size_t>(vocab()));
  SeqBatch seqs2[2];
  seqs2[0].slot = 1;
  seqs2[0].pos = static_cast<int64_t>(a.size()) - 1;
  seqs2[0].tokens = std::span<const int32_t>(a.data() + a.size() - 1, 1);
  seqs2[1].slot = 0;
  seqs2[1].pos = 1;
  seqs2[1].tokens = std::span<const int32_t>(b.data() + 1, b.size() - 1);
  out.logits = step2.data();
  ASSERT_TRUE((*backend)->forward(seqs2, out).ok());
  EXPECT_TRUE(std::equal(step2.begin(), step2.begin() + vocab(), solo_a.end() - vocab()));
  EXPECT_TRUE(std::equal(step2.begin() + vocab(), step2.end(), solo_b.end() - vocab()));
}

// The f16 KV cache (--kv-cache f16): the keys and values are rounded to fp16 before anything
// attends to them, so the logits move (by ~1e-4..1e-3 relative) but stay within the bounds the
// issue sets for the CUDA path (rel L2 ≤ 2e-2, the golden argmax wherever its top-2 margin exceeds
// 0.1), and chunked prefill still gives bitwise the logits of one pass. A rounding can tip a
// router near-tie of a random model and move a row by O(0.1) (expect_close_f16, test_util.h): at
// most max(2, 2 %) rows may exceed 1e-2, and the argmax is checked in the others.
TEST_P(GoldenTest, F16KvCacheStaysWithinTheGoldenBounds) {
  const int64_t n = static_cast<int64_t>(golden_.tokens.size());
  BackendOptions o = test_options(n);
  o.kv_cache = KvCacheType::kF16;
  auto whole_b = backend_create(model_, o);
  ASSERT_TRUE(whole_b.ok()) << whole_b.status().to_string();
  const std::vector<float> f16 = run_chunks(**whole_b, 0, 0, golden_.tokens, {n}, vocab());
  ASSERT_EQ(f16.size(), golden_.logits.size());
  const double err = rel_l2(f16.data(), golden_.logits.data(), static_cast<int64_t>(f16.size()));
  EXPECT_LE(err, 2e-2);
  const std::vector<float> f32 = one_pass_logits(model_, golden_.tokens);
  EXPECT_GT(rel_l2(f16.data(), f32.data(), static_cast<int64_t>(f16.size())), 0.0) << "the cache type had no effect";
  expect_close_f16(f16, golden_.logits, vocab(), 1e-2, 0.1f, "f16 cache against the golden");
  auto chunked_b = backend_create(model_, o);
  ASSERT_TRUE(chunked_b.ok());
  const std::vector<float> chunked = run_chunks(**chunked_b, 0, 0, golden_.tokens, {7, 1, 50, 3, 129}, vocab());
  ASSERT_EQ(chunked.size(), f16.size());
  for (size_t i = 0; i < f16.size(); ++i)
    ASSERT_EQ(chunked[i], f16[i]) << "chunked f16 prefill: position " << i / static_cast<size_t>(vocab());
  std::printf("[ precision ] f16 KV cache: rel L2 %.3g to the golden (f32 cache: %.3g)\n", err,
              rel_l2(f32.data(), golden_.logits.data(), static_cast<int64_t>(f32.size())));
}

TEST(GoldenFixtures, PublicFixturesArePresent) {
  const std::vector<std::string> dirs = golden_fixture_dirs();
  std::vector<std::string> names;
  for (const auto& d : dirs) names.push_back(fixture_test_name(d));
  EXPECT_NE(std::find(names.begin(), names.end(), "pub_a"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "pub_b"), names.end());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenTest, ::testing::ValuesIn(golden_fixture_dirs()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return fixture_test_name(info.param);
                         });

}  // namespace
}  // namespace gptoss::testing
