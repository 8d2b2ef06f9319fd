// ChatOutputMapper on crafted harmony token streams (real o200k_harmony tokenizer): reasoning vs
// content vs tool calls, streamed deltas adding up to the final message, stop strings, finish
// reasons, forced tool-call prefixes; and StopMatcher on its own.
#include "server/chat_mapper.h"

#include <gtest/gtest.h>

#include <memory>

namespace gptoss::server {
namespace {

const Tokenizer& tokenizer() {
  static std::unique_ptr<Tokenizer> tok = [] {
    auto t = Tokenizer::load(GPTOSS_TOKENIZER);
    EXPECT_TRUE(t.ok()) << t.status().message() << " (run scripts/setup to fetch assets/tokenizer.json)";
    return t.ok() ? std::move(t).value() : nullptr;
  }();
  return *tok;
}

// Everything the mapper emitted while streaming, concatenated.
struct Streamed {
  std::string reasoning, content;
  std::vector<ToolCall> calls;
  int deltas = 0;
  void add(const ChatDelta& d) {
    deltas += d.empty() ? 0 : 1;
    reasoning += d.reasoning;
    content += d.content;
    for (const auto& t : d.tool_calls) {
      if (t.start) {
        ASSERT_EQ(t.index, static_cast<int>(calls.size())) << "tool call indexes must count up from 0";
        calls.push_back({t.id, t.name, t.arguments});
      } else {
        ASSERT_LT(t.index, static_cast<int>(calls.size())) << "arguments before the call started";
        calls[t.index].arguments += t.arguments;
      }
    }
  }
};

struct Mapped {
  Streamed streamed;
  std::unique_ptr<ChatOutputMapper> mapper;
};

// Feeds `text` (harmony, special tokens allowed) token by token, then finish().
Mapped run(const std::string& text, std::vector<std::string> stops = {}, const std::string& forced = "") {
  Mapped m;
  int n = 0;
  m.mapper =
      std::make_unique<ChatOutputMapper>(tokenizer(), std::move(stops), [&n] { return "call_" + std::to_string(n++); });
  // The forced prefix is encoded on its own, as the server does when it appends it to the prompt.
  for (int32_t t : tokenizer().encode(forced, /*allow_special=*/true)) m.streamed.add(m.mapper->push(t));
  for (int32_t t : tokenizer().encode(text, /*allow_special=*/true)) m.streamed.add(m.mapper->push(t));
  m.streamed.add(m.mapper->finish());
  return m;
}

void expect_consistent(const Mapped& m) {
  EXPECT_EQ(m.streamed.reasoning, m.mapper->reasoning());
  EXPECT_EQ(m.streamed.content, m.mapper->content());
  ASSERT_EQ(m.streamed.calls.size(), m.mapper->tool_calls().size());
  for (size_t i = 0; i < m.streamed.calls.size(); ++i) {
    EXPECT_EQ(m.streamed.calls[i].id, m.mapper->tool_calls()[i].id);
    EXPECT_EQ(m.streamed.calls[i].name, m.mapper->tool_calls()[i].name);
    EXPECT_EQ(m.streamed.calls[i].arguments, m.mapper->tool_calls()[i].arguments);
  }
}

TEST(ChatMapper, AnalysisThenFinal) {
  auto m =
      run("<|channel|>analysis<|message|>User says hi. Reply politely.<|end|>"
          "<|start|>assistant<|channel|>final<|message|>Hello! How can I help — ça va? 🙂<|return|>");
  EXPECT_EQ(m.mapper->reasoning(), "User says hi. Reply politely.");
  EXPECT_EQ(m.mapper->content(), "Hello! How can I help — ça va? 🙂");
  EXPECT_TRUE(m.mapper->tool_calls().empty());
  EXPECT_EQ(m.mapper->finish_reason(FinishReason::kStop), "stop");
  EXPECT_EQ(m.mapper->finish_reason(FinishReason::kLength), "length");
  EXPECT_TRUE(m.mapper->parse_error().empty());
  EXPECT_GT(m.streamed.deltas, 4) << "text must stream token by token, not at the end";
  expect_consistent(m);
}

TEST(ChatMapper, ToolCallWithConstrainedJson) {
  const std::string args = R"({"location":"San Francisco","unit":"celsius"})";
  auto m =
      run("<|channel|>analysis<|message|>Need to use function get_weather.<|end|>"
          "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>" +
          args + "<|call|>");
  EXPECT_EQ(m.mapper->reasoning(), "Need to use function get_weather.");
  EXPECT_EQ(m.mapper->content(), "");
  ASSERT_EQ(m.mapper->tool_calls().size(), 1u);
  EXPECT_EQ(m.mapper->tool_calls()[0].name, "get_weather");
  EXPECT_EQ(m.mapper->tool_calls()[0].arguments, args);
  EXPECT_EQ(m.mapper->tool_calls()[0].id, "call_0");
  EXPECT_EQ(m.mapper->finish_reason(FinishReason::kStop), "tool_calls");
  // A length cut in the middle of a call is still "length".
  EXPECT_EQ(m.mapper->finish_reason(FinishReason::kLength), "length");
  expect_consistent(m);
}

TEST(ChatMapper, RecipientBeforeChannelAndPreambleContent) {
  auto m =
      run("<|channel|>commentary<|message|>Let me look that up.<|end|>"
          "<|start|>assistant to=functions.lookup<|channel|>commentary json<|message|>{\"q\": \"x\"}<|call|>");
  EXPECT_EQ(m.mapper->content(), "Let me look that up.");
  ASSERT_EQ(m.mapper->tool_calls().size(), 1u);
  EXPECT_EQ(m.mapper->tool_calls()[0].name, "lookup");
  EXPECT_EQ(m.mapper->tool_calls()[0].arguments, "{\"q\": \"x\"}");
  expect_consistent(m);
}

TEST(ChatMapper, TwoToolCallsGetTwoIndexes) {
  auto m =
      run("<|channel|>commentary to=functions.a <|constrain|>json<|message|>{}<|call|>"
          "<|start|>assistant<|channel|>commentary to=functions.b_c <|constrain|>json<|message|>{\"k\":[1,2]}<|call|>");
  ASSERT_EQ(m.mapper->tool_calls().size(), 2u);
  EXPECT_EQ(m.mapper->tool_calls()[0].name, "a");
  EXPECT_EQ(m.mapper->tool_calls()[1].name, "b_c");
  EXPECT_EQ(m.mapper->tool_calls()[1].id, "call_1");
  EXPECT_EQ(m.mapper->tool_calls()[1].arguments, "{\"k\":[1,2]}");
  expect_consistent(m);
}

TEST(ChatMapper, BuiltinToolCallsStayInReasoning) {
  auto m = run("<|channel|>analysis to=browser.search <|constrain|>json<|message|>{\"query\":\"x\"}<|call|>");
  EXPECT_TRUE(m.mapper->tool_calls().empty());
  EXPECT_EQ(m.mapper->reasoning(), "{\"query\":\"x\"}");
  EXPECT_EQ(m.mapper->content(), "");
}

TEST(ChatMapper, ForcedToolCallPrefix) {
  // tool_choice "required": the prompt already holds "<|channel|>commentary to=functions."; the
  // model writes the name and the rest.
  auto m = run("get_weather <|constrain|>json<|message|>{\"location\":\"Oslo\"}<|call|>", {},
               "<|channel|>commentary to=functions.");
  ASSERT_EQ(m.mapper->tool_calls().size(), 1u);
  EXPECT_EQ(m.mapper->tool_calls()[0].name, "get_weather");
  EXPECT_EQ(m.mapper->tool_calls()[0].arguments, "{\"location\":\"Oslo\"}");
}

TEST(ChatMapper, StopStringCutsContentAcrossTokens) {
  auto m =
      run("<|channel|>analysis<|message|>The word END here is reasoning.<|end|>"
          "<|start|>assistant<|channel|>final<|message|>alpha beta gamma THE END delta epsilon<|return|>",
          {"THE END", "zzz"});
  EXPECT_TRUE(m.mapper->stop_matched());
  EXPECT_EQ(m.mapper->content(), "alpha beta gamma ");
  // Stop strings apply to the answer, not to the reasoning.
  EXPECT_EQ(m.mapper->reasoning(), "The word END here is reasoning.");
  EXPECT_EQ(m.mapper->finish_reason(FinishReason::kCancelled), "stop");
  EXPECT_EQ(m.mapper->finish_reason(FinishReason::kLength), "stop");
  expect_consistent(m);
}

TEST(ChatMapper, HeldBackTextIsReleasedWhenNoStopFollows) {
  // "gam" could start "gamma-ray"; it is held, then released at the end.
  auto m = run("<|channel|>final<|message|>alpha beta gam<|return|>", {"gamma-ray"});
  EXPECT_FALSE(m.mapper->stop_matched());
  EXPECT_EQ(m.mapper->content(), "alpha beta gam");
  expect_consistent(m);
}

TEST(ChatMapper, TruncatedStreamKeepsWhatWasSaid) {
  // Generation cut by max_tokens in the middle of the final answer.
  auto m = run("<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>final<|message|>partial ans");
  EXPECT_EQ(m.mapper->reasoning(), "think");
  EXPECT_EQ(m.mapper->content(), "partial ans");
  EXPECT_EQ(m.mapper->finish_reason(FinishReason::kLength), "length");
  expect_consistent(m);
}

TEST(StopMatcher, HoldsPartialMatchesAndCutsAtTheFirstMatch) {
  StopMatcher none;
  EXPECT_EQ(none.push("abc"), "abc");
  EXPECT_EQ(none.flush(), "");

  StopMatcher s({"</s>", "", "STOP"});
  EXPECT_EQ(s.push("hello <"), "hello ");
  EXPECT_EQ(s.push("/"), "");
  EXPECT_EQ(s.push("x> ST"), "</x> ");
  EXPECT_EQ(s.push("O"), "");
  EXPECT_EQ(s.push("P and more"), "");
  EXPECT_TRUE(s.stopped());
  EXPECT_EQ(s.push("later"), "");
  EXPECT_EQ(s.flush(), "");

  // The earliest match wins even when a later-listed stop completes in the same push.
  StopMatcher t({"bc", "ab"});
  EXPECT_EQ(t.push("xabc"), "x");
  // A flush without a match releases the held tail.
  StopMatcher u({"abc"});
  EXPECT_EQ(u.push("xxab"), "xx");
  EXPECT_EQ(u.flush(), "ab");
  // Repeated prefix characters: "aab" must still find "ab" ending in the next push.
  StopMatcher v({"aab"});
  EXPECT_EQ(v.push("caa"), "c");
  EXPECT_EQ(v.push("aab"), "aa");
  EXPECT_TRUE(v.stopped());
}

}  // namespace
}  // namespace gptoss::server
