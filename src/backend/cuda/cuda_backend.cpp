// CUDA backend: creation (device checks, upload, KV cache, scratch), batch validation, per-step
// planning and the forward driver (metadata upload, decode graphs, outputs, one sync per step).
#include "backend/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "backend/cuda/cuda_backend_impl.h"
#include "core/log.h"

namespace gptoss::cuda {
namespace {

int head_dim_padded(int d) {
  for (int dp : {16, 32, 64, 128})
    if (d <= dp) return dp;
  return 0;
}

// Lays buffers out in one allocation (256-byte aligned); the first pass only measures.
class Carver {
 public:
  explicit Carver(uint8_t* base) : base_(base) {}
  template <typename T>
  T* take(size_t count) {
    T* p = base_ ? reinterpret_cast<T*>(base_ + off_) : nullptr;
    off_ += (count * sizeof(T) + 255) / 256 * 256;
    return p;
  }
  size_t size() const { return off_; }

 private:
  uint8_t* base_;
  size_t off_ = 0;
};

}  // namespace

CudaBackend::CudaBackend(std::shared_ptr<const Model> model, const BackendOptions& opts, int sm_count,
                         std::string device_name, const Launch& target)
    : model_(std::move(model)),
      cfg_(model_->config()),
      opts_(opts),
      sm_count_(sm_count),
      device_name_(std::move(device_name)),
      launch_(target),
      pool_(opts.threads) {
  shape_.n_heads = static_cast<int>(cfg_.num_attention_heads);
  shape_.n_kv_heads = static_cast<int>(cfg_.num_key_value_heads);
  shape_.head_dim = static_cast<int>(cfg_.head_dim);
  shape_.dp = head_dim_padded(shape_.head_dim);
  hp_ = static_cast<int>(round_up(cfg_.hidden_size, kActPad));
  qp_ = static_cast<int>(round_up(cfg_.q_dim(), kActPad));
  ip_ = static_cast<int>(round_up(cfg_.intermediate_size, kActPad));
  lengths_.assign(static_cast<size_t>(opts_.max_slots), 0);
}

CudaBackend::~CudaBackend() {
  if (prof_.on()) std::fprintf(stderr, "%s", prof_.report().c_str());
  for (auto& [t, exec] : graphs_) cudaGraphExecDestroy(exec);
  cublas_ = CublasHandle{};  // before its stream
  if (stream_) cudaStreamDestroy(stream_);
}

Status CudaBackend::init() {
  const char* prof = std::getenv("GPTOSS_CUDA_PROFILE");
  prof_.enable(prof != nullptr && std::strcmp(prof, "0") != 0);
  if (const char* v = std::getenv("GPTOSS_CUDA_EXPERT_DECODE_TOKENS")) decode_max_tokens_ = std::max(0, std::atoi(v));
  if (const char* v = std::getenv("GPTOSS_CUDA_EXPERT_PAIR_TOKENS")) pair_max_tokens_ = std::max(0, std::atoi(v));
  if (const char* v = std::getenv("GPTOSS_CUDA_ATTN_WARPS")) attn_warps_ = std::clamp(std::atoi(v), 1, kAttnMaxWarps);
  if (const char* v = std::getenv("GPTOSS_CUDA_CUBLAS_TOKENS")) cublas_min_tokens_ = std::max(0, std::atoi(v));
  if (const char* v = std::getenv("GPTOSS_CUDA_O_PREFETCH_MB"))
    o_prefetch_bytes_ = int64_t{std::max(0, std::atoi(v))} << 20;
  int l2_bytes = 0;
  GPTOSS_CUDA_TRY(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, opts_.device), "reading the L2 size");
  kv_prefetch_limit_ = l2_bytes / 2;
  // GPTOSS_CUDA_PDL=0 / GPTOSS_CUDA_CLUSTERS=0 / GPTOSS_CUDA_WGMMA=0 turn off what the kernel code would
  // allow (measurements).
  if (const char* v = std::getenv("GPTOSS_CUDA_PDL")) launch_.pdl = launch_.pdl && std::atoi(v) != 0;
  if (const char* v = std::getenv("GPTOSS_CUDA_CLUSTERS")) launch_.clusters = launch_.clusters && std::atoi(v) != 0;
  if (const char* v = std::getenv("GPTOSS_CUDA_WGMMA")) launch_.wgmma = launch_.wgmma && std::atoi(v) != 0;
  log_info("cuda backend: programmatic dependent launch {}, clustered RMSNorm {}, warpgroup MMA experts {}",
           launch_.pdl ? "on" : "off", launch_.clusters ? "on" : "off", launch_.wgmma ? "on" : "off");
  GPTOSS_CUDA_TRY(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "creating a CUDA stream");
  launch_.stream = stream_;
  GPTOSS_ASSIGN_OR_RETURN(cublas_, CublasHandle::create(stream_));
  GPTOSS_ASSIGN_OR_RETURN(dev_, model_upload(*model_, stream_, &pool_));
  // KV cache: sliding layers keep a ring large enough for a rewind of `rollback` tokens and for a
  // whole batch of new tokens (so a chunk never overwrites keys its own queries still need).
  const int64_t L = cfg_.num_hidden_layers;
  const int64_t ring = cfg_.sliding_window + std::max(opts_.rollback, opts_.max_batch_tokens);
  kv_.resize(static_cast<size_t>(L));
  size_t kv_bytes = 0;
  for (int64_t l = 0; l < L; ++l) {
    KvLayer& kv = kv_[static_cast<size_t>(l)];
    kv.window = cfg_.is_sliding(l) ? static_cast<int>(cfg_.sliding_window) : 0;
    kv.cap = cfg_.is_sliding(l) ? std::min(opts_.max_context, ring) : opts_.max_context;
    // Rewinds are limited as on the CPU backend (its ring holds window + rollback entries), which
    // this larger ring always satisfies.
    if (cfg_.is_sliding(l) && cfg_.sliding_window + opts_.rollback < opts_.max_context) ring_limits_resume_ = true;
    kv_bytes += static_cast<size_t>(opts_.max_slots) * kv.cap * kv_entry_bytes();
  }
  GPTOSS_ASSIGN_OR_RETURN(kv_mem_, DeviceBuffer::alloc(kv_bytes, "the KV cache"));
  uint8_t* p = kv_mem_.data();
  for (KvLayer& kv : kv_) {
    const size_t half = static_cast<size_t>(opts_.max_slots) * kv.cap * kv_entry_bytes() / 2;  // keys, then values
    kv.k = p;
    kv.v = p + half;
    kv.f16 = kv_f16();
    p += 2 * half;
  }
  // Decode attention: enough key splits of one sequence to fill the device with decode blocks.
  int slots = 0;
  GPTOSS_CUDA_TRY(attention_decode_slots(shape_, kv_f16(), sm_count_, &slots), "sizing the decode attention");
  decode_split_cap_ = std::clamp(slots / (shape_.n_kv_heads * attention_decode_chunks(shape_)), 1, 256);
  return alloc_scratch();
}

