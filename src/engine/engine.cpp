// The continuous-batching generation loop: admission into KV slots with prefix reuse, mixed
// prefill/decode forward steps, per-sequence sampling, finish conditions and statistics.
#include "engine/engine.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "core/log.h"

namespace gptoss {

using Clock = std::chrono::steady_clock;

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
  }
  return "error";
}

namespace {

struct Pending {
  std::shared_ptr<Request> handle;
  GenerationRequest req;
  Clock::time_point submitted;
};

// A request that owns a slot.
struct Sequence {
  Sequence(std::shared_ptr<Request> h, GenerationRequest r, Clock::time_point t)
      : handle(std::move(h)), req(std::move(r)), sampler(req.sampling), submitted(t) {}
  std::shared_ptr<Request> handle;
  GenerationRequest req;
  Sampler sampler;
  std::vector<int32_t> tokens;  // prompt + generated
  size_t n_prompt = 0;
  int64_t pos = 0;  // tokens[0, pos) have K/V in the slot
  int64_t generated = 0, cached = 0;
  uint64_t order = 0;  // admission order: earlier requests get prefill budget first
  Clock::time_point submitted;
  double ttft_s = 0;
  // Plain greedy takes the backend's argmax; anything else is sampled by the backend from a SampleRow.
  bool backend_samples() const { return !req.sampling.greedy() || req.sampling.has_penalties(); }
};

// One sequence's part of a step: `n` tokens from its position; `emits` when they end its pending
// input (the last prompt chunk or a decode), so the step yields its next token.
struct StepMember {
  int slot;
  int64_t n;
  bool emits;
};

struct Slot {
  std::vector<int32_t> cached;  // tokens whose K/V the slot holds, in position order
  std::unique_ptr<Sequence> seq;
  uint64_t last_used = 0;
};

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t n = std::min(a.size(), b.size()), i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return i;
}

}  // namespace

struct EngineImpl {
  std::shared_ptr<const Model> model;
  std::unique_ptr<Backend> backend;
  EngineOptions options;
  int64_t vocab = 0;

  mutable std::mutex mu;  // guards queue, stop, next_id
  std::condition_variable cv;
  std::deque<Pending> queue;
  bool stop = false;
  uint64_t next_id = 1;
  std::atomic<int> active{0};  // sequences holding a slot; written by the engine thread only

  mutable std::mutex stats_mu;
  EngineStats stats;

  std::vector<Slot> slots;  // engine thread only
  uint64_t tick = 0, admissions = 0;
  size_t rr = 0;  // round-robin start for decodes when the batch budget is smaller than the slots
  std::vector<int32_t> argmax, sampled;
  std::vector<SampleRow> sample_rows;
  RouterStats step_router;
  std::thread thread;

  void run();
  void finish_queued(Pending& p, FinishReason why, const Status& st);
  void sweep_queue();
  void admit();
  int choose_slot(const std::vector<int32_t>& prompt, int preferred, int64_t* resume) const;
  void start(Pending&& p, int slot, int64_t resume);
  void check_cancellations();
  std::vector<StepMember> plan_step();
  void step();
  void emit_token(Slot& slot, int32_t token);
  void finish(Slot& slot, FinishReason why, const Status& st = {});
  void update_stats(int64_t batch_size, int64_t batch_tokens);
};

void EngineImpl::run() {
  for (;;) {
    {
      std::unique_lock lk(mu);
      cv.wait(lk, [&] { return stop || !queue.empty() || active > 0; });
      if (stop) break;
    }
    sweep_queue();
    admit();
    check_cancellations();
    if (active > 0) {
      step();
    } else {
      // Only queued requests that cannot start yet (a preferred slot is busy can't happen with
      // nothing active), so nothing to do until the next submit.
      std::unique_lock lk(mu);
      cv.wait_for(lk, std::chrono::milliseconds(5));
    }
  }
  for (auto& s : slots)
    if (s.seq) finish(s, FinishReason::kCancelled, Status(ErrorCode::kCancelled, "engine shut down"));
  std::deque<Pending> left;
  {
    std::lock_guard lk(mu);
    left.swap(queue);
  }
  for (auto& p : left) finish_queued(p, FinishReason::kCancelled, Status(ErrorCode::kCancelled, "engine shut down"));
  update_stats(0, 0);
}

