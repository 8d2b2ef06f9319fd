// HttpServer: binding, routes, API-key check, OpenAI-shaped errors for every failure httplib
// produces (404, 413, exceptions), /v1/models, /health, /metrics, and connection helpers.
#include <arpa/inet.h>
#include <dirent.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdlib>
#include <ctime>

#include "core/log.h"
#include "server/server_impl.h"

namespace gptoss::server {

using json = nlohmann::json;

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(error_json(e), "application/json");
}

bool peer_alive(int fd) {
  if (fd < 0) return true;
  pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
  if (poll(&p, 1, 0) <= 0) return true;  // nothing to read: the connection is idle, not closed
  if (p.revents & (POLLERR | POLLNVAL)) return false;
  char c;
  ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  // 0 = orderly shutdown by the peer; data (a pipelined request) means it is still there.
  return n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR));
}

namespace {

bool address_matches(const sockaddr_storage& a, const std::string& ip, int port) {
  char host[NI_MAXHOST], serv[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&a), sizeof(a), host, sizeof(host), serv, sizeof(serv),
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return false;
  return ip == host && port == std::atoi(serv);
}

}  // namespace

// httplib 0.11 does not hand the connection's socket to handlers; the (local, remote) address
// pair of the request names exactly one of this process's sockets, so look it up.
int find_connection_fd(const httplib::Request& req) {
  DIR* d = opendir("/proc/self/fd");
  if (!d) return -1;
  int found = -1;
  while (dirent* e = readdir(d)) {
    char* end = nullptr;
    long fd = std::strtol(e->d_name, &end, 10);
    if (*end != '\0' || end == e->d_name) continue;
    sockaddr_storage peer{}, self{};
    socklen_t lp = sizeof(peer), ls = sizeof(self);
    if (getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&peer), &lp) != 0) continue;
    if (getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&self), &ls) != 0) continue;
    if (address_matches(peer, req.remote_addr, req.remote_port) &&
        address_matches(self, req.local_addr, req.local_port)) {
      found = static_cast<int>(fd);
      break;
    }
  }
  closedir(d);
  return found;
}

uint64_t ServerImpl::random_u64() {
  std::lock_guard lk(rng_mu);
  return rng();
}

