// `gptoss bench`: prefill and decode throughput of a backend on a checkpoint or on random weights of
// a preset's shapes (median/min/max over repeats), TTFT, ms per decode step, memory, and the
// memory-bandwidth bound (weights + KV bytes per token over a measured bandwidth) with the fraction
// reached. Decode feeds back the greedy token, or with --temperature a sampled one (on the backend,
// or with --host-sampling from logits rows copied to the host). Text or one JSON object.
#include <sys/resource.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "cli/command.h"
#include "cli/common.h"
#include "core/log.h"
#include "engine/sampler.h"
#include "model/config.h"
#include "model/weights.h"
#ifdef GPTOSS_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace gptoss::cli {
namespace {

constexpr const char* kName = "bench";

struct BenchFlags {
  std::string model_dir, random, backend = "auto";
  int64_t prompt = 512, gen = 128, depth = 0;
  int batch = 1, repeat = 3, threads = 0, device = 0;
  KvCacheType kv_cache = KvCacheType::kF32;
  uint64_t seed = 1;
  double bandwidth_gbs = 0;  // 0: measure
  bool json = false;
  SamplingParams sampling{.temperature = 0.0f};  // decode: greedy unless --temperature > 0
  bool host_sampling = false;
};

struct Stat {
  double median = 0, min = 0, max = 0;
};

Stat summarize(std::vector<double> v) {
  Stat s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.min = v.front(), s.max = v.back();
  s.median = v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  return s;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Deterministic token ids below `vocab` (ordinary text-token range when the vocabulary has one).
std::vector<int32_t> bench_tokens(size_t n, int64_t vocab, uint64_t seed) {
  const int64_t range = vocab > 200000 ? 199998 : vocab;
  std::vector<int32_t> t(n);
  uint64_t s = seed * 0x9e3779b97f4a7c15ULL + 12345;
  for (int32_t& x : t) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    x = static_cast<int32_t>(s % static_cast<uint64_t>(range));
  }
  return t;
}

struct RunResult {
  double depth_s = 0, prefill_s = 0, decode_s = 0;
  std::vector<double> step_ms;
};

// Feeds every sequence's tokens from its current position, packing sequences into forward() calls
// of at most `max_tokens`; returns each sequence's last argmax.
Status feed_all(Backend& b, const std::vector<std::vector<int32_t>>& seqs, std::vector<int64_t>& pos,
                int64_t max_tokens, std::vector<int32_t>& last) {
  std::vector<size_t> done(seqs.size(), 0);
  std::vector<int32_t> argmax(seqs.size());
  for (;;) {
    std::vector<SeqBatch> batch;
    std::vector<size_t> which;
    int64_t budget = max_tokens;
    for (size_t s = 0; s < seqs.size() && budget > 0; ++s) {
      const size_t left = seqs[s].size() - done[s];
      if (left == 0) continue;
      const size_t n = std::min<size_t>(left, static_cast<size_t>(budget));
      SeqBatch sb;
      sb.slot = static_cast<int>(s);
      sb.pos = pos[s];
      sb.tokens = std::span<const int32_t>(seqs[s].data() + done[s], n);
      batch.push_back(sb);
      which.push_back(s);
      budget -= static_cast<int64_t>(n);
    }
    if (batch.empty()) return Status::ok_status();
    StepOutputs out;
    out.argmax = argmax.data();
    GPTOSS_RETURN_IF_ERROR(b.forward(batch, out));
    for (size_t i = 0; i < which.size(); ++i) {
      const size_t s = which[i];
      done[s] += batch[i].tokens.size();
      pos[s] += static_cast<int64_t>(batch[i].tokens.size());
      if (done[s] == seqs[s].size()) last[s] = argmax[i];
    }
  }
}

Result<RunResult> run_once(Backend& b, const BenchFlags& f, int64_t vocab, int64_t gen, uint64_t seed) {
  RunResult r;
  const size_t S = static_cast<size_t>(f.batch);
  for (int s = 0; s < f.batch; ++s) b.slot_reset(s);
  std::vector<int64_t> pos(S, 0);
  std::vector<int32_t> next(S, 0);
  const int64_t max_tokens = b.options().max_batch_tokens;
  if (f.depth > 0) {
    std::vector<std::vector<int32_t>> fill;
    for (size_t s = 0; s < S; ++s) fill.push_back(bench_tokens(static_cast<size_t>(f.depth), vocab, seed * 977 + s));
    const double t0 = now_s();
    GPTOSS_RETURN_IF_ERROR(feed_all(b, fill, pos, max_tokens, next));
    r.depth_s = now_s() - t0;
  }
  if (f.prompt > 0) {
    std::vector<std::vector<int32_t>> prompts;
    for (size_t s = 0; s < S; ++s)
      prompts.push_back(bench_tokens(static_cast<size_t>(f.prompt), vocab, seed * 131 + s));
    const double t0 = now_s();
    GPTOSS_RETURN_IF_ERROR(feed_all(b, prompts, pos, max_tokens, next));
    r.prefill_s = now_s() - t0;
  }
  std::vector<SeqBatch> batch(S);
  std::vector<int32_t> fed(S), argmax(S), sampled(S);
  // Sampled decode: one Sampler per sequence (no penalties: nothing to edit), rows sampled by the
  // backend, or on the host from the copied logits (the reference path) with --host-sampling.
  const bool sampling = !f.sampling.greedy();
  std::vector<Sampler> samplers;
  std::vector<SampleRow> rows;
  std::vector<float> logits(sampling && f.host_sampling ? S * static_cast<size_t>(vocab) : 0);
  for (size_t s = 0; s < S && sampling; ++s) {
    SamplingParams sp = f.sampling;
    sp.seed = seed * 7919 + s;
    samplers.emplace_back(sp);
  }
  StepOutputs out;
  if (!sampling) out.argmax = argmax.data();  // sampled decode feeds the sampled ids
  if (sampling && f.host_sampling) out.logits = logits.data();
  const double t0 = now_s();
  for (int64_t step = 0; step < gen; ++step) {
    for (size_t s = 0; s < S; ++s) {
      fed[s] = next[s];
      batch[s].slot = static_cast<int>(s);
      batch[s].pos = pos[s];
      batch[s].tokens = std::span<const int32_t>(&fed[s], 1);
    }
    if (sampling && !f.host_sampling) {
      rows.clear();
      for (size_t s = 0; s < S; ++s) {
        rows.push_back(samplers[s].prepare(vocab, {}, 0));
        rows.back().row = static_cast<int32_t>(s);
      }
      out.sample = rows;
      out.sampled = sampled.data();
    }
    const double ts = now_s();
    GPTOSS_RETURN_IF_ERROR(b.forward(batch, out));
    r.step_ms.push_back((now_s() - ts) * 1e3);
    for (size_t s = 0; s < S; ++s) {
      if (!sampling)
        next[s] = argmax[s];
      else if (f.host_sampling)
        next[s] = samplers[s].sample(logits.data() + s * static_cast<size_t>(vocab), vocab, {});
      else
        next[s] = sampled[s];
      ++pos[s];
    }
  }
  r.decode_s = now_s() - t0;
  return r;
}

// Host memcpy bandwidth (one thread, read + write), for the CPU backend's bound.
double host_bandwidth() {
  const size_t bytes = size_t{256} << 20;
  std::vector<char> a(bytes, 1), b(bytes, 2);
  double best = 1e30;
  for (int i = 0; i < 4; ++i) {
    const double t0 = now_s();
    std::memcpy(b.data(), a.data(), bytes);
    best = std::min(best, now_s() - t0);
  }
  return 2.0 * static_cast<double>(bytes) / best;
}

Result<std::shared_ptr<const Model>> load_model(const BenchFlags& f) {
  if (!f.model_dir.empty()) return Model::load(f.model_dir);
  GPTOSS_ASSIGN_OR_RETURN(Config cfg, config_preset(f.random));
  return Model::random(cfg, f.seed);
}

nlohmann::json stat_json(const Stat& s) {
  return {{"median", s.median}, {"min", s.min}, {"max", s.max}};
}

// Parses the flags into f. Returns -1 to go on, else the exit code (help shown or a bad flag).
int parse_bench_flags(int argc, char** argv, BenchFlags& f) {
  CLI::App app{"Measure prefill and decode throughput against the memory-bandwidth bound.", "gptoss bench"};
  auto* model_opt = app.add_option("--model", f.model_dir, "checkpoint folder");
  auto* random_opt =
      app.add_option("--random", f.random, "random weights with a preset's shapes (20b, 120b, demo, tiny)");
  model_opt->excludes(random_opt);
  app.add_option("--backend", f.backend, "cpu, cuda or auto (default)")->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  app.add_option("--prompt-tokens", f.prompt, "prompt tokens per sequence (prefill), default 512")
      ->check(non_negative_number());
  app.add_option("--gen-tokens", f.gen, "decoded tokens per sequence, default 128")->check(non_negative_number());
  app.add_option("--depth", f.depth, "tokens of context filled before the prompt, default 0")
      ->check(non_negative_number());
  app.add_option("--batch", f.batch, "concurrent sequences, default 1")->check(positive_number());
  app.add_option("--repeat", f.repeat, "measured repeats after one warm-up, default 3")->check(positive_number());
  app.add_option("--threads", f.threads, "CPU threads (0 = all cores)")->check(non_negative_number());
  app.add_option("--device", f.device, "CUDA device ordinal")->check(non_negative_number());
  add_kv_cache_option(app, f.kv_cache);
  app.add_option("--seed", f.seed, "seed of the random weights, the tokens and the samplers");
  app.add_option("--bandwidth", f.bandwidth_gbs, "memory bandwidth in GB/s for the bound (default: measured)")
      ->check(positive_number());
  app.add_option("--temperature", f.sampling.temperature,
                 "decode with sampled tokens at this temperature (default 0: the greedy token)");
  app.add_option("--top-p", f.sampling.top_p, "nucleus sampling mass, in (0, 1] (default 1)");
  app.add_option("--top-k", f.sampling.top_k, "keep the k most likely tokens (default 0: off)");
  app.add_option("--min-p", f.sampling.min_p, "drop tokens below min_p x the top probability (default 0)");
  app.add_flag("--host-sampling", f.host_sampling,
               "sample on the host from logits rows copied back each step instead of on the backend");
  app.add_flag("--json", f.json, "print one JSON object");
  if (auto rc = parse_flags(app, argc, argv, kName)) return *rc;
  if (f.model_dir.empty() == f.random.empty())
    return report_error(kName,
                        Status(ErrorCode::kInvalidArgument, "give exactly one of --model DIR or --random PRESET"));
  if (Status st = f.sampling.validate(); !st.ok()) return report_error(kName, st);
  if (f.prompt + f.depth == 0)
    return report_error(
        kName, Status(ErrorCode::kInvalidArgument, "--prompt-tokens and --depth are both 0: nothing to decode from"));
  return -1;
}

struct Measured {
  Stat prefill, decode, ttft, step;
};

// One warm-up run (kernel loading, decode-graph capture), then the measured repeats.
Result<Measured> measure(Backend& b, const BenchFlags& f, int64_t vocab) {
  std::vector<double> prefill, decode, ttft, step;
  for (int r = 0; r <= f.repeat; ++r) {
    GPTOSS_ASSIGN_OR_RETURN(RunResult run, run_once(b, f, vocab, r == 0 ? std::min<int64_t>(f.gen, 4) : f.gen,
                                                    f.seed + static_cast<uint64_t>(r)));
    if (r == 0) continue;
    if (f.prompt > 0)
      prefill.push_back(static_cast<double>(f.prompt * f.batch) / run.prefill_s), ttft.push_back(run.prefill_s * 1e3);
    if (f.gen > 0) decode.push_back(static_cast<double>(f.gen * f.batch) / run.decode_s);
    step.insert(step.end(), run.step_ms.begin(), run.step_ms.end());
  }
  return Measured{summarize(prefill), summarize(decode), summarize(ttft), summarize(step)};
}

struct Bound {
  double kv_bytes = 0;           // KV cache bytes read per sequence per step
  double weight_bytes = 0;       // weight bytes read per decode step (all sequences together)
  double bytes_per_token = 0;    // (weight_bytes + batch × kv_bytes) / batch
  double experts_per_layer = 0;  // expected distinct experts read per layer per step
  double bandwidth = 0, tok_s = 0;
  std::string bandwidth_source;
};

// Memory-bandwidth bound of a decode step: the weights it must read plus each sequence's KV cache
// at the mean decode context, over --bandwidth or a measured bandwidth. At batch B the dense weights
// and the lm_head are read once per step and each layer reads the distinct experts its B tokens
// chose: E·(1 − (1 − k/E)^B) of them when routing is uniform (true of random weights; real routing
// is less even, so it reads fewer and the bound is conservative for it). At B = 1 this is spec §8.2.
Result<Bound> bandwidth_bound(const Model& model, const BenchFlags& f, bool on_gpu) {
  const Config& cfg = model.config();
  const Model::ParamCounts pc = model.param_counts();
  Bound bd;
  const int64_t mid_ctx = f.depth + f.prompt + f.gen / 2;
  int64_t kv_entries = 0;
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l)
    kv_entries += cfg.is_sliding(l) ? std::min(mid_ctx, cfg.sliding_window) : mid_ctx;
  // K and V are f32, or fp16 in a CUDA f16 cache (the CPU backend stores the rounded values as f32).
  const double elem = on_gpu && f.kv_cache == KvCacheType::kF16 ? 2.0 : 4.0;
  bd.kv_bytes = static_cast<double>(kv_entries) * static_cast<double>(cfg.kv_dim()) * 2 * elem;
  const double E = static_cast<double>(cfg.num_local_experts), k = static_cast<double>(cfg.num_experts_per_tok);
  const double per_expert = static_cast<double>(pc.expert_bytes) / (E * static_cast<double>(cfg.num_hidden_layers));
  const double layers = static_cast<double>(cfg.num_hidden_layers);
  bd.experts_per_layer = E * (1.0 - std::pow(1.0 - k / E, f.batch));
  bd.weight_bytes = static_cast<double>(pc.bytes_per_token) + (bd.experts_per_layer - k) * per_expert * layers;
  bd.bandwidth = f.bandwidth_gbs * 1e9;
  bd.bandwidth_source = "--bandwidth flag";
  if (bd.bandwidth == 0) {
#ifdef GPTOSS_HAVE_CUDA
    if (on_gpu) {
      GPTOSS_ASSIGN_OR_RETURN(bd.bandwidth, cuda_device_bandwidth(f.device));
      bd.bandwidth_source = "measured: 1 GiB device-to-device copy, read+write";
    }
#endif
    if (bd.bandwidth == 0)
      bd.bandwidth = host_bandwidth(), bd.bandwidth_source = "measured: host memcpy, one thread, read+write";
  }
  const double step_bytes = bd.weight_bytes + f.batch * bd.kv_bytes;
  bd.bytes_per_token = step_bytes / f.batch;
  bd.tok_s = f.batch * bd.bandwidth / step_bytes;
  return bd;
}

