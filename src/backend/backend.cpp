// Backend factory (cpu / cuda / auto) and the RouterStats helpers shared by every backend.
#include "backend/backend.h"

#include <algorithm>

#include "backend/cpu/cpu_backend.h"
#include "core/log.h"
#ifdef GPTOSS_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace gptoss {

void RouterStats::reset(int64_t n_layers, int64_t n_experts, int64_t k) {
  layers = n_layers;
  experts = n_experts;
  top_k = k;
  counts.assign(static_cast<size_t>(n_layers * n_experts), 0);
  top1_weight_sum.assign(static_cast<size_t>(n_layers), 0.0);
  entropy_sum.assign(static_cast<size_t>(n_layers), 0.0);
  tokens.assign(static_cast<size_t>(n_layers), 0);
}

void RouterStats::merge(const RouterStats& o) {
  if (layers == 0) reset(o.layers, o.experts, o.top_k);
  for (size_t i = 0; i < counts.size() && i < o.counts.size(); ++i) counts[i] += o.counts[i];
  for (size_t i = 0; i < tokens.size() && i < o.tokens.size(); ++i) {
    top1_weight_sum[i] += o.top1_weight_sum[i];
    entropy_sum[i] += o.entropy_sum[i];
    tokens[i] += o.tokens[i];
  }
}

const char* kv_cache_name(KvCacheType t) {
  return t == KvCacheType::kF16 ? "f16" : "f32";
}

Result<KvCacheType> parse_kv_cache(const std::string& name) {
  if (name == "f32") return KvCacheType::kF32;
  if (name == "f16") return KvCacheType::kF16;
  return make_error(ErrorCode::kInvalidArgument, "unknown KV cache type '{}' (expected f32 or f16)", name);
}

Result<std::unique_ptr<Backend>> backend_create(std::shared_ptr<const Model> model, const BackendOptions& opts) {
  if (opts.kind == "cpu") return cpu_backend_create(std::move(model), opts);
  if (opts.kind == "cuda" || opts.kind == "auto") {
#ifdef GPTOSS_HAVE_CUDA
    auto cuda = cuda_backend_create(model, opts);
    if (cuda.ok() || opts.kind == "cuda") return cuda;
    // "auto" falls back to the CPU when no usable GPU is found, and says why.
    log_info("backend auto: CUDA unavailable ({}), using cpu", cuda.status().message());
#else
    if (opts.kind == "cuda")
      return make_error(ErrorCode::kUnavailable, "backend 'cuda' is not available: this gptoss was built without CUDA");
#endif
    BackendOptions cpu_opts = opts;
    cpu_opts.kind = "cpu";
    return cpu_backend_create(std::move(model), cpu_opts);
  }
  std::string kinds;
  for (const auto& k : backend_kinds()) {
    if (!kinds.empty()) kinds += ", ";
    kinds += k;
  }
  return make_error(ErrorCode::kInvalidArgument, "unknown backend '{}' (available: {}, auto)", opts.kind, kinds);
}

std::vector<std::string> backend_kinds() {
#ifdef GPTOSS_HAVE_CUDA
  return {"cpu", "cuda"};
#else
  return {"cpu"};
#endif
}

Status backend_validate_batch(const Backend& backend, int64_t vocab_size, std::span<const SeqBatch> batch,
                              const StepOutputs& out) {
  const BackendOptions& opts = backend.options();
  if (batch.empty()) return make_error(ErrorCode::kInvalidArgument, "forward: empty batch");
  int64_t total = 0, rows = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const SeqBatch& s = batch[i];
    if (s.slot < 0 || s.slot >= opts.max_slots)
      return make_error(ErrorCode::kInvalidArgument, "forward: batch[{}]: slot {} out of range [0, {})", i, s.slot,
                        opts.max_slots);
    for (size_t j = 0; j < i; ++j)
      if (batch[j].slot == s.slot)
        return make_error(ErrorCode::kInvalidArgument, "forward: batch[{}] and batch[{}] both use slot {}", j, i,
                          s.slot);
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    if (n == 0) return make_error(ErrorCode::kInvalidArgument, "forward: batch[{}] (slot {}) has no tokens", i, s.slot);
    const int64_t len = backend.slot_length(s.slot), min_pos = backend.slot_min_resume(s.slot);
    if (s.pos < 0 || s.pos > len)
      return make_error(ErrorCode::kInvalidArgument, "forward: batch[{}]: pos {} is beyond slot {} length {}", i, s.pos,
                        s.slot, len);
    if (s.pos != 0 && s.pos < min_pos)
      return make_error(ErrorCode::kInvalidArgument,
                        "forward: batch[{}]: pos {} is before slot {}'s earliest resume position {} (rollback {})", i,
                        s.pos, s.slot, min_pos, opts.rollback);
    if (s.pos + n > opts.max_context)
      return make_error(ErrorCode::kOutOfRange,
                        "forward: batch[{}]: pos {} + {} tokens exceeds max_context {} (slot {})", i, s.pos, n,
                        opts.max_context, s.slot);
    for (int64_t t = 0; t < n; ++t) {
      const int32_t id = s.tokens[static_cast<size_t>(t)];
      if (id < 0 || id >= vocab_size)
        return make_error(ErrorCode::kOutOfRange,
                          "forward: batch[{}] (slot {}): token {} at index {} is outside the "
                          "vocabulary [0, {})",
                          i, s.slot, id, t, vocab_size);
    }
    total += n;
    rows += s.all_logits ? n : 1;
  }
  if (total > opts.max_batch_tokens)
    return make_error(ErrorCode::kInvalidArgument, "forward: {} tokens in one batch exceed max_batch_tokens {}", total,
                      opts.max_batch_tokens);
  if (!out.sample.empty() && out.sampled == nullptr)
    return make_error(ErrorCode::kInvalidArgument, "forward: {} sample rows but no sampled output", out.sample.size());
  if (Status st = validate_sample_rows(out.sample, rows, vocab_size); !st.ok())
    return make_error(st.code(), "forward: {}", st.message());
  return Status::ok_status();
}

}  // namespace gptoss
