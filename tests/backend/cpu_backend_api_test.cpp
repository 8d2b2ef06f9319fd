// CPU backend interface behaviour: batch validation errors, optional outputs (argmax only, sampling
// next to the logits, router statistics, memory statistics), thread-count invariance and the backend
// factory.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <numeric>
#include <random>
#include <span>

#include "backend/cpu/ops.h"
#include "backend/sampling.h"
#include "test_util.h"

// Counts every plain operator new in this test binary, so a test can assert that steady-state
// forward() steps allocate nothing.
namespace {
std::atomic<uint64_t> g_allocations{0};
}  // namespace

__attribute__((noinline)) void* operator new(std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
// Out of line so GCC does not pair the inlined free() with a builtin new (-Wmismatched-new-delete).
__attribute__((noinline)) void operator delete(void* p) noexcept {
  std::free(p);
}
__attribute__((noinline)) void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}

namespace gptoss::testing {
namespace {

std::shared_ptr<const Model> tiny_model(uint64_t seed = 21) {
  auto c = config_preset("tiny");
  EXPECT_TRUE(c.ok());
  auto m = Model::random(*c, seed);
  EXPECT_TRUE(m.ok()) << m.status().to_string();
  return m.ok() ? *m : nullptr;
}

std::vector<int32_t> random_tokens(size_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
  return t;
}

class CpuBackendApi : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = tiny_model();
    ASSERT_TRUE(model_);
    BackendOptions o = test_options(32, 2);
    o.max_batch_tokens = 40;
    auto b = backend_create(model_, o);
    ASSERT_TRUE(b.ok()) << b.status().to_string();
    backend_ = std::move(b).value();
    tokens_ = random_tokens(30, vocab(), 1);
  }
  int64_t vocab() const { return model_->config().vocab_size; }
  // forward() of one sequence, no outputs.
  Status step(int slot, int64_t pos, std::span<const int32_t> toks) {
    SeqBatch s;
    s.slot = slot;
    s.pos = pos;
    s.tokens = toks;
    return backend_->forward(std::span<const SeqBatch>(&s, 1), {});
  }
  static void expect_error(const Status& st, ErrorCode code, const std::string& needle) {
    EXPECT_EQ(st.code(), code) << st.to_string();
    EXPECT_NE(st.message().find(needle), std::string::npos) << "'" << needle << "' not in: " << st.message();
  }

  std::shared_ptr<const Model> model_;
  std::unique_ptr<Backend> backend_;
  std::vector<int32_t> tokens_;
};

TEST_F(CpuBackendApi, RejectsBadBatchesWithClearErrors) {
  const std::span<const int32_t> five(tokens_.data(), 5);
  expect_error(step(2, 0, five), ErrorCode::kInvalidArgument, "slot 2");
  expect_error(step(-1, 0, five), ErrorCode::kInvalidArgument, "slot -1");
  const int32_t bad[] = {1, static_cast<int32_t>(vocab()), 2};
  expect_error(step(0, 0, bad), ErrorCode::kOutOfRange, std::to_string(vocab()));
  const int32_t negative[] = {-3};
  expect_error(step(0, 0, negative), ErrorCode::kOutOfRange, "-3");
  expect_error(step(0, 3, five), ErrorCode::kInvalidArgument, "pos 3");  // slot 0 is empty
  expect_error(step(0, 0, {}), ErrorCode::kInvalidArgument, "no tokens");
  expect_error(step(0, 28, std::span<const int32_t>(tokens_.data(), 5)), ErrorCode::kInvalidArgument, "pos 28");
  // Context: 32 positions per slot.
  std::vector<int32_t> long_seq(33, 1);
  expect_error(step(0, 0, long_seq), ErrorCode::kOutOfRange, "max_context");
  // Two sequences of 25 + 20 tokens exceed max_batch_tokens = 40.
  SeqBatch two[2];
  two[0].tokens = std::span<const int32_t>(tokens_.data(), 25);
  two[1].slot = 1;
  two[1].tokens = std::span<const int32_t>(tokens_.data(), 20);
  expect_error(backend_->forward(two, {}), ErrorCode::kInvalidArgument, "max_batch_tokens");
  two[1].slot = 0;
  two[1].tokens = std::span<const int32_t>(tokens_.data(), 2);
  expect_error(backend_->forward(two, {}), ErrorCode::kInvalidArgument, "both use slot 0");
  expect_error(backend_->forward({}, {}), ErrorCode::kInvalidArgument, "empty batch");
  // Nothing was written by the rejected calls.
  EXPECT_EQ(backend_->slot_length(0), 0);
  EXPECT_EQ(backend_->slot_length(1), 0);
  EXPECT_TRUE(step(0, 0, five).ok());
  EXPECT_EQ(backend_->slot_length(0), 5);
  expect_error(step(0, 6, five), ErrorCode::kInvalidArgument, "beyond slot 0 length 5");
}

