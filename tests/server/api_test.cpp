// OpenAI request parsing and response JSON: every invalid field is a 400 naming the field,
// unknown models 404, defaults and extensions land in native types, tool conversations render to
// the harmony messages the model expects, and responses/chunks have OpenAI's shape.
#include "server/api.h"

#include <gtest/gtest.h>

#include "server/metrics.h"

namespace gptoss::server {
namespace {

using json = nlohmann::json;

const Tokenizer& tokenizer() {
  static std::unique_ptr<Tokenizer> tok = [] {
    auto t = Tokenizer::load(GPTOSS_TOKENIZER);
    EXPECT_TRUE(t.ok()) << t.status().message();
    return t.ok() ? std::move(t).value() : nullptr;
  }();
  return *tok;
}

json base_chat() {
  return {{"model", "m"}, {"messages", {{{"role", "user"}, {"content", "Hi"}}}}};
}

const ApiError* chat_error(const json& body) {
  static Parsed<ChatParams> keep = ChatParams{};
  keep = parse_chat_request(body.dump(), "m", 1);
  return std::get_if<ApiError>(&keep);
}

TEST(ApiParse, InvalidChatFieldsAre400NamingTheField) {
  struct Case {
    json patch;
    std::string param;
  };
  std::vector<Case> cases = {
      {{{"n", 2}}, "n"},
      {{{"n", "1"}}, "n"},
      {{{"stream", "yes"}}, "stream"},
      {{{"max_tokens", 0}}, "max_tokens"},
      {{{"max_tokens", 1.5}}, "max_tokens"},
      {{{"max_completion_tokens", -4}}, "max_completion_tokens"},
      {{{"temperature", 2.5}}, "temperature"},
      {{{"temperature", "hot"}}, "temperature"},
      {{{"top_p", 0}}, "top_p"},
      {{{"top_p", 1.2}}, "top_p"},
      {{{"presence_penalty", -3}}, "presence_penalty"},
      {{{"frequency_penalty", 2.01}}, "frequency_penalty"},
      {{{"min_p", 1}}, "min_p"},
      {{{"top_k", -1}}, "top_k"},
      {{{"repetition_penalty", 0}}, "repetition_penalty"},
      {{{"seed", "abc"}}, "seed"},
      {{{"stop", 5}}, "stop"},
      {{{"stop", {"a", "b", "c", "d", "e"}}}, "stop"},
      {{{"logprobs", true}}, "logprobs"},
      {{{"stream_options", 3}}, "stream_options"},
      {{{"stream_options", {{"include_usage", "y"}}}}, "stream_options.include_usage"},
      {{{"tool_choice", "sometimes"}}, "tool_choice"},
      {{{"tool_choice", "required"}}, "tool_choice"},  // no tools
      {{{"messages", json::array()}}, "messages"},
      {{{"messages", "hi"}}, "messages"},
      {{{"messages", {{{"role", "alien"}, {"content", "x"}}}}}, "messages"},
      {{{"reasoning_effort", "max"}}, "messages"},
  };
  for (const auto& c : cases) {
    json body = base_chat();
    body.merge_patch(c.patch);
    const ApiError* e = chat_error(body);
    ASSERT_NE(e, nullptr) << body.dump();
    EXPECT_EQ(e->status, 400) << body.dump();
    EXPECT_EQ(e->param, c.param) << body.dump() << " → " << e->message;
    EXPECT_FALSE(e->message.empty());
  }
  auto not_json = parse_chat_request("{\"model\": ", "m", 1);
  ASSERT_TRUE(std::holds_alternative<ApiError>(not_json));
  EXPECT_EQ(std::get<ApiError>(not_json).status, 400);
  auto array = parse_chat_request("[1,2]", "m", 1);
  ASSERT_TRUE(std::holds_alternative<ApiError>(array));
  json other = base_chat();
  other["model"] = "gpt-4o";
  const ApiError* e = chat_error(other);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->status, 404);
  EXPECT_EQ(e->code, "model_not_found");
}

TEST(ApiParse, ChatFieldsMapToNativeTypes) {
  json body = base_chat();
  body.merge_patch({{"stream", true},
                    {"stream_options", {{"include_usage", true}}},
                    {"max_tokens", 100},
                    {"max_completion_tokens", 50},
                    {"temperature", 0.25},
                    {"top_p", 0.5},
                    {"top_k", 7},
                    {"min_p", 0.1},
                    {"presence_penalty", 0.5},
                    {"frequency_penalty", -0.5},
                    {"repetition_penalty", 1.1},
                    {"seed", -1},
                    {"stop", "###"},
                    {"reasoning_effort", "high"}});
  auto parsed = parse_chat_request(body.dump(), "m", 99);
  ASSERT_TRUE(std::holds_alternative<ChatParams>(parsed)) << std::get<ApiError>(parsed).message;
  const ChatParams& p = std::get<ChatParams>(parsed);
  EXPECT_TRUE(p.stream);
  EXPECT_TRUE(p.include_usage);
  EXPECT_EQ(p.max_tokens, 50);  // max_completion_tokens wins (it replaces max_tokens)
  EXPECT_FLOAT_EQ(p.sampling.temperature, 0.25f);
  EXPECT_FLOAT_EQ(p.sampling.top_p, 0.5f);
  EXPECT_EQ(p.sampling.top_k, 7);
  EXPECT_FLOAT_EQ(p.sampling.min_p, 0.1f);
  EXPECT_FLOAT_EQ(p.sampling.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(p.sampling.frequency_penalty, -0.5f);
  EXPECT_FLOAT_EQ(p.sampling.repetition_penalty, 1.1f);
  EXPECT_EQ(p.sampling.seed, ~uint64_t{0});
  EXPECT_EQ(p.stop, std::vector<std::string>{"###"});
  EXPECT_EQ(p.conversation.system.reasoning_effort, "high");
  EXPECT_TRUE(p.sampling.validate().ok());
  // Defaults: OpenAI's temperature/top_p 1, the server's random seed, no limit.
  auto d = parse_chat_request(base_chat().dump(), "m", 1234);
  const ChatParams& q = std::get<ChatParams>(d);
  EXPECT_FLOAT_EQ(q.sampling.temperature, 1.0f);
  EXPECT_FLOAT_EQ(q.sampling.top_p, 1.0f);
  EXPECT_EQ(q.sampling.seed, 1234u);
  EXPECT_EQ(q.max_tokens, 0);
  EXPECT_FALSE(q.stream);
  EXPECT_EQ(q.tool_choice, "auto");
}

json weather_tools() {
  return json::parse(R"([{"type":"function","function":{"name":"get_weather","description":"Weather now",
    "parameters":{"type":"object","properties":{"location":{"type":"string"}},"required":["location"]}}}])");
}

