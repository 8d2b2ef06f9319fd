// CPU backend: batch validation, KV cache per slot (full layers linear, sliding layers a ring) and
// the forward driver. The two transformer blocks live in cpu_blocks.cpp.
#include "backend/cpu/cpu_backend.h"

#include <algorithm>
#include <new>

#include "backend/cpu/cpu_backend_impl.h"
#include "backend/cpu/ops.h"
#include "backend/cpu/parallel.h"

namespace gptoss::cpu {

CpuBackend::CpuBackend(std::shared_ptr<const Model> model, const BackendOptions& opts)
    : model_(std::move(model)), cfg_(model_->config()), opts_(opts), pool_(opts.threads) {
  rope_ = rope_table(cfg_);
  lengths_.assign(static_cast<size_t>(opts_.max_slots), 0);
  const int64_t kvd = cfg_.kv_dim();
  kv_.resize(static_cast<size_t>(cfg_.num_hidden_layers));
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    LayerCache& c = kv_[static_cast<size_t>(l)];
    c.cap = cfg_.is_sliding(l) ? std::min(opts_.max_context, cfg_.sliding_window + opts_.rollback) : opts_.max_context;
    const size_t n = static_cast<size_t>(opts_.max_slots * c.cap * kvd);
    c.k.assign(n, 0.0f);
    c.v.assign(n, 0.0f);
    if (c.cap < opts_.max_context) ring_limits_resume_ = true;
  }
}

int64_t CpuBackend::slot_length(int slot) const {
  if (slot < 0 || slot >= opts_.max_slots) return 0;
  return lengths_[static_cast<size_t>(slot)];
}

int64_t CpuBackend::slot_min_resume(int slot) const {
  // Only a ring shorter than the context can have overwritten what a rewind needs.
  if (!ring_limits_resume_) return 0;
  return std::max<int64_t>(0, slot_length(slot) - opts_.rollback);
}

void CpuBackend::slot_reset(int slot) {
  if (slot >= 0 && slot < opts_.max_slots) lengths_[static_cast<size_t>(slot)] = 0;
}

MemoryStats CpuBackend::memory_stats() const {
  MemoryStats m;
  const ModelWeights& w = model_->weights();
  auto add = [&m](const Weight& x) { m.weight_bytes += x.nbytes; };
  add(w.embed);
  add(w.final_norm);
  add(w.lm_head);
  for (const LayerWeights& l : w.layers) {
    for (const Weight* x : {&l.attn_norm, &l.q_w, &l.q_b, &l.k_w, &l.k_b, &l.v_w, &l.v_b, &l.o_w, &l.o_b, &l.sinks,
                            &l.mlp_norm, &l.router_w, &l.router_b})
      add(*x);
    for (const Mxfp4Experts* e : {&l.mlp1, &l.mlp2}) {
      add(e->blocks);
      add(e->scales);
      add(e->bias);
    }
  }
  const size_t entry_bytes = static_cast<size_t>(cfg_.kv_dim()) * 2 * sizeof(float);
  for (const LayerCache& c : kv_) {
    m.kv_bytes_reserved += (c.k.size() + c.v.size()) * sizeof(float);
    for (int64_t len : lengths_) m.kv_bytes_used += static_cast<size_t>(std::min(len, c.cap)) * entry_bytes;
  }
  m.scratch_bytes = scratch_.bytes();
  return m;
}

void CpuBackend::prepare_rows(std::span<const SeqBatch> batch) {
  Scratch& s = scratch_;
  int64_t row = 0;
  int64_t out_rows = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const SeqBatch& b = batch[i];
    s.seq_row0[i] = row;
    for (size_t t = 0; t < b.tokens.size(); ++t, ++row) {
      s.row_token[row] = b.tokens[t];
      s.row_seq[row] = static_cast<int32_t>(i);
      s.row_pos[row] = b.pos + static_cast<int64_t>(t);
      const bool wanted = b.all_logits || t + 1 == b.tokens.size();
      if (wanted) s.out_rows[out_rows++] = row;
    }
  }
  s.n_out_rows = out_rows;
  // cos | sin of every row's position, shared by all layers.
  const int64_t hd = cfg_.head_dim;
  for (int64_t r = 0; r < row; ++r) {
    float* cs = s.rope_cs.data() + r * hd;
    rope_cos_sin(rope_, s.row_pos[r], cs, cs + hd / 2);
  }
}

Status CpuBackend::forward(std::span<const SeqBatch> batch, const StepOutputs& out) {
  GPTOSS_RETURN_IF_ERROR(backend_validate_batch(*this, cfg_.vocab_size, batch, out));
  int64_t T = 0, R = 0;
  for (const SeqBatch& b : batch) {
    T += static_cast<int64_t>(b.tokens.size());
    R += b.all_logits ? static_cast<int64_t>(b.tokens.size()) : 1;
  }
  // Logits land in the caller's buffer; scratch holds them when only the argmax or samples are wanted.
  try {
    scratch_.ensure(cfg_, T, static_cast<int64_t>(batch.size()),
                    out.logits == nullptr && (out.argmax != nullptr || !out.sample.empty()) ? R : 0);
  } catch (const std::bad_alloc&) {
    return make_error(ErrorCode::kResourceExhausted, "forward: cannot allocate scratch memory for {} tokens", T);
  }
  prepare_rows(batch);
  batch_ = batch;

  embed_rows(model_->weights().embed.bf16(), cfg_.hidden_size, scratch_.row_token.data(), T, scratch_.h.data());
  RouterStats* stats = out.router_stats;
  if (stats && (stats->layers != cfg_.num_hidden_layers || stats->experts != cfg_.num_local_experts ||
                stats->top_k != cfg_.num_experts_per_tok || stats->counts.empty()))
    stats->reset(cfg_.num_hidden_layers, cfg_.num_local_experts, cfg_.num_experts_per_tok);
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    attention_block(l, T);
    moe_block(l, T, stats);
  }
  output_rows(out);
  for (const SeqBatch& b : batch) lengths_[static_cast<size_t>(b.slot)] = b.pos + static_cast<int64_t>(b.tokens.size());
  batch_ = {};
  return Status::ok_status();
}