TEST_F(CpuBackendApi, ArgmaxWithoutLogitsMatchesLogits) {
  SeqBatch s;
  s.tokens = std::span<const int32_t>(tokens_.data(), 12);
  s.all_logits = true;
  std::vector<float> logits(12 * static_cast<size_t>(vocab()));
  std::vector<int32_t> with(12), without(12, -1);
  StepOutputs out;
  out.logits = logits.data();
  out.argmax = with.data();
  ASSERT_TRUE(backend_->forward(std::span<const SeqBatch>(&s, 1), out).ok());
  for (int i = 0; i < 12; ++i) EXPECT_EQ(with[i], cpu::argmax(logits.data() + i * vocab(), vocab()));
  s.slot = 1;
  StepOutputs only;
  only.argmax = without.data();
  ASSERT_TRUE(backend_->forward(std::span<const SeqBatch>(&s, 1), only).ok());
  EXPECT_EQ(with, without);
}

// Sampling in the same step as the logits: the caller's logits stay as the lm_head wrote them (the
// penalty edits go to a copy of the row), every sampled id is sample_row()'s on that row, the same
// ids come back without the logits, and sample rows without an output for them are refused.
TEST_F(CpuBackendApi, SamplingNextToLogitsEditsACopy) {
  SeqBatch s;
  s.tokens = std::span<const int32_t>(tokens_.data(), 6);
  s.all_logits = true;
  const int64_t V = vocab();
  std::vector<float> plain(6 * static_cast<size_t>(V)), logits(plain.size());
  StepOutputs ref;
  ref.logits = plain.data();
  ASSERT_TRUE(backend_->forward(std::span<const SeqBatch>(&s, 1), ref).ok());

  // Row 1 greedy with its best token pushed down by 1000 (so the pick must move), row 4 at T = 0.8
  // within the top 5 with a repetition penalty on its best token, row 5 at T = 1 within top-p 0.9.
  const int32_t best1 = cpu::argmax(plain.data() + 1 * V, V), best4 = cpu::argmax(plain.data() + 4 * V, V);
  const PenaltyEdit e1[] = {{best1, 0, 1000.0f}};
  const PenaltyEdit e4[] = {{best4, 1, 0.0f}};
  SampleRow rows[3];
  rows[0].row = 1, rows[0].temperature = 0.0f, rows[0].edits = e1;
  rows[1].row = 4, rows[1].temperature = 0.8f, rows[1].top_k = 5, rows[1].repetition_penalty = 1.3f;
  rows[1].random = 0x9E3779B97F4A7C15ull, rows[1].edits = e4;
  rows[2].row = 5, rows[2].top_p = 0.9f, rows[2].random = 0x0123456789ABCDEFull;

  std::vector<int32_t> ids(3, -1), ids_only(3, -2);
  s.slot = 1;  // a fresh slot: the same step again
  StepOutputs out;
  out.logits = logits.data();
  out.sample = rows;
  out.sampled = ids.data();
  ASSERT_TRUE(backend_->forward(std::span<const SeqBatch>(&s, 1), out).ok());
  EXPECT_EQ(std::memcmp(logits.data(), plain.data(), plain.size() * sizeof(float)), 0)
      << "the sampling edits reached the caller's logits";
  for (int i = 0; i < 3; ++i) {
    std::vector<float> row(plain.begin() + rows[i].row * V, plain.begin() + (rows[i].row + 1) * V);
    EXPECT_EQ(ids[static_cast<size_t>(i)], sample_row(row.data(), V, rows[i])) << "sample row " << i;
  }
  EXPECT_NE(ids[0], best1) << "the penalty edit was not applied";

  backend_->slot_reset(0);
  s.slot = 0;
  StepOutputs only;
  only.sample = rows;
  only.sampled = ids_only.data();
  ASSERT_TRUE(backend_->forward(std::span<const SeqBatch>(&s, 1), only).ok());
  EXPECT_EQ(ids_only, ids);

  backend_->slot_reset(0);
  StepOutputs missing;
  missing.logits = logits.data();
  missing.sample = rows;
  expect_error(backend_->forward(std::span<const SeqBatch>(&s, 1), missing), ErrorCode::kInvalidArgument,
               "no sampled output");
  EXPECT_EQ(backend_->slot_length(0), 0) << "a refused step must not advance the slot";
}

