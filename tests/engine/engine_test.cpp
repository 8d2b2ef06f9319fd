// Engine tests on the CPU backend: greedy output against a hand-driven backend decode loop and the
// HF goldens, batch-composition invariance (1 vs many concurrent, chunked prefill), prefix reuse
// (with and without the sliding-window rollback limit), finish conditions, cancellation, timeouts,
// back-pressure, validation, router statistics, backend sampling against the host Sampler, and
// shutdown.
#include "engine/engine.h"

#include <gtest/gtest.h>

#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <set>
#include <thread>

#include "core/npy.h"
#include "engine/sampling_cases.h"
#include "model/config.h"

namespace gptoss {
namespace {

// Collects one request's events; wait() returns once kFinished arrived.
struct Outcome {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int32_t> tokens;
  std::optional<GenerationEvent> finished;
  int events_after_finish = 0;

  EventFn callback() {
    return [this](const GenerationEvent& ev) {
      std::lock_guard lk(mu);
      if (finished) ++events_after_finish;
      if (ev.kind == GenerationEvent::Kind::kToken) tokens.push_back(ev.token);
      if (ev.kind == GenerationEvent::Kind::kFinished) finished = ev;
      cv.notify_all();
    };
  }
  GenerationEvent wait() {
    std::unique_lock lk(mu);
    bool ok = cv.wait_for(lk, std::chrono::seconds(120), [&] { return finished.has_value(); });
    EXPECT_TRUE(ok) << "request did not finish in time";
    return finished.value_or(GenerationEvent{});
  }
};

std::shared_ptr<const Model> tiny_model() {
  static std::shared_ptr<const Model> model = [] {
    auto cfg = config_preset("tiny");
    EXPECT_TRUE(cfg.ok()) << cfg.status().message();
    auto m = Model::random(*cfg, 1234);
    EXPECT_TRUE(m.ok()) << m.status().message();
    return std::move(m).value();
  }();
  return model;
}

BackendOptions cpu_options(int slots, int64_t ctx, int64_t batch_tokens = 256, int64_t rollback = 1024) {
  BackendOptions o;
  o.kind = "cpu";
  o.max_slots = slots;
  o.max_context = ctx;
  o.max_batch_tokens = batch_tokens;
  o.rollback = rollback;
  return o;
}

std::unique_ptr<Engine> make_engine(std::shared_ptr<const Model> model, const BackendOptions& bo,
                                    EngineOptions eo = {}) {
  auto e = Engine::create(std::move(model), bo, eo);
  EXPECT_TRUE(e.ok()) << e.status().message();
  return e.ok() ? std::move(e).value() : nullptr;
}

std::vector<int32_t> make_prompt(int64_t n, int64_t vocab, uint32_t salt) {
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<int32_t>((i * 7919 + salt * 104729 + 13) % (vocab - 2));
  return p;
}

GenerationRequest greedy(std::vector<int32_t> prompt, int64_t max_tokens) {
  GenerationRequest r;
  r.prompt = std::move(prompt);
  r.sampling.temperature = 0;
  r.max_tokens = max_tokens;
  return r;
}

// Runs one request to completion and returns its tokens and final event.
std::pair<std::vector<int32_t>, GenerationEvent> run_one(Engine& e, GenerationRequest r) {
  Outcome o;
  r.on_event = o.callback();
  auto h = e.submit(std::move(r));
  EXPECT_TRUE(h.ok()) << h.status().message();
  if (!h.ok()) return {};
  GenerationEvent fin = o.wait();
  return {o.tokens, fin};
}

// Greedy continuation computed by driving the backend by hand, one token per forward() call.
std::vector<int32_t> reference_greedy(std::shared_ptr<const Model> model, const std::vector<int32_t>& prompt,
                                      int64_t n) {
  auto be = backend_create(model, cpu_options(1, static_cast<int64_t>(prompt.size()) + n + 1));
  EXPECT_TRUE(be.ok());
  std::vector<int32_t> seq = prompt, out;
  int32_t next = 0;
  for (int64_t i = 0; i < static_cast<int64_t>(prompt.size()); ++i) {
    SeqBatch b{.slot = 0, .pos = i, .tokens = std::span<const int32_t>(seq).subspan(i, 1)};
    EXPECT_TRUE((*be)->forward({&b, 1}, {.argmax = &next}).ok());
  }
  for (int64_t k = 0; k < n; ++k) {
    out.push_back(next);
    seq.push_back(next);
    SeqBatch b{.slot = 0,
               .pos = static_cast<int64_t>(seq.size()) - 1,
               .tokens = std::span<const int32_t>(seq).subspan(seq.size() - 1, 1)};
    EXPECT_TRUE((*be)->forward({&b, 1}, {.argmax = &next}).ok());
  }
  return out;
}

TEST(Engine, GreedyMatchesHandDrivenBackend) {
  auto model = tiny_model();
  auto prompt = make_prompt(37, model->config().vocab_size, 1);
  auto e = make_engine(model, cpu_options(2, 128), {.prefill_chunk = 8});
  auto [tokens, fin] = run_one(*e, greedy(prompt, 20));
  EXPECT_EQ(fin.finish, FinishReason::kLength);
  EXPECT_EQ(fin.generated_tokens, 20);
  EXPECT_EQ(fin.prompt_tokens, 37);
  EXPECT_EQ(tokens, reference_greedy(model, prompt, 20));
}

// Greedy continuation through the engine reproduces the HF golden tokens of every fixture.
TEST(Engine, GreedyReproducesHfGoldens) {
  int checked = 0;
  for (const auto& dir : std::filesystem::directory_iterator(GPTOSS_FIXTURES)) {
    if (!std::filesystem::exists(dir.path() / "golden" / "tokens.npy")) continue;
    auto model = Model::load(dir.path().string());
    ASSERT_TRUE(model.ok()) << model.status().message();
    auto golden = npy_read((dir.path() / "golden" / "tokens.npy").string());
    ASSERT_TRUE(golden.ok());
    std::vector<int32_t> all = golden->as_i32();
    // meta.json: {"prompt_len": P, "new": N}; the prompt is everything but the last N tokens.
    std::ifstream meta(dir.path() / "golden" / "meta.json");
    auto n_new = nlohmann::json::parse(meta).at("new").get<size_t>();
    ASSERT_LT(n_new, all.size());
    std::vector<int32_t> prompt(all.begin(), all.end() - static_cast<std::ptrdiff_t>(n_new));
    std::vector<int32_t> want(all.end() - static_cast<std::ptrdiff_t>(n_new), all.end());
    auto e = make_engine(*model, cpu_options(1, static_cast<int64_t>(all.size()) + 4), {.prefill_chunk = 64});
    auto [tokens, fin] = run_one(*e, greedy(prompt, static_cast<int64_t>(n_new)));
    EXPECT_EQ(tokens, want) << dir.path();
    ++checked;
  }
  EXPECT_GE(checked, 2);
}

// The same requests give the same greedy tokens alone and 24 at a time over 8 slots with small
// prefill chunks, so each step mixes prefill chunks of some sequences with decodes of others.
TEST(Engine, OutputsDoNotDependOnBatchComposition) {
  auto model = tiny_model();
  const int n = 24;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < n; ++i) prompts.push_back(make_prompt(3 + (i * 11) % 41, model->config().vocab_size, i));
  std::vector<std::vector<int32_t>> alone;
  {
    auto e = make_engine(model, cpu_options(1, 96));
    for (const auto& p : prompts) alone.push_back(run_one(*e, greedy(p, 9)).first);
  }
  auto e = make_engine(model, cpu_options(8, 96, 40), {.prefill_chunk = 7});
  std::vector<Outcome> out(n);
  for (int i = 0; i < n; ++i) {
    GenerationRequest r = greedy(prompts[i], 9);
    r.on_event = out[i].callback();
    ASSERT_TRUE(e->submit(std::move(r)).ok());
  }
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(out[i].wait().finish, FinishReason::kLength);
    EXPECT_EQ(out[i].tokens, alone[i]) << "request " << i;
    EXPECT_EQ(out[i].events_after_finish, 0);
  }
  EngineStats st = e->stats();
  EXPECT_EQ(st.requests_total, n);
  EXPECT_EQ(st.requests_finished, n);
  EXPECT_EQ(st.slots_busy, 0);
  EXPECT_EQ(st.generated_tokens_total, n * 9);
}