void print_text(const Model& model, const Backend& b, const BenchFlags& f, const Measured& m, const Bound& bd,
                const nlohmann::json& j) {
  std::printf("model      %s on %s\n", model.source().c_str(), b.name().c_str());
  std::printf("shape      depth %lld, prompt %lld, gen %lld, batch %d, %d repeats (median [min, max])\n",
              static_cast<long long>(f.depth), static_cast<long long>(f.prompt), static_cast<long long>(f.gen), f.batch,
              f.repeat);
  if (!f.sampling.greedy())
    std::printf("sampling   temperature %g, top_p %g, top_k %d, min_p %g, on the %s\n", f.sampling.temperature,
                f.sampling.top_p, f.sampling.top_k, f.sampling.min_p, f.host_sampling ? "host" : "backend");
  if (f.prompt > 0) {
    std::printf("prefill    %.1f tok/s [%.1f, %.1f]\n", m.prefill.median, m.prefill.min, m.prefill.max);
    std::printf("TTFT       %.2f ms [%.2f, %.2f]\n", m.ttft.median, m.ttft.min, m.ttft.max);
  }
  if (f.gen > 0) {
    std::printf("decode     %.1f tok/s [%.1f, %.1f] (all sequences)\n", m.decode.median, m.decode.min, m.decode.max);
    std::printf("step       %.3f ms [%.3f, %.3f]\n", m.step.median, m.step.min, m.step.max);
  }
  std::printf(
      "bound      %.1f tok/s decode at batch %d = %.2f GB/s / %.4f GB per token (step: weights %.4f GB with %.1f "
      "experts/layer + KV %.4f GB per sequence)\n",
      bd.tok_s, f.batch, bd.bandwidth / 1e9, bd.bytes_per_token / 1e9, bd.weight_bytes / 1e9, bd.experts_per_layer,
      bd.kv_bytes / 1e9);
  std::printf("bandwidth  %s\n", bd.bandwidth_source.c_str());
  if (f.gen > 0) std::printf("fraction   %.1f%% of the bound\n", 100.0 * j["fraction_of_bound"].get<double>());
  const double gib = 1 << 30;
  std::printf("memory     peak RSS %.2f GiB, device %.2f / %.2f GiB (weights %.2f, KV %.2f, %s)\n",
              j["peak_rss_bytes"].get<double>() / gib, j["device_memory_used_bytes"].get<double>() / gib,
              j["device_memory_total_bytes"].get<double>() / gib, j["weight_bytes"].get<double>() / gib,
              j["kv_bytes_reserved"].get<double>() / gib, kv_cache_name(f.kv_cache));
}