Status CudaBackend::alloc_scratch() {
  const int64_t Tm = opts_.max_batch_tokens, H = cfg_.hidden_size, K = cfg_.num_experts_per_tok;
  const int E = static_cast<int>(cfg_.num_local_experts);
  const LayerDev& L0 = dev_->layers.front();
  const bool one_token_items = prefill_item_tokens() == 1;
  size_t qkv = 0, attn = 0, proj = 0, mlp1 = 0, y = 0, tiles = 0;
  for (int T = 1; T <= Tm; ++T) {
    const int P = static_cast<int>(T * K);
    qkv = std::max(qkv, static_cast<size_t>(dense_plan(L0.qkv, T).nparts()) * T * L0.qkv.rows);
    // The most splits a step of T tokens can get: its items hold one token when it decodes (at most
    // max_slots sequences) or when prefill items do (prefill_item_tokens), else one item of all T
    // tokens bounds every split of them (prefill_split_cap).
    int splits = split_cap(1, one_token_items ? 1 : T);
    if (T <= opts_.max_slots) splits = std::max(splits, split_cap(T, 1));
    if (splits > 1) attn = std::max(attn, static_cast<size_t>(splits) * T);
    proj = std::max(proj, static_cast<size_t>(dense_plan(L0.o, T).nparts()) * T * H);
    const GemmPlan g1 = gemm_plan_moe(L0.mlp1.rows, L0.mlp1.kblocks, P, E, sm_count_);
    if (g1.split) mlp1 = std::max(mlp1, static_cast<size_t>(g1.nseg) * P * L0.mlp1.rows);
    const GemmPlan g2 = gemm_plan_moe(L0.mlp2.rows, L0.mlp2.kblocks, P, E, sm_count_);
    y = std::max(y, static_cast<size_t>(g2.nparts()) * P * H);
    tiles = std::max(tiles, static_cast<size_t>(g1.max_tiles));
    if (T <= decode_max_tokens_)
      tiles = std::max(tiles, static_cast<size_t>(moe_max_tiles(P, E, kMoeDecodeTileTokens)));
  }
  Scratch& s = scratch_;
  s.logit_rows = static_cast<int>(std::min<int64_t>(Tm, 256));
  s.attn_rows = attn;
  const size_t P = static_cast<size_t>(Tm * K), V = static_cast<size_t>(cfg_.vocab_size);
  const size_t nl = static_cast<size_t>(cfg_.num_hidden_layers);
  for (int pass = 0; pass < 2; ++pass) {
    Carver c(pass == 0 ? nullptr : s.mem.data());
    s.h = c.take<float>(Tm * H);
    s.x16 = c.take<uint16_t>(Tm * 2 * hp_);  // fp16 pairs: hi row, lo row
    s.x32 = c.take<float>(Tm * H);
    s.qkv = c.take<float>(qkv);
    s.q32 = c.take<float>(Tm * shape_.n_heads * shape_.dp);
    s.attn_o = c.take<float>(attn * shape_.n_heads * shape_.dp);
    s.attn_ml = c.take<float>(attn * shape_.n_heads * 2);
    s.o16 = c.take<uint16_t>(Tm * 2 * qp_);
    s.proj = c.take<float>(proj);
    s.topk_idx = c.take<int32_t>(P);
    s.topk_w = c.take<float>(P);
    s.router_logits = c.take<float>(static_cast<size_t>(Tm) * E);
    s.router_counters = c.take<unsigned int>(Tm);
    s.sorted_token = c.take<int32_t>(P);
    s.sorted_pair = c.take<int32_t>(P);
    s.tiles = c.take<int32_t>(tiles * 4);
    s.n_tiles = c.take<int32_t>(1);
    s.mlp1 = c.take<float>(mlp1);
    s.a16 = c.take<uint16_t>(P * 2 * ip_);
    s.y = c.take<float>(y);
    s.logits = c.take<float>(static_cast<size_t>(s.logit_rows) * V);
    s.argmax = c.take<int32_t>(s.logit_rows);
    s.argmax_keys = c.take<unsigned long long>(s.logit_rows);
    s.sample_parts = c.take<unsigned long long>(sample_part_words(s.logit_rows, kSampleMaxChunks));
    s.meta = c.take<int32_t>(8 * Tm);
    s.stat_counts = c.take<unsigned long long>(nl * E);
    s.stat_tokens = c.take<unsigned long long>(nl);
    s.stat_top1 = c.take<double>(nl);
    s.stat_entropy = c.take<double>(nl);
    if (pass == 0) {
      GPTOSS_ASSIGN_OR_RETURN(s.mem, DeviceBuffer::alloc(c.size(), "activation scratch"));
    }
  }
  GPTOSS_ASSIGN_OR_RETURN(host_meta_, PinnedBuffer::alloc(static_cast<size_t>(8 * Tm) * 4, "step metadata"));
  GPTOSS_ASSIGN_OR_RETURN(host_argmax_, PinnedBuffer::alloc(static_cast<size_t>(Tm) * 4, "argmax results"));
  return Status::ok_status();
}

