// HarmonyParser beyond the reference vectors: the model-output shapes the engine meets (reasoning
// then answer, tool calls in every header order, truncation, stray text), non-strict recovery,
// streaming deltas, and the mapping to reasoning / content / tool calls.
#include <gtest/gtest.h>

#include "tok_test_util.h"
#include "tokenizer/harmony.h"

namespace gptoss {
namespace {

struct ParseRun {
  std::vector<HarmonyMessage> messages;
  std::string error;       // first error from push() or finish()
  std::string deltas;      // concatenation of every last_content_delta()
  HarmonyMessage current;  // parser.current() before finish()
};

ParseRun parse(const Tokenizer& tok, const std::string& text, bool strict = true, bool finish = true,
               std::optional<std::string> role = std::string("assistant")) {
  HarmonyParser p(tok, HarmonyParser::Options{.strict = strict, .initial_role = role});
  ParseRun r;
  for (int32_t id : tok.encode(text, /*allow_special=*/true)) {
    Status st = p.push(id);
    if (!st.ok()) {
      r.error = st.message();
      r.messages = p.messages();
      return r;
    }
    r.deltas += p.last_content_delta();
  }
  r.current = p.current();
  if (finish) {
    Status st = p.finish();
    if (!st.ok()) r.error = st.message();
    r.deltas += p.last_content_delta();
  }
  r.messages = p.messages();
  return r;
}

void expect_msg(const HarmonyMessage& m, const std::string& role, const std::string& channel,
                const std::string& recipient, const std::string& content_type, const std::string& content) {
  EXPECT_EQ(m.role, role);
  EXPECT_EQ(m.channel, channel);
  EXPECT_EQ(m.recipient, recipient);
  EXPECT_EQ(m.content_type, content_type);
  EXPECT_EQ(m.content, content);
}

TEST(HarmonyParser, ReasoningThenFinal) {
  REQUIRE_TOKENIZER(tok);
  const ParseRun r = parse(*tok,
                           "<|channel|>analysis<|message|>User says hi. Greet back.<|end|>"
                           "<|start|>assistant<|channel|>final<|message|>Hello! How can I help?<|return|>");
  ASSERT_TRUE(r.error.empty()) << r.error;
  ASSERT_EQ(r.messages.size(), 2u);
  expect_msg(r.messages[0], "assistant", "analysis", "", "", "User says hi. Greet back.");
  expect_msg(r.messages[1], "assistant", "final", "", "", "Hello! How can I help?");
  EXPECT_EQ(r.deltas, "User says hi. Greet back.Hello! How can I help?");
  const AssistantOutput out = assistant_output_from_messages(r.messages);
  EXPECT_EQ(out.reasoning, "User says hi. Greet back.");
  EXPECT_EQ(out.content, "Hello! How can I help?");
  EXPECT_TRUE(out.tool_calls.empty());
}

TEST(HarmonyParser, ToolCallHeaderOrders) {
  REQUIRE_TOKENIZER(tok);
  const std::string args = "{\"city\":\"Paris\"}";
  const std::pair<std::string, std::string> headers[] = {
      {"<|channel|>commentary to=functions.get_weather <|constrain|>json", "<|constrain|>json"},
      {" to=functions.get_weather<|channel|>commentary <|constrain|>json", "<|constrain|>json"},
      {" to=functions.get_weather<|channel|>commentary<|constrain|>json", "<|constrain|>json"},
      {"<|channel|>commentary to=functions.get_weather<|constrain|>json", "<|constrain|>json"},
      {" to=functions.get_weather<|channel|>commentary json", "json"},
      {"<|channel|>commentary to=functions.get_weather", ""},
  };
  for (const auto& [header, ctype] : headers) {
    const ParseRun r = parse(*tok, header + "<|message|>" + args + "<|call|>");
    ASSERT_TRUE(r.error.empty()) << header << ": " << r.error;
    ASSERT_EQ(r.messages.size(), 1u) << header;
    expect_msg(r.messages[0], "assistant", "commentary", "functions.get_weather", ctype, args);
    const AssistantOutput out = assistant_output_from_messages(r.messages);
    ASSERT_EQ(out.tool_calls.size(), 1u);
    EXPECT_EQ(out.tool_calls[0].name, "get_weather");
    EXPECT_EQ(out.tool_calls[0].arguments, args);
  }
}

TEST(HarmonyParser, BuiltinToolCallAndToolResult) {
  REQUIRE_TOKENIZER(tok);
  const ParseRun r = parse(*tok,
                           "<|channel|>analysis to=browser.search code<|message|>{\"query\":\"x\"}<|call|>"
                           "<|start|>browser.search to=assistant<|channel|>analysis<|message|>results<|end|>",
                           true, true);
  ASSERT_TRUE(r.error.empty()) << r.error;
  ASSERT_EQ(r.messages.size(), 2u);
  expect_msg(r.messages[0], "assistant", "analysis", "browser.search", "code", "{\"query\":\"x\"}");
  expect_msg(r.messages[1], "tool", "analysis", "assistant", "", "results");
  EXPECT_EQ(r.messages[1].name, "browser.search");
  const AssistantOutput out = assistant_output_from_messages(r.messages);
  ASSERT_EQ(out.tool_calls.size(), 1u);
  EXPECT_EQ(out.tool_calls[0].name, "browser.search");  // not a function: the recipient verbatim
}

TEST(HarmonyParser, TruncatedStreams) {
  REQUIRE_TOKENIZER(tok);
  // Cut in the content: finish() completes the message.
  ParseRun r = parse(*tok, "<|channel|>final<|message|>The answer is");
  ASSERT_TRUE(r.error.empty()) << r.error;
  ASSERT_EQ(r.messages.size(), 1u);
  expect_msg(r.messages[0], "assistant", "final", "", "", "The answer is");
  // Cut inside a multi-byte character: the held bytes become U+FFFD at the end.
  const std::vector<int32_t> emoji = tok->encode("\xF0\x9F\x92\x96");
  HarmonyParser p(*tok, {});
  for (int32_t id : tok->encode("<|channel|>final<|message|>ok ", true)) ASSERT_TRUE(p.push(id).ok());
  ASSERT_TRUE(p.push(emoji[0]).ok());
  EXPECT_EQ(p.last_content_delta(), "");
  EXPECT_EQ(p.current_content(), "ok ");
  ASSERT_TRUE(p.finish().ok());
  EXPECT_EQ(p.last_content_delta(), "\xEF\xBF\xBD");
  ASSERT_EQ(p.messages().size(), 1u);
  EXPECT_EQ(p.messages()[0].content, "ok \xEF\xBF\xBD");
  EXPECT_EQ(p.current_content(), "");
  // Cut in a header: strict mode reports it, non-strict recovers the words.
  r = parse(*tok, "<|channel|>final<|message|>Hi<|end|><|start|>assistant<|channel|>ana");
  EXPECT_NE(r.error.find("header"), std::string::npos);
  EXPECT_EQ(r.messages.size(), 1u);
  r = parse(*tok, "<|channel|>final<|message|>Hi<|end|><|start|>assistant<|channel|>ana", /*strict=*/false);
  ASSERT_TRUE(r.error.empty()) << r.error;
  ASSERT_EQ(r.messages.size(), 2u);
  expect_msg(r.messages[1], "assistant", "ana", "", "", "");
  // The stream ends right after <|start|>: nothing to report in non-strict mode.
  r = parse(*tok, "<|channel|>final<|message|>Hi<|end|><|start|>", false);
  EXPECT_TRUE(r.error.empty());
  EXPECT_EQ(r.messages.size(), 1u);
  // No tokens at all.
  r = parse(*tok, "", false);
  EXPECT_TRUE(r.error.empty());
  EXPECT_TRUE(r.messages.empty());
}

TEST(HarmonyParser, HeaderWithoutMessageToken) {
  REQUIRE_TOKENIZER(tok);
  const std::string text = "<|channel|>final The answer is 4<|end|>";
  ParseRun r = parse(*tok, text, /*strict=*/true);
  EXPECT_FALSE(r.error.empty());  // the <|end|> stays header text; EOS arrives inside the header
  r = parse(*tok, text, /*strict=*/false);
  ASSERT_TRUE(r.error.empty()) << r.error;
  ASSERT_EQ(r.messages.size(), 1u);
  expect_msg(r.messages[0], "assistant", "final", "", "", "The answer is 4");
  EXPECT_EQ(r.deltas, "The answer is 4");  // the recovered words reach the streaming consumer
  // After <|start|> the first word is the role, and a to= word the recipient.
  r = parse(*tok, "<|start|>assistant to=functions.f<|channel|>commentary {\"a\":1}<|call|>", false, true,
            std::nullopt);
  ASSERT_TRUE(r.error.empty()) << r.error;
  ASSERT_EQ(r.messages.size(), 1u);
  expect_msg(r.messages[0], "assistant", "commentary", "functions.f", "", "{\"a\":1}");
}

TEST(HarmonyParser, TextAfterReturn) {
  REQUIRE_TOKENIZER(tok);
  const std::string text = "<|channel|>final<|message|>Done.<|return|>stray words";
  ParseRun r = parse(*tok, text, /*strict=*/true);
  EXPECT_NE(r.error.find("expecting <|start|>"), std::string::npos) << r.error;
  ASSERT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(r.messages[0].content, "Done.");
  r = parse(*tok, text, /*strict=*/false);
  ASSERT_TRUE(r.error.empty()) << r.error;
  ASSERT_EQ(r.messages.size(), 2u);
  expect_msg(r.messages[1], "assistant", "", "", "", "stray words");
  // A second answer without <|start|>assistant is still parsed in non-strict mode.
  r = parse(*tok, "<|channel|>analysis<|message|>a<|end|><|channel|>final<|message|>b<|return|><|end|>", false);
  ASSERT_TRUE(r.error.empty()) << r.error;
  ASSERT_EQ(r.messages.size(), 2u);
  expect_msg(r.messages[1], "assistant", "final", "", "", "b");
}

TEST(HarmonyParser, MissingEndBeforeNextStart) {
  REQUIRE_TOKENIZER(tok);
  const std::string text =
      "<|channel|>analysis<|message|>Think<|start|>assistant<|channel|>final<|message|>Hi<|return|>";
  ParseRun r = parse(*tok, text, /*strict=*/true);
  ASSERT_TRUE(r.error.empty()) << r.error;
  ASSERT_EQ(r.messages.size(), 1u);  // upstream: the special tokens are content text
  EXPECT_EQ(r.messages[0].content, "Think<|start|>assistant<|channel|>final<|message|>Hi");
  r = parse(*tok, text, /*strict=*/false);
  ASSERT_TRUE(r.error.empty()) << r.error;
  ASSERT_EQ(r.messages.size(), 2u);
  expect_msg(r.messages[0], "assistant", "analysis", "", "", "Think");
  expect_msg(r.messages[1], "assistant", "final", "", "", "Hi");
}

TEST(HarmonyParser, MalformedHeadersAreErrors) {
  REQUIRE_TOKENIZER(tok);
  ParseRun r = parse(*tok, "<|start|>robot<|message|>x<|end|>", true, true, std::nullopt);
  EXPECT_NE(r.error.find("unknown role: robot"), std::string::npos) << r.error;
  r = parse(*tok, "<|channel|><|message|>x", true);
  EXPECT_NE(r.error.find("no channel value"), std::string::npos) << r.error;
  r = parse(*tok, "<|start|><|message|>x", true, true, std::nullopt);
  EXPECT_NE(r.error.find("did not contain a role"), std::string::npos) << r.error;
  r = parse(*tok, "<|channel|>final a b c<|message|>x", true);
  EXPECT_NE(r.error.find("unexpected tokens remaining in message header: [a]"), std::string::npos) << r.error;
  r = parse(*tok, "hello", true, true, std::nullopt);
  EXPECT_NE(r.error.find("expecting <|start|>"), std::string::npos) << r.error;
}

TEST(HarmonyParser, HeaderParsingRules) {
  REQUIRE_TOKENIZER(tok);
  // A single word after the role is a recipient; a leading word equal to the role is dropped.
  ParseRun r = parse(*tok, "<|start|>assistant python<|message|>print(1)<|call|>", true, true, std::nullopt);
  ASSERT_TRUE(r.error.empty()) << r.error;
  expect_msg(r.messages[0], "assistant", "", "python", "", "print(1)");
  // Roles read from the header.
  for (const char* role : {"user", "system", "developer", "assistant"}) {
    r = parse(*tok, std::string("<|start|>") + role + "<|message|>x<|end|>", true, true, std::nullopt);
    ASSERT_TRUE(r.error.empty()) << r.error;
    EXPECT_EQ(r.messages[0].role, role);
    EXPECT_EQ(r.messages[0].name, "");
  }
  // The channel name ends at whitespace or '<'.
  r = parse(*tok, "<|channel|>final  <|message|>x", true);
  ASSERT_TRUE(r.error.empty()) << r.error;
  EXPECT_EQ(r.messages[0].channel, "final");
}

TEST(HarmonyParser, CurrentHeaderAndDeltasWhileStreaming) {
  REQUIRE_TOKENIZER(tok);
  HarmonyParser p(*tok, {});
  EXPECT_FALSE(p.in_content());
  std::string deltas;
  const std::string content = "naïve café — 日本語 👍🏽!";
  for (int32_t id : tok->encode("<|channel|>final<|message|>" + content, true)) {
    ASSERT_TRUE(p.push(id).ok());
    deltas += p.last_content_delta();
    EXPECT_EQ(deltas, p.current_content());  // deltas always add up to the content so far
  }
  EXPECT_TRUE(p.in_content());
  EXPECT_EQ(p.current().channel, "final");
  EXPECT_EQ(p.current().role, "assistant");
  EXPECT_EQ(deltas, content);
  ASSERT_TRUE(p.push(harmony_tokens::kReturn).ok());
  EXPECT_FALSE(p.in_content());
  EXPECT_EQ(p.last_content_delta(), "");
  ASSERT_EQ(p.messages().size(), 1u);
  EXPECT_EQ(p.messages()[0].content, content);
}

TEST(HarmonyParser, AssistantOutputMapping) {
  const std::vector<HarmonyMessage> msgs = {
      {"assistant", "", "", "analysis", "", "think 1"},
      {"assistant", "", "", "commentary", "", "Let me check."},
      {"assistant", "", "functions.lookup", "commentary", "<|constrain|>json", "{\"q\":1}"},
      {"tool", "functions.lookup", "assistant", "commentary", "", "{\"r\":2}"},
      {"assistant", "", "", "analysis", "", "think 2"},
      {"assistant", "", "", "final", "", "Answer."},
  };
  const AssistantOutput out = assistant_output_from_messages(msgs);
  EXPECT_EQ(out.reasoning, "think 1\nthink 2");
  EXPECT_EQ(out.content, "Let me check.\nAnswer.");
  ASSERT_EQ(out.tool_calls.size(), 1u);
  EXPECT_EQ(out.tool_calls[0].name, "lookup");
  EXPECT_EQ(out.tool_calls[0].arguments, "{\"q\":1}");
}

}  // namespace
}  // namespace gptoss