int bench_main(int argc, char** argv) {
  BenchFlags f;
  if (const int rc = parse_bench_flags(argc, argv, f); rc >= 0) return rc;
  auto model = load_model(f);
  if (!model.ok()) return report_error(kName, model.status());
  const Config& cfg = (*model)->config();
  const int64_t context = f.depth + f.prompt + f.gen;
  if (context > cfg.max_position_embeddings)
    return report_error(
        kName, make_error(ErrorCode::kOutOfRange, "depth + prompt + gen = {} exceeds max_position_embeddings {}",
                          context, cfg.max_position_embeddings));
  BackendOptions opts;
  opts.kind = f.backend;
  opts.threads = f.threads;
  opts.device = f.device;
  opts.max_slots = f.batch;
  opts.max_context = context;
  opts.kv_cache = f.kv_cache;
  opts.rollback = 0;
  opts.max_batch_tokens = std::clamp<int64_t>(std::max(f.prompt, f.depth) * f.batch, 1, 2048);
  auto backend = backend_create(*model, opts);
  if (!backend.ok()) return report_error(kName, backend.status());
  Backend& b = **backend;
  auto m = measure(b, f, cfg.vocab_size);
  if (!m.ok()) return report_error(kName, m.status());
  auto bd = bandwidth_bound(**model, f, b.name().rfind("cuda", 0) == 0);
  if (!bd.ok()) return report_error(kName, bd.status());
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  const MemoryStats mem = b.memory_stats();
  const nlohmann::json j = {
      {"model", (*model)->source()},
      {"preset", f.random},
      {"backend", b.name()},
      {"prompt_tokens", f.prompt},
      {"gen_tokens", f.gen},
      {"depth", f.depth},
      {"batch", f.batch},
      {"sampling",
       {{"temperature", f.sampling.temperature},
        {"top_p", f.sampling.top_p},
        {"top_k", f.sampling.top_k},
        {"min_p", f.sampling.min_p},
        {"where", f.sampling.greedy() ? "greedy"
                  : f.host_sampling   ? "host"
                                      : "backend"}}},
      {"repeat", f.repeat},
      {"kv_cache", kv_cache_name(f.kv_cache)},
      {"prefill_tok_s", stat_json(m->prefill)},
      {"decode_tok_s", stat_json(m->decode)},
      {"ttft_ms", stat_json(m->ttft)},
      {"ms_per_step", stat_json(m->step)},
      {"peak_rss_bytes", static_cast<int64_t>(ru.ru_maxrss) * 1024},
      {"weight_bytes", mem.weight_bytes},
      {"kv_bytes_reserved", mem.kv_bytes_reserved},
      {"device_memory_used_bytes", mem.device_used},
      {"device_memory_total_bytes", mem.device_total},
      {"bytes_per_token_weights", (*model)->param_counts().bytes_per_token},
      {"bytes_per_token_kv", bd->kv_bytes},
      {"bytes_per_step_weights", bd->weight_bytes},
      {"experts_read_per_layer", bd->experts_per_layer},
      {"bandwidth_bytes_per_s", bd->bandwidth},
      {"bandwidth_source", bd->bandwidth_source},
      {"bound_tok_s", bd->tok_s},
      {"fraction_of_bound", f.gen > 0 ? nlohmann::json(m->decode.median / bd->tok_s) : nlohmann::json()}};
  if (f.json) {
    std::printf("%s\n", j.dump().c_str());
  } else {
    print_text(**model, b, f, *m, *bd, j);
  }
  return 0;
}

}  // namespace

GPTOSS_COMMAND("bench", "measure prefill/decode throughput against the memory-bandwidth bound", bench_main);

}  // namespace gptoss::cli
