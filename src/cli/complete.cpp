// `gptoss complete`: raw continuation of a token prompt (no chat format) on the Engine; prints the
// generated ids (--print-ids) or their decoded text.
//
// Stops: a raw continuation ends only at --max-tokens or the context end unless --stop lists ids
// (the HF goldens are made the same way, without an end-of-sequence stop); `--stop eos` means the
// model's end-of-sequence ids from config.json / generation_config.json.
#include <CLI/CLI.hpp>

#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "cli/command.h"
#include "cli/common.h"
#include "core/log.h"
#include "engine/engine.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace gptoss::cli {
namespace {

constexpr const char* kName = "complete";

struct CompleteFlags {
  std::string model_dir, tokenizer, tokens, prompt, stop, backend = "auto";
  int64_t max_tokens = 16, ctx = 0;
  int threads = 0;
  KvCacheType kv_cache = KvCacheType::kF32;
  bool print_ids = false;
  SamplingParams sampling{.temperature = 0.0f};
};

// "1, 2,3" → ids; `flag` names the option in errors.
Result<std::vector<int32_t>> parse_ids(const std::string& text, const char* flag) {
  std::vector<int32_t> ids;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t b = item.find_first_not_of(" \t"), e = item.find_last_not_of(" \t");
    std::string v = b == std::string::npos ? std::string() : item.substr(b, e - b + 1);
    char* end = nullptr;
    errno = 0;
    long long x = v.empty() ? -1 : std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || errno != 0 || x < 0 || x > INT32_MAX)
      return make_error(ErrorCode::kInvalidArgument, "{}: '{}' is not a token id (expected comma-separated ids)", flag,
                        v);
    ids.push_back(static_cast<int32_t>(x));
  }
  if (ids.empty()) return make_error(ErrorCode::kInvalidArgument, "{}: empty token list", flag);
  return ids;
}

void add_flags(CLI::App& app, CompleteFlags& f) {
  app.add_option("--model", f.model_dir, "checkpoint folder (HF layout)")->required();
  app.add_option("--tokens", f.tokens, "prompt token ids, comma separated");
  app.add_option("--prompt", f.prompt, "prompt text (encoded with the tokenizer, special tokens allowed)");
  app.add_option("--tokenizer", f.tokenizer, "tokenizer.json (default DIR/tokenizer.json)");
  app.add_option("--max-tokens", f.max_tokens, "new tokens at most")->capture_default_str();
  app.add_option("--temperature", f.sampling.temperature, "0 = greedy")->capture_default_str();
  app.add_option("--top-p", f.sampling.top_p, "nucleus mass (0, 1]")->capture_default_str();
  app.add_option("--top-k", f.sampling.top_k, "keep the k most likely tokens (0 = off)")->capture_default_str();
  app.add_option("--min-p", f.sampling.min_p, "drop tokens below min_p x the top probability");
  app.add_option("--repetition-penalty", f.sampling.repetition_penalty, "HF repetition penalty (1 = off)");
  app.add_option("--presence-penalty", f.sampling.presence_penalty, "OpenAI presence penalty");
  app.add_option("--frequency-penalty", f.sampling.frequency_penalty, "OpenAI frequency penalty");
  app.add_option("--seed", f.sampling.seed, "sampling seed")->capture_default_str();
  app.add_option("--stop", f.stop, "stop token ids, comma separated, or 'eos' for the model's end ids");
  app.add_option("--backend", f.backend, "cpu | cuda | auto")->capture_default_str();
  app.add_option("--threads", f.threads, "CPU threads (0 = all cores)");
  app.add_option("--ctx", f.ctx, "context tokens (default: prompt + max tokens)");
  add_kv_cache_option(app, f.kv_cache);
  app.add_flag("--print-ids", f.print_ids, "print the generated ids, space separated, on one line");
}

// Collects engine events for the one request and hands them to the main thread.
struct Collector {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int32_t> pending;
  std::optional<GenerationEvent> finished;
};

Result<GenerationEvent> generate(Engine& engine, GenerationRequest req, const std::function<void(int32_t)>& on_token) {
  auto col = std::make_shared<Collector>();
  req.on_event = [col](const GenerationEvent& ev) {
    std::lock_guard lk(col->mu);
    if (ev.kind == GenerationEvent::Kind::kToken) col->pending.push_back(ev.token);
    if (ev.kind == GenerationEvent::Kind::kFinished) col->finished = ev;
    col->cv.notify_all();
  };
  GPTOSS_ASSIGN_OR_RETURN(std::shared_ptr<Request> handle, engine.submit(std::move(req)));
  for (;;) {
    std::vector<int32_t> got;
    bool done;
    {
      std::unique_lock lk(col->mu);
      col->cv.wait(lk, [&] { return !col->pending.empty() || col->finished; });
      got.swap(col->pending);
      done = col->finished.has_value();
    }
    for (int32_t t : got) on_token(t);
    if (done) return *col->finished;
  }
}

