// The generation engine: one thread owns the model's Backend and runs continuous batching over
// submitted requests (chunked prefill mixed with batched decode steps, KV prefix reuse per slot,
// back-pressure when full). The CLI (run/chat/complete/bench) and the server both drive it.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/status.h"
#include "engine/sampler.h"
#include "model/weights.h"

namespace gptoss {

enum class FinishReason { kStop, kLength, kCancelled, kError };
const char* finish_reason_name(FinishReason r);  // "stop", "length", "cancelled", "error"

// What the engine reports for a request, on the engine thread, in order: zero or more kToken
// events, then exactly one kFinished. Callbacks must be quick and must not call back into Engine
// except Request::cancel().
struct GenerationEvent {
  enum class Kind { kToken, kFinished } kind = Kind::kToken;
  int32_t token = -1;                         // kToken
  FinishReason finish = FinishReason::kStop;  // kFinished
  Status error;                               // kFinished with kError; with kCancelled it says why
                                              // (code kCancelled: cancel() or timeout, named in the message)
  // Timing/usage (filled on kFinished; ttft also on the first kToken).
  int64_t prompt_tokens = 0, cached_prompt_tokens = 0, generated_tokens = 0;
  double ttft_s = 0, total_s = 0;
};
using EventFn = std::function<void(const GenerationEvent&)>;

struct GenerationRequest {
  std::vector<int32_t> prompt;  // ≥ 1 token
  SamplingParams sampling;
  int64_t max_tokens = 256;              // new tokens at most
  std::vector<int32_t> stop_ids;         // stop after emitting one of these (it is reported as a token)
  std::chrono::milliseconds timeout{0};  // 0 = none; on expiry finish = kCancelled
  // Sticky slot for a multi-turn conversation (chat): -1 lets the engine choose (it prefers the
  // free slot whose cached tokens share the longest prefix with the prompt).
  int preferred_slot = -1;
  EventFn on_event;
};

// A submitted request; cancel() is safe from any thread and takes effect within one step.
class Request {
 public:
  void cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }
  uint64_t id() const { return id_; }

 private:
  friend class Engine;
  friend struct EngineImpl;
  uint64_t id_ = 0;
  std::atomic<bool> cancelled_{false};
};

struct EngineOptions {
  int max_queue = 256;                // requests waiting for a busy slot beyond this are rejected (kResourceExhausted)
  int64_t prefill_chunk = 512;        // prompt tokens per sequence per step (keeps decodes flowing)
  bool collect_router_stats = false;  // accumulate RouterStats over all steps
};

struct EngineStats {
  int64_t requests_total = 0, requests_active = 0, requests_queued = 0, requests_rejected = 0;
  int64_t prompt_tokens_total = 0, cached_tokens_total = 0, generated_tokens_total = 0;
  int64_t requests_finished = 0, requests_cancelled = 0, requests_failed = 0;
  int64_t steps = 0, last_batch_size = 0, last_batch_tokens = 0;
  int64_t slots_busy = 0, slots_total = 0;
  int64_t kv_tokens_used = 0, kv_tokens_capacity = 0;
  MemoryStats memory;
  RouterStats router;  // empty unless collect_router_stats
};

class Engine {
 public:
  // Creates the backend (opts.max_slots sequences of opts.max_context tokens) and starts the loop.
  static Result<std::unique_ptr<Engine>> create(std::shared_ptr<const Model> model, const BackendOptions& backend,
                                                const EngineOptions& options);
  // Same, over a backend the caller made (tests use an instrumented backend); the engine owns it.
  static Result<std::unique_ptr<Engine>> create(std::shared_ptr<const Model> model, std::unique_ptr<Backend> backend,
                                                const EngineOptions& options);
  ~Engine();  // stops the loop; unfinished requests finish with kCancelled

  // Thread-safe. Validates the request (empty prompt or ids ≥ vocab → kInvalidArgument, prompt
  // not shorter than max_context → kOutOfRange, invalid sampling → kInvalidArgument) and queues
  // it; kResourceExhausted when the queue is full, max_tokens < 1 or preferred_slot out of range →
  // kInvalidArgument. Generation ends with kLength at max_tokens or when the sequence (prompt +
  // generated) reaches max_context tokens.
  Result<std::shared_ptr<Request>> submit(GenerationRequest request);

  EngineStats stats() const;
  const Model& model() const;
  const BackendOptions& backend_options() const;
  std::string backend_name() const;

 private:
  Engine() = default;
  std::unique_ptr<struct EngineImpl> impl_;
};

}  // namespace gptoss