// Seeded sampling is a property of the request alone, not of its neighbours in the batch.
TEST(Engine, SeededSamplingIsBatchInvariant) {
  auto model = tiny_model();
  auto req = [&](int i) {
    GenerationRequest r;
    r.prompt = make_prompt(10 + i, model->config().vocab_size, 100 + i);
    r.sampling = {.temperature = 0.9f, .top_p = 0.95f, .top_k = 50, .presence_penalty = 0.3f, .seed = 77u + i};
    r.max_tokens = 12;
    return r;
  };
  std::vector<std::vector<int32_t>> alone;
  {
    auto e = make_engine(model, cpu_options(1, 64));
    for (int i = 0; i < 6; ++i) alone.push_back(run_one(*e, req(i)).first);
  }
  auto e = make_engine(model, cpu_options(6, 64), {.prefill_chunk = 4});
  std::vector<Outcome> out(6);
  for (int i = 0; i < 6; ++i) {
    auto r = req(i);
    r.on_event = out[i].callback();
    ASSERT_TRUE(e->submit(std::move(r)).ok());
  }
  for (int i = 0; i < 6; ++i) {
    out[i].wait();
    EXPECT_EQ(out[i].tokens, alone[i]) << "request " << i;
  }
  // Different seeds do give different samples (the sampler is really in use).
  EXPECT_NE(alone[0], run_one(*make_engine(model, cpu_options(1, 64)),
                              [&] {
                                auto r = req(0);
                                r.sampling.seed = 999;
                                return r;
                              }())
                          .first);
}

