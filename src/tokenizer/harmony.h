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
  std::string role;          // "system", "developer", "user", "assistant", "tool"
  std::string name;          // tool messages: author name, e.g. "functions.get_weather"
  std::string recipient;     // e.g. "functions.get_weather"; empty = none
  std::string channel;       // "analysis", "commentary", "final" or empty
  std::string content_type;  // e.g. "<|constrain|>json" or "json"; empty = none
  std::string content;
};

// The system message's fields. Empty strings (and an empty channel list) leave their line out.
struct SystemOptions {
  std::string model_identity = "You are ChatGPT, a large language model trained by OpenAI.";
  std::string knowledge_cutoff = "2024-06";
  std::string current_date;                 // "YYYY-MM-DD"; empty = no date line
  std::string reasoning_effort = "medium";  // low | medium | high
  std::vector<std::string> builtin_tools;   // "browser", "python"
  std::vector<std::string> valid_channels = {"analysis", "commentary", "final"};
  bool channel_required = true;  // adds " Channel must be included for every message."
};

// A conversation as harmony sees it: system options, developer instructions + function tools,
// and the remaining messages in order.
struct Conversation {
  bool has_system = true;
  SystemOptions system;
  bool has_developer = false;  // a developer message is rendered (instructions and/or tools)
  std::string instructions;    // empty = no "# Instructions" section
  std::vector<ToolSpec> tools;
  std::vector<HarmonyMessage> messages;  // user / assistant / tool messages
};

struct RenderOptions {
  bool auto_drop_analysis = true;     // drop analysis before the first final when the last assistant msg is final
  bool for_training = false;          // last assistant final message ends with <|return|>
  bool add_generation_prompt = true;  // append <|start|>assistant
};

// One element of a rendered prompt: a structural token (token >= 0, one of harmony_tokens) or a
// piece of text that is encoded on its own with ordinary BPE (token < 0).
struct PromptPiece {
  int32_t token = -1;
  std::string text;
};

// Renders to pieces; needs no tokenizer. Errors for tool messages without a name, unknown
// built-in tools and tool parameters that are not valid JSON.
Result<std::vector<PromptPiece>> harmony_render_pieces(const Conversation& conv, const RenderOptions& opts);
// The prompt as text, structural tokens written as their literal names ("<|start|>").
std::string harmony_pieces_text(const std::vector<PromptPiece>& pieces);
// Renders to token ids (structural tokens as ids, every text piece encoded without specials).
// Errors also when the tokenizer does not define a structural token the prompt needs.
Result<std::vector<int32_t>> harmony_render(const Tokenizer& tok, const Conversation& conv, const RenderOptions& opts);

// Builds a Conversation from an OpenAI chat-completions request JSON (messages, tools,
// reasoning_effort, tool_calls, reasoning_content / thinking). Errors for invalid JSON, unknown
// roles, missing content, tools without names, bad reasoning_effort. `date` empty = no date line.
// Mapping: system/developer contents join (blank line between) into the developer instructions;
// user → user; assistant reasoning_content/thinking → analysis, content → final (commentary when
// the message also has tool_calls: a preamble), each tool call → commentary message
// to=functions.NAME, content type <|constrain|>json, content = arguments; tool → author
// functions.NAME (from "name" or the matching tool_call_id) to=assistant on commentary.
// Non-standard extras: "builtin_tools": ["browser", "python"].
Result<Conversation> conversation_from_openai_json(const std::string& request_json, const std::string& date);

// Streaming parser of model output (harmony StreamableParser, spec §7.6).
//
// Strict mode follows upstream exactly: a stop token inside a header is kept as header text, an
// unparsable header or a token other than <|start|> between messages is an error. Non-strict mode
// never loses text: a header that ends with a stop token (no <|message|>) or at the end of the
// stream becomes a message whose content is the header's words (channel and a leading to=
// recipient taken out), tokens after a finished message start a new assistant header, and
// <|start|> inside content ends that message (strict mode keeps it as content text, as upstream).
// Content bytes are decoded incrementally: incomplete UTF-8 is held until it completes, invalid
// bytes and unknown ids become U+FFFD.
class HarmonyParser {
 public:
  struct Options {
    bool strict = true;
    std::optional<std::string> initial_role = std::string("assistant");  // nullopt: expect <|start|>
  };
  HarmonyParser(const Tokenizer& tok, Options options);

  // Feeds one token. Returns an error for malformed streams (the parser state is then unspecified;
  // stop feeding it). In non-strict mode only an unparsable header with <|message|> is an error.
  Status push(int32_t token);
  // Signals end of stream: completes a message in progress (flushing held bytes as U+FFFD).
  Status finish();

  const std::vector<HarmonyMessage>& messages() const { return messages_; }
  // The message being parsed now (header known once <|message|> was seen; empty otherwise).
  const HarmonyMessage& current() const { return current_; }
  bool in_content() const { return state_ == State::kContent; }
  std::string current_content() const { return current_.content; }
  // Text added to the current message's content by the last push() or finish() (complete UTF-8
  // only; bytes flushed when a message ends are included). Empty when nothing was added.
  const std::string& last_content_delta() const { return last_delta_; }

 private:
  enum class State { kExpectStart, kHeader, kContent };
  Status parse_header();
  void recover_header_as_message();
  void end_message();

  const Tokenizer& tok_;
  Options options_;
  State state_;
  std::optional<std::string> next_role_;  // role of the header being read, when known beforehand
  std::vector<HarmonyMessage> messages_;
  HarmonyMessage current_;
  std::vector<int32_t> header_tokens_;
  StreamDecoder decoder_;
  std::string last_delta_;
};

// What an assistant turn means to an API client (spec §7.6 "Mapping to an API response").
struct AssistantToolCall {
  std::string name;       // "get_weather" for recipient functions.get_weather; other recipients verbatim
  std::string arguments;  // the message content (JSON text for <|constrain|>json)
};
struct AssistantOutput {
  std::string reasoning;  // analysis messages, joined by "\n"
  std::string content;    // final messages and commentary preambles, joined by "\n"
  std::vector<AssistantToolCall> tool_calls;
};
// Maps parsed assistant messages: a message with a recipient is a tool call; analysis → reasoning;
// final, commentary without recipient and channel-less messages → content. Non-assistant
// messages are skipped.
AssistantOutput assistant_output_from_messages(const std::vector<HarmonyMessage>& messages);

}  // namespace gptoss