int64_t CudaBackend::slot_length(int slot) const {
  if (slot < 0 || slot >= opts_.max_slots) return 0;
  return lengths_[static_cast<size_t>(slot)];
}

int64_t CudaBackend::slot_min_resume(int slot) const {
  if (!ring_limits_resume_) return 0;
  return std::max<int64_t>(0, slot_length(slot) - opts_.rollback);
}

void CudaBackend::slot_reset(int slot) {
  if (slot >= 0 && slot < opts_.max_slots) lengths_[static_cast<size_t>(slot)] = 0;
}

MemoryStats CudaBackend::memory_stats() const {
  MemoryStats m;
  m.weight_bytes = dev_ ? dev_->arena.size() : 0;
  m.kv_bytes_reserved = kv_mem_.size();
  for (const KvLayer& kv : kv_)
    for (int64_t len : lengths_) m.kv_bytes_used += static_cast<size_t>(std::min(len, kv.cap)) * kv_entry_bytes();
  m.scratch_bytes = scratch_.mem.size() + cublas_.workspace_bytes();
  size_t free_b = 0, total_b = 0;
  if (cudaSetDevice(opts_.device) == cudaSuccess && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
    m.device_total = total_b;
    m.device_used = total_b - free_b;
  }
  return m;
}

int CudaBackend::prefill_item_tokens() const {
  return std::max(1, attn_warps_ * kAttnRowsPerWarp / attention_heads_per_chunk(shape_));
}

