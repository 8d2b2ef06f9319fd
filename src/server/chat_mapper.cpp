// ChatOutputMapper implementation.
#include "server/chat_mapper.h"

namespace gptoss::server {

namespace {
constexpr std::string_view kFunctionsPrefix = "functions.";
}

ChatOutputMapper::ChatOutputMapper(const Tokenizer& tok, std::vector<std::string> stop_strings, IdFn make_id)
    // Non-strict: a model that strays from the format must not turn the whole response into an error.
    : parser_(tok, HarmonyParser::Options{.strict = false}),
      stop_(std::move(stop_strings)),
      make_id_(std::move(make_id)) {}

ChatOutputMapper::Route ChatOutputMapper::classify(const HarmonyMessage& m) {
  if (m.recipient.starts_with(kFunctionsPrefix)) return Route::kToolCall;
  // Built-in tool calls (browser.*, python) and messages the model writes as another author are
  // part of its reasoning, not of the answer.
  if (!m.recipient.empty() || (!m.role.empty() && m.role != "assistant")) return Route::kReasoning;
  if (m.channel == "analysis") return Route::kReasoning;
  return Route::kContent;  // final, commentary preambles, and messages without a channel
}

void ChatOutputMapper::begin_message(const HarmonyMessage& m, ChatDelta& d) {
  route_ = classify(m);
  emitted_ = 0;
  if (route_ != Route::kToolCall) return;
  ToolCall call{.id = make_id_(), .name = m.recipient.substr(kFunctionsPrefix.size()), .arguments = {}};
  d.tool_calls.push_back(
      {.index = static_cast<int>(calls_.size()), .start = true, .id = call.id, .name = call.name, .arguments = {}});
  calls_.push_back(std::move(call));
}

// Routes the part of `content` (the message's whole text so far) not routed yet.
void ChatOutputMapper::add_text(const std::string& content, ChatDelta& d) {
  if (content.size() <= emitted_) return;
  std::string text = content.substr(emitted_);
  emitted_ = content.size();
  switch (route_) {
    case Route::kReasoning:
      reasoning_ += text;
      d.reasoning += text;
      break;
    case Route::kContent: {
      std::string safe = stop_.push(text);
      content_ += safe;
      d.content += safe;
      break;
    }
    case Route::kToolCall: {
      calls_.back().arguments += text;
      int index = static_cast<int>(calls_.size()) - 1;
      if (!d.tool_calls.empty() && d.tool_calls.back().index == index) {
        d.tool_calls.back().arguments += text;
      } else {
        d.tool_calls.push_back({.index = index, .start = false, .id = {}, .name = {}, .arguments = text});
      }
      break;
    }
  }
}

void ChatOutputMapper::after_push(size_t completed_before, ChatDelta& d) {
  const auto& msgs = parser_.messages();
  if (msgs.size() > completed_before) {
    // This token ended the message in progress; route whatever of it was not routed yet.
    if (!started_) begin_message(msgs.back(), d);
    add_text(msgs.back().content, d);
    started_ = false;
    return;
  }
  if (!parser_.in_content()) return;
  if (!started_) {
    begin_message(parser_.current(), d);
    started_ = true;
  }
  add_text(parser_.current().content, d);
}

ChatDelta ChatOutputMapper::push(int32_t token) {
  ChatDelta d;
  if (done_ || stop_.stopped()) return d;
  size_t before = parser_.messages().size();
  Status st = parser_.push(token);
  if (!st.ok()) {
    parse_error_ = st.message();
    done_ = true;
    return d;
  }
  after_push(before, d);
  return d;
}

ChatDelta ChatOutputMapper::finish() {
  ChatDelta d;
  if (!done_ && !stop_.stopped()) {
    size_t before = parser_.messages().size();
    Status st = parser_.finish();
    if (st.ok()) {
      after_push(before, d);
    } else {
      parse_error_ = st.message();
    }
  }
  done_ = true;
  std::string tail = stop_.flush();
  content_ += tail;
  d.content += tail;
  return d;
}

std::string ChatOutputMapper::finish_reason(FinishReason engine_finish) const {
  if (stop_.stopped()) return "stop";
  switch (engine_finish) {
    case FinishReason::kStop: return calls_.empty() ? "stop" : "tool_calls";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled:
    case FinishReason::kError: break;
  }
  return "stop";
}

}  // namespace gptoss::server
