// Maps the model's harmony output tokens onto an OpenAI chat completion: analysis → reasoning,
// final / commentary preambles → content (with stop strings), commentary to=functions.X →
// tool_calls. Works incrementally, so streaming and non-streaming responses share one path.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "server/stop_matcher.h"
#include "tokenizer/harmony.h"
#include "tokenizer/tokenizer.h"

namespace gptoss::server {

struct ToolCall {
  std::string id;         // "call_…"
  std::string name;       // function name without the "functions." prefix
  std::string arguments;  // the message content: a JSON text when the model follows the schema
};

// One tool-call change: `start` (first delta: id + name) or more argument text.
struct ToolCallDelta {
  int index = 0;
  bool start = false;
  std::string id, name;
  std::string arguments;
};

// What one pushed token added to the response.
struct ChatDelta {
  std::string reasoning;
  std::string content;
  std::vector<ToolCallDelta> tool_calls;
  bool empty() const { return reasoning.empty() && content.empty() && tool_calls.empty(); }
};

class ChatOutputMapper {
 public:
  using IdFn = std::function<std::string()>;
  // `make_id` names tool calls (called once per call, in order).
  ChatOutputMapper(const Tokenizer& tok, std::vector<std::string> stop_strings, IdFn make_id);

  // Feeds one output token (forced prefix tokens of the prompt too, in order).
  ChatDelta push(int32_t token);
  // End of generation: completes a message in progress and releases held-back content.
  ChatDelta finish();

  // A stop string completed in the content: the caller should cancel generation; the content is
  // already cut before the match and later tokens are ignored.
  bool stop_matched() const { return stop_.stopped(); }
  // The parser rejected the stream (text after that point is not mapped); empty when fine.
  const std::string& parse_error() const { return parse_error_; }

  const std::string& content() const { return content_; }
  const std::string& reasoning() const { return reasoning_; }
  const std::vector<ToolCall>& tool_calls() const { return calls_; }

  // OpenAI finish_reason for how the engine ended: "tool_calls" when a tool call was made and the
  // model stopped on its own, "stop" for a stop token or stop string, "length" otherwise.
  std::string finish_reason(FinishReason engine_finish) const;

 private:
  enum class Route { kReasoning, kContent, kToolCall };
  static Route classify(const HarmonyMessage& m);
  void begin_message(const HarmonyMessage& m, ChatDelta& d);
  void add_text(const std::string& content, ChatDelta& d);
  void after_push(size_t completed_before, ChatDelta& d);

  HarmonyParser parser_;
  StopMatcher stop_;
  IdFn make_id_;
  bool started_ = false;  // the parser's current message has been routed
  size_t emitted_ = 0;    // bytes of the current message's content routed so far
  Route route_ = Route::kContent;
  bool done_ = false;
  std::string parse_error_;
  std::string content_, reasoning_;
  std::vector<ToolCall> calls_;
};

}  // namespace gptoss::server