int CudaBackend::split_cap(int items, int tokens) const {
  return tokens == 1 ? decode_split_cap_ : prefill_split_cap(items, tokens);
}

int CudaBackend::prefill_split_cap(int items, int tokens) const {
  return attention_splits(items, shape_.n_kv_heads, attention_head_chunks(shape_),
                          attention_warps(tokens * attention_heads_per_chunk(shape_)), sm_count_);
}

StepPlan CudaBackend::plan_step(std::span<const SeqBatch> batch, const StepOutputs& out) {
  StepPlan p;
  for (const SeqBatch& s : batch) p.T += static_cast<int>(s.tokens.size());
  p.decode_only = p.T == static_cast<int>(batch.size());
  p.stats = out.router_stats != nullptr;
  const int tpi = p.decode_only ? 1 : prefill_item_tokens();
  int32_t* m = reinterpret_cast<int32_t*>(host_meta_.data());
  int32_t *tokens = m, *pos = m + p.T, *slot = m + 2 * p.T, *out_rows = m + 3 * p.T;
  AttnItem* items = reinterpret_cast<AttnItem*>(m + 4 * p.T);
  int row = 0;
  for (const SeqBatch& s : batch) {
    const int n = static_cast<int>(s.tokens.size());
    for (int i = 0; i < n; i += tpi) {
      const int count = std::min(tpi, n - i);
      items[p.items++] = AttnItem{row + i, count, s.slot, 0};
      p.tokens_per_item = std::max(p.tokens_per_item, count);
    }
    for (int i = 0; i < n; ++i, ++row) {
      tokens[row] = s.tokens[static_cast<size_t>(i)];
      pos[row] = static_cast<int32_t>(s.pos + i);
      slot[row] = s.slot;
      if (s.all_logits || i + 1 == n) out_rows[p.R++] = row;
    }
  }
  double max_full = 0, max_sliding = 0;
  for (int i = 0; i < p.items; ++i) {
    const double hi = pos[items[i].first] + items[i].count;  // keys [0, hi) for its last token
    const double sl = std::min<double>(hi, static_cast<double>(cfg_.sliding_window + items[i].count - 1));
    p.kv_keys_full += hi, p.kv_keys_sliding += sl;
    max_full = std::max(max_full, hi), max_sliding = std::max(max_sliding, sl);
  }
  // Enough splits to fill the device, but none with fewer than ~256 keys; powers of two keep the
  // number of distinct decode graphs small. The decode kernel's cap depends on the device only, so a
  // sequence's splits (and its result) do not depend on the other sequences of the step.
  const int cap = split_cap(p.items, p.tokens_per_item);
  p.splits_full = attention_item_splits(static_cast<int>(max_full), cap);
  p.splits_sliding = attention_item_splits(static_cast<int>(max_sliding), cap);
  // (Steps whose o product runs through cuBLAS prefetch nothing, so their graph key does not depend on
  // the KV size either.)
  const double key_bytes = static_cast<double>(kv_entry_bytes());
  const bool prefetch = o_prefetch_bytes_ > 0 && !dense_plan(dev_->layers.front().o, p.T).cublas;
  p.prefetch_o_full = prefetch && p.kv_keys_full * key_bytes <= static_cast<double>(kv_prefetch_limit_);
  p.prefetch_o_sliding = prefetch && p.kv_keys_sliding * key_bytes <= static_cast<double>(kv_prefetch_limit_);
  return p;
}

