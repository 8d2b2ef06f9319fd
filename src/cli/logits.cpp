// `gptoss logits`: one causal pass over given token ids, all positions' logits written as a float32
// .npy [n_tokens, vocab] (for comparing against Hugging Face goldens).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "cli/command.h"
#include "cli/common.h"
#include "core/log.h"
#include "core/npy.h"
#include "model/weights.h"

namespace gptoss::cli {
namespace {

constexpr const char* kName = "logits";
// Tokens per forward() call: bounds the scratch memory; chunked prefill gives the same logits.
constexpr int64_t kChunkTokens = 1024;

// Parses "1, 2,3" into ids. Every item must be a non-negative decimal integer.
Result<std::vector<int32_t>> parse_token_list(const std::string& text) {
  std::vector<int32_t> ids;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    std::string item = text.substr(start, end - start);
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    if (item.empty()) {
      if (text.find_first_not_of(" \t,") == std::string::npos)
        return make_error(ErrorCode::kInvalidArgument, "--tokens: empty token list");
      return make_error(ErrorCode::kInvalidArgument, "--tokens: empty item in '{}'", text);
    }
    int64_t v = -1;
    auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (ec == std::errc::result_out_of_range || (ec == std::errc() && v > INT32_MAX))
      return make_error(ErrorCode::kOutOfRange, "--tokens: token id {} is too large", item);
    if (ec != std::errc() || ptr != item.data() + item.size() || v < 0)
      return make_error(ErrorCode::kInvalidArgument,
                        "--tokens: '{}' is not a token id (expected comma-separated non-negative integers)", item);
    ids.push_back(static_cast<int32_t>(v));
    start = end + 1;
  }
  return ids;
}

// Runs the pass in chunks and returns [n, vocab] logits.
Result<std::vector<float>> compute_logits(std::shared_ptr<const Model> model, const std::vector<int32_t>& ids,
                                          const std::string& backend_kind, int threads, KvCacheType kv_cache) {
  const Config& cfg = model->config();
  const int64_t n = static_cast<int64_t>(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] >= cfg.vocab_size)
      return make_error(ErrorCode::kOutOfRange, "--tokens: token id {} (item {}) is >= vocab_size {}", ids[i], i,
                        cfg.vocab_size);
  }
  if (n > cfg.max_position_embeddings)
    return make_error(ErrorCode::kOutOfRange, "--tokens: {} tokens exceed max_position_embeddings {}", n,
                      cfg.max_position_embeddings);
  BackendOptions opts;
  opts.kind = backend_kind;
  opts.threads = threads;
  opts.max_slots = 1;
  opts.max_context = n;
  opts.kv_cache = kv_cache;
  opts.rollback = 0;
  opts.max_batch_tokens = std::min(n, kChunkTokens);
  GPTOSS_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, backend_create(model, opts));
  log_info("logits: {} tokens on {}", n, backend->name());
  std::vector<float> logits(static_cast<size_t>(n * cfg.vocab_size));
  for (int64_t pos = 0; pos < n; pos += opts.max_batch_tokens) {
    const int64_t len = std::min(opts.max_batch_tokens, n - pos);
    SeqBatch seq;
    seq.slot = 0;
    seq.pos = pos;
    seq.tokens = std::span<const int32_t>(ids.data() + pos, static_cast<size_t>(len));
    seq.all_logits = true;
    StepOutputs out;
    out.logits = logits.data() + pos * cfg.vocab_size;
    GPTOSS_RETURN_IF_ERROR(backend->forward(std::span<const SeqBatch>(&seq, 1), out));
  }
  return logits;
}

int logits_main(int argc, char** argv) {
  CLI::App app{"Write the logits of one causal pass over token ids to a float32 .npy [n_tokens, vocab].",
               "gptoss logits"};
  std::string model_dir, tokens_text, out_path, backend_kind = "cpu";
  int threads = 0;
  KvCacheType kv_cache = KvCacheType::kF32;
  app.add_option("--model", model_dir, "checkpoint folder (HF layout or original/)")->required();
  app.add_option("--tokens", tokens_text, "comma-separated token ids, e.g. 1,2,3")->required();
  app.add_option("--out", out_path, "output .npy file")->required();
  app.add_option("--backend", backend_kind, "cpu (default, the reference), cuda or auto")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  app.add_option("--threads", threads, "CPU threads (0 = all cores)")->check(non_negative_number());
  add_kv_cache_option(app, kv_cache);
  if (auto rc = parse_flags(app, argc, argv, kName)) return *rc;

  auto ids = parse_token_list(tokens_text);
  if (!ids.ok()) return report_error(kName, ids.status());
  std::error_code ec;
  if (!std::filesystem::is_directory(model_dir, ec))
    return report_error(kName, make_error(ErrorCode::kNotFound, "--model: '{}' is not a directory", model_dir));
  auto model = Model::load(model_dir);
  if (!model.ok()) return report_error(kName, model.status());
  auto logits = compute_logits(*model, *ids, backend_kind, threads, kv_cache);
  if (!logits.ok()) return report_error(kName, logits.status());
  const int64_t n = static_cast<int64_t>(ids->size());
  Status st = npy_write_f32(out_path, logits->data(), {n, (*model)->config().vocab_size});
  if (!st.ok()) return report_error(kName, st);
  return 0;
}

}  // namespace

GPTOSS_COMMAND("logits", "write the logits of one causal pass over token ids to a .npy file", logits_main);

}  // namespace gptoss::cli
