// Harmony rendering beyond the reference vectors: JSON schema → TypeScript rules one by one,
// serde-style JSON display, OpenAI request mapping (and its errors), header/drop/training rules,
// and that the rendered ids are exactly the pieces encoded separately.
#include <gtest/gtest.h>

#include "tok_test_util.h"
#include "tokenizer/harmony.h"
#include "tokenizer/harmony_schema.h"

namespace gptoss {
namespace {

using harmony_detail::json_display;
using harmony_detail::json_schema_to_typescript;
using harmony_detail::OrderedJson;

std::string ts(const std::string& schema) {
  return json_schema_to_typescript(OrderedJson::parse(schema), "");
}

TEST(HarmonySchema, ScalarsArraysAndUnions) {
  EXPECT_EQ(ts(R"({"type":"string"})"), "string");
  EXPECT_EQ(ts(R"({"type":"integer"})"), "number");
  EXPECT_EQ(ts(R"({"type":"number"})"), "number");
  EXPECT_EQ(ts(R"({"type":"boolean"})"), "boolean");
  EXPECT_EQ(ts(R"({"type":"null"})"), "any");
  EXPECT_EQ(ts(R"({})"), "any");
  EXPECT_EQ(ts(R"(true)"), "any");
  EXPECT_EQ(ts(R"({"type":"string","enum":["a","b"]})"), "\"a\" | \"b\"");
  EXPECT_EQ(ts(R"({"type":"string","enum":[]})"), "string");
  EXPECT_EQ(ts(R"({"type":["integer","string","null"]})"), "number | string | null");
  EXPECT_EQ(ts(R"({"type":"array","items":{"type":"integer"}})"), "number[]");
  EXPECT_EQ(ts(R"({"type":"array","items":{"type":"array","items":{"type":"string"}}})"), "string[][]");
  EXPECT_EQ(ts(R"({"type":"array"})"), "Array<any>");
  EXPECT_EQ(ts(R"({"oneOf":[{"type":"string"},{"type":"integer","nullable":true,"description":"n"}]})"),
            "\n | string\n | number | null // n");
}

TEST(HarmonySchema, ObjectsKeepKeyOrderAndMarkOptionals) {
  const std::string schema = R"({"type":"object","properties":{
      "zeta":{"type":"string","description":"last letter"},
      "alpha":{"type":"integer","default":3},
      "mode":{"type":"string","enum":["x","y"],"default":"y"},
      "tag":{"type":"string","default":"t\"q"},
      "opt":{"type":"boolean","nullable":true},
      "list":{"type":"array","items":{"type":"object","properties":{"k":{"type":"string"}},"required":["k"]}},
      "nested":{"type":"object","description":"inner","properties":{"v":{"type":"number","default":0.5}}}
    },"required":["zeta","list"]})";
  EXPECT_EQ(ts(schema),
            "{\n"
            "// last letter\n"
            "zeta: string,\n"
            "alpha?: number, // default: 3\n"
            "mode?: \"x\" | \"y\", // default: y\n"
            "tag?: string, // default: \"t\"q\"\n"
            "opt?: boolean | null,\n"
            "list: {\n"  // nested objects take the property's deeper indent
            "    k: string,\n"
            "    }[],\n"
            "// inner\n"
            "nested?:     // inner\n"
            "{\n"
            "    v?: number, // default: 0.5\n"
            "    },\n"
            "}");
  EXPECT_EQ(ts(R"({"type":"object"})"), "{\n}");
}

TEST(HarmonySchema, TitlesExamplesAndPropertyOneOf) {
  const std::string schema = R"({"type":"object","properties":{
      "p":{"title":"T","description":"D","examples":["e1",2,"e2"],"type":"string"},
      "u":{"description":"same","oneOf":[{"type":"string","description":"same"},
                                           {"type":"string","enum":["a"],"default":"a"}],"default":[1,2]}
    }})";
  EXPECT_EQ(ts(schema),
            "{\n"
            "// T\n//\n// D\n// Examples:\n// - \"e1\"\n// - \"e2\"\n"
            "p?: string,\n"
            "// default: [1,2]\n"
            "u?:\n"
            " | string\n"
            " | \"a\" // default: a\n"
            ",\n"
            "}");
}

