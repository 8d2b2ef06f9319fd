// OpenAI request parsing/validation and response JSON.
#include "server/api.h"

#include <cmath>
#include <optional>

namespace gptoss::server {

using json = nlohmann::json;

namespace {

ApiError bad(const std::string& param, const std::string& message) {
  return ApiError{.status = 400, .type = "invalid_request_error", .message = message, .param = param, .code = {}};
}

std::variant<json, ApiError> parse_body(const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return bad("", "We could not parse the JSON body of your request: it is not valid JSON.");
  if (!j.is_object()) return bad("", "The request body must be a JSON object.");
  return j;
}

bool present(const json& j, const char* key) {
  return j.contains(key) && !j.at(key).is_null();
}

// Reads an optional number in [lo, hi] (open ends as flagged) into *out.
std::optional<ApiError> read_number(const json& j, const char* key, double lo, bool lo_open, double hi, bool hi_open,
                                    float* out) {
  if (!present(j, key)) return std::nullopt;
  const json& v = j.at(key);
  if (!v.is_number()) return bad(key, fmt::format("'{}' must be a number.", key));
  double x = v.get<double>();
  bool ok = std::isfinite(x) && (lo_open ? x > lo : x >= lo) && (hi_open ? x < hi : x <= hi);
  if (!ok)
    return bad(key, fmt::format("'{}' must be in {}{}, {}{} (got {}).", key, lo_open ? "(" : "[", lo,
                                std::isinf(hi) ? "inf" : fmt::format("{}", hi), hi_open ? ")" : "]", x));
  *out = static_cast<float>(x);
  return std::nullopt;
}

std::optional<ApiError> read_int(const json& j, const char* key, int64_t lo, int64_t* out) {
  if (!present(j, key)) return std::nullopt;
  const json& v = j.at(key);
  if (!v.is_number_integer()) return bad(key, fmt::format("'{}' must be an integer.", key));
  int64_t x = v.is_number_unsigned() && v.get<uint64_t>() > INT64_MAX ? INT64_MAX : v.get<int64_t>();
  if (x < lo) return bad(key, fmt::format("'{}' must be >= {} (got {}).", key, lo, x));
  *out = x;
  return std::nullopt;
}

std::optional<ApiError> read_bool(const json& j, const char* key, bool* out) {
  if (!present(j, key)) return std::nullopt;
  if (!j.at(key).is_boolean()) return bad(key, fmt::format("'{}' must be a boolean.", key));
  *out = j.at(key).get<bool>();
  return std::nullopt;
}

std::optional<ApiError> read_stop(const json& j, std::vector<std::string>* out) {
  if (!present(j, "stop")) return std::nullopt;
  const json& v = j.at("stop");
  if (v.is_string()) {
    out->push_back(v.get<std::string>());
    return std::nullopt;
  }
  if (!v.is_array() || v.size() > 4) return bad("stop", "'stop' must be a string or an array of at most 4 strings.");
  for (const auto& s : v) {
    if (!s.is_string()) return bad("stop", "'stop' must be a string or an array of at most 4 strings.");
    out->push_back(s.get<std::string>());
  }
  return std::nullopt;
}

// Model, n, stream, limits, sampling and stop: the fields both endpoints share.
std::optional<ApiError> parse_common(const json& j, const std::string& served, uint64_t seed, CommonParams& p) {
  if (present(j, "model")) {
    if (!j.at("model").is_string()) return bad("model", "'model' must be a string.");
    p.model = j.at("model").get<std::string>();
    if (p.model != served)
      return ApiError{
          .status = 404,
          .type = "invalid_request_error",
          .message = fmt::format("The model '{}' does not exist (this server serves '{}').", p.model, served),
          .param = "model",
          .code = "model_not_found"};
  }
  int64_t n = 1;
  if (auto e = read_int(j, "n", 1, &n)) return e;
  if (n != 1) return bad("n", fmt::format("Only n = 1 is supported (got {}).", n));
  if (auto e = read_bool(j, "stream", &p.stream)) return e;
  if (present(j, "stream_options")) {
    const json& so = j.at("stream_options");
    if (!so.is_object()) return bad("stream_options", "'stream_options' must be an object.");
    if (auto e = read_bool(so, "include_usage", &p.include_usage))
      return bad("stream_options.include_usage", e->message);
  }
  if (auto e = read_int(j, "max_tokens", 1, &p.max_tokens)) return e;
  if (auto e = read_int(j, "max_completion_tokens", 1, &p.max_tokens)) return e;
  SamplingParams& s = p.sampling;
  if (auto e = read_number(j, "temperature", 0, false, 2, false, &s.temperature)) return e;
  if (auto e = read_number(j, "top_p", 0, true, 1, false, &s.top_p)) return e;
  if (auto e = read_number(j, "min_p", 0, false, 1, true, &s.min_p)) return e;
  if (auto e = read_number(j, "presence_penalty", -2, false, 2, false, &s.presence_penalty)) return e;
  if (auto e = read_number(j, "frequency_penalty", -2, false, 2, false, &s.frequency_penalty)) return e;
  if (auto e = read_number(j, "repetition_penalty", 0, true, INFINITY, true, &s.repetition_penalty)) return e;
  int64_t top_k = 0;
  if (auto e = read_int(j, "top_k", 0, &top_k)) return e;
  s.top_k = static_cast<int>(std::min<int64_t>(top_k, INT32_MAX));
  s.seed = seed;
  if (present(j, "seed")) {
    if (!j.at("seed").is_number_integer()) return bad("seed", "'seed' must be an integer.");
    s.seed = j.at("seed").is_number_unsigned() ? j.at("seed").get<uint64_t>()
                                               : static_cast<uint64_t>(j.at("seed").get<int64_t>());
  }
  if (auto e = read_stop(j, &p.stop)) return e;
  bool logprobs = false;
  if (present(j, "logprobs") && j.at("logprobs").is_boolean()) logprobs = j.at("logprobs").get<bool>();
  if (logprobs || (present(j, "logprobs") && j.at("logprobs").is_number() && j.at("logprobs").get<double>() > 0))
    return bad("logprobs", "logprobs are not supported by this server.");
  return std::nullopt;
}

std::optional<ApiError> parse_tool_choice(const json& j, ChatParams& p) {
  const bool has_tools = present(j, "tools") && j.at("tools").is_array() && !j.at("tools").empty();
  if (!present(j, "tool_choice")) return std::nullopt;
  const json& tc = j.at("tool_choice");
  if (tc.is_string()) {
    p.tool_choice = tc.get<std::string>();
    if (p.tool_choice != "auto" && p.tool_choice != "none" && p.tool_choice != "required")
      return bad("tool_choice", "'tool_choice' must be 'auto', 'none', 'required' or a function choice.");
  } else if (tc.is_object() && tc.value("type", "") == "function" && tc.contains("function") &&
             tc.at("function").is_object() && tc.at("function").contains("name") &&
             tc.at("function").at("name").is_string()) {
    p.tool_choice = "function";
    p.forced_function = tc.at("function").at("name").get<std::string>();
  } else {
    return bad("tool_choice", "'tool_choice' must be 'auto', 'none', 'required' or a function choice.");
  }
  if ((p.tool_choice == "required" || p.tool_choice == "function") && !has_tools)
    return bad("tool_choice", fmt::format("tool_choice '{}' needs 'tools'.", p.tool_choice));
  if (p.tool_choice == "function") {
    for (const auto& t : j.at("tools"))
      if (t.is_object() && t.contains("function") && t.at("function").is_object() &&
          t.at("function").value("name", "") == p.forced_function)
        return std::nullopt;
    return bad("tool_choice",
               fmt::format("tool_choice names the function '{}', which is not in 'tools'.", p.forced_function));
  }
  return std::nullopt;
}

}  // namespace

std::string error_json(const ApiError& e) {
  json err = {{"message", e.message},
              {"type", e.type},
              {"param", e.param.empty() ? json(nullptr) : json(e.param)},
              {"code", e.code.empty() ? json(nullptr) : json(e.code)}};
  return json{{"error", err}}.dump();
}

Parsed<ChatParams> parse_chat_request(const std::string& body, const std::string& served_model, uint64_t seed) {
  auto parsed = parse_body(body);
  if (auto* e = std::get_if<ApiError>(&parsed)) return *e;
  const json& j = std::get<json>(parsed);
  ChatParams p;
  if (auto e = parse_common(j, served_model, seed, p)) return *e;
  if (!j.contains("messages") || !j.at("messages").is_array() || j.at("messages").empty())
    return bad("messages", "'messages' must be a non-empty array.");
  if (auto e = parse_tool_choice(j, p)) return *e;
  auto conv = conversation_from_openai_json(body, /*date=*/"");
  if (!conv.ok()) return bad("messages", conv.status().message());
  p.conversation = std::move(conv).value();
  // "none": the model is not told about the tools, so it cannot call them.
  if (p.tool_choice == "none") {
    p.conversation.tools.clear();
    p.conversation.has_developer = !p.conversation.instructions.empty();
  }
  return p;
}

Parsed<CompletionParams> parse_completion_request(const std::string& body, const std::string& served_model,
                                                  uint64_t seed) {
  auto parsed = parse_body(body);
  if (auto* e = std::get_if<ApiError>(&parsed)) return *e;
  const json& j = std::get<json>(parsed);
  CompletionParams p;
  if (auto e = parse_common(j, served_model, seed, p)) return *e;
  if (!present(j, "prompt")) return bad("prompt", "'prompt' is required.");
  json prompt = j.at("prompt");
  // A one-element batch is the same as its element; larger batches would need n prompts.
  if (prompt.is_array() && prompt.size() == 1 && (prompt[0].is_string() || prompt[0].is_array()))
    prompt = json(prompt[0]);
  if (prompt.is_string()) {
    p.prompt_text = prompt.get<std::string>();
    if (p.prompt_text.empty()) return bad("prompt", "'prompt' must not be empty.");
  } else if (prompt.is_array() && !prompt.empty()) {
    p.prompt_is_ids = true;
    for (const auto& t : prompt) {
      if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > INT32_MAX)
        return bad("prompt", "'prompt' must be a string or an array of token ids (one prompt only).");
      p.prompt_ids.push_back(static_cast<int32_t>(t.get<int64_t>()));
    }
  } else {
    return bad("prompt", "'prompt' must be a non-empty string or an array of token ids (one prompt only).");
  }
  bool echo = false;
  if (auto e = read_bool(j, "echo", &echo)) return *e;
  if (echo) return bad("echo", "echo is not supported by this server.");
  int64_t best_of = 1;
  if (auto e = read_int(j, "best_of", 1, &best_of)) return *e;
  if (best_of != 1) return bad("best_of", "Only best_of = 1 is supported.");
  if (present(j, "suffix")) return bad("suffix", "suffix is not supported by this server.");
  return p;
}

