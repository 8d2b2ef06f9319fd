// CPU backend on random models: against the float64 reference forward on shapes the fixtures do not
// cover, the sliding-window boundary, the KV ring and rewinds, outputs (argmax, router stats,
// memory), thread invariance, bad input and the backend factory.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <span>

#include "backend/cpu/ops.h"
#include "reference_model.h"
#include "test_util.h"

namespace gptoss::testing {
namespace {

std::shared_ptr<const Model> random_model(const Config& c, uint64_t seed) {
  auto m = Model::random(c, seed);
  EXPECT_TRUE(m.ok()) << m.status().to_string();
  return m.ok() ? *m : nullptr;
}

Config tiny_config() {
  auto c = config_preset("tiny");
  EXPECT_TRUE(c.ok());
  return *c;
}

// A shape unlike the fixtures: three query heads on one KV head, head_dim 32, top-1 routing,
// a full layer first and two sliding layers with a window of 7.
Config odd_config() {
  Config c = tiny_config();
  c.hidden_size = 96;
  c.intermediate_size = 64;
  c.num_attention_heads = 3;
  c.num_key_value_heads = 1;
  c.head_dim = 32;
  c.num_local_experts = 5;
  c.num_experts_per_tok = 1;
  c.vocab_size = 301;
  c.sliding_window = 7;
  c.num_hidden_layers = 3;
  c.layer_types = {LayerType::kFullAttention, LayerType::kSlidingAttention, LayerType::kSlidingAttention};
  c.eos_token_ids = {300};
  c.pad_token_id = 299;
  return c;
}

std::vector<int32_t> random_tokens(size_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
  return t;
}

// The backend (f32) against the float64 reference: relative L2 per position, and the argmax
// wherever the reference's top two logits are not a near tie.
void expect_matches_reference(const Model& model, const std::vector<float>& got, const std::vector<int32_t>& tokens) {
  const std::vector<double> ref = reference_logits(model, tokens);
  const int64_t V = model.config().vocab_size;
  for (size_t t = 0; t < tokens.size(); ++t) {
    const double* r = ref.data() + t * static_cast<size_t>(V);
    const float* g = got.data() + t * static_cast<size_t>(V);
    double num = 0, den = 0;
    for (int64_t i = 0; i < V; ++i) num += (g[i] - r[i]) * (g[i] - r[i]), den += r[i] * r[i];
    EXPECT_LE(std::sqrt(num / den), 1e-4) << "position " << t;
    std::vector<double> sorted(r, r + V);
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<>());
    if (sorted[0] - sorted[1] > 1e-3 * std::fabs(sorted[0])) {
      EXPECT_EQ(cpu::argmax(g, V), std::max_element(r, r + V) - r) << "position " << t;
    }
  }
}

TEST(CpuBackendReference, TinyPresetMatchesFloat64Forward) {
  auto model = random_model(tiny_config(), 3);
  ASSERT_TRUE(model);
  const auto tokens = random_tokens(40, model->config().vocab_size, 1);
  expect_matches_reference(*model, one_pass_logits(model, tokens), tokens);
}

TEST(CpuBackendReference, OddShapesMatchFloat64Forward) {
  auto model = random_model(odd_config(), 4);
  ASSERT_TRUE(model);
  const auto tokens = random_tokens(30, model->config().vocab_size, 2);
  // Decoded token by token through the ring (rollback 0: the ring is exactly the window).
  BackendOptions o = test_options(30);
  o.rollback = 0;
  auto backend = backend_create(model, o);
  ASSERT_TRUE(backend.ok());
  expect_matches_reference(*model, run_chunks(**backend, 0, 0, tokens, {1}, model->config().vocab_size), tokens);
}

TEST(CpuBackendReference, MultiHeadTopAllExpertsMatchesFloat64Forward) {
  Config c = tiny_config();
  c.num_key_value_heads = c.num_attention_heads;  // MHA
  c.num_local_experts = 4;
  c.num_experts_per_tok = 4;  // every expert, weights from the softmax over all four
  c.head_dim = 8;
  auto model = random_model(c, 5);
  ASSERT_TRUE(model);
  const auto tokens = random_tokens(25, c.vocab_size, 3);
  expect_matches_reference(*model, one_pass_logits(model, tokens), tokens);
}

// One sliding layer with the published window of 128: position p sees p−127..p. Changing the token
// at p−127 must change p's logits, changing the one at p−128 must leave them bitwise unchanged;
// with a full layer instead, p−128 matters again.
TEST(CpuBackendSlidingWindow, KeyAtWindowEdgeIsSeenAndOneBeyondIsNot) {
  Config c = tiny_config();
  c.sliding_window = 128;
  c.num_hidden_layers = 1;
  c.layer_types = {LayerType::kSlidingAttention};
  auto sliding = random_model(c, 6);
  c.layer_types = {LayerType::kFullAttention};
  auto full = random_model(c, 6);
  ASSERT_TRUE(sliding && full);
  const int64_t V = c.vocab_size, p = 200;
  const auto base = random_tokens(static_cast<size_t>(p + 1), V, 4);
  auto logits_at_p = [&](std::shared_ptr<const Model> m, const std::vector<int32_t>& toks) {
    const std::vector<float> all = one_pass_logits(m, toks);
    return std::vector<float>(all.begin() + p * V, all.begin() + (p + 1) * V);
  };
  auto with_changed = [&](int64_t pos) {
    auto t = base;
    t[static_cast<size_t>(pos)] = (t[static_cast<size_t>(pos)] + 1) % static_cast<int32_t>(V);
    return t;
  };
  const auto ref = logits_at_p(sliding, base);
  EXPECT_EQ(logits_at_p(sliding, with_changed(p - 128)), ref);
  EXPECT_EQ(logits_at_p(sliding, with_changed(p - 200)), ref);
  EXPECT_NE(logits_at_p(sliding, with_changed(p - 127)), ref);
  EXPECT_NE(logits_at_p(full, with_changed(p - 128)), logits_at_p(full, base));
  // The same through the ring, fed token by token with no rollback room (ring = 128 entries).
  BackendOptions o = test_options(p + 1);
  o.rollback = 0;
  auto backend = backend_create(sliding, o);
  ASSERT_TRUE(backend.ok());
  const auto stepped = run_chunks(**backend, 0, 0, base, {1, 5, 130}, V);
  EXPECT_TRUE(std::equal(ref.begin(), ref.end(), stepped.begin() + p * V));
}

// Rewinding a slot within `rollback` and feeding other tokens gives bitwise the logits of a fresh
// pass over the new sequence, even after the sliding ring wrapped several times.
TEST(CpuBackendKvRing, RewindWithinRollbackEqualsRecompute) {
  const Config c = tiny_config();  // window 16
  auto model = random_model(c, 7);
  ASSERT_TRUE(model);
  const int64_t V = c.vocab_size;
  BackendOptions o = test_options(160);
  o.rollback = 8;  // ring of 24 entries on sliding layers
  auto backend = backend_create(model, o);
  ASSERT_TRUE(backend.ok());
  Backend& b = **backend;
  const auto a = random_tokens(100, V, 8);
  for (int64_t resume : {100, 95, 92}) {
    b.slot_reset(0);
    run_chunks(b, 0, 0, a, {5, 1, 30, 50}, V);  // chunks longer than the ring included
    EXPECT_EQ(b.slot_length(0), 100);
    EXPECT_EQ(b.slot_min_resume(0), 92);
    const auto tail = random_tokens(20, V, static_cast<uint32_t>(resume));
    const auto got = run_chunks(b, 0, resume, tail, {3, 17}, V);
    std::vector<int32_t> full(a.begin(), a.begin() + resume);
    full.insert(full.end(), tail.begin(), tail.end());
    const auto fresh = one_pass_logits(model, full);
    EXPECT_TRUE(std::equal(got.begin(), got.end(), fresh.begin() + resume * V)) << "resume at " << resume;
    EXPECT_EQ(b.slot_length(0), resume + 20);
    EXPECT_EQ(b.slot_min_resume(0), resume + 12);
  }
  // Further back than the ring allows is refused; starting over is always allowed.
  const int32_t tok = 1;
  SeqBatch s;
  s.pos = 103;  // length 112 after the last rewind: the earliest resume is 104
  s.tokens = std::span<const int32_t>(&tok, 1);
  const Status st = b.forward(std::span<const SeqBatch>(&s, 1), {});
  EXPECT_EQ(st.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(st.message().find("104"), std::string::npos) << st.message();
  s.pos = 0;
  EXPECT_TRUE(b.forward(std::span<const SeqBatch>(&s, 1), {}).ok());
  EXPECT_EQ(b.slot_length(0), 1);
  b.slot_reset(0);
  EXPECT_EQ(b.slot_length(0), 0);
  EXPECT_EQ(b.slot_min_resume(0), 0);
}

TEST(CpuBackendKvRing, FullAttentionOnlyModelCanRewindAnywhere) {
  Config c = tiny_config();
  for (auto& t : c.layer_types) t = LayerType::kFullAttention;
  auto model = random_model(c, 9);
  ASSERT_TRUE(model);
  BackendOptions o = test_options(64);
  o.rollback = 2;
  auto backend = backend_create(model, o);
  ASSERT_TRUE(backend.ok());
  const auto a = random_tokens(60, c.vocab_size, 10);
  run_chunks(**backend, 0, 0, a, {60}, c.vocab_size);
  EXPECT_EQ((*backend)->slot_min_resume(0), 0);
  const auto tail = random_tokens(4, c.vocab_size, 11);
  const auto got = run_chunks(**backend, 0, 3, tail, {4}, c.vocab_size);
  std::vector<int32_t> full(a.begin(), a.begin() + 3);
  full.insert(full.end(), tail.begin(), tail.end());
  const auto fresh = one_pass_logits(model, full);
  EXPECT_TRUE(std::equal(got.begin(), got.end(), fresh.begin() + 3 * c.vocab_size));
}

}  // namespace
}  // namespace gptoss::testing