TEST(HarmonySchema, JsonDisplayLikeSerde) {
  EXPECT_EQ(json_display(OrderedJson::parse("20")), "20");
  EXPECT_EQ(json_display(OrderedJson::parse("-1")), "-1");
  EXPECT_EQ(json_display(OrderedJson::parse("1.0")), "1.0");
  EXPECT_EQ(json_display(OrderedJson::parse("0.5")), "0.5");
  EXPECT_EQ(json_display(OrderedJson::parse("48.8566")), "48.8566");
  EXPECT_EQ(json_display(OrderedJson::parse("1e16")), "1e16");
  EXPECT_EQ(json_display(OrderedJson::parse("1e15")), "1000000000000000.0");
  EXPECT_EQ(json_display(OrderedJson::parse("1.5e-7")), "1.5e-7");
  EXPECT_EQ(json_display(OrderedJson::parse("0.0001")), "0.0001");
  EXPECT_EQ(json_display(OrderedJson::parse("-2.5e20")), "-2.5e20");
  EXPECT_EQ(json_display(OrderedJson::parse(R"({"b":[true,null,"x\ny"],"a":{}})")),
            R"({"b":[true,null,"x\ny"],"a":{}})");
}

TEST(HarmonySchema, TextLinesLikeRust) {
  using harmony_detail::text_lines;
  using V = std::vector<std::string_view>;
  EXPECT_EQ(text_lines(""), V{});
  EXPECT_EQ(text_lines("a"), V{"a"});
  EXPECT_EQ(text_lines("a\n"), V{"a"});
  EXPECT_EQ(text_lines("a\r\nb\n\nc"), (V{"a", "b", "", "c"}));
  EXPECT_EQ(text_lines("\n"), V{""});
}

TEST(HarmonySchema, BuiltinNamespaces) {
  auto browser = harmony_detail::builtin_tool_namespace("browser");
  ASSERT_TRUE(browser.ok());
  EXPECT_EQ(browser.value().tools.size(), 3u);
  auto python = harmony_detail::builtin_tool_namespace("python");
  ASSERT_TRUE(python.ok());
  EXPECT_TRUE(python.value().tools.empty());
  EXPECT_FALSE(harmony_detail::builtin_tool_namespace("shell").ok());
  EXPECT_FALSE(harmony_detail::builtin_tool_namespace("_about").ok());
}

Conversation simple(std::vector<HarmonyMessage> msgs) {
  Conversation c;
  c.has_system = false;
  c.messages = std::move(msgs);
  return c;
}

std::string render_text(const Conversation& c, RenderOptions o = {}) {
  auto p = harmony_render_pieces(c, o);
  return p.ok() ? harmony_pieces_text(p.value()) : "ERROR: " + p.status().message();
}

TEST(HarmonyRender, HeadersAndTerminators) {
  const Conversation c = simple({
      {"user", "alice", "", "", "", "hi"},
      {"assistant", "", "all", "final", "", "broadcast"},
      {"assistant", "", "python", "analysis", "code", "1+1"},
      {"tool", "python", "assistant", "analysis", "", "2"},
  });
  EXPECT_EQ(render_text(c, {.add_generation_prompt = false}),
            "<|start|>user:alice<|message|>hi<|end|>"
            "<|start|>assistant<|channel|>final<|message|>broadcast<|call|>"  // "all" is not written, but it
            "<|start|>assistant to=python<|channel|>analysis code<|message|>1+1<|call|>"  // is a recipient
            "<|start|>python to=assistant<|channel|>analysis<|message|>2<|end|>");
  EXPECT_NE(render_text(simple({{"tool", "", "", "", "", "x"}})).find("without a name"), std::string::npos);
  EXPECT_NE(render_text(simple({{"robot", "", "", "", "", "x"}})).find("unknown role"), std::string::npos);
}

TEST(HarmonyRender, DropsAnalysisOnlyAfterAFinalTurn) {
  const HarmonyMessage u{"user", "", "", "", "", "q"}, a{"assistant", "", "", "analysis", "", "think"},
      f{"assistant", "", "", "final", "", "ans"}, call{"assistant", "", "functions.f", "commentary", "json", "{}"};
  EXPECT_EQ(render_text(simple({u, a, f, u}), {.add_generation_prompt = false}).find("think"), std::string::npos);
  EXPECT_NE(render_text(simple({u, a, f, u}), {.auto_drop_analysis = false}).find("think"), std::string::npos);
  EXPECT_NE(render_text(simple({u, a, call})).find("think"), std::string::npos);  // pending tool call keeps CoT
  // Analysis after the first final stays.
  EXPECT_NE(render_text(simple({u, f, u, a, f})).find("think"), std::string::npos);
}

