// The OpenAI API surface in native types: request parsing/validation for chat and text
// completions, and the JSON of responses, stream chunks and errors (OpenAI's shapes).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <variant>
#include <vector>

#include "engine/sampler.h"
#include "server/chat_mapper.h"
#include "tokenizer/harmony.h"

namespace gptoss::server {

// An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
struct ApiError {
  int status = 400;
  std::string type = "invalid_request_error";
  std::string message;
  std::string param;  // empty → null
  std::string code;   // empty → null
};
std::string error_json(const ApiError& e);

// Fields shared by /v1/chat/completions and /v1/completions.
struct CommonParams {
  std::string model;  // empty when the request did not name one
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  int64_t max_tokens = 0;      // 0 = not given (generate until the context is full)
  SamplingParams sampling;     // temperature/top_p default 1 (OpenAI); seed random unless given
  std::vector<std::string> stop;
};

struct ChatParams : CommonParams {
  std::string tool_choice = "auto";  // auto | none | required | function
  std::string forced_function;       // tool_choice {"type": "function", "function": {"name": X}}
  Conversation conversation;
};

struct CompletionParams : CommonParams {
  bool prompt_is_ids = false;  // prompt given as an array of token ids
  std::string prompt_text;
  std::vector<int32_t> prompt_ids;
};

template <typename T>
using Parsed = std::variant<T, ApiError>;

// Parses and validates a chat completions body. `served_model` is the one model name accepted
// (a different "model" → 404 model_not_found). `random_seed` is used when the request has no seed.
Parsed<ChatParams> parse_chat_request(const std::string& body, const std::string& served_model, uint64_t random_seed);
Parsed<CompletionParams> parse_completion_request(const std::string& body, const std::string& served_model,
                                                  uint64_t random_seed);

// Prompt tokens of a chat request: the harmony rendering of the conversation, then the forced
// start of a tool call for tool_choice "required" / a named function. `forced` receives those
// extra tokens (the caller feeds them to the output parser first).
Parsed<std::vector<int32_t>> chat_prompt_tokens(const Tokenizer& tok, const ChatParams& p,
                                                std::vector<int32_t>* forced);

struct Usage {
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0;
};
nlohmann::json usage_json(const Usage& u);

// Identity of one response: "chatcmpl-…" / "cmpl-…", unix time, model name.
struct ResponseMeta {
  std::string id;
  int64_t created = 0;
  std::string model;
};

// Non-streaming chat completion from the mapped output.
nlohmann::json chat_completion_json(const ResponseMeta& m, const ChatOutputMapper& out, const std::string& finish,
                                    const Usage& u);
// One "chat.completion.chunk": `delta` is the choice's delta object; finish empty → null.
// With include_usage every chunk carries "usage": null (the last one is usage_chunk).
nlohmann::json chat_chunk_json(const ResponseMeta& m, nlohmann::json delta, const std::string& finish,
                               bool include_usage);
// The delta object for what one token added (content / reasoning_content / tool_calls).
nlohmann::json chat_delta_json(const ChatDelta& d);
// The final usage chunk of a stream: "choices": [] and the usage.
nlohmann::json chat_usage_chunk_json(const ResponseMeta& m, const Usage& u);

nlohmann::json completion_json(const ResponseMeta& m, const std::string& text, const std::string& finish,
                               const Usage& u);
nlohmann::json completion_chunk_json(const ResponseMeta& m, const std::string& text, const std::string& finish,
                                     bool include_usage);
nlohmann::json completion_usage_chunk_json(const ResponseMeta& m, const Usage& u);

// "data: <json>\n\n"
std::string sse_event(const nlohmann::json& j);
inline constexpr const char* kSseDone = "data: [DONE]\n\n";

}  // namespace gptoss::server