Result<std::vector<int32_t>> prompt_ids(const CompleteFlags& f, const Tokenizer* tok) {
  if (!f.tokens.empty() && !f.prompt.empty())
    return Status(ErrorCode::kInvalidArgument, "give either --tokens or --prompt, not both");
  if (!f.tokens.empty()) return parse_ids(f.tokens, "--tokens");
  if (f.prompt.empty()) return Status(ErrorCode::kInvalidArgument, "--tokens or --prompt is required");
  return tok->encode(f.prompt, /*allow_special=*/true);
}

int complete_main(int argc, char** argv) {
  CLI::App app{"Raw continuation of a prompt (no chat format)", std::string("gptoss ") + kName};
  CompleteFlags f;
  add_flags(app, f);
  if (auto rc = parse_flags(app, argc, argv, kName)) return *rc;
  if (Status st = f.sampling.validate(); !st.ok()) return report_error(kName, st);
  if (f.max_tokens < 1)
    return report_error(kName,
                        make_error(ErrorCode::kInvalidArgument, "--max-tokens must be >= 1 (got {})", f.max_tokens));
  // The tokenizer is needed for --prompt and for printing text; ids in, ids out needs none.
  std::unique_ptr<Tokenizer> tok;
  if (!f.prompt.empty() || !f.print_ids) {
    std::string path =
        f.tokenizer.empty() ? (std::filesystem::path(f.model_dir) / "tokenizer.json").string() : f.tokenizer;
    auto t = Tokenizer::load(path);
    if (!t.ok()) return report_error(kName, t.status());
    tok = std::move(t).value();
  }
  auto ids = prompt_ids(f, tok.get());
  if (!ids.ok()) return report_error(kName, ids.status());
  auto model = Model::load(f.model_dir);
  if (!model.ok()) return report_error(kName, model.status());
  const Config& cfg = (*model)->config();

  GenerationRequest req;
  req.prompt = std::move(ids).value();
  req.sampling = f.sampling;
  req.max_tokens = f.max_tokens;
  if (f.stop == "eos") {
    req.stop_ids = cfg.eos_token_ids;
  } else if (!f.stop.empty()) {
    auto stops = parse_ids(f.stop, "--stop");
    if (!stops.ok()) return report_error(kName, stops.status());
    req.stop_ids = std::move(stops).value();
  }
  BackendOptions bo;
  bo.kind = f.backend;
  bo.threads = f.threads;
  bo.max_slots = 1;
  const int64_t wanted = static_cast<int64_t>(req.prompt.size()) + f.max_tokens;
  bo.max_context = f.ctx > 0 ? f.ctx : std::min(wanted, cfg.max_position_embeddings);
  bo.kv_cache = f.kv_cache;
  bo.rollback = 0;
  bo.max_batch_tokens = std::min<int64_t>(bo.max_context, 512);
  auto engine = Engine::create(std::move(model).value(), bo, EngineOptions{.prefill_chunk = bo.max_batch_tokens});
  if (!engine.ok()) return report_error(kName, engine.status());
  log_info("complete: {} prompt tokens on {}", req.prompt.size(), (*engine)->backend_name());

  std::vector<int32_t> out;
  std::optional<StreamDecoder> dec;
  if (!f.print_ids) dec.emplace(*tok);
  auto fin = generate(**engine, std::move(req), [&](int32_t t) {
    out.push_back(t);
    if (dec) {
      std::string s = dec->push(t);
      std::fwrite(s.data(), 1, s.size(), stdout);
      std::fflush(stdout);
    }
  });
  if (!fin.ok()) return report_error(kName, fin.status());
  if (fin->finish == FinishReason::kError) return report_error(kName, fin->error);
  if (f.print_ids) {
    for (size_t i = 0; i < out.size(); ++i) std::printf(i ? " %d" : "%d", out[i]);
    std::printf("\n");
  } else {
    std::string s = dec->flush();
    std::printf("%s\n", s.c_str());
  }
  return 0;
}

}  // namespace

GPTOSS_COMMAND(kName, "raw continuation of token ids or text (no chat format)", complete_main);

}  // namespace gptoss::cli
