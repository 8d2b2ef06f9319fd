// The OpenAI-compatible HTTP server (`gptoss serve`): routes, auth, SSE streaming and metrics over
// an Engine that does the continuous batching.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "core/status.h"
#include "engine/engine.h"
#include "tokenizer/tokenizer.h"

namespace gptoss::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                     // 0 = any free port (see HttpServer::port())
  std::string api_key;                 // non-empty: /v1/* needs "Authorization: Bearer <key>"
  std::string model_name = "gpt-oss";  // the one model id served (/v1/models, request "model")
  size_t max_body_bytes = 8u << 20;    // larger bodies → 413
  std::chrono::milliseconds request_timeout{std::chrono::minutes(10)};  // per generation
  int http_threads = 64;  // connections served at once (streams hold one each)
  int retry_after_s = 1;  // Retry-After on 429 / 503
};

class HttpServer {
 public:
  // Binds host:port (errors name the address) without serving yet. `engine` and `tok` must
  // outlive the server.
  static Result<std::unique_ptr<HttpServer>> create(Engine& engine, const Tokenizer& tok, const ServerOptions& opts);
  ~HttpServer();

  int port() const;  // the bound port
  // Serves until stop(); returns an error when the listener fails.
  Status serve();
  // Thread-safe and idempotent: stops accepting, ends open streams within one engine step
  // (their requests are cancelled) and makes serve() return.
  void stop();

 private:
  HttpServer() = default;
  std::unique_ptr<struct ServerImpl> impl_;
};

}  // namespace gptoss::server