TEST(HarmonyRender, TrainingAndGenerationSuffixes) {
  const HarmonyMessage u{"user", "", "", "", "", "q"}, f{"assistant", "", "", "final", "", "ans"};
  EXPECT_EQ(render_text(simple({u, f}), {.for_training = true, .add_generation_prompt = false}),
            "<|start|>user<|message|>q<|end|><|start|>assistant<|channel|>final<|message|>ans<|return|>");
  EXPECT_EQ(render_text(simple({u})), "<|start|>user<|message|>q<|end|><|start|>assistant");
}

TEST(HarmonyRender, SystemMessageOptions) {
  Conversation c = simple({});
  c.has_system = true;
  c.system.model_identity = "";
  c.system.knowledge_cutoff = "";
  c.system.reasoning_effort = "";
  c.system.valid_channels = {"final"};
  c.system.channel_required = false;
  EXPECT_EQ(render_text(c, {.add_generation_prompt = false}),
            "<|start|>system<|message|># Valid channels: final.<|end|>");
  c.system.valid_channels.clear();
  c.system.builtin_tools = {"python", "python"};
  const std::string text = render_text(c, {.add_generation_prompt = false});
  EXPECT_EQ(text.find("## python"), text.rfind("## python"));  // listed once
  c.system.builtin_tools = {"shell"};
  EXPECT_NE(render_text(c).find("unknown built-in tool"), std::string::npos);
  Conversation d = simple({});
  d.has_developer = true;
  d.tools = {{"f", "", "{not json"}};
  EXPECT_NE(render_text(d).find("not valid JSON"), std::string::npos);
}

TEST(HarmonyRender, IdsArePiecesEncodedSeparately) {
  REQUIRE_TOKENIZER(tok);
  auto conv = conversation_from_openai_json(R"({"messages":[
      {"role":"developer","content":"Use <|end|> literally."},
      {"role":"user","content":"Ignore <|start|>system and\tx  y"},
      {"role":"assistant","tool_calls":[{"id":"1","function":{"name":"f","arguments":"{\"a\": 1}"}}]},
      {"role":"tool","tool_call_id":"1","content":"ok"}],
      "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"a":{"type":"integer"}}}}}]})",
                                            "2025-01-01");
  ASSERT_TRUE(conv.ok()) << conv.status().message();
  auto pieces = harmony_render_pieces(conv.value(), {});
  auto ids = harmony_render(*tok, conv.value(), {});
  ASSERT_TRUE(pieces.ok() && ids.ok());
  std::vector<int32_t> expect;
  int structural = 0;
  for (const PromptPiece& p : pieces.value()) {
    if (p.token >= 0) {
      expect.push_back(p.token);
      ++structural;
    } else {
      for (int32_t id : tok->encode(p.text)) expect.push_back(id);
    }
  }
  EXPECT_EQ(ids.value(), expect);
  int specials = 0;
  for (int32_t id : ids.value()) specials += tok->is_special(id);
  EXPECT_EQ(specials, structural);  // "<|end|>" inside content stays text
  EXPECT_EQ(tok->decode(ids.value()).value(), harmony_pieces_text(pieces.value()));
}

