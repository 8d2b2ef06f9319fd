// Streaming output of run / chat: the console presentation of answer vs reasoning, the harmony
// stream with its plain-text fallback, and one generation turn on the Engine.
#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>

#include <fmt/format.h>

#include "cli/common.h"
#include "core/log.h"

namespace gptoss::cli {

namespace {
constexpr const char* kDim = "\033[2m";
constexpr const char* kReset = "\033[0m";
constexpr const char* kReasoningPrefix = "[reasoning] ";

void write(FILE* f, const std::string& s, bool& line_start) {
  if (s.empty()) return;
  std::fwrite(s.data(), 1, s.size(), f);
  line_start = s.back() == '\n';
}
}  // namespace

// ---------------------------------------------------------------------------------------------
// ConsoleSink

ConsoleSink::ConsoleSink(FILE* out, FILE* err, bool show_reasoning)
    : out_(out), err_(err), show_reasoning_(show_reasoning), dim_(show_reasoning && use_colors(out)) {}

void ConsoleSink::switch_to(Where w) {
  if (where_ == w) return;
  if (where_ == Where::kReasoning && dim_) std::fputs(kReset, out_);
  // Answer and dim reasoning share stdout: each starts on its own line.
  const bool shares_out = dim_ && where_ != Where::kNone;
  if (shares_out && !out_line_start_) write(out_, "\n", out_line_start_);
  if (w == Where::kReasoning && dim_) std::fputs(kDim, out_);
  where_ = w;
}

void ConsoleSink::answer(const std::string& text) {
  if (text.empty()) return;
  switch_to(Where::kAnswer);
  write(out_, text, out_line_start_);
  std::fflush(out_);
}

void ConsoleSink::reasoning(const std::string& text) {
  if (!show_reasoning_ || text.empty()) return;
  if (dim_) {
    switch_to(Where::kReasoning);
    write(out_, text, out_line_start_);
    std::fflush(out_);
    return;
  }
  // Not a terminal: stdout stays the pure answer; reasoning lines go to stderr, each prefixed.
  std::string buf;
  for (char c : text) {
    if (err_line_start_) buf += kReasoningPrefix;
    buf += c;
    err_line_start_ = c == '\n';
  }
  std::fwrite(buf.data(), 1, buf.size(), err_);
  std::fflush(err_);
}

void ConsoleSink::message_break() {
  // The style ends with the message; the next one starts on a fresh line in its own style.
  if (where_ == Where::kReasoning && dim_) std::fputs(kReset, out_);
  if (where_ != Where::kNone && !out_line_start_) write(out_, "\n", out_line_start_);
  where_ = Where::kNone;
  if (!err_line_start_) write(err_, "\n", err_line_start_);
}

void ConsoleSink::end_turn() {
  if (where_ == Where::kReasoning && dim_) std::fputs(kReset, out_);
  where_ = Where::kNone;
  if (!out_line_start_) write(out_, "\n", out_line_start_);
  if (!err_line_start_) write(err_, "\n", err_line_start_);
  std::fflush(out_);
  std::fflush(err_);
}

// ---------------------------------------------------------------------------------------------
// HarmonyStream

HarmonyStream::HarmonyStream(const Tokenizer& tok, TextSink& sink)
    : tok_(tok),
      sink_(sink),
      parser_(tok, HarmonyParser::Options{.strict = false, .initial_role = std::string("assistant")}),
      plain_decoder_(tok) {}

void HarmonyStream::route(const std::string& text, const HarmonyMessage& msg) {
  if (text.empty()) return;
  // The user-visible channels: final, and commentary addressed to nobody (a preamble). Analysis
  // and tool calls (a recipient) are reasoning.
  const bool visible =
      msg.recipient.empty() && (msg.channel == "final" || msg.channel == "commentary" || msg.channel.empty());
  if (visible) {
    sink_.answer(text);
  } else {
    sink_.reasoning(text);
  }
}

void HarmonyStream::to_plain(const std::string& why) {
  log_warn("the model's output is not in the harmony format ({}); showing it as plain text", why);
  plain_prefix_ = parser_.messages();
  if (parser_.in_content() && !parser_.current_content().empty()) plain_prefix_.push_back(parser_.current());
  plain_ = true;
  sink_.message_break();
  const std::vector<int32_t> pending = std::move(header_);
  header_.clear();
  for (int32_t t : pending) push(t);
}

void HarmonyStream::push(int32_t token) {
  if (plain_) {
    if (tok_.is_special(token) || !tok_.is_valid_id(token)) return;  // structure, not text
    const std::string s = plain_decoder_.push(token);
    plain_text_ += s;
    sink_.answer(s);
    return;
  }
  const bool was_content = parser_.in_content();
  const HarmonyMessage before = active_;
  const size_t done_before = parser_.messages().size();
  if (Status st = parser_.push(token); !st.ok()) {
    if (!was_content) header_.push_back(token);
    to_plain(st.message());
    if (was_content) push(token);
    return;
  }
  const bool ended = parser_.messages().size() > done_before;
  if (parser_.in_content() && !was_content) active_ = parser_.current();
  if (parser_.in_content() || ended || was_content) {
    header_.clear();
  } else {
    header_.push_back(token);
  }
  // The text belongs to the message it was parsed into: the one streaming before this token, the
  // one it opened, or one recovered whole from a header that met a stop token.
  const HarmonyMessage& owner = was_content ? before : (ended ? parser_.messages().back() : active_);
  route(parser_.last_content_delta(), owner);
  if (ended) sink_.message_break();
  if (header_.size() > kMaxHeaderTokens) to_plain(fmt::format("no <|message|> after {} header tokens", header_.size()));
}

void HarmonyStream::finish() {
  if (finished_) return;
  finished_ = true;
  if (!plain_ && !parser_.in_content() && !header_.empty() &&
      std::find(header_.begin(), header_.end(), harmony_tokens::kChannel) == header_.end() &&
      std::find(header_.begin(), header_.end(), harmony_tokens::kStart) == header_.end()) {
    to_plain("the output ended before any message header");
  }
  if (plain_) {
    const std::string s = plain_decoder_.flush();
    plain_text_ += s;
    sink_.answer(s);
    return;
  }
  const bool was_content = parser_.in_content();
  const HarmonyMessage before = active_;
  const size_t done_before = parser_.messages().size();
  if (Status st = parser_.finish(); !st.ok()) log_debug("harmony parser at end of output: {}", st.message());
  if (parser_.messages().size() > done_before)
    route(parser_.last_content_delta(), was_content ? before : parser_.messages().back());
}

std::vector<HarmonyMessage> HarmonyStream::messages() const {
  if (!plain_) return parser_.messages();
  std::vector<HarmonyMessage> out = plain_prefix_;
  if (!plain_text_.empty()) {
    HarmonyMessage m;
    m.role = "assistant";
    m.channel = "final";
    m.content = plain_text_;
    out.push_back(std::move(m));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Generation

Result<TurnResult> generate_turn(Engine& engine, GenerationRequest request, HarmonyStream& stream) {
  // Events arrive on the engine thread; they are handed over to this thread so that parsing and
  // terminal writes never slow the engine down and Ctrl-C can be polled here.
  struct Mailbox {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<GenerationEvent> events;
  };
  auto box = std::make_shared<Mailbox>();
  request.on_event = [box](const GenerationEvent& ev) {
    {
      std::lock_guard<std::mutex> lock(box->mu);
      box->events.push_back(ev);
    }
    box->cv.notify_one();
  };
  GPTOSS_ASSIGN_OR_RETURN(std::shared_ptr<Request> req, engine.submit(std::move(request)));
  TurnResult r;
  for (;;) {
    std::deque<GenerationEvent> batch;
    {
      std::unique_lock<std::mutex> lock(box->mu);
      box->cv.wait_for(lock, std::chrono::milliseconds(50), [&] { return !box->events.empty(); });
      batch.swap(box->events);
    }
    if (SigintScope::triggered() && !r.interrupted) {
      r.interrupted = true;
      req->cancel();
    }
    for (const GenerationEvent& ev : batch) {
      if (ev.kind == GenerationEvent::Kind::kToken) {
        if (r.tokens.empty()) r.ttft_s = ev.ttft_s;
        r.tokens.push_back(ev.token);
        stream.push(ev.token);
        continue;
      }
      stream.finish();
      r.finish = ev.finish;
      r.error = ev.error;
      r.prompt_tokens = ev.prompt_tokens;
      r.cached_prompt_tokens = ev.cached_prompt_tokens;
      r.generated_tokens = ev.generated_tokens;
      r.ttft_s = ev.ttft_s;
      r.total_s = ev.total_s;
      return r;
    }
  }
}

std::string format_turn_summary(const TurnResult& r) {
  // Decode speed excludes the first token, whose time is the prefill (TTFT).
  const double decode_s = r.total_s - r.ttft_s;
  double tps = 0;
  if (r.generated_tokens > 1 && decode_s > 0) {
    tps = static_cast<double>(r.generated_tokens - 1) / decode_s;
  } else if (r.total_s > 0) {
    tps = static_cast<double>(r.generated_tokens) / r.total_s;
  }
  std::string s = fmt::format("prompt {} tokens", r.prompt_tokens);
  if (r.cached_prompt_tokens > 0) s += fmt::format(" ({} cached)", r.cached_prompt_tokens);
  s += fmt::format(", generated {} tokens, TTFT {:.3f} s, {:.1f} tok/s, total {:.2f} s, finish {}", r.generated_tokens,
                   r.ttft_s, tps, r.total_s, finish_reason_name(r.finish));
  if (r.interrupted) s += " (interrupted)";
  return s;
}

}  // namespace gptoss::cli