// The engine has the backend sample (SampleRow per sequence); that gives the tokens of a hand-driven
// loop that copies the logits to the host and runs Sampler::sample on them, for every rule, the
// penalties and greedy-with-penalties, with several sequences sharing the steps.
TEST(Engine, BackendSamplingEqualsHostSamplerOnTheSameLogits) {
  auto model = tiny_model();
  const int64_t vocab = model->config().vocab_size;
  const std::vector<SamplingParams> cases = test::sampling_rule_cases();
  const int64_t n_new = 16;
  std::vector<std::vector<int32_t>> prompts;
  for (size_t c = 0; c < cases.size(); ++c)
    prompts.push_back(make_prompt(9 + static_cast<int64_t>(c), vocab, 40 + static_cast<uint32_t>(c)));
  auto e = make_engine(model, cpu_options(3, 64), {.prefill_chunk = 4});
  std::vector<Outcome> out(cases.size());
  for (size_t c = 0; c < cases.size(); ++c) {
    GenerationRequest r;
    r.prompt = prompts[c];
    r.sampling = cases[c];
    r.max_tokens = n_new;
    r.on_event = out[c].callback();
    ASSERT_TRUE(e->submit(std::move(r)).ok());
  }
  for (size_t c = 0; c < cases.size(); ++c) {
    EXPECT_EQ(out[c].wait().finish, FinishReason::kLength);
    auto be = backend_create(model, cpu_options(1, 64));
    ASSERT_TRUE(be.ok());
    Sampler sampler(cases[c]);
    std::vector<int32_t> seq = prompts[c], want;
    std::vector<float> logits(static_cast<size_t>(vocab));
    int64_t pos = 0;
    while (static_cast<int64_t>(want.size()) < n_new) {
      SeqBatch b{.slot = 0, .pos = pos, .tokens = std::span<const int32_t>(seq).subspan(static_cast<size_t>(pos))};
      ASSERT_TRUE((*be)->forward({&b, 1}, {.logits = logits.data()}).ok());
      pos = static_cast<int64_t>(seq.size());
      want.push_back(sampler.sample(logits.data(), vocab, seq, prompts[c].size()));
      seq.push_back(want.back());
    }
    EXPECT_EQ(out[c].tokens, want) << "case " << c;
    EXPECT_GT(std::set<int32_t>(want.begin(), want.end()).size(), c + 1 < cases.size() ? 3u : 1u) << "case " << c;
  }
}

