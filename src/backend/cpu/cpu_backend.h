// The CPU backend: the reference forward pass (f32 activations, f32 KV cache) built from cpu/ops.h.
#pragma once

#include <memory>

#include "backend/backend.h"

namespace gptoss {

// Creates a CPU backend for `model`. Checks the options against the config (max_context within
// max_position_embeddings, positive slots/batch, non-negative rollback and threads) and allocates
// the KV cache of every slot: max_context entries for full-attention layers and a ring of
// min(max_context, sliding_window + rollback) entries for sliding layers.
// Thread-safety: the returned object is not thread-safe; one thread drives it.
Result<std::unique_ptr<Backend>> cpu_backend_create(std::shared_ptr<const Model> model, const BackendOptions& opts);

}  // namespace gptoss
