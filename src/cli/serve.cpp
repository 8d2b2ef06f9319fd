// `gptoss serve`: the OpenAI-compatible HTTP server over a continuous-batching Engine; stops
// gracefully on SIGINT/SIGTERM (no new requests, open streams cancelled, then exit 0).
#include <CLI/CLI.hpp>

#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>

#include "cli/command.h"
#include "cli/common.h"
#include "core/log.h"
#include "engine/engine.h"
#include "model/weights.h"
#include "server/server.h"
#include "tokenizer/tokenizer.h"

namespace gptoss::cli {
namespace {

constexpr const char* kName = "serve";

struct ServeFlags {
  std::string model_dir, tokenizer, backend = "auto", model_name;
  server::ServerOptions server;
  int max_batch = 8, threads = 0, max_queue = 64;
  int64_t ctx = 4096, prefill_chunk = 256;
  KvCacheType kv_cache = KvCacheType::kF32;
  double timeout_s = 600;
};

void add_flags(CLI::App& app, ServeFlags& f) {
  app.add_option("--model", f.model_dir, "checkpoint folder (HF layout)")->required();
  app.add_option("--tokenizer", f.tokenizer, "tokenizer.json (default DIR/tokenizer.json)");
  app.add_option("--host", f.server.host, "address to listen on")->capture_default_str();
  app.add_option("--port", f.server.port, "port (0 = any free port)")->capture_default_str();
  app.add_option("--api-key", f.server.api_key, "require 'Authorization: Bearer KEY' (default $GPTOSS_API_KEY)");
  app.add_option("--max-batch", f.max_batch, "sequences generated at once (KV slots)")->capture_default_str();
  app.add_option("--ctx", f.ctx, "context tokens per sequence")->capture_default_str();
  add_kv_cache_option(app, f.kv_cache);
  app.add_option("--backend", f.backend, "cpu | cuda | auto")->capture_default_str();
  app.add_option("--threads", f.threads, "CPU threads (0 = all cores)")->capture_default_str();
  app.add_option("--model-name", f.model_name, "model id served (default: the model folder's name)");
  app.add_option("--max-queue", f.max_queue, "requests waiting for a slot before 429")->capture_default_str();
  app.add_option("--prefill-chunk", f.prefill_chunk, "prompt tokens per sequence per step")->capture_default_str();
  app.add_option("--timeout", f.timeout_s, "seconds a request may take")->capture_default_str();
  app.add_option("--max-body-bytes", f.server.max_body_bytes, "largest request body (413 above)")
      ->capture_default_str();
}

Status check_flags(const ServeFlags& f) {
  if (f.max_batch < 1) return make_error(ErrorCode::kInvalidArgument, "--max-batch must be >= 1 (got {})", f.max_batch);
  if (f.ctx < 2) return make_error(ErrorCode::kInvalidArgument, "--ctx must be >= 2 (got {})", f.ctx);
  if (f.max_queue < 0) return make_error(ErrorCode::kInvalidArgument, "--max-queue must be >= 0 (got {})", f.max_queue);
  if (f.prefill_chunk < 1)
    return make_error(ErrorCode::kInvalidArgument, "--prefill-chunk must be >= 1 (got {})", f.prefill_chunk);
  if (!(f.timeout_s > 0)) return make_error(ErrorCode::kInvalidArgument, "--timeout must be > 0 (got {})", f.timeout_s);
  if (f.threads < 0) return make_error(ErrorCode::kInvalidArgument, "--threads must be >= 0 (got {})", f.threads);
  return {};
}

int serve_main(int argc, char** argv) {
  CLI::App app{"OpenAI-compatible HTTP server", std::string("gptoss ") + kName};
  ServeFlags f;
  add_flags(app, f);
  if (auto rc = parse_flags(app, argc, argv, kName)) return *rc;
  if (Status st = check_flags(f); !st.ok()) return report_error(kName, st);
  if (f.server.api_key.empty())
    if (const char* k = std::getenv("GPTOSS_API_KEY")) f.server.api_key = k;
  std::filesystem::path dir(f.model_dir);
  f.server.model_name =
      !f.model_name.empty() ? f.model_name : std::filesystem::absolute(dir).lexically_normal().filename().string();
  if (f.server.model_name.empty()) f.server.model_name = "gpt-oss";
  f.server.request_timeout = std::chrono::milliseconds(static_cast<int64_t>(f.timeout_s * 1000));
  // Each open request holds an HTTP thread (streams included): enough for every slot and queue
  // place plus spares, so a full server answers 429 instead of leaving connections unserved.
  f.server.http_threads = std::max(64, f.max_batch + f.max_queue + 16);

  // Block the stop signals before any thread starts, so only the waiter below receives them.
  sigset_t stop_set;
  sigemptyset(&stop_set);
  sigaddset(&stop_set, SIGINT);
  sigaddset(&stop_set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_set, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client that leaves must not kill the server

  std::string tok_path = f.tokenizer.empty() ? (dir / "tokenizer.json").string() : f.tokenizer;
  auto tok = Tokenizer::load(tok_path);
  if (!tok.ok()) return report_error(kName, tok.status());
  auto model = Model::load(f.model_dir);
  if (!model.ok()) return report_error(kName, model.status());
  BackendOptions bo;
  bo.kind = f.backend;
  bo.threads = f.threads;
  bo.max_slots = f.max_batch;
  bo.max_context = f.ctx;
  bo.kv_cache = f.kv_cache;
  bo.max_batch_tokens = f.prefill_chunk + f.max_batch;
  EngineOptions eo{.max_queue = f.max_queue, .prefill_chunk = f.prefill_chunk, .collect_router_stats = true};
  auto engine = Engine::create(std::move(model).value(), bo, eo);
  if (!engine.ok()) return report_error(kName, engine.status());
  auto srv = server::HttpServer::create(**engine, **tok, f.server);
  if (!srv.ok()) return report_error(kName, srv.status());

  std::thread waiter([&srv] {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    int sig = 0;
    sigwait(&set, &sig);
    log_info("serve: signal {}, shutting down", sig);
    (*srv)->stop();
  });
  std::fprintf(stderr, "gptoss serve: listening on http://%s:%d (model %s, backend %s, %d slots x %lld tokens)\n",
               f.server.host.c_str(), (*srv)->port(), f.server.model_name.c_str(), (*engine)->backend_name().c_str(),
               f.max_batch, static_cast<long long>(f.ctx));
  std::fflush(stderr);
  Status st = (*srv)->serve();
  // Wake the waiter if the listener ended by itself (it is blocked in sigwait).
  pthread_kill(waiter.native_handle(), SIGTERM);
  waiter.join();
  srv->reset();     // joins the HTTP threads; open streams were cancelled
  engine->reset();  // cancels what is left and stops the engine thread
  if (!st.ok()) return report_error(kName, st);
  std::fprintf(stderr, "gptoss serve: stopped\n");
  return 0;
}

}  // namespace

GPTOSS_COMMAND(kName, "OpenAI-compatible HTTP server (chat completions, completions, metrics)", serve_main);

}  // namespace gptoss::cli
