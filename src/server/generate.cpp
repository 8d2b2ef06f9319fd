// The completion routes: request → prompt tokens → Engine, and events → JSON or SSE, for
// /v1/chat/completions (harmony in and out) and /v1/completions (raw text).
#include <optional>

#include "core/log.h"
#include "server/server_impl.h"

namespace gptoss::server {

using json = nlohmann::json;

namespace {
// How often a waiting HTTP thread wakes to look for a closed connection or shutdown; well under
// one engine step on the models this serves, so a disconnect frees its slot within a step.
constexpr std::chrono::milliseconds kPollInterval{10};

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}
}  // namespace

void EventChannel::push(const GenerationEvent& ev) {
  {
    std::lock_guard lk(mu_);
    q_.push_back(ev);
  }
  cv_.notify_one();
}

void EventChannel::pop(std::vector<GenerationEvent>& out, std::chrono::milliseconds wait) {
  out.clear();
  std::unique_lock lk(mu_);
  cv_.wait_for(lk, wait, [&] { return !q_.empty(); });
  out.assign(std::make_move_iterator(q_.begin()), std::make_move_iterator(q_.end()));
  q_.clear();
}

std::variant<Generation, ApiError> ServerImpl::start_generation(const httplib::Request& req,
                                                                std::vector<int32_t> prompt, const CommonParams& p,
                                                                const std::vector<int32_t>& stops) {
  const int64_t ctx = engine.backend_options().max_context;
  if (static_cast<int64_t>(prompt.size()) >= ctx)
    return ApiError{.status = 400,
                    .type = "invalid_request_error",
                    .message = fmt::format("This model's maximum context length is {} tokens. However, your prompt "
                                           "has {} tokens (at least one token must be left to generate).",
                                           ctx, prompt.size()),
                    .param = "messages",
                    .code = "context_length_exceeded"};
  Generation g;
  g.chan = std::make_shared<EventChannel>();
  GenerationRequest r;
  r.prompt = std::move(prompt);
  r.sampling = p.sampling;
  r.max_tokens = p.max_tokens > 0 ? p.max_tokens : ctx;
  r.stop_ids = stops;
  r.timeout = opts.request_timeout;
  r.on_event = [chan = g.chan](const GenerationEvent& ev) { chan->push(ev); };
  auto h = engine.submit(std::move(r));
  if (!h.ok()) {
    const Status& st = h.status();
    switch (st.code()) {
      case ErrorCode::kResourceExhausted:
        return ApiError{.status = 429,
                        .type = "rate_limit_error",
                        .message = "The server is at capacity (" + st.message() + "); retry later.",
                        .param = {},
                        .code = "server_busy"};
      case ErrorCode::kUnavailable:
        return ApiError{.status = 503, .type = "server_error", .message = st.message(), .param = {}, .code = {}};
      case ErrorCode::kOutOfRange:
        return ApiError{.status = 400,
                        .type = "invalid_request_error",
                        .message = st.message(),
                        .param = "messages",
                        .code = "context_length_exceeded"};
      default:
        return ApiError{
            .status = 400, .type = "invalid_request_error", .message = st.message(), .param = {}, .code = {}};
    }
  }
  g.handle = std::move(h).value();
  g.fd = find_connection_fd(req);
  return g;
}

std::optional<ApiError> ServerImpl::failure(const GenerationEvent& fin, const ResponseBuilder& b) const {
  if (fin.finish == FinishReason::kError)
    return ApiError{.status = 500,
                    .type = "server_error",
                    .message = "Generation failed: " + fin.error.message(),
                    .param = {},
                    .code = {}};
  if (fin.finish != FinishReason::kCancelled || b.stop_matched()) return std::nullopt;
  // Cancelled without a stop string: the request's time ran out, or the server is stopping.
  if (fin.total_s * 1000.0 >= static_cast<double>(opts.request_timeout.count()))
    return ApiError{.status = 504, .type = "timeout", .message = fin.error.message(), .param = {}, .code = "timeout"};
  return ApiError{
      .status = 503, .type = "server_error", .message = "The server is shutting down.", .param = {}, .code = {}};
}

void ServerImpl::respond(httplib::Response& res, std::shared_ptr<ResponseBuilder> b, Generation g, bool stream) {
  if (stream) return respond_stream(res, std::move(b), std::move(g));
  respond_json(res, *b, g);
}