std::string render_text(const ChatParams& p, std::vector<int32_t>* forced) {
  auto ids = chat_prompt_tokens(tokenizer(), p, forced);
  EXPECT_TRUE(std::holds_alternative<std::vector<int32_t>>(ids));
  auto text = tokenizer().decode(std::get<std::vector<int32_t>>(ids));
  EXPECT_TRUE(text.ok());
  return text.ok() ? text.value() : std::string();
}

TEST(ApiParse, ToolRoundTripRendersCallAndResult) {
  json body = base_chat();
  body["tools"] = weather_tools();
  body["messages"] = json::parse(R"([
    {"role":"system","content":"Be brief."},
    {"role":"user","content":"Weather in Paris?"},
    {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function",
      "function":{"name":"get_weather","arguments":"{\"location\":\"Paris\"}"}}]},
    {"role":"tool","tool_call_id":"call_1","content":"{\"temp_c\":21,\"sky\":\"sunny\"}"}])");
  auto parsed = parse_chat_request(body.dump(), "m", 1);
  ASSERT_TRUE(std::holds_alternative<ChatParams>(parsed)) << std::get<ApiError>(parsed).message;
  std::vector<int32_t> forced;
  std::string text = render_text(std::get<ChatParams>(parsed), &forced);
  EXPECT_TRUE(forced.empty());
  // The developer message declares the tool; the call and its result are harmony messages.
  EXPECT_NE(text.find("type get_weather = (_: {"), std::string::npos) << text;
  EXPECT_NE(text.find("Be brief."), std::string::npos);
  EXPECT_NE(text.find("<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>"
                      "{\"location\":\"Paris\"}<|call|>"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"
                      "{\"temp_c\":21,\"sky\":\"sunny\"}<|end|>"),
            std::string::npos)
      << text;
  EXPECT_TRUE(text.ends_with("<|start|>assistant")) << text;
}