std::string ServerImpl::random_id(const char* prefix, size_t n) {
  static constexpr char kChars[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
  std::string s = prefix;
  std::lock_guard lk(rng_mu);
  for (size_t i = 0; i < n; ++i) s += kChars[rng() % (sizeof(kChars) - 1)];
  return s;
}

ResponseMeta ServerImpl::new_meta(const char* prefix) {
  return {.id = random_id(prefix, 24), .created = static_cast<int64_t>(std::time(nullptr)), .model = opts.model_name};
}

namespace {

// Route label for metrics: the known routes as they are, everything else as "other" (unknown
// paths must not create unbounded label sets).
std::string route_label(const std::string& path) {
  for (const char* r : {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics"})
    if (path == r) return path;
  if (path.starts_with("/v1/models/")) return "/v1/models/{id}";
  return "other";
}

ApiError error_for_status(int status, const httplib::Request& req) {
  switch (status) {
    case 404:
      return {.status = 404,
              .type = "invalid_request_error",
              .message = fmt::format("Unknown request URL: {} {}.", req.method, req.path),
              .param = {},
              .code = "unknown_url"};
    case 413:
      // httplib caps form-encoded bodies (curl -d without a Content-Type) far below our limit.
      return {.status = 413,
              .type = "invalid_request_error",
              .message = req.get_header_value("Content-Type").starts_with("application/x-www-form-urlencoded")
                             ? "The request body is too large for application/x-www-form-urlencoded; send "
                               "Content-Type: application/json."
                             : "The request body is too large.",
              .param = {},
              .code = "request_too_large"};
    case 414:
      return {.status = 414,
              .type = "invalid_request_error",
              .message = "The request URL is too long.",
              .param = {},
              .code = {}};
    default:
      return {.status = status,
              .type = status >= 500 ? "server_error" : "invalid_request_error",
              .message = fmt::format("The request failed with HTTP status {}.", status),
              .param = {},
              .code = {}};
  }
}

}  // namespace

void ServerImpl::setup_routes() {
  http.new_task_queue = [n = opts.http_threads] { return new httplib::ThreadPool(static_cast<size_t>(n)); };
  http.set_payload_max_length(opts.max_body_bytes);
  // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, which would let a second server bind
  // a port that is in use and silently share its connections.
  http.set_socket_options([](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  http.set_keep_alive_max_count(1000);
  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (opts.api_key.empty() || !req.path.starts_with("/v1/")) return httplib::Server::HandlerResponse::Unhandled;
    if (req.get_header_value("Authorization") == "Bearer " + opts.api_key)
      return httplib::Server::HandlerResponse::Unhandled;
    send_error(res, {.status = 401,
                     .type = "invalid_request_error",
                     .message = "Incorrect or missing API key (send 'Authorization: Bearer <key>').",
                     .param = {},
                     .code = "invalid_api_key"});
    return httplib::Server::HandlerResponse::Handled;
  });
  // Every failure httplib answers by itself (no route, body too large, ...) gets OpenAI's shape.
  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (res.body.empty()) send_error(res, error_for_status(res.status, req));
  });
  http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown exception";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    log_error("serve: request failed: {}", what);
    send_error(res,
               {.status = 500, .type = "server_error", .message = "Internal error: " + what, .param = {}, .code = {}});
  });
  http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    metrics.count_request(route_label(req.path), res.status);
    log_debug("serve: {} {} -> {}", req.method, req.path, res.status);
  });

  http.Post("/v1/chat/completions",
            [this](const httplib::Request& req, httplib::Response& res) { handle_chat(req, res); });
  http.Post("/v1/completions",
            [this](const httplib::Request& req, httplib::Response& res) { handle_completion(req, res); });
  auto model_json = [this] {
    return json{{"id", opts.model_name}, {"object", "model"}, {"created", 0}, {"owned_by", "gptoss"}};
  };
  http.Get("/v1/models", [model_json](const httplib::Request&, httplib::Response& res) {
    res.set_content(json{{"object", "list"}, {"data", json::array({model_json()})}}.dump(), "application/json");
  });
  http.Get("/v1/models/(.+)", [this, model_json](const httplib::Request& req, httplib::Response& res) {
    if (req.matches[1] == opts.model_name) return res.set_content(model_json().dump(), "application/json");
    send_error(res, {.status = 404,
                     .type = "invalid_request_error",
                     .message = fmt::format("The model '{}' does not exist.", std::string(req.matches[1])),
                     .param = "model",
                     .code = "model_not_found"});
  });
  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    EngineStats s = engine.stats();
    res.status = stopping ? 503 : 200;
    res.set_content(json{{"status", stopping ? "shutting_down" : "ok"},
                         {"model", opts.model_name},
                         {"backend", engine.backend_name()},
                         {"slots_busy", s.slots_busy},
                         {"slots_total", s.slots_total},
                         {"queue_depth", s.requests_queued}}
                        .dump(),
                    "application/json");
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics.render(engine.stats()), "text/plain; version=0.0.4; charset=utf-8");
  });
}

Result<std::unique_ptr<HttpServer>> HttpServer::create(Engine& engine, const Tokenizer& tok,
                                                       const ServerOptions& opts) {
  if (opts.http_threads < 1)
    return make_error(ErrorCode::kInvalidArgument, "serve: http_threads must be >= 1 (got {})", opts.http_threads);
  if (opts.port < 0 || opts.port > 65535)
    return make_error(ErrorCode::kInvalidArgument, "serve: --port must be in [0, 65535] (got {})", opts.port);
  std::unique_ptr<HttpServer> s(new HttpServer());
  s->impl_ = std::make_unique<ServerImpl>(engine, tok, opts);
  ServerImpl& m = *s->impl_;
  using namespace harmony_tokens;
  m.chat_stops = {kReturn, kCall, kEndOfText};
  m.completion_stops = engine.model().config().eos_token_ids;
  m.setup_routes();
  if (opts.port == 0) {
    m.port = m.http.bind_to_any_port(opts.host);
  } else {
    m.port = m.http.bind_to_port(opts.host, opts.port) ? opts.port : -1;
  }
  if (m.port <= 0)
    return make_error(ErrorCode::kUnavailable, "serve: cannot listen on {}:{} ({})", opts.host, opts.port,
                      std::strerror(errno));
  return s;
}

HttpServer::~HttpServer() {
  stop();
}

int HttpServer::port() const {
  return impl_->port;
}

Status HttpServer::serve() {
  if (!impl_->http.listen_after_bind() && !impl_->stopping)
    return make_error(ErrorCode::kUnavailable, "serve: the listener on {}:{} failed", impl_->opts.host, impl_->port);
  return {};
}

void HttpServer::stop() {
  if (!impl_) return;
  impl_->stopping = true;
  impl_->http.stop();
}

}  // namespace gptoss::server
