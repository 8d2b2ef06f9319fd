// The harmony chat format: rendering an OpenAI-style conversation to prompt tokens, and parsing
// the model's output tokens (streaming) back into messages. Spec §7; vectors in shared/reference/harmony.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "tokenizer/tokenizer.h"

namespace gptoss {

// One function tool (OpenAI "tools": [{"type":"function","function":{...}}]).
struct ToolSpec {
  std::string name;
  std::string description;
  std::string parameters_json;  // JSON schema text with key order preserved; empty = no parameters
};

struct HarmonyMessage {
  std::string role;            // "system", "developer", "user", "assistant", "tool"
  std::string name;            // tool messages: author name, e.g. "functions.get_weather"
  std::string recipient;       // e.g. "functions.get_weather"; empty = none
  std::string channel;         // "analysis", "commentary", "final" or empty
  std::string content_type;    // e.g. "<|constrain|>json" or "json"; empty = none
  std::string content;
};

struct SystemOptions {
  std::string model_identity = "You are ChatGPT, a large language model trained by OpenAI.";
  std::string knowledge_cutoff = "2024-06";
  std::string current_date;    // "YYYY-MM-DD"; empty = no date line
  std::string reasoning_effort = "medium";  // low | medium | high
  std::vector<std::string> builtin_tools;   // "browser", "python"
};

// A conversation as harmony sees it: system options, developer instructions + function tools,
// and the remaining messages in order.
struct Conversation {
  bool has_system = true;
  SystemOptions system;
  bool has_developer = false;
  std::string instructions;
  std::vector<ToolSpec> tools;
  std::vector<HarmonyMessage> messages;  // user / assistant / tool messages
};

struct RenderOptions {
  bool auto_drop_analysis = true;  // drop analysis before the first final when the last assistant msg is final
  bool for_training = false;       // last assistant final message ends with <|return|>
  bool add_generation_prompt = true;  // append <|start|>assistant
};

// Renders to token ids (structural tokens as ids, every text piece encoded without specials).
Result<std::vector<int32_t>> harmony_render(const Tokenizer& tok, const Conversation& conv, const RenderOptions& opts);

// Builds a Conversation from an OpenAI chat-completions request JSON (messages, tools,
// reasoning_effort, tool_calls, reasoning_content / thinking). Errors for invalid JSON, unknown
// roles, tools without names, bad reasoning_effort. `date` empty = no date line.
Result<Conversation> conversation_from_openai_json(const std::string& request_json, const std::string& date);

// Streaming parser of model output (harmony StreamableParser).
class HarmonyParser {
 public:
  struct Options {
    bool strict = true;
    std::optional<std::string> initial_role = std::string("assistant");  // nullopt: expect <|start|>
  };
  HarmonyParser(const Tokenizer& tok, Options options);

  // Feeds one token. Returns an error for malformed streams in strict mode (the text seen so far
  // is kept in current_content()).
  Status push(int32_t token);
  // Signals end of stream: completes a message in progress.
  Status finish();

  const std::vector<HarmonyMessage>& messages() const { return messages_; }
  // The message being parsed now (header known once <|message|> was seen).
  const HarmonyMessage& current() const { return current_; }
  bool in_content() const { return state_ == State::kContent; }
  std::string current_content() const { return current_.content; }
  // Text added to the current message's content by the last push() (complete UTF-8 only).
  const std::string& last_content_delta() const { return last_delta_; }

 private:
  enum class State { kExpectStart, kHeader, kContent };
  Status parse_header();
  void end_message();

  const Tokenizer& tok_;
  Options options_;
  State state_;
  std::vector<HarmonyMessage> messages_;
  HarmonyMessage current_;
  std::vector<int32_t> header_tokens_;
  StreamDecoder decoder_;
  std::string last_delta_;
};

}  // namespace gptoss