void EngineImpl::finish_queued(Pending& p, FinishReason why, const Status& st) {
  {
    std::lock_guard lk(stats_mu);
    ++stats.requests_finished;
    if (why == FinishReason::kCancelled) ++stats.requests_cancelled;
  }
  if (!p.req.on_event) return;
  GenerationEvent ev;
  ev.kind = GenerationEvent::Kind::kFinished;
  ev.finish = why;
  ev.error = st;
  ev.prompt_tokens = static_cast<int64_t>(p.req.prompt.size());
  ev.total_s = seconds_since(p.submitted);
  p.req.on_event(ev);
}

// Finishes queued requests that were cancelled or timed out before they got a slot.
void EngineImpl::sweep_queue() {
  std::vector<std::pair<Pending, Status>> done;
  {
    std::lock_guard lk(mu);
    for (auto it = queue.begin(); it != queue.end();) {
      bool timed_out = it->req.timeout.count() > 0 && Clock::now() - it->submitted >= it->req.timeout;
      if (it->handle->cancelled() || timed_out) {
        Status st = timed_out ? make_error(ErrorCode::kCancelled, "request timed out after {} ms while queued",
                                           it->req.timeout.count())
                              : Status(ErrorCode::kCancelled, "request cancelled");
        done.emplace_back(std::move(*it), std::move(st));
        it = queue.erase(it);
      } else {
        ++it;
      }
    }
  }
  if (done.empty()) return;
  update_stats(0, 0);  // the queue shrank: keep requests_queued true while the engine is idle
  for (auto& [p, st] : done) finish_queued(p, FinishReason::kCancelled, st);
}

// Picks the free slot to run `prompt` in and the position to resume from (0 = start over).
// Returns -1 when no suitable slot is free.
int EngineImpl::choose_slot(const std::vector<int32_t>& prompt, int preferred, int64_t* resume) const {
  auto usable_prefix = [&](int s) -> int64_t {
    // At least the last prompt token must run, to get the logits for the first new token.
    auto r = static_cast<int64_t>(std::min(common_prefix(slots[s].cached, prompt), prompt.size() - 1));
    if (r <= 0 || r > backend->slot_length(s) || r < backend->slot_min_resume(s)) return 0;
    return r;
  };
  if (preferred >= 0) {
    if (slots[preferred].seq) return -1;
    *resume = usable_prefix(preferred);
    return preferred;
  }
  int best = -1;
  int64_t best_reuse = -1;
  for (int s = 0; s < static_cast<int>(slots.size()); ++s) {
    if (slots[s].seq) continue;
    int64_t r = usable_prefix(s);
    // Longest reusable prefix wins; among equals the least recently used slot, so the caches of
    // recent conversations survive longest.
    if (r > best_reuse || (r == best_reuse && slots[s].last_used < slots[best].last_used)) {
      best = s;
      best_reuse = r;
    }
  }
  if (best >= 0) *resume = best_reuse;
  return best;
}

void EngineImpl::admit() {
  std::vector<std::tuple<Pending, int, int64_t>> started;
  {
    std::lock_guard lk(mu);
    for (auto it = queue.begin();
         it != queue.end() && active + static_cast<int>(started.size()) < static_cast<int>(slots.size());) {
      int64_t resume = 0;
      int s = choose_slot(it->req.prompt, it->req.preferred_slot, &resume);
      // A slot chosen earlier in this pass is not yet marked busy: skip it.
      bool taken = std::any_of(started.begin(), started.end(), [&](const auto& t) { return std::get<1>(t) == s; });
      if (s < 0 || taken) {
        ++it;
        continue;
      }
      started.emplace_back(std::move(*it), s, resume);
      it = queue.erase(it);
    }
  }
  for (auto& [p, s, resume] : started) start(std::move(p), s, resume);
}

void EngineImpl::start(Pending&& p, int s, int64_t resume) {
  Slot& slot = slots[s];
  auto seq = std::make_unique<Sequence>(std::move(p.handle), std::move(p.req), p.submitted);
  seq->tokens = seq->req.prompt;
  seq->n_prompt = seq->tokens.size();
  seq->pos = resume;
  seq->cached = resume;
  seq->order = ++admissions;
  if (resume == 0) backend->slot_reset(s);
  slot.cached.resize(static_cast<size_t>(resume));
  slot.seq = std::move(seq);
  ++active;
  std::lock_guard lk(stats_mu);
  stats.prompt_tokens_total += static_cast<int64_t>(slot.seq->n_prompt);
  stats.cached_tokens_total += resume;
}