Status CudaBackend::upload_samples(const StepOutputs& out) {
  const size_t n = out.sample.size();
  if (n == 0) return Status::ok_status();
  size_t n_edits = 0;
  for (const SampleRow& r : out.sample) n_edits += r.edits.size();
  Carver layout(nullptr);  // rows, edits, sampled ids: the offsets enqueue_outputs and forward read
  layout.take<SampleRowDev>(n);
  sample_edits_off_ = layout.size();
  layout.take<PenaltyEdit>(n_edits);
  sample_out_off_ = layout.size();
  layout.take<int32_t>(n);
  const size_t bytes = layout.size();
  if (bytes > host_sample_.size()) {
    // Grown while the stream is idle (the previous step synchronised), with room for later steps.
    const size_t cap = std::max(bytes, 2 * host_sample_.size());
    GPTOSS_ASSIGN_OR_RETURN(PinnedBuffer host, PinnedBuffer::alloc(cap, "sampling requests"));
    GPTOSS_ASSIGN_OR_RETURN(DeviceBuffer dev, DeviceBuffer::alloc(cap, "sampling requests"));
    host_sample_ = std::move(host);
    dev_sample_ = std::move(dev);
  }
  auto* rows = reinterpret_cast<SampleRowDev*>(host_sample_.data());
  auto* edits = reinterpret_cast<PenaltyEdit*>(host_sample_.data() + sample_edits_off_);
  int32_t edit_at = 0;
  for (size_t i = 0; i < n; ++i) {
    const SampleRow& r = out.sample[i];
    // enqueue_outputs computes the logits logit_rows rows at a time
    rows[i] = sample_row_dev(r, r.row % scratch_.logit_rows, edit_at);
    std::copy(r.edits.begin(), r.edits.end(), edits + edit_at);
    edit_at += rows[i].edit_count;
  }
  GPTOSS_CUDA_TRY(
      cudaMemcpyAsync(dev_sample_.data(), host_sample_.data(), sample_out_off_, cudaMemcpyHostToDevice, stream_),
      "uploading sampling requests");
  return Status::ok_status();
}

Status CudaBackend::run_layers(const StepPlan& p) {
  if (!p.decode_only || p.stats || prof_.on()) return enqueue_layers(p);
  const auto key = std::make_tuple(p.T, p.splits_full, p.splits_sliding, p.prefetch_o_full, p.prefetch_o_sliding);
  auto it = graphs_.find(key);
  if (it == graphs_.end()) {
    // The first step of a configuration runs eagerly; the second captures it for every later one.
    if (seen_decode_.insert(key).second) return enqueue_layers(p);
    cudaGraph_t graph = nullptr;
    GPTOSS_CUDA_TRY(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "capturing a decode graph");
    const Status st = enqueue_layers(p);
    const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
    if (!st.ok()) {
      if (graph) cudaGraphDestroy(graph);
      return st;
    }
    GPTOSS_CUDA_TRY(end, "capturing a decode graph");
    cudaGraphExec_t exec = nullptr;
    const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    GPTOSS_CUDA_TRY(inst, "instantiating a decode graph");
    it = graphs_.emplace(key, exec).first;
  }
  GPTOSS_CUDA_TRY(cudaGraphLaunch(it->second, stream_), "launching a decode graph");
  return Status::ok_status();
}