void CpuBackend::output_rows(const StepOutputs& out) {
  Scratch& s = scratch_;
  const int64_t R = s.n_out_rows, H = cfg_.hidden_size, V = cfg_.vocab_size;
  if (R == 0 || (!out.logits && !out.argmax && out.sample.empty())) return;
  // Final norm only for the rows whose logits are wanted, gathered contiguously.
  for (int64_t i = 0; i < R; ++i) {
    rmsnorm(s.h.data() + s.out_rows[i] * H, 1, H, model_->weights().final_norm.bf16(),
            static_cast<float>(cfg_.rms_norm_eps), s.final_x.data() + i * H);
  }
  float* logits = out.logits ? out.logits : s.logits.data();
  matmul_bf16(s.final_x.data(), R, H, model_->weights().lm_head.bf16(), nullptr, V, logits, &pool_);
  if (out.argmax)
    for (int64_t i = 0; i < R; ++i) out.argmax[i] = argmax(logits + i * V, V);
  // Sampling edits a copy of the row when the caller keeps the logits (they stay as the lm_head wrote them).
  for (size_t i = 0; i < out.sample.size(); ++i) {
    float* row = logits + static_cast<int64_t>(out.sample[i].row) * V;
    if (out.logits) {
      s.sample_row.assign(row, row + V);
      row = s.sample_row.data();
    }
    out.sampled[i] = sample_row(row, V, out.sample[i], s.sample_scratch);
  }
}

size_t Scratch::bytes() const {
  size_t b = 0;
  for (const std::vector<float>* v : {&h, &x, &q, &k, &v, &attn, &tmp, &moe, &rope_cs, &router_logits, &topk_w, &ex_x,
                                      &ex_gu, &ex_act, &ex_y, &final_x, &logits, &sample_row})
    b += v->capacity() * sizeof(float);
  b += (row_token.capacity() + row_seq.capacity() + topk_idx.capacity() + ex_token.capacity() + ex_count.capacity()) *
       sizeof(int32_t);
  b += (row_pos.capacity() + seq_row0.capacity() + out_rows.capacity()) * sizeof(int64_t);
  return b;
}

void Scratch::ensure(const Config& c, int64_t T, int64_t n_seqs, int64_t logit_rows) {
  // Grow-only: steady-state steps of the same or smaller size allocate nothing.
  auto grow = [](auto& v, int64_t n) {
    if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  };
  const int64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_local_experts, K = c.num_experts_per_tok;
  for (auto* v : {&h, &x, &tmp, &moe, &ex_x, &ex_y, &final_x}) grow(*v, T * H);
  grow(q, T * c.q_dim());
  grow(attn, T * c.q_dim());
  grow(k, T * c.kv_dim());
  grow(v, T * c.kv_dim());
  grow(rope_cs, T * c.head_dim);
  grow(router_logits, T * E);
  grow(topk_w, T * K);
  grow(topk_idx, T * K);
  grow(ex_gu, T * 2 * I);
  grow(ex_act, T * I);
  grow(ex_token, T * K);
  grow(ex_count, E + 1);
  grow(row_token, T);
  grow(row_seq, T);
  grow(row_pos, T);
  grow(out_rows, T);
  grow(seq_row0, n_seqs);
  grow(logits, logit_rows * c.vocab_size);
}

}  // namespace gptoss::cpu

namespace gptoss {

Result<std::unique_ptr<Backend>> cpu_backend_create(std::shared_ptr<const Model> model, const BackendOptions& opts) {
  if (!model) return make_error(ErrorCode::kInvalidArgument, "cpu backend: no model");
  const Config& c = model->config();
  if (opts.max_slots < 1)
    return make_error(ErrorCode::kInvalidArgument, "cpu backend: max_slots {} must be >= 1", opts.max_slots);
  if (opts.max_context < 1 || opts.max_context > c.max_position_embeddings)
    return make_error(ErrorCode::kInvalidArgument, "cpu backend: max_context {} must be in [1, {}]", opts.max_context,
                      c.max_position_embeddings);
  if (opts.rollback < 0)
    return make_error(ErrorCode::kInvalidArgument, "cpu backend: rollback {} must be >= 0", opts.rollback);
  if (opts.max_batch_tokens < 1)
    return make_error(ErrorCode::kInvalidArgument, "cpu backend: max_batch_tokens {} must be >= 1",
                      opts.max_batch_tokens);
  if (opts.threads < 0)
    return make_error(ErrorCode::kInvalidArgument, "cpu backend: threads {} must be >= 0", opts.threads);
  BackendOptions o = opts;
  o.kind = "cpu";
  try {
    return std::unique_ptr<Backend>(std::make_unique<cpu::CpuBackend>(std::move(model), o));
  } catch (const std::bad_alloc&) {
    // The KV cache is allocated up front; say how big it was.
    double bytes = 0;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const int64_t cap = c.is_sliding(l) ? std::min(o.max_context, c.sliding_window + o.rollback) : o.max_context;
      bytes += 2.0 * static_cast<double>(o.max_slots * cap * c.kv_dim()) * sizeof(float);
    }
    return make_error(ErrorCode::kResourceExhausted,
                      "cpu backend: cannot allocate the KV cache ({:.2f} GiB for {} slots of {} tokens)",
                      bytes / (1ull << 30), o.max_slots, o.max_context);
  }
}

}  // namespace gptoss