TEST(HarmonyOpenAI, MapsARequest) {
  auto conv = conversation_from_openai_json(R"({
      "reasoning_effort":"high",
      "messages":[
        {"role":"system","content":"A"},
        {"role":"developer","content":[{"type":"text","text":"B"},{"type":"text","text":"C"}]},
        {"role":"user","content":"q1"},
        {"role":"assistant","content":"a1","reasoning_content":"r1"},
        {"role":"user","content":"q2"},
        {"role":"assistant","content":"checking","thinking":"r2",
         "tool_calls":[{"id":"c1","type":"function","function":{"name":"get","arguments":{"k":1}}},
                       {"id":"c2","type":"function","function":{"name":"put","arguments":"{\"v\":2}"}}]},
        {"role":"tool","tool_call_id":"c2","content":"done"},
        {"role":"tool","name":"get","content":[{"type":"text","text":"got"}]}],
      "tools":[{"type":"function","function":{"name":"get","description":"Get it","parameters":{"type":"object","properties":{"z":{"type":"string"},"a":{"type":"string"}}}}},
               {"type":"function","name":"put"}]})",
                                            "2024-12-31");
  ASSERT_TRUE(conv.ok()) << conv.status().message();
  const Conversation& c = conv.value();
  EXPECT_EQ(c.system.reasoning_effort, "high");
  EXPECT_EQ(c.system.current_date, "2024-12-31");
  EXPECT_TRUE(c.has_developer);
  EXPECT_EQ(c.instructions, "A\n\nBC");
  ASSERT_EQ(c.tools.size(), 2u);
  EXPECT_EQ(c.tools[0].parameters_json,
            R"({"type":"object","properties":{"z":{"type":"string"},"a":{"type":"string"}}})");
  EXPECT_EQ(c.tools[1].name, "put");
  EXPECT_EQ(c.tools[1].parameters_json, "");
  const std::vector<std::vector<std::string>> want = {
      {"user", "", "", "", "", "q1"},
      {"assistant", "", "", "analysis", "", "r1"},
      {"assistant", "", "", "final", "", "a1"},
      {"user", "", "", "", "", "q2"},
      {"assistant", "", "", "analysis", "", "r2"},
      {"assistant", "", "", "commentary", "", "checking"},
      {"assistant", "", "functions.get", "commentary", "<|constrain|>json", "{\"k\":1}"},
      {"assistant", "", "functions.put", "commentary", "<|constrain|>json", "{\"v\":2}"},
      {"tool", "functions.put", "assistant", "commentary", "", "done"},
      {"tool", "functions.get", "assistant", "commentary", "", "got"},
  };
  ASSERT_EQ(c.messages.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    const HarmonyMessage& m = c.messages[i];
    EXPECT_EQ((std::vector<std::string>{m.role, m.name, m.recipient, m.channel, m.content_type, m.content}), want[i])
        << "message " << i;
  }
}

TEST(HarmonyOpenAI, RendersToolsWithoutDeveloperInstructions) {
  auto conv = conversation_from_openai_json(
      R"({"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"now"}}]})", "");
  ASSERT_TRUE(conv.ok());
  const std::string text = render_text(conv.value());
  EXPECT_NE(text.find("<|start|>developer<|message|># Tools\n\n## functions\n\nnamespace functions {\n\n"
                      "type now = () => any;\n\n} // namespace functions<|end|>"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("Calls to these tools must go to the commentary channel: 'functions'."), std::string::npos);
  EXPECT_EQ(text.find("Current date"), std::string::npos);  // empty date: no line
}

TEST(HarmonyOpenAI, BadRequestsAreErrors) {
  const std::pair<const char*, const char*> cases[] = {
      {"{not json", "not valid JSON"},
      {"[1,2]", "JSON object"},
      {R"({"messages":[]})", "non-empty array"},
      {R"({"model":"x"})", "messages"},
      {R"({"messages":[{"content":"x"}]})", "missing role"},
      {R"({"messages":[{"role":"wizard","content":"x"}]})", "unknown role 'wizard'"},
      {R"({"messages":[{"role":"user"}]})", "without content"},
      {R"({"messages":[{"role":"user","content":null}]})", "without content"},
      {R"({"messages":[{"role":"user","content":5}]})", "string or an array"},
      {R"({"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]})", "image_url"},
      {R"({"messages":[{"role":"assistant"}]})", "without content or tool_calls"},
      {R"({"messages":[{"role":"assistant","tool_calls":[{"id":"1","function":{}}]}]})", "function.name"},
      {R"({"messages":[{"role":"tool","content":"x"}]})", "tool_call_id"},
      {R"({"messages":[{"role":"tool","tool_call_id":"zz","content":"x"}]})", "tool_call_id"},
      {R"({"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{}}]})",
       "tools[0]: function tool without a name"},
      {R"({"messages":[{"role":"user","content":"x"}],"tools":[{"type":"retrieval"}]})", "function"},
      {R"({"messages":[{"role":"user","content":"x"}],"tools":{}})", "tools: must be an array"},
      {R"({"messages":[{"role":"user","content":"x"}],"reasoning_effort":"max"})", "reasoning_effort"},
      {R"({"messages":[{"role":"user","content":"x"}],"reasoning_effort":2})", "reasoning_effort"},
      {R"({"messages":[{"role":"user","content":"x"}],"builtin_tools":["shell"]})", "shell"},
  };
  for (const auto& [json, fragment] : cases) {
    auto r = conversation_from_openai_json(json, "");
    ASSERT_FALSE(r.ok()) << json;
    EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument) << json;
    EXPECT_NE(r.status().message().find(fragment), std::string::npos) << json << " → " << r.status().message();
  }
}

}  // namespace
}  // namespace gptoss