void EngineImpl::check_cancellations() {
  for (auto& slot : slots) {
    if (!slot.seq) continue;
    const auto& r = slot.seq->req;
    if (slot.seq->handle->cancelled()) {
      finish(slot, FinishReason::kCancelled, Status(ErrorCode::kCancelled, "request cancelled"));
    } else if (r.timeout.count() > 0 && Clock::now() - slot.seq->submitted >= r.timeout) {
      finish(slot, FinishReason::kCancelled,
             make_error(ErrorCode::kCancelled, "request timed out after {} ms", r.timeout.count()));
    }
  }
}

// Which sequences run this step and how many tokens each: decodes first (one token each,
// round-robin when the budget is short) so running streams keep flowing, then prefill chunks in
// admission order with what is left.
std::vector<StepMember> EngineImpl::plan_step() {
  std::vector<StepMember> members;
  int64_t budget = backend->options().max_batch_tokens;
  const int n_slots = static_cast<int>(slots.size());
  for (int i = 0; i < n_slots && budget > 0; ++i) {
    int s = static_cast<int>((rr + static_cast<size_t>(i)) % static_cast<size_t>(n_slots));
    Sequence* q = slots[s].seq.get();
    if (!q || q->pos < static_cast<int64_t>(q->n_prompt)) continue;
    members.push_back({s, 1, true});
    --budget;
  }
  rr = (rr + 1) % static_cast<size_t>(std::max(1, n_slots));
  std::vector<int> prefills;
  for (int s = 0; s < n_slots; ++s)
    if (slots[s].seq && slots[s].seq->pos < static_cast<int64_t>(slots[s].seq->n_prompt)) prefills.push_back(s);
  std::sort(prefills.begin(), prefills.end(), [&](int a, int b) { return slots[a].seq->order < slots[b].seq->order; });
  for (int s : prefills) {
    if (budget <= 0) break;
    Sequence* q = slots[s].seq.get();
    int64_t left = static_cast<int64_t>(q->n_prompt) - q->pos;
    int64_t n = std::min({left, options.prefill_chunk, budget});
    members.push_back({s, n, n == left});
    budget -= n;
  }
  return members;
}

void EngineImpl::step() {
  std::vector<StepMember> members = plan_step();
  if (members.empty()) return;
  std::vector<SeqBatch> batch;
  sample_rows.clear();
  int64_t batch_tokens = 0;
  for (size_t i = 0; i < members.size(); ++i) {
    const StepMember& m = members[i];
    Sequence* q = slots[m.slot].seq.get();
    batch.push_back(
        {.slot = m.slot, .pos = q->pos, .tokens = std::span<const int32_t>(q->tokens).subspan(q->pos, m.n)});
    if (m.emits && q->backend_samples()) {
      // Output row i: every member contributes one row (its last token).
      sample_rows.push_back(q->sampler.prepare(vocab, q->tokens, q->n_prompt));
      sample_rows.back().row = static_cast<int32_t>(i);
    }
    batch_tokens += m.n;
  }
  argmax.resize(members.size());
  sampled.resize(sample_rows.size());
  StepOutputs out{.argmax = argmax.data(), .sample = sample_rows, .sampled = sampled.data()};
  if (options.collect_router_stats) {
    const Config& c = model->config();
    step_router.reset(c.num_hidden_layers, c.num_local_experts, c.num_experts_per_tok);
    out.router_stats = &step_router;
  }
  Status st = backend->forward(batch, out);
  if (!st.ok()) {
    log_error("engine: forward step failed: {}", st.message());
    for (const auto& m : members) {
      backend->slot_reset(m.slot);
      slots[m.slot].cached.clear();
      finish(slots[m.slot], FinishReason::kError, st);
    }
    update_stats(static_cast<int64_t>(members.size()), batch_tokens);
    return;
  }
  // Bookkeeping and statistics before any event, so a caller woken by an event sees them current.
  for (const auto& m : members) {
    Slot& slot = slots[m.slot];
    Sequence& q = *slot.seq;
    slot.cached.insert(slot.cached.end(), q.tokens.begin() + q.pos, q.tokens.begin() + q.pos + m.n);
    q.pos += m.n;
  }
  if (options.collect_router_stats) {
    std::lock_guard lk(stats_mu);
    stats.router.merge(step_router);
  }
  update_stats(static_cast<int64_t>(members.size()), batch_tokens);
  size_t next_sampled = 0;
  for (size_t i = 0; i < members.size(); ++i) {
    if (!members[i].emits) continue;
    Slot& slot = slots[members[i].slot];
    const int32_t tok = slot.seq->backend_samples() ? sampled[next_sampled++] : argmax[i];
    emit_token(slot, tok);
  }
}