void ServerImpl::respond_json(httplib::Response& res, ResponseBuilder& b, Generation& g) {
  std::vector<GenerationEvent> events;
  std::optional<GenerationEvent> fin;
  while (!fin) {
    g.chan->pop(events, kPollInterval);
    for (const auto& ev : events) {
      if (ev.kind == GenerationEvent::Kind::kFinished) {
        fin = ev;
      } else {
        b.on_token(ev.token, false);
        if (b.stop_matched()) g.handle->cancel();
      }
    }
    if (fin) break;
    if (stopping) g.handle->cancel();
    if (!peer_alive(g.fd)) {
      // Nobody to answer: free the slot now; the status only shows in the access metrics.
      g.handle->cancel();
      metrics.count_disconnect();
      res.status = 499;
      res.set_content("", "text/plain");
      return;
    }
  }
  metrics.observe_generation(fin->generated_tokens > 0, fin->ttft_s, fin->total_s);
  if (auto err = failure(*fin, b)) return send_error(res, *err);
  res.set_content(dump(b.response(*fin)), "application/json");
}

void ServerImpl::respond_stream(httplib::Response& res, std::shared_ptr<ResponseBuilder> b, Generation g) {
  struct State {
    std::shared_ptr<ResponseBuilder> b;
    Generation g;
    bool started = false, done = false;
    std::vector<GenerationEvent> events;
  };
  auto st = std::make_shared<State>();
  st->b = std::move(b);
  st->g = std::move(g);
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  // Called repeatedly on this connection's thread until it returns false or calls done(); each
  // call waits at most one poll interval, so a stopping server never waits on a stream.
  auto provider = [this, st](size_t, httplib::DataSink& sink) {
    std::string out;
    if (!st->started) {
      st->started = true;
      out = st->b->stream_start();
    }
    st->g.chan->pop(st->events, kPollInterval);
    std::optional<GenerationEvent> fin;
    for (const auto& ev : st->events) {
      if (ev.kind == GenerationEvent::Kind::kFinished) {
        fin = ev;
        continue;
      }
      out += st->b->on_token(ev.token, true);
      if (st->b->stop_matched()) st->g.handle->cancel();
    }
    if (fin) {
      metrics.observe_generation(fin->generated_tokens > 0, fin->ttft_s, fin->total_s);
      if (auto err = failure(*fin, *st->b)) {
        out += sse_event(json::parse(error_json(*err)));
      } else {
        out += st->b->stream_finish(*fin);
      }
    }
    if (stopping) st->g.handle->cancel();
    if (!peer_alive(st->g.fd) || (!out.empty() && !sink.write(out.data(), out.size()))) {
      st->g.handle->cancel();
      metrics.count_disconnect();
      return false;
    }
    if (fin) {
      st->done = true;
      sink.done();
    }
    return true;
  };
  // Runs when the response ends for any reason: a stream that did not finish is cancelled.
  auto release = [st](bool) {
    if (!st->done) st->g.handle->cancel();
  };
  res.set_chunked_content_provider("text/event-stream", provider, release);
}

namespace {

// The usage block of a finished generation of a prompt of `prompt_tokens` tokens.
Usage usage_of(int64_t prompt_tokens, const GenerationEvent& fin) {
  return {.prompt_tokens = prompt_tokens,
          .completion_tokens = fin.generated_tokens,
          .cached_tokens = fin.cached_prompt_tokens};
}

// Chat: harmony output → reasoning / content / tool calls.
class ChatBuilder : public ResponseBuilder {
 public:
  ChatBuilder(ServerImpl& s, const ChatParams& p, const std::vector<int32_t>& forced, int64_t prompt_tokens)
      : meta_(s.new_meta("chatcmpl-")),
        include_usage_(p.include_usage),
        prompt_tokens_(prompt_tokens),
        mapper_(s.tok, p.stop, [&s] { return s.random_id("call_", 24); }) {
    // The forced start of a tool call is part of the assistant message the parser reads.
    for (int32_t t : forced) pending_.push_back(mapper_.push(t));
  }
  std::string stream_start() override {
    std::string out = sse_event(chat_chunk_json(meta_, {{"role", "assistant"}, {"content", ""}}, "", include_usage_));
    for (const auto& d : pending_)
      if (!d.empty()) out += sse_event(chat_chunk_json(meta_, chat_delta_json(d), "", include_usage_));
    pending_.clear();
    return out;
  }
  std::string on_token(int32_t token, bool stream) override {
    ChatDelta d = mapper_.push(token);
    if (!stream || d.empty()) return {};
    return sse_event(chat_chunk_json(meta_, chat_delta_json(d), "", include_usage_));
  }
  bool stop_matched() const override { return mapper_.stop_matched(); }
  std::string stream_finish(const GenerationEvent& fin) override {
    std::string out;
    ChatDelta d = mapper_.finish();
    if (!d.empty()) out += sse_event(chat_chunk_json(meta_, chat_delta_json(d), "", include_usage_));
    out += sse_event(chat_chunk_json(meta_, json::object(), mapper_.finish_reason(fin.finish), include_usage_));
    if (include_usage_) out += sse_event(chat_usage_chunk_json(meta_, usage_of(prompt_tokens_, fin)));
    return out + kSseDone;
  }
  json response(const GenerationEvent& fin) override {
    mapper_.finish();
    return chat_completion_json(meta_, mapper_, mapper_.finish_reason(fin.finish), usage_of(prompt_tokens_, fin));
  }