Parsed<std::vector<int32_t>> chat_prompt_tokens(const Tokenizer& tok, const ChatParams& p,
                                                std::vector<int32_t>* forced) {
  auto rendered = harmony_render(tok, p.conversation, RenderOptions{});
  if (!rendered.ok()) return bad("messages", rendered.status().message());
  std::vector<int32_t> ids = std::move(rendered).value();
  forced->clear();
  if (p.tool_choice == "required" || p.tool_choice == "function") {
    // Start the assistant message as a function call; the model writes the rest (the name for
    // "required", then " <|constrain|>json<|message|>{arguments}<|call|>").
    forced->push_back(harmony_tokens::kChannel);
    for (int32_t t : tok.encode("commentary to=functions." + p.forced_function)) forced->push_back(t);
  }
  ids.insert(ids.end(), forced->begin(), forced->end());
  return ids;
}

json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}}};
}

namespace {
json tool_calls_json(const std::vector<ToolCall>& calls) {
  json arr = json::array();
  for (const auto& c : calls)
    arr.push_back({{"id", c.id}, {"type", "function"}, {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
  return arr;
}
}  // namespace

json chat_completion_json(const ResponseMeta& m, const ChatOutputMapper& out, const std::string& finish,
                          const Usage& u) {
  json msg = {{"role", "assistant"}};
  // OpenAI: content is null when the answer is only tool calls.
  msg["content"] = out.content().empty() && !out.tool_calls().empty() ? json(nullptr) : json(out.content());
  if (!out.reasoning().empty()) msg["reasoning_content"] = out.reasoning();
  if (!out.tool_calls().empty()) msg["tool_calls"] = tool_calls_json(out.tool_calls());
  msg["refusal"] = nullptr;
  json choice = {{"index", 0}, {"message", msg}, {"logprobs", nullptr}, {"finish_reason", finish}};
  return {{"id", m.id},
          {"object", "chat.completion"},
          {"created", m.created},
          {"model", m.model},
          {"system_fingerprint", "gptoss"},
          {"choices", json::array({choice})},
          {"usage", usage_json(u)}};
}

json chat_delta_json(const ChatDelta& d) {
  json delta = json::object();
  if (!d.reasoning.empty()) delta["reasoning_content"] = d.reasoning;
  if (!d.content.empty()) delta["content"] = d.content;
  if (!d.tool_calls.empty()) {
    json arr = json::array();
    for (const auto& t : d.tool_calls) {
      json c = {{"index", t.index}};
      if (t.start) {
        c["id"] = t.id;
        c["type"] = "function";
        c["function"] = {{"name", t.name}, {"arguments", t.arguments}};
      } else {
        c["function"] = {{"arguments", t.arguments}};
      }
      arr.push_back(std::move(c));
    }
    delta["tool_calls"] = std::move(arr);
  }
  return delta;
}

json chat_chunk_json(const ResponseMeta& m, json delta, const std::string& finish, bool include_usage) {
  json choice = {{"index", 0},
                 {"delta", std::move(delta)},
                 {"logprobs", nullptr},
                 {"finish_reason", finish.empty() ? json(nullptr) : json(finish)}};
  json j = {{"id", m.id},       {"object", "chat.completion.chunk"}, {"created", m.created},
            {"model", m.model}, {"system_fingerprint", "gptoss"},    {"choices", json::array({choice})}};
  if (include_usage) j["usage"] = nullptr;
  return j;
}

json chat_usage_chunk_json(const ResponseMeta& m, const Usage& u) {
  return {{"id", m.id},
          {"object", "chat.completion.chunk"},
          {"created", m.created},
          {"model", m.model},
          {"system_fingerprint", "gptoss"},
          {"choices", json::array()},
          {"usage", usage_json(u)}};
}

json completion_json(const ResponseMeta& m, const std::string& text, const std::string& finish, const Usage& u) {
  json choice = {{"index", 0}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", finish}};
  return {{"id", m.id},       {"object", "text_completion"},      {"created", m.created},
          {"model", m.model}, {"choices", json::array({choice})}, {"usage", usage_json(u)}};
}

json completion_chunk_json(const ResponseMeta& m, const std::string& text, const std::string& finish,
                           bool include_usage) {
  json choice = {{"index", 0},
                 {"text", text},
                 {"logprobs", nullptr},
                 {"finish_reason", finish.empty() ? json(nullptr) : json(finish)}};
  json j = {{"id", m.id},
            {"object", "text_completion"},
            {"created", m.created},
            {"model", m.model},
            {"choices", json::array({choice})}};
  if (include_usage) j["usage"] = nullptr;
  return j;
}

json completion_usage_chunk_json(const ResponseMeta& m, const Usage& u) {
  return {{"id", m.id},       {"object", "text_completion"}, {"created", m.created},
          {"model", m.model}, {"choices", json::array()},    {"usage", usage_json(u)}};
}

std::string sse_event(const json& j) {
  // error_handler_t::replace: invalid UTF-8 (never expected: text comes from the decoder) cannot
  // abort a stream.
  return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

}  // namespace gptoss::server
