// Internals of HttpServer shared by its translation units: the per-request event channel, the
// server state, and the generation drivers (streaming and not) used by both completion routes.
#pragma once

#include <httplib.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <random>
#include <variant>

#include "server/api.h"
#include "server/metrics.h"
#include "server/server.h"

namespace gptoss::server {

// Engine events for one request, handed from the engine thread to the HTTP thread.
class EventChannel {
 public:
  void push(const GenerationEvent& ev);
  // Waits up to `wait` for events and moves all pending ones into `out` (cleared first).
  void pop(std::vector<GenerationEvent>& out, std::chrono::milliseconds wait);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<GenerationEvent> q_;
};

// A submitted generation as the HTTP side sees it.
struct Generation {
  std::shared_ptr<EventChannel> chan;
  std::shared_ptr<Request> handle;
  int fd = -1;  // the client's connection (−1 if unknown): polled to notice a disconnect
};

// Turns one request's events into its response, for streaming (SSE text) and not (JSON).
class ResponseBuilder {
 public:
  virtual ~ResponseBuilder() = default;
  // SSE text sent before any token (the chat role chunk).
  virtual std::string stream_start() = 0;
  // Accumulates a generated token; returns its SSE text when streaming ("" when nothing new).
  virtual std::string on_token(int32_t token, bool stream) = 0;
  // A stop string completed: generation should be cancelled, the output is final.
  virtual bool stop_matched() const = 0;
  // The SSE tail of a successful stream (last deltas, finish chunk, usage chunk, [DONE]).
  virtual std::string stream_finish(const GenerationEvent& fin) = 0;
  // The whole non-streaming response.
  virtual nlohmann::json response(const GenerationEvent& fin) = 0;
};

struct ServerImpl {
  ServerImpl(Engine& e, const Tokenizer& t, const ServerOptions& o) : engine(e), tok(t), opts(o) {}

  Engine& engine;
  const Tokenizer& tok;
  ServerOptions opts;
  httplib::Server http;
  ServerMetrics metrics;
  std::atomic<bool> stopping{false};
  int port = 0;
  std::mutex rng_mu;
  std::mt19937_64 rng{std::random_device{}()};
  std::vector<int32_t> chat_stops;        // <|return|>, <|call|>, <|endoftext|>
  std::vector<int32_t> completion_stops;  // the model's end-of-sequence ids

  uint64_t random_u64();
  // prefix + n random characters from [0-9a-zA-Z].
  std::string random_id(const char* prefix, size_t n);
  ResponseMeta new_meta(const char* prefix);

  void setup_routes();
  void handle_chat(const httplib::Request& req, httplib::Response& res);
  void handle_completion(const httplib::Request& req, httplib::Response& res);

  // Validates the prompt against the context and submits it; the error is the HTTP answer.
  std::variant<Generation, ApiError> start_generation(const httplib::Request& req, std::vector<int32_t> prompt,
                                                      const CommonParams& p, const std::vector<int32_t>& stops);
  // Runs the generation to the end and answers (JSON or SSE).
  void respond(httplib::Response& res, std::shared_ptr<ResponseBuilder> b, Generation g, bool stream);
  void respond_json(httplib::Response& res, ResponseBuilder& b, Generation& g);
  void respond_stream(httplib::Response& res, std::shared_ptr<ResponseBuilder> b, Generation g);
  // The error for a generation that ended without success (engine error, timeout, shutdown).
  std::optional<ApiError> failure(const GenerationEvent& fin, const ResponseBuilder& b) const;
};

void send_error(httplib::Response& res, const ApiError& e);
// False once the peer has closed the connection `fd` (−1: unknown, taken as alive).
bool peer_alive(int fd);
// The fd of this request's TCP connection, found by its address pair (−1 if not found).
int find_connection_fd(const httplib::Request& req);

}  // namespace gptoss::server