Status CudaBackend::forward(std::span<const SeqBatch> batch, const StepOutputs& out) {
  GPTOSS_RETURN_IF_ERROR(backend_validate_batch(*this, cfg_.vocab_size, batch, out));
  GPTOSS_CUDA_TRY(cudaSetDevice(opts_.device), "selecting the CUDA device");
  const StepPlan p = plan_step(batch, out);
  // alloc_scratch's bound on the split partials, checked where a wrong bound would write past them.
  const int splits = std::max(p.splits_full, p.splits_sliding);
  if (splits > 1 && static_cast<size_t>(splits) * p.T > scratch_.attn_rows)
    return make_error(ErrorCode::kInternal,
                      "attention split partials: {} splits x {} tokens exceed the {} rows allocated", splits, p.T,
                      scratch_.attn_rows);
  GPTOSS_CUDA_TRY(cudaMemcpyAsync(scratch_.meta, host_meta_.data(), static_cast<size_t>(8) * p.T * 4,
                                  cudaMemcpyHostToDevice, stream_),
                  "uploading step metadata");
  const size_t nl = static_cast<size_t>(cfg_.num_hidden_layers), ne = static_cast<size_t>(cfg_.num_local_experts);
  if (p.stats) {
    // The four statistics arrays are adjacent in the scratch allocation.
    const size_t bytes =
        reinterpret_cast<uint8_t*>(scratch_.stat_entropy + nl) - reinterpret_cast<uint8_t*>(scratch_.stat_counts);
    GPTOSS_CUDA_TRY(cudaMemsetAsync(scratch_.stat_counts, 0, bytes, stream_), "clearing router statistics");
  }
  GPTOSS_RETURN_IF_ERROR(upload_samples(out));
  GPTOSS_RETURN_IF_ERROR(run_layers(p));
  GPTOSS_RETURN_IF_ERROR(enqueue_outputs(p, out));
  RouterStats rs;
  if (p.stats) {
    rs.reset(cfg_.num_hidden_layers, cfg_.num_local_experts, cfg_.num_experts_per_tok);
    GPTOSS_CUDA_TRY(
        cudaMemcpyAsync(rs.counts.data(), scratch_.stat_counts, nl * ne * 8, cudaMemcpyDeviceToHost, stream_),
        "router statistics");
    GPTOSS_CUDA_TRY(cudaMemcpyAsync(rs.tokens.data(), scratch_.stat_tokens, nl * 8, cudaMemcpyDeviceToHost, stream_),
                    "router statistics");
    GPTOSS_CUDA_TRY(
        cudaMemcpyAsync(rs.top1_weight_sum.data(), scratch_.stat_top1, nl * 8, cudaMemcpyDeviceToHost, stream_),
        "router statistics");
    GPTOSS_CUDA_TRY(
        cudaMemcpyAsync(rs.entropy_sum.data(), scratch_.stat_entropy, nl * 8, cudaMemcpyDeviceToHost, stream_),
        "router statistics");
  }
  GPTOSS_CUDA_TRY(cudaStreamSynchronize(stream_), "running a forward step");
  prof_.collect(p.decode_only ? "decode (eager)" : "prefill");
  if (out.argmax) std::memcpy(out.argmax, host_argmax_.data(), static_cast<size_t>(p.R) * 4);
  if (!out.sample.empty())
    std::memcpy(out.sampled, host_sample_.data() + sample_out_off_, out.sample.size() * sizeof(int32_t));
  if (p.stats) out.router_stats->merge(rs);
  for (const SeqBatch& s : batch) lengths_[static_cast<size_t>(s.slot)] = s.pos + static_cast<int64_t>(s.tokens.size());
  return Status::ok_status();
}

}  // namespace gptoss::cuda