TEST_F(CpuBackendApi, RouterStatsCountEveryTokenAndAccumulate) {
  const Config& c = model_->config();
  RouterStats stats;
  StepOutputs out;
  out.router_stats = &stats;
  SeqBatch s;
  s.tokens = std::span<const int32_t>(tokens_.data(), 10);
  ASSERT_TRUE(backend_->forward(std::span<const SeqBatch>(&s, 1), out).ok());
  s.pos = 10;
  s.tokens = std::span<const int32_t>(tokens_.data() + 10, 3);
  ASSERT_TRUE(backend_->forward(std::span<const SeqBatch>(&s, 1), out).ok());
  ASSERT_EQ(stats.layers, c.num_hidden_layers);
  ASSERT_EQ(stats.experts, c.num_local_experts);
  ASSERT_EQ(stats.top_k, c.num_experts_per_tok);
  const double k = static_cast<double>(c.num_experts_per_tok);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    EXPECT_EQ(stats.tokens[l], 13u);
    uint64_t total = 0;
    for (int64_t e = 0; e < c.num_local_experts; ++e) total += stats.counts[l * c.num_local_experts + e];
    EXPECT_EQ(total, 13u * static_cast<uint64_t>(c.num_experts_per_tok));
    EXPECT_GE(stats.top1_weight_sum[l], 13.0 / k - 1e-9);
    EXPECT_LE(stats.top1_weight_sum[l], 13.0 + 1e-9);
    EXPECT_GE(stats.entropy_sum[l], 0.0);
    EXPECT_LE(stats.entropy_sum[l], 13.0 * std::log(k) + 1e-9);
  }
}

TEST_F(CpuBackendApi, MemoryStatsReflectCacheAndWeights) {
  const Config& c = model_->config();
  MemoryStats m0 = backend_->memory_stats();
  size_t weights = 0;
  for (const TensorToWrite& t : model_->tensors_for_writing()) weights += t.nbytes;
  EXPECT_EQ(m0.weight_bytes, weights);
  // Sliding layers keep min(context, window + rollback) = min(32, 16 + 64) = 32 entries here.
  const size_t per_entry = static_cast<size_t>(c.kv_dim()) * 2 * sizeof(float);
  EXPECT_EQ(m0.kv_bytes_reserved, 2u * 32u * static_cast<size_t>(c.num_hidden_layers) * per_entry);
  EXPECT_EQ(m0.kv_bytes_used, 0u);
  ASSERT_TRUE(step(1, 0, std::span<const int32_t>(tokens_.data(), 7)).ok());
  const MemoryStats m1 = backend_->memory_stats();
  EXPECT_EQ(m1.kv_bytes_used, 7u * static_cast<size_t>(c.num_hidden_layers) * per_entry);
  EXPECT_GT(m1.scratch_bytes, 0u);
  EXPECT_EQ(m1.device_total, 0u);
}

// After a warm-up step of the same shape, decode and mixed steps reuse the preallocated scratch
// and KV cache: no heap allocation at all (worker threads included).
TEST_F(CpuBackendApi, SteadyStateStepsDoNotAllocate) {
  std::vector<float> logits(2 * static_cast<size_t>(vocab()));
  int32_t next[2] = {0, 0};
  RouterStats stats;
  StepOutputs out;
  out.logits = logits.data();
  out.argmax = next;
  out.router_stats = &stats;
  SeqBatch seqs[2];
  seqs[0].tokens = std::span<const int32_t>(tokens_.data(), 8);
  seqs[1].slot = 1;
  seqs[1].tokens = std::span<const int32_t>(tokens_.data() + 8, 8);
  ASSERT_TRUE(backend_->forward(seqs, out).ok());  // warm-up: grows scratch to 16 rows
  const uint64_t before = g_allocations.load();
  for (int step = 0; step < 6; ++step) {
    const int32_t a = next[0], b = next[1];
    seqs[0].pos = 8 + step;
    seqs[0].tokens = std::span<const int32_t>(&a, 1);
    seqs[1].pos = 8 + step;
    seqs[1].tokens = std::span<const int32_t>(&b, 1);
    ASSERT_TRUE(backend_->forward(seqs, out).ok());
  }
  EXPECT_EQ(g_allocations.load() - before, 0u);
}