TEST(ApiParse, ToolChoiceVariants) {
  json body = base_chat();
  body["tools"] = weather_tools();
  std::vector<int32_t> forced;
  // none: the tools are not shown to the model.
  body["tool_choice"] = "none";
  auto none = parse_chat_request(body.dump(), "m", 1);
  EXPECT_EQ(render_text(std::get<ChatParams>(none), &forced).find("get_weather"), std::string::npos);
  // auto: shown, nothing forced.
  body["tool_choice"] = "auto";
  auto aut = parse_chat_request(body.dump(), "m", 1);
  EXPECT_NE(render_text(std::get<ChatParams>(aut), &forced).find("get_weather"), std::string::npos);
  EXPECT_TRUE(forced.empty());
  // required: the assistant message is started as a call to some function.
  body["tool_choice"] = "required";
  auto req = parse_chat_request(body.dump(), "m", 1);
  EXPECT_TRUE(render_text(std::get<ChatParams>(req), &forced)
                  .ends_with("<|start|>assistant<|channel|>commentary to=functions."));
  ASSERT_FALSE(forced.empty());
  EXPECT_EQ(forced[0], harmony_tokens::kChannel);
  // A named function is forced by name; an unknown name is a 400.
  body["tool_choice"] = {{"type", "function"}, {"function", {{"name", "get_weather"}}}};
  auto named = parse_chat_request(body.dump(), "m", 1);
  EXPECT_TRUE(render_text(std::get<ChatParams>(named), &forced).ends_with("commentary to=functions.get_weather"));
  body["tool_choice"] = {{"type", "function"}, {"function", {{"name", "get_time"}}}};
  const ApiError* e = chat_error(body);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->param, "tool_choice");
}