void EngineImpl::emit_token(Slot& slot, int32_t token) {
  Sequence& q = *slot.seq;
  q.tokens.push_back(token);
  ++q.generated;
  GenerationEvent ev;
  ev.kind = GenerationEvent::Kind::kToken;
  ev.token = token;
  ev.prompt_tokens = static_cast<int64_t>(q.n_prompt);
  ev.cached_prompt_tokens = q.cached;
  ev.generated_tokens = q.generated;
  if (q.generated == 1) q.ttft_s = seconds_since(q.submitted);
  ev.ttft_s = q.ttft_s;
  {
    std::lock_guard lk(stats_mu);
    ++stats.generated_tokens_total;
  }
  if (q.req.on_event) q.req.on_event(ev);
  const auto& stops = q.req.stop_ids;
  if (std::find(stops.begin(), stops.end(), token) != stops.end()) {
    finish(slot, FinishReason::kStop);
  } else if (q.generated >= q.req.max_tokens ||
             static_cast<int64_t>(q.tokens.size()) >= backend->options().max_context) {
    finish(slot, FinishReason::kLength);
  }
}

void EngineImpl::finish(Slot& slot, FinishReason why, const Status& st) {
  std::unique_ptr<Sequence> q = std::move(slot.seq);
  slot.last_used = ++tick;
  --active;
  {
    std::lock_guard lk(stats_mu);
    ++stats.requests_finished;
    if (why == FinishReason::kCancelled) ++stats.requests_cancelled;
    if (why == FinishReason::kError) ++stats.requests_failed;
  }
  update_stats(0, 0);
  if (!q->req.on_event) return;
  GenerationEvent ev;
  ev.kind = GenerationEvent::Kind::kFinished;
  ev.finish = why;
  ev.error = st;
  ev.prompt_tokens = static_cast<int64_t>(q->n_prompt);
  ev.cached_prompt_tokens = q->cached;
  ev.generated_tokens = q->generated;
  ev.ttft_s = q->ttft_s;
  ev.total_s = seconds_since(q->submitted);
  q->req.on_event(ev);
}

void EngineImpl::update_stats(int64_t batch_size, int64_t batch_tokens) {
  int64_t kv_used = 0;
  for (int s = 0; s < static_cast<int>(slots.size()); ++s) kv_used += backend->slot_length(s);
  MemoryStats mem = backend->memory_stats();
  int64_t queued;
  {
    std::lock_guard lk(mu);
    queued = static_cast<int64_t>(queue.size());
  }
  std::lock_guard lk(stats_mu);
  if (batch_size > 0) {
    ++stats.steps;
    stats.last_batch_size = batch_size;
    stats.last_batch_tokens = batch_tokens;
  }
  stats.requests_active = active;
  stats.slots_busy = active;
  stats.requests_queued = queued;
  stats.kv_tokens_used = kv_used;
  stats.memory = mem;
}

Result<std::unique_ptr<Engine>> Engine::create(std::shared_ptr<const Model> model, const BackendOptions& backend,
                                               const EngineOptions& options) {
  if (!model) return Status(ErrorCode::kInvalidArgument, "engine: no model");
  GPTOSS_ASSIGN_OR_RETURN(std::unique_ptr<Backend> be, backend_create(model, backend));
  return create(std::move(model), std::move(be), options);
}