// The kernels hand work to the pool without copying their (large) lambdas into a heap-allocated
// std::function.
TEST(CpuKernels, ThreadedMatmulsDoNotAllocate) {
  ThreadPool pool(3);
  const int64_t n = 40, in = 256, out = 512;
  std::vector<float> x(static_cast<size_t>(n * in), 0.25f), y(static_cast<size_t>(n * out));
  std::vector<uint16_t> w(static_cast<size_t>(out * in), 0x3f80);
  std::vector<uint8_t> blocks(static_cast<size_t>(out * in / 2), 0x21), scales(static_cast<size_t>(out * in / 32), 127);
  const uint64_t before = g_allocations.load();
  cpu::matmul_bf16(x.data(), n, in, w.data(), nullptr, out, y.data(), &pool);
  cpu::matmul_bf16(x.data(), 1, in, w.data(), nullptr, out, y.data(), &pool);
  cpu::mxfp4_matmul(blocks.data(), scales.data(), nullptr, out, in, x.data(), n, y.data(), &pool);
  cpu::mxfp4_matmul(blocks.data(), scales.data(), nullptr, out, in, x.data(), 1, y.data(), &pool);
  EXPECT_EQ(g_allocations.load() - before, 0u);
  EXPECT_EQ(y[0], 0.25f * 128 * (0.5f + 1.0f));  // codes 1 and 2: weights 0.5 and 1.0 alternate
}

TEST(CpuBackendThreads, ResultsDoNotDependOnThreadCount) {
  auto model = tiny_model(22);
  ASSERT_TRUE(model);
  const auto tokens = random_tokens(50, model->config().vocab_size, 2);
  const auto one = one_pass_logits(model, tokens, 1);
  EXPECT_EQ(one_pass_logits(model, tokens, 2), one);
  EXPECT_EQ(one_pass_logits(model, tokens, 3), one);
}

TEST(BackendFactory, CreatesKnownKindsAndRejectsOthers) {
  auto model = tiny_model();
  ASSERT_TRUE(model);
  BackendOptions o = test_options(16);
  auto cpu = backend_create(model, o);
  ASSERT_TRUE(cpu.ok());
  EXPECT_EQ((*cpu)->name(), "cpu");
  EXPECT_EQ((*cpu)->options().max_context, 16);
  const auto kinds = backend_kinds();
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), "cpu"), kinds.end());
  o.kind = "auto";  // a GPU when one is usable, else the CPU: never an error for a valid model
  EXPECT_TRUE(backend_create(model, o).ok());
#ifndef GPTOSS_HAVE_CUDA
  auto fallback = backend_create(model, o);
  ASSERT_TRUE(fallback.ok());
  EXPECT_EQ((*fallback)->name(), "cpu");
  o.kind = "cuda";
  auto cuda = backend_create(model, o);
  ASSERT_FALSE(cuda.ok());
  EXPECT_EQ(cuda.status().code(), ErrorCode::kUnavailable);
  EXPECT_NE(cuda.status().message().find("cuda"), std::string::npos);
  EXPECT_EQ(kinds.size(), 1u);
#endif
  o.kind = "tpu";
  auto unknown = backend_create(model, o);
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(unknown.status().message().find("tpu"), std::string::npos);
}

TEST(BackendFactory, RejectsBadOptions) {
  auto model = tiny_model();
  ASSERT_TRUE(model);
  auto bad = [&](auto mutate, const std::string& field) {
    BackendOptions o = test_options(16);
    mutate(o);
    auto b = backend_create(model, o);
    ASSERT_FALSE(b.ok()) << field;
    EXPECT_EQ(b.status().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(b.status().message().find(field), std::string::npos) << b.status().message();
  };
  bad([](BackendOptions& o) { o.max_slots = 0; }, "max_slots");
  bad([](BackendOptions& o) { o.max_context = 0; }, "max_context");
  bad([&](BackendOptions& o) { o.max_context = model->config().max_position_embeddings + 1; }, "max_context");
  bad([](BackendOptions& o) { o.rollback = -1; }, "rollback");
  bad([](BackendOptions& o) { o.max_batch_tokens = 0; }, "max_batch_tokens");
  bad([](BackendOptions& o) { o.threads = -2; }, "threads");
}

}  // namespace
}  // namespace gptoss::testing