TEST(ApiParse, CompletionPrompts) {
  auto ok = [](const json& body) {
    auto p = parse_completion_request(body.dump(), "m", 1);
    EXPECT_TRUE(std::holds_alternative<CompletionParams>(p)) << body.dump();
    return std::holds_alternative<CompletionParams>(p) ? std::get<CompletionParams>(p) : CompletionParams{};
  };
  auto err = [](const json& body) {
    auto p = parse_completion_request(body.dump(), "m", 1);
    EXPECT_TRUE(std::holds_alternative<ApiError>(p)) << body.dump();
    return std::holds_alternative<ApiError>(p) ? std::get<ApiError>(p).param : std::string();
  };
  EXPECT_EQ(ok({{"prompt", "Once upon"}}).prompt_text, "Once upon");
  EXPECT_EQ(ok({{"prompt", {"One"}}}).prompt_text, "One");
  auto ids = ok({{"prompt", {1, 2, 3}}});
  EXPECT_TRUE(ids.prompt_is_ids);
  EXPECT_EQ(ids.prompt_ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(ok({{"prompt", {{4, 5}}}}).prompt_ids, (std::vector<int32_t>{4, 5}));
  EXPECT_EQ(err(json::object()), "prompt");
  EXPECT_EQ(err({{"prompt", ""}}), "prompt");
  EXPECT_EQ(err({{"prompt", {"a", "b"}}}), "prompt");
  EXPECT_EQ(err({{"prompt", {1, -2}}}), "prompt");
  EXPECT_EQ(err({{"prompt", 7}}), "prompt");
  EXPECT_EQ(err({{"prompt", "x"}, {"echo", true}}), "echo");
  EXPECT_EQ(err({{"prompt", "x"}, {"best_of", 3}}), "best_of");
  EXPECT_EQ(err({{"prompt", "x"}, {"n", 3}}), "n");
}

TEST(ApiJson, ShapesMatchOpenAi) {
  ResponseMeta meta{.id = "chatcmpl-1", .created = 7, .model = "m"};
  ChatOutputMapper out(tokenizer(), {}, [] { return std::string("call_x"); });
  for (int32_t t : tokenizer().encode(
           "<|channel|>analysis<|message|>r<|end|><|start|>assistant<|channel|>commentary to=functions.f "
           "<|constrain|>json<|message|>{}<|call|>",
           true))
    out.push(t);
  out.finish();
  json c =
      chat_completion_json(meta, out, "tool_calls", {.prompt_tokens = 10, .completion_tokens = 4, .cached_tokens = 3});
  EXPECT_EQ(c["object"], "chat.completion");
  EXPECT_EQ(c["choices"][0]["message"]["content"], nullptr);
  EXPECT_EQ(c["choices"][0]["message"]["reasoning_content"], "r");
  EXPECT_EQ(c["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "f");
  EXPECT_EQ(c["choices"][0]["message"]["tool_calls"][0]["type"], "function");
  EXPECT_EQ(c["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_EQ(c["usage"]["total_tokens"], 14);
  EXPECT_EQ(c["usage"]["prompt_tokens_details"]["cached_tokens"], 3);
  json chunk = chat_chunk_json(meta, {{"content", "x"}}, "", true);
  EXPECT_EQ(chunk["object"], "chat.completion.chunk");
  EXPECT_EQ(chunk["choices"][0]["finish_reason"], nullptr);
  EXPECT_TRUE(chunk.contains("usage") && chunk["usage"].is_null());
  EXPECT_FALSE(chat_chunk_json(meta, json::object(), "stop", false).contains("usage"));
  EXPECT_TRUE(chat_usage_chunk_json(meta, {}).at("choices").empty());
  ChatDelta d;
  d.tool_calls.push_back({.index = 0, .start = true, .id = "call_1", .name = "f", .arguments = ""});
  d.tool_calls.push_back({.index = 1, .start = false, .id = {}, .name = {}, .arguments = "{\"a\""});
  json dj = chat_delta_json(d);
  EXPECT_EQ(dj["tool_calls"][0]["id"], "call_1");
  EXPECT_EQ(dj["tool_calls"][0]["function"]["arguments"], "");
  EXPECT_FALSE(dj["tool_calls"][1].contains("id"));
  EXPECT_EQ(dj["tool_calls"][1]["function"]["arguments"], "{\"a\"");
  EXPECT_EQ(sse_event({{"a", 1}}), "data: {\"a\":1}\n\n");
  json err = json::parse(
      error_json({.status = 400, .type = "invalid_request_error", .message = "bad", .param = "n", .code = {}}));
  EXPECT_EQ(err["error"]["message"], "bad");
  EXPECT_EQ(err["error"]["param"], "n");
  EXPECT_EQ(err["error"]["code"], nullptr);
}

TEST(Metrics, HistogramIsCumulativeAndRouterSeriesAreListed) {
  // Binary fractions keep the sum exact; a value equal to a bound falls in that bucket (le).
  Histogram h({0.125, 0.5});
  for (double v : {0.0625, 0.125, 0.5, 3.0}) h.observe(v);
  std::string out;
  h.render(out, "x_seconds", "help");
  EXPECT_NE(out.find("x_seconds_bucket{le=\"0.125\"} 2\n"), std::string::npos) << out;
  EXPECT_NE(out.find("x_seconds_bucket{le=\"0.5\"} 3\n"), std::string::npos);
  EXPECT_NE(out.find("x_seconds_bucket{le=\"+Inf\"} 4\n"), std::string::npos);
  EXPECT_NE(out.find("x_seconds_count 4\n"), std::string::npos);
  EXPECT_NE(out.find("x_seconds_sum 3.6875\n"), std::string::npos);

  ServerMetrics m;
  m.count_request("/v1/completions", 200);
  m.count_request("/v1/completions", 200);
  m.count_request("/v1/completions", 429);
  EngineStats s;
  s.router.reset(2, 3, 2);
  s.router.counts = {1, 2, 3, 4, 5, 6};
  s.router.tokens = {3, 7};
  s.requests_queued = 5;
  s.kv_tokens_used = 25;
  s.kv_tokens_capacity = 100;
  std::string text = m.render(s);
  EXPECT_NE(text.find("gptoss_http_requests_total{route=\"/v1/completions\",code=\"200\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("gptoss_http_requests_total{route=\"/v1/completions\",code=\"429\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("gptoss_router_expert_selections_total{layer=\"1\",expert=\"2\"} 6\n"), std::string::npos);
  EXPECT_NE(text.find("gptoss_router_expert_selections_total{layer=\"0\",expert=\"0\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("gptoss_router_tokens_total{layer=\"1\"} 7\n"), std::string::npos);
  EXPECT_NE(text.find("gptoss_queue_depth 5\n"), std::string::npos);
  EXPECT_NE(text.find("gptoss_kv_usage_ratio 0.25\n"), std::string::npos);
  // Every sample line belongs to a series announced by # TYPE.
  std::istringstream lines(text);
  std::string line, typed;
  while (std::getline(lines, line)) {
    if (line.starts_with("# TYPE ")) {
      typed = line.substr(7, line.find(' ', 7) - 7);
    } else if (!line.starts_with("#")) {
      EXPECT_TRUE(line.starts_with(typed)) << line << " after TYPE " << typed;
    }
  }
}

}  // namespace
}  // namespace gptoss::server