Result<std::unique_ptr<Engine>> Engine::create(std::shared_ptr<const Model> model, std::unique_ptr<Backend> backend,
                                               const EngineOptions& options) {
  if (!model || !backend) return Status(ErrorCode::kInvalidArgument, "engine: no model or backend");
  if (options.max_queue < 0)
    return make_error(ErrorCode::kInvalidArgument, "engine: max_queue must be >= 0 (got {})", options.max_queue);
  if (options.prefill_chunk < 1)
    return make_error(ErrorCode::kInvalidArgument, "engine: prefill_chunk must be >= 1 (got {})",
                      options.prefill_chunk);
  const BackendOptions& bo = backend->options();
  if (bo.max_slots < 1 || bo.max_batch_tokens < 1 || bo.max_context < 2)
    return make_error(ErrorCode::kInvalidArgument,
                      "engine: backend needs max_slots >= 1, max_batch_tokens >= 1, max_context >= 2 (got {}, {}, {})",
                      bo.max_slots, bo.max_batch_tokens, bo.max_context);
  std::unique_ptr<Engine> e(new Engine());
  e->impl_ = std::make_unique<EngineImpl>();
  EngineImpl& m = *e->impl_;
  m.model = std::move(model);
  m.backend = std::move(backend);
  m.options = options;
  m.vocab = m.model->config().vocab_size;
  m.slots.resize(static_cast<size_t>(bo.max_slots));
  m.stats.slots_total = bo.max_slots;
  m.stats.kv_tokens_capacity = static_cast<int64_t>(bo.max_slots) * bo.max_context;
  m.stats.memory = m.backend->memory_stats();
  m.thread = std::thread([&m] { m.run(); });
  return e;
}

Engine::~Engine() {
  if (!impl_) return;
  {
    std::lock_guard lk(impl_->mu);
    impl_->stop = true;
  }
  impl_->cv.notify_all();
  if (impl_->thread.joinable()) impl_->thread.join();
}

Result<std::shared_ptr<Request>> Engine::submit(GenerationRequest request) {
  EngineImpl& m = *impl_;
  const BackendOptions& bo = m.backend->options();
  if (request.prompt.empty()) return Status(ErrorCode::kInvalidArgument, "prompt is empty");
  for (size_t i = 0; i < request.prompt.size(); ++i) {
    int32_t t = request.prompt[i];
    if (t < 0 || t >= m.vocab)
      return make_error(ErrorCode::kInvalidArgument, "prompt token {} has id {}, outside the vocabulary [0, {})", i, t,
                        m.vocab);
  }
  if (static_cast<int64_t>(request.prompt.size()) >= bo.max_context)
    return make_error(ErrorCode::kOutOfRange, "prompt has {} tokens; the context holds {} (prompt must be shorter)",
                      request.prompt.size(), bo.max_context);
  GPTOSS_RETURN_IF_ERROR(request.sampling.validate());
  if (request.max_tokens < 1)
    return make_error(ErrorCode::kInvalidArgument, "max_tokens must be >= 1 (got {})", request.max_tokens);
  if (request.preferred_slot < -1 || request.preferred_slot >= bo.max_slots)
    return make_error(ErrorCode::kInvalidArgument, "preferred_slot {} is outside [-1, {})", request.preferred_slot,
                      bo.max_slots);
  auto handle = std::make_shared<Request>();
  {
    std::lock_guard lk(m.mu);
    if (m.stop) return Status(ErrorCode::kUnavailable, "engine is shutting down");
    // Free slots take requests at once; beyond them, max_queue may wait.
    const int free_slots = std::max(0, bo.max_slots - m.active.load());
    if (static_cast<int>(m.queue.size()) >= m.options.max_queue + free_slots) {
      std::lock_guard sl(m.stats_mu);
      ++m.stats.requests_rejected;
      return make_error(ErrorCode::kResourceExhausted, "request queue is full ({} waiting)", m.queue.size());
    }
    handle->id_ = m.next_id++;
    m.queue.push_back({handle, std::move(request), Clock::now()});
    std::lock_guard sl(m.stats_mu);
    ++m.stats.requests_total;
    m.stats.requests_queued = static_cast<int64_t>(m.queue.size());
  }
  m.cv.notify_all();
  return handle;
}

EngineStats Engine::stats() const {
  std::lock_guard lk(impl_->stats_mu);
  return impl_->stats;
}

const Model& Engine::model() const {
  return *impl_->model;
}
const BackendOptions& Engine::backend_options() const {
  return impl_->backend->options();
}
std::string Engine::backend_name() const {
  return impl_->backend->name();
}

}  // namespace gptoss