// Records every forward() batch and delegates to the real CPU backend.
class RecordingBackend : public Backend {
 public:
  explicit RecordingBackend(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}
  std::string name() const override { return inner_->name(); }
  const BackendOptions& options() const override { return inner_->options(); }
  Status forward(std::span<const SeqBatch> batch, const StepOutputs& out) override {
    std::vector<std::pair<int, int64_t>> step;
    for (const auto& s : batch) step.emplace_back(s.slot, static_cast<int64_t>(s.tokens.size()));
    {
      std::lock_guard lk(mu);
      steps.push_back(step);
    }
    return inner_->forward(batch, out);
  }
  int64_t slot_length(int slot) const override { return inner_->slot_length(slot); }
  int64_t slot_min_resume(int slot) const override { return inner_->slot_min_resume(slot); }
  void slot_reset(int slot) override { inner_->slot_reset(slot); }
  MemoryStats memory_stats() const override { return inner_->memory_stats(); }

  std::mutex mu;
  std::vector<std::vector<std::pair<int, int64_t>>> steps;  // (slot, tokens) per sequence

 private:
  std::unique_ptr<Backend> inner_;
};

TEST(Engine, LongPromptIsChunkedWhileDecodesContinue) {
  auto model = tiny_model();
  auto inner = backend_create(model, cpu_options(2, 256, 64));
  ASSERT_TRUE(inner.ok());
  auto rec = std::make_unique<RecordingBackend>(std::move(inner).value());
  RecordingBackend* r = rec.get();
  auto e = Engine::create(model, std::move(rec), {.prefill_chunk = 16});
  ASSERT_TRUE(e.ok()) << e.status().message();
  Outcome a, b;
  auto ra = greedy(make_prompt(5, 1000, 1), 40);
  ra.on_event = a.callback();
  ASSERT_TRUE((*e)->submit(std::move(ra)).ok());
  // Start the long prompt once the short one is decoding.
  for (int i = 0; i < 2000; ++i) {
    {
      std::lock_guard lk(a.mu);
      if (!a.tokens.empty()) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  auto rb = greedy(make_prompt(150, 1000, 2), 3);
  rb.on_event = b.callback();
  ASSERT_TRUE((*e)->submit(std::move(rb)).ok());
  a.wait();
  b.wait();
  std::lock_guard lk(r->mu);
  int mixed = 0;
  int64_t prefilled = 0;
  for (const auto& step : r->steps) {
    int64_t total = 0;
    for (auto [slot, n] : step) {
      EXPECT_LE(n, 16) << "prefill chunk above prefill_chunk";
      total += n;
    }
    EXPECT_LE(total, 64) << "batch above max_batch_tokens";
    bool has_decode = false, has_chunk = false;
    for (auto [slot, n] : step) (n == 1 ? has_decode : has_chunk) = true;
    if (has_decode && has_chunk) ++mixed;
    for (auto [slot, n] : step)
      if (n > 1) prefilled += n;
  }
  // 150 prompt tokens in chunks of ≤ 16 take ≥ 10 steps; the short request decodes beside them.
  EXPECT_GE(mixed, 5);
  EXPECT_GE(prefilled, 140);
}

TEST(Engine, PrefixReuseAcrossTurnsGivesSameTokens) {
  auto model = tiny_model();
  auto e = make_engine(model, cpu_options(2, 200));
  auto p1 = make_prompt(30, 1000, 5);
  auto [t1, f1] = run_one(*e, greedy(p1, 10));
  EXPECT_EQ(f1.cached_prompt_tokens, 0);
  // Second turn: the whole first turn (prompt + its output) plus new tokens.
  std::vector<int32_t> p2 = p1;
  p2.insert(p2.end(), t1.begin(), t1.end());
  for (int32_t t : make_prompt(6, 1000, 6)) p2.push_back(t);
  auto [t2, f2] = run_one(*e, greedy(p2, 10));
  // Everything but the last generated token (never fed) of turn one is cached.
  EXPECT_EQ(f2.cached_prompt_tokens, 39);
  EXPECT_EQ(t2, reference_greedy(model, p2, 10));
  EXPECT_EQ(e->stats().cached_tokens_total, 39);
  // The same prompt again reuses all but its last token.
  auto [t3, f3] = run_one(*e, greedy(p2, 10));
  EXPECT_EQ(f3.cached_prompt_tokens, static_cast<int64_t>(p2.size()) - 1);
  EXPECT_EQ(t3, t2);
}

// With a short rollback the sliding-window ring forgets old positions: a prefix that ends too far
// back must not be reused (start over), a recent one can be.
TEST(Engine, PrefixReuseRespectsSlidingWindowRollback) {
  auto model = tiny_model();  // sliding_window 16
  auto e = make_engine(model, cpu_options(1, 200, 256, /*rollback=*/4));
  auto p1 = make_prompt(60, 1000, 8);
  auto [t1, f1] = run_one(*e, greedy(p1, 5));
  std::vector<int32_t> far(p1.begin(), p1.begin() + 30);
  far.push_back(7);
  auto [t2, f2] = run_one(*e, greedy(far, 6));
  EXPECT_EQ(f2.cached_prompt_tokens, 0);
  EXPECT_EQ(t2, reference_greedy(model, far, 6));
  // After that run the slot holds far + 5 outputs (36 tokens); resume at 34 ≥ 36 − 4.
  std::vector<int32_t> near = far;
  near.insert(near.end(), t2.begin(), t2.begin() + 3);
  near.push_back(9);
  auto [t3, f3] = run_one(*e, greedy(near, 6));
  EXPECT_EQ(f3.cached_prompt_tokens, 34);
  EXPECT_EQ(t3, reference_greedy(model, near, 6));
}

TEST(Engine, FinishConditions) {
  auto model = tiny_model();
  auto e = make_engine(model, cpu_options(1, 40));
  auto prompt = make_prompt(12, 1000, 3);
  auto ref = reference_greedy(model, prompt, 6);
  // Stop on the third generated token: it is reported, then kStop.
  auto r = greedy(prompt, 50);
  r.stop_ids = {ref[2]};
  auto [t, fin] = run_one(*e, r);
  size_t first = std::find(ref.begin(), ref.end(), ref[2]) - ref.begin();
  EXPECT_EQ(fin.finish, FinishReason::kStop);
  EXPECT_EQ(t, std::vector<int32_t>(ref.begin(), ref.begin() + first + 1));
  // Context full: 12 prompt tokens in a 40-token context leave room for 28 new ones.
  auto [t2, f2] = run_one(*e, greedy(prompt, 1000));
  EXPECT_EQ(f2.finish, FinishReason::kLength);
  EXPECT_EQ(t2.size(), 28u);
  EXPECT_EQ(f2.generated_tokens, 28);
  EXPECT_GT(f2.total_s, 0.0);
  EXPECT_GT(f2.ttft_s, 0.0);
  EXPECT_LE(f2.ttft_s, f2.total_s);
  // max_tokens = 1.
  auto [t3, f3] = run_one(*e, greedy(prompt, 1));
  EXPECT_EQ(f3.finish, FinishReason::kLength);
  EXPECT_EQ(t3, std::vector<int32_t>{ref[0]});
}

TEST(Engine, SubmitValidatesRequests) {
  auto model = tiny_model();
  auto e = make_engine(model, cpu_options(2, 32));
  auto code = [&](GenerationRequest r) { return e->submit(std::move(r)).status().code(); };
  EXPECT_EQ(code(greedy({}, 4)), ErrorCode::kInvalidArgument);
  EXPECT_EQ(code(greedy({1, 1024}, 4)), ErrorCode::kInvalidArgument);  // vocab is 1024
  EXPECT_EQ(code(greedy({1, -3}, 4)), ErrorCode::kInvalidArgument);
  EXPECT_EQ(code(greedy(make_prompt(32, 1000, 1), 4)), ErrorCode::kOutOfRange);
  EXPECT_EQ(code(greedy(make_prompt(31, 1000, 1), 0)), ErrorCode::kInvalidArgument);
  auto bad = greedy({1, 2}, 4);
  bad.sampling.top_p = 0;
  Status st = e->submit(bad).status();
  EXPECT_EQ(st.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(st.message().find("top_p"), std::string::npos);
  auto slot = greedy({1, 2}, 4);
  slot.preferred_slot = 2;
  EXPECT_EQ(code(slot), ErrorCode::kInvalidArgument);
  // The longest allowed prompt (context − 1) still runs and yields exactly one token.
  auto [t, fin] = run_one(*e, greedy(make_prompt(31, 1000, 1), 4));
  EXPECT_EQ(t.size(), 1u);
  EXPECT_EQ(fin.finish, FinishReason::kLength);
}

TEST(Engine, CancelAndTimeoutFreeTheSlot) {
  auto model = tiny_model();
  auto e = make_engine(model, cpu_options(1, 4000));
  Outcome a;
  auto r = greedy(make_prompt(8, 1000, 4), 3900);
  r.on_event = a.callback();
  auto h = e->submit(std::move(r));
  ASSERT_TRUE(h.ok());
  for (int i = 0; i < 5000; ++i) {
    {
      std::lock_guard lk(a.mu);
      if (a.tokens.size() >= 3) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  (*h)->cancel();
  GenerationEvent fin = a.wait();
  EXPECT_EQ(fin.finish, FinishReason::kCancelled);
  EXPECT_EQ(fin.error.code(), ErrorCode::kCancelled);
  EXPECT_LT(fin.generated_tokens, 3900);
  // A timeout ends the next request the same way, with a message that says so.
  auto slow = greedy(make_prompt(8, 1000, 5), 3900);
  slow.timeout = std::chrono::milliseconds(30);
  auto [t, f2] = run_one(*e, slow);
  EXPECT_EQ(f2.finish, FinishReason::kCancelled);
  EXPECT_NE(f2.error.message().find("timed out"), std::string::npos);
  EXPECT_EQ(e->stats().slots_busy, 0);
  EXPECT_EQ(e->stats().requests_cancelled, 2);
  // The slot serves the next request normally.
  auto [t3, f3] = run_one(*e, greedy(make_prompt(8, 1000, 6), 3));
  EXPECT_EQ(f3.finish, FinishReason::kLength);
  EXPECT_EQ(t3.size(), 3u);
}

TEST(Engine, FullQueueRejectsWithResourceExhausted) {
  std::vector<Outcome> out(6);  // outlives the engine, whose destructor reports to it
  auto e = make_engine(tiny_model(), cpu_options(1, 4000), {.max_queue = 2});
  std::vector<std::shared_ptr<Request>> handles;
  std::vector<size_t> accepted;
  int rejected = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    auto r = greedy(make_prompt(6, 1000, static_cast<uint32_t>(i)), 3000);
    r.on_event = out[i].callback();
    auto h = e->submit(std::move(r));
    if (h.ok()) {
      handles.push_back(*h);
      accepted.push_back(i);
    } else {
      EXPECT_EQ(h.status().code(), ErrorCode::kResourceExhausted);
      ++rejected;
    }
  }
  // One slot + two queue places: at least three of six are turned away.
  EXPECT_GE(rejected, 3);
  EXPECT_EQ(e->stats().requests_rejected, rejected);
  for (auto& h : handles) h->cancel();
  // Cancelled while queued or running: once all have finished the stats show nothing waiting.
  for (size_t i : accepted) EXPECT_EQ(out[i].wait().finish, FinishReason::kCancelled);
  EngineStats st = e->stats();
  EXPECT_EQ(st.requests_queued, 0);
  EXPECT_EQ(st.slots_busy, 0);
  EXPECT_EQ(st.requests_cancelled, static_cast<int64_t>(accepted.size()));
}

// max_queue 0: a free slot still takes a request; a busy one turns the next away.
TEST(Engine, ZeroQueueAcceptsOnlyIntoFreeSlots) {
  Outcome a, b;
  auto e = make_engine(tiny_model(), cpu_options(1, 4000), {.max_queue = 0});
  auto r = greedy(make_prompt(6, 1000, 1), 3000);
  r.on_event = a.callback();
  auto h = e->submit(std::move(r));
  ASSERT_TRUE(h.ok()) << h.status().message();
  auto r2 = greedy(make_prompt(6, 1000, 2), 3);
  r2.on_event = b.callback();
  EXPECT_EQ(e->submit(std::move(r2)).status().code(), ErrorCode::kResourceExhausted);
  (*h)->cancel();
  EXPECT_EQ(a.wait().finish, FinishReason::kCancelled);
  // The slot is free again.
  auto [t, fin] = run_one(*e, greedy(make_prompt(6, 1000, 3), 2));
  EXPECT_EQ(fin.finish, FinishReason::kLength);
}

TEST(Engine, DestructorCancelsRunningAndQueuedRequests) {
  auto model = tiny_model();
  std::vector<Outcome> out(3);
  {
    auto e = make_engine(model, cpu_options(1, 4000));
    for (int i = 0; i < 3; ++i) {
      auto r = greedy(make_prompt(6, 1000, i), 3000);
      r.on_event = out[i].callback();
      ASSERT_TRUE(e->submit(std::move(r)).ok());
    }
  }
  for (auto& o : out) {
    std::lock_guard lk(o.mu);
    ASSERT_TRUE(o.finished.has_value());
    EXPECT_EQ(o.finished->finish, FinishReason::kCancelled);
  }
}

TEST(Engine, RouterStatsCountEveryRoutedToken) {
  auto model = tiny_model();
  const Config& c = model->config();
  auto e = make_engine(model, cpu_options(2, 64), {.collect_router_stats = true});
  run_one(*e, greedy(make_prompt(20, 1000, 1), 5));
  EngineStats st = e->stats();
  ASSERT_EQ(st.router.layers, c.num_hidden_layers);
  ASSERT_EQ(st.router.counts.size(), static_cast<size_t>(c.num_hidden_layers * c.num_local_experts));
  // 20 prompt tokens + 4 fed generated tokens, each routed to top_k experts in every layer.
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    uint64_t sum = 0;
    for (int64_t x = 0; x < c.num_local_experts; ++x) sum += st.router.counts[l * c.num_local_experts + x];
    EXPECT_EQ(sum, 24u * c.num_experts_per_tok) << "layer " << l;
    EXPECT_EQ(st.router.tokens[l], 24u);
  }
  EXPECT_EQ(st.kv_tokens_used, 24);
  EXPECT_EQ(st.kv_tokens_capacity, 128);
}

}  // namespace
}  // namespace gptoss