namespace gptoss {

Result<std::unique_ptr<Backend>> cuda_backend_create(std::shared_ptr<const Model> model, const BackendOptions& opts) {
  if (!model) return make_error(ErrorCode::kInvalidArgument, "cuda backend: no model");
  const Config& c = model->config();
  if (opts.max_slots < 1)
    return make_error(ErrorCode::kInvalidArgument, "cuda backend: max_slots {} must be >= 1", opts.max_slots);
  if (opts.max_context < 1 || opts.max_context > c.max_position_embeddings)
    return make_error(ErrorCode::kInvalidArgument, "cuda backend: max_context {} must be in [1, {}]", opts.max_context,
                      c.max_position_embeddings);
  if (opts.rollback < 0)
    return make_error(ErrorCode::kInvalidArgument, "cuda backend: rollback {} must be >= 0", opts.rollback);
  if (opts.max_batch_tokens < 1)
    return make_error(ErrorCode::kInvalidArgument, "cuda backend: max_batch_tokens {} must be >= 1",
                      opts.max_batch_tokens);
  if (opts.threads < 0)
    return make_error(ErrorCode::kInvalidArgument, "cuda backend: threads {} must be >= 0", opts.threads);
  if (c.head_dim % 2 != 0 || c.head_dim > 128)
    return make_error(ErrorCode::kUnavailable, "cuda backend: head_dim {} is not supported (even and <= 128 only)",
                      c.head_dim);
  if (c.num_local_experts > 256 || c.num_experts_per_tok > 8)
    return make_error(ErrorCode::kUnavailable,
                      "cuda backend: {} experts with top-{} is not supported (<= 256, top-k <= 8)", c.num_local_experts,
                      c.num_experts_per_tok);
  if (c.hidden_size * 4 > 40 * 1024)
    return make_error(ErrorCode::kUnavailable, "cuda backend: hidden_size {} is not supported (<= 10240)",
                      c.hidden_size);

  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    cudaGetLastError();
    return make_error(ErrorCode::kUnavailable, "no usable CUDA device ({})",
                      e != cudaSuccess ? cudaGetErrorString(e) : "no device found");
  }
  if (opts.device < 0 || opts.device >= count)
    return make_error(ErrorCode::kUnavailable, "CUDA device {} does not exist ({} device(s) present)", opts.device,
                      count);
  cudaDeviceProp prop{};
  GPTOSS_CUDA_TRY(cudaGetDeviceProperties(&prop, opts.device), "reading CUDA device properties");
  // The kernels use cp.async and m16n8k16 mma.sync: Ampere (compute capability 8.0) or later.
  if (prop.major < 8)
    return make_error(ErrorCode::kUnavailable, "GPU '{}' (sm_{}{}) is not supported: compute capability 8.0 or later",
                      prop.name, prop.major, prop.minor);
  GPTOSS_CUDA_TRY(cudaSetDevice(opts.device), "selecting the CUDA device");
  cuda::Launch target;
  if (cuda::launch_target(nullptr, &target) != cudaSuccess) {
    cudaGetLastError();
    return make_error(ErrorCode::kUnavailable, "GPU '{}' (sm_{}{}) is not supported by this build's CUDA kernels",
                      prop.name, prop.major, prop.minor);
  }
  const int dp = cuda::head_dim_padded(static_cast<int>(c.head_dim));
  const size_t attn_smem = cuda::attention_smem_bytes(dp, opts.kv_cache == KvCacheType::kF16, 1);
  if (attn_smem > static_cast<size_t>(target.smem_optin))
    return make_error(ErrorCode::kUnavailable,
                      "cuda backend: head_dim {} needs {} bytes of shared memory per block, GPU '{}' allows {}",
                      c.head_dim, attn_smem, prop.name, target.smem_optin);
  BackendOptions o = opts;
  o.kind = "cuda";
  auto backend = std::make_unique<cuda::CudaBackend>(std::move(model), o, prop.multiProcessorCount, prop.name, target);
  GPTOSS_RETURN_IF_ERROR(backend->init());
  log_info("cuda backend: {} ({} SMs, sm_{}{}), weights {:.2f} GiB", prop.name, prop.multiProcessorCount, prop.major,
           prop.minor, static_cast<double>(backend->memory_stats().weight_bytes) / (1 << 30));
  return std::unique_ptr<Backend>(std::move(backend));
}

Result<double> cuda_device_bandwidth(int device) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || device < 0 || device >= count) {
    cudaGetLastError();
    return make_error(ErrorCode::kUnavailable, "no CUDA device {}", device);
  }
  GPTOSS_CUDA_TRY(cudaSetDevice(device), "selecting the CUDA device");
  const size_t bytes = size_t{1} << 30;
  GPTOSS_ASSIGN_OR_RETURN(cuda::DeviceBuffer a, cuda::DeviceBuffer::alloc(bytes, "the bandwidth probe"));
  GPTOSS_ASSIGN_OR_RETURN(cuda::DeviceBuffer b, cuda::DeviceBuffer::alloc(bytes, "the bandwidth probe"));
  cudaEvent_t start = nullptr, stop = nullptr;
  GPTOSS_CUDA_TRY(cudaEventCreate(&start), "bandwidth probe");
  GPTOSS_CUDA_TRY(cudaEventCreate(&stop), "bandwidth probe");
  float best_ms = 0;
  Status st;
  for (int i = 0; i < 5 && st.ok(); ++i) {
    float ms = 0;
    if (cudaEventRecord(start) != cudaSuccess ||
        cudaMemcpy(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice) != cudaSuccess ||
        cudaEventRecord(stop) != cudaSuccess || cudaEventSynchronize(stop) != cudaSuccess ||
        cudaEventElapsedTime(&ms, start, stop) != cudaSuccess)
      st = cuda::cuda_error(cudaGetLastError(), "bandwidth probe");
    if (i > 0 && (best_ms == 0 || ms < best_ms)) best_ms = ms;  // the first run warms up
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (!st.ok()) return st;
  return 2.0 * static_cast<double>(bytes) / (static_cast<double>(best_ms) * 1e-3);
}

}  // namespace gptoss