 private:
  ResponseMeta meta_;
  bool include_usage_;
  int64_t prompt_tokens_;
  ChatOutputMapper mapper_;
  std::vector<ChatDelta> pending_;
};

// Raw completions: decoded text with stop strings; the stop token itself is not text.
class CompletionBuilder : public ResponseBuilder {
 public:
  CompletionBuilder(ServerImpl& s, const CompletionParams& p, std::vector<int32_t> stops, int64_t prompt_tokens)
      : meta_(s.new_meta("cmpl-")),
        include_usage_(p.include_usage),
        prompt_tokens_(prompt_tokens),
        stops_(std::move(stops)),
        decoder_(s.tok),
        matcher_(p.stop) {}
  std::string stream_start() override { return {}; }
  std::string on_token(int32_t token, bool stream) override {
    if (matcher_.stopped() || std::find(stops_.begin(), stops_.end(), token) != stops_.end()) return {};
    std::string t = matcher_.push(decoder_.push(token));
    text_ += t;
    if (!stream || t.empty()) return {};
    return sse_event(completion_chunk_json(meta_, t, "", include_usage_));
  }
  bool stop_matched() const override { return matcher_.stopped(); }
  std::string stream_finish(const GenerationEvent& fin) override {
    std::string tail = flush();
    std::string out;
    if (!tail.empty()) out += sse_event(completion_chunk_json(meta_, tail, "", include_usage_));
    out += sse_event(completion_chunk_json(meta_, "", finish_reason(fin), include_usage_));
    if (include_usage_) out += sse_event(completion_usage_chunk_json(meta_, usage_of(prompt_tokens_, fin)));
    return out + kSseDone;
  }
  json response(const GenerationEvent& fin) override {
    flush();
    return completion_json(meta_, text_, finish_reason(fin), usage_of(prompt_tokens_, fin));
  }

 private:
  std::string flush() {
    std::string t = matcher_.stopped() ? std::string() : matcher_.push(decoder_.flush());
    t += matcher_.flush();
    text_ += t;
    return t;
  }
  std::string finish_reason(const GenerationEvent& fin) const {
    return matcher_.stopped() || fin.finish == FinishReason::kStop ? "stop" : "length";
  }
  ResponseMeta meta_;
  bool include_usage_;
  int64_t prompt_tokens_;
  std::vector<int32_t> stops_;
  StreamDecoder decoder_;
  StopMatcher matcher_;
  std::string text_;
};

}  // namespace

void ServerImpl::handle_chat(const httplib::Request& req, httplib::Response& res) {
  auto parsed = parse_chat_request(req.body, opts.model_name, random_u64());
  if (auto* e = std::get_if<ApiError>(&parsed)) return send_error(res, *e);
  const ChatParams& p = std::get<ChatParams>(parsed);
  std::vector<int32_t> forced;
  auto prompt = chat_prompt_tokens(tok, p, &forced);
  if (auto* e = std::get_if<ApiError>(&prompt)) return send_error(res, *e);
  auto& ids = std::get<std::vector<int32_t>>(prompt);
  const auto n_prompt = static_cast<int64_t>(ids.size());
  auto g = start_generation(req, std::move(ids), p, chat_stops);
  if (auto* e = std::get_if<ApiError>(&g)) {
    if (e->status == 429 || e->status == 503) res.set_header("Retry-After", std::to_string(opts.retry_after_s));
    return send_error(res, *e);
  }
  respond(res, std::make_shared<ChatBuilder>(*this, p, forced, n_prompt), std::move(std::get<Generation>(g)), p.stream);
}

void ServerImpl::handle_completion(const httplib::Request& req, httplib::Response& res) {
  auto parsed = parse_completion_request(req.body, opts.model_name, random_u64());
  if (auto* e = std::get_if<ApiError>(&parsed)) return send_error(res, *e);
  const CompletionParams& p = std::get<CompletionParams>(parsed);
  // Raw prompts may carry harmony structure (<|start|>…), so special tokens are honoured here.
  std::vector<int32_t> ids = p.prompt_is_ids ? p.prompt_ids : tok.encode(p.prompt_text, /*allow_special=*/true);
  const auto n_prompt = static_cast<int64_t>(ids.size());
  auto g = start_generation(req, std::move(ids), p, completion_stops);
  if (auto* e = std::get_if<ApiError>(&g)) {
    if (e->status == 429 || e->status == 503) res.set_header("Retry-After", std::to_string(opts.retry_after_s));
    if (e->param == "messages") e->param = "prompt";
    return send_error(res, *e);
  }
  respond(res, std::make_shared<CompletionBuilder>(*this, p, completion_stops, n_prompt),
          std::move(std::get<Generation>(g)), p.stream);
}

}  // namespace gptoss::server
