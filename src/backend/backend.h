// The backend interface: one object owns the device-side copy of the weights, the KV cache of
// `max_slots` sequences and the scratch memory, and runs causal forward steps over a batch of
// sequences (prefill chunks and single-token decodes mixed). CPU is the reference; CUDA the fast path.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/sampling.h"
#include "core/status.h"
#include "model/weights.h"

namespace gptoss {

// Element type of the KV cache. f32 (the default) keeps attention near-exact; f16 halves the cache's
// memory and the bytes attention reads at depth, at fp16 rounding of every key and value (rel.
// error ~5e-4, see docs/PERFORMANCE.md "Precision"). The CPU backend rounds the same way but keeps
// f32 storage (it is the reference for the CUDA kernels).
enum class KvCacheType { kF32, kF16 };
const char* kv_cache_name(KvCacheType t);  // "f32" | "f16"
// Parses "f32" / "f16"; anything else is kInvalidArgument naming the value.
Result<KvCacheType> parse_kv_cache(const std::string& name);

struct BackendOptions {
  std::string kind = "cpu";    // "cpu", "cuda", or "auto" (cuda when a GPU is usable, else cpu)
  int threads = 0;             // CPU threads (0 = all cores)
  int device = 0;              // CUDA device ordinal
  int max_slots = 1;           // sequences that can hold a KV cache at once
  int64_t max_context = 4096;  // tokens per slot (≤ max_position_embeddings)
  // How far a slot can be rewound (prefix reuse): sliding layers keep a ring of
  // sliding_window + rollback entries, full layers keep max_context entries.
  int64_t rollback = 1024;
  int64_t max_batch_tokens = 2048;  // most tokens in one forward() call (prefill chunk size)
  KvCacheType kv_cache = KvCacheType::kF32;
};

// One sequence's share of a forward step.
struct SeqBatch {
  int slot = 0;
  int64_t pos = 0;                  // position of tokens[0]; K/V at ≥ pos in this slot are replaced
  std::span<const int32_t> tokens;  // ≥ 1 token ids, each < vocab_size
  bool all_logits = false;          // logits for every token (else only for the last one)
};

// Router decisions, accumulated over forward() calls when the caller passes one.
struct RouterStats {
  int64_t layers = 0, experts = 0, top_k = 0;
  std::vector<uint64_t> counts;         // [layer * experts + e]: times expert e was selected
  std::vector<double> top1_weight_sum;  // [layer]: Σ over tokens of the largest routing weight
  std::vector<double> entropy_sum;      // [layer]: Σ over tokens of −Σ w log w (nats) of the top-k weights
  std::vector<uint64_t> tokens;         // [layer]: tokens routed
  void reset(int64_t n_layers, int64_t n_experts, int64_t k);
  void merge(const RouterStats& other);
};

struct StepOutputs {
  // Host outputs, optional. Rows are in batch order: a sequence contributes tokens.size() rows if
  // all_logits, else 1 row (its last token).
  float* logits = nullptr;    // [rows, vocab_size] f32, as the lm_head wrote them (before any edit)
  int32_t* argmax = nullptr;  // [rows] greedy token of those logits (lowest id on ties)
  RouterStats* router_stats = nullptr;
  // Rows sampled where the logits are (backend/sampling.h; rows strictly increasing): row i's
  // penalty edits are applied and its token, the one sample_row() gives, lands in sampled[i]. Only
  // the ids come back to the host. The edits may change the backend's copy of the logits only.
  std::span<const SampleRow> sample = {};
  int32_t* sampled = nullptr;  // [sample.size()]
};

struct MemoryStats {
  size_t weight_bytes = 0;                   // weights resident for this backend (host mapping or device)
  size_t kv_bytes_reserved = 0;              // KV cache allocated for all slots
  size_t kv_bytes_used = 0;                  // KV entries currently holding tokens
  size_t scratch_bytes = 0;                  // activations / workspaces
  size_t device_total = 0, device_used = 0;  // GPU memory (0 on CPU)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;  // "cpu" or "cuda:<device name>"
  virtual const BackendOptions& options() const = 0;

  // One causal forward pass over `batch`. Validates: slots in range and distinct, pos = 0 or within
  // [slot_min_resume(slot), slot_length(slot)], token ids < vocab, pos + n ≤ max_context,
  // Σ n ≤ max_batch_tokens. On success each slot's length becomes pos + n.
  // The result for a sequence does not depend on what else is in the batch.
  virtual Status forward(std::span<const SeqBatch> batch, const StepOutputs& out) = 0;

  virtual int64_t slot_length(int slot) const = 0;
  // Smallest nonzero position a forward() on this slot may start at: rewinding further would need
  // sliding-window K/V the ring has overwritten (max(0, length − rollback) when the model has
  // sliding layers). pos = 0 (start over) is always allowed.
  virtual int64_t slot_min_resume(int slot) const = 0;
  virtual void slot_reset(int slot) = 0;
  virtual MemoryStats memory_stats() const = 0;
};

// The batch checks every backend applies before a forward step (see Backend::forward): slots in
// range and distinct, tokens non-empty and inside the vocabulary, pos = 0 or within
// [slot_min_resume, slot_length], pos + n ≤ max_context, Σ n ≤ max_batch_tokens, and the sample
// rows (validate_sample_rows; a sampled[] output when there are any). Errors name the batch entry,
// slot, position or token, or the sample entry and field.
Status backend_validate_batch(const Backend& backend, int64_t vocab_size, std::span<const SeqBatch> batch,
                              const StepOutputs& out);

// Creates the backend named in opts.kind for `model`.
Result<std::unique_ptr<Backend>> backend_create(std::shared_ptr<const Model> model, const BackendOptions& opts);
// Kinds compiled into this binary ("cpu", and "cuda" when built with CUDA).
std::vector<std::string> backend_kinds();

}  // namespace gptoss
