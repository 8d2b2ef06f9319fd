// Every harmony reference vector in shared/reference/harmony/cases (openai/harmony's own tests):
// render cases byte-exact as text and as ids, parse cases (messages, errors, streaming checks).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tok_test_util.h"
#include "tokenizer/harmony.h"
#include "tokenizer/utf8.h"

namespace gptoss {
namespace {

using Json = nlohmann::ordered_json;
const std::string kHarmonyDir = std::string(GPTOSS_SHARED) + "/reference/harmony";

std::vector<std::string> case_names() {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(kHarmonyDir + "/cases", ec)) {
    if (e.path().extension() == ".json") names.push_back(e.path().stem().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::string str_or_empty(const Json& j, const char* key) {
  return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : std::string();
}

// Upstream's comparison: read as UTF-8, CRLF → LF, strip trailing whitespace.
std::string expected_text(const Json& c) {
  std::string text = c["expected_file"].is_string()
                         ? tok_test::read_file(kHarmonyDir + "/" + c["expected_file"].get<std::string>())
                         : c["expected_text"].get<std::string>();
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\r' && i + 1 < text.size() && text[i + 1] == '\n') continue;
    out += text[i];
  }
  while (!out.empty() && std::isspace(static_cast<unsigned char>(out.back()))) out.pop_back();
  return out;
}

HarmonyMessage message_from(const Json& m) {
  return {str_or_empty(m, "role"),    str_or_empty(m, "name"),         str_or_empty(m, "recipient"),
          str_or_empty(m, "channel"), str_or_empty(m, "content_type"), str_or_empty(m, "content")};
}

Conversation conversation_from_case(const Json& c) {
  const Json& n = c["notes"];
  Conversation conv;
  conv.has_system = n["system_message"].get<bool>();
  conv.system.model_identity = str_or_empty(c, "model_identity");
  conv.system.knowledge_cutoff = str_or_empty(c, "knowledge_cutoff");
  conv.system.current_date = str_or_empty(c, "conversation_start_date");
  conv.system.reasoning_effort = str_or_empty(c, "reasoning_effort");
  conv.system.valid_channels.clear();
  if (n["valid_channels"].is_array()) conv.system.valid_channels = n["valid_channels"].get<std::vector<std::string>>();
  conv.system.channel_required = n["channel_required"].is_boolean() && n["channel_required"].get<bool>();
  if (c["builtin_tools"].is_array()) conv.system.builtin_tools = c["builtin_tools"].get<std::vector<std::string>>();
  conv.has_developer = n["developer_message"].get<bool>();
  conv.instructions = str_or_empty(c, "instructions");
  if (c["tools"].is_array()) {
    for (const Json& t : c["tools"]) {
      const Json& f = t["function"];
      conv.tools.push_back({f["name"].get<std::string>(), str_or_empty(f, "description"),
                            f["parameters"].is_null() ? std::string() : f["parameters"].dump()});
    }
  }
  for (const Json& m : c["messages"]) conv.messages.push_back(message_from(m));
  return conv;
}

void run_render_case(const Json& c, const Tokenizer& tok) {
  const std::string mode = c["mode"];
  const Json& n = c["notes"];
  RenderOptions opts;
  // null means Rust passed no config, which drops nothing (the README: it never matters here).
  opts.auto_drop_analysis = n["auto_drop_analysis"].is_boolean() && n["auto_drop_analysis"].get<bool>();
  opts.for_training = mode == "render_for_training";
  opts.add_generation_prompt = mode == "render_for_completion";
  const Conversation conv = conversation_from_case(c);
  const std::string expected = expected_text(c);

  auto pieces = harmony_render_pieces(conv, opts);
  ASSERT_TRUE(pieces.ok()) << pieces.status().message();
  EXPECT_EQ(harmony_pieces_text(pieces.value()), expected);

  auto ids = harmony_render(tok, conv, opts);
  ASSERT_TRUE(ids.ok()) << ids.status().message();
  if (n["compare"] == "tokens") {
    // Upstream encodes the expected text with all specials allowed and compares ids; this also
    // proves piecewise encoding equals whole-string encoding for these prompts.
    EXPECT_EQ(tok_test::ids_text(ids.value()), tok_test::ids_text(tok.encode(expected, /*allow_special=*/true)));
  } else {
    auto text = tok.decode(ids.value());
    ASSERT_TRUE(text.ok());
    EXPECT_EQ(text.value(), expected);
  }
}

std::vector<int32_t> parse_ids_text(const std::string& text) {
  std::vector<int32_t> ids;
  std::istringstream ss(text);
  long long v;
  while (ss >> v) ids.push_back(static_cast<int32_t>(v));
  return ids;
}

// The parser input as (segment index, token) pairs so stream checks can address positions.
std::vector<std::pair<int, int32_t>> parse_input(const Json& c, const Tokenizer& tok) {
  std::vector<std::pair<int, int32_t>> out;
  if (c.contains("input_segments")) {
    int seg = 0;
    for (const Json& s : c["input_segments"]) {
      std::vector<int32_t> ids;
      if (s.contains("tokens")) {
        // u32 ids beyond INT32_MAX (u32::MAX in one case) wrap to negative ints: still invalid ids.
        for (const Json& t : s["tokens"]) ids.push_back(static_cast<int32_t>(t.get<uint32_t>()));
      } else {
        ids = tok.encode(s["text"].get<std::string>(), s["special"].get<bool>());
      }
      for (int32_t id : ids) out.push_back({seg, id});
      ++seg;
    }
    return out;
  }
  const std::string text = expected_text(c);
  const std::vector<int32_t> ids =
      c["notes"]["expected_kind"] == "token_ids" ? parse_ids_text(text) : tok.encode(text, /*allow_special=*/true);
  for (int32_t id : ids) out.push_back({0, id});
  return out;
}

struct Snapshot {
  std::string delta, content;
};

void check_stream(const Json& check, const std::map<std::string, Snapshot>& snaps, const std::string& all_deltas) {
  const std::string after = check["after"];
  auto it = snaps.find(after);
  ASSERT_NE(it, snaps.end()) << "no snapshot for stream check point '" << after << "'";
  if (check.contains("last_content_delta")) {
    EXPECT_EQ(it->second.delta, check["last_content_delta"].is_null() ? "" : check["last_content_delta"]) << after;
  }
  if (check.contains("current_content")) {
    EXPECT_EQ(it->second.content, check["current_content"]) << after;
  }
  if (check.contains("concatenated_non_null_deltas")) {
    EXPECT_EQ(all_deltas, check["concatenated_non_null_deltas"]);
  }
}

void run_parse_case(const Json& c, const Tokenizer& tok) {
  const Json& n = c["notes"];
  HarmonyParser::Options opts;
  opts.strict = !n.contains("strict") || n["strict"].get<bool>();
  opts.initial_role = n["role"].is_string() ? std::optional<std::string>(n["role"].get<std::string>()) : std::nullopt;
  const bool eos = n["parser"] == "parse_messages_from_completion_tokens" || n["process_eos"].get<bool>();
  HarmonyParser parser(tok, opts);
  const auto input = parse_input(c, tok);

  std::map<std::string, Snapshot> snaps;
  std::string all_deltas, error;
  int emoji_tokens = 0;
  for (const auto& [seg, id] : input) {
    Status st = parser.push(id);
    if (!st.ok()) {
      error = st.message();
      break;
    }
    all_deltas += parser.last_content_delta();
    if (seg == 1 && c["name"] == "test_streamable_parser_waits_for_multi_token_utf8_sequence") {
      const char* label = emoji_tokens++ == 0 ? "first token of the emoji" : "second token of the emoji";
      snaps[label] = {parser.last_content_delta(), parser.current_content()};
    }
  }
  snaps["all input_segments"] = {parser.last_content_delta(), parser.current_content()};
  if (error.empty() && c["name"] == "test_streamable_parser_invalid_utf8_decoding_multi_byte_token_no_eos_marker") {
    ASSERT_TRUE(parser.push(tok.encode("Y").front()).ok());
    snaps["one more token: the first token of encode('Y')"] = {parser.last_content_delta(), parser.current_content()};
  }
  if (error.empty() && eos) {
    Status st = parser.finish();
    if (!st.ok()) error = st.message();
    snaps["process_eos"] = {parser.last_content_delta(), parser.current_content()};
  }

  if (n["expect_error"].is_string()) {
    ASSERT_FALSE(error.empty()) << "expected an error";
    const std::string want = n["expect_error"];
    if (want != "(any error)") {
      EXPECT_NE(error.find(want), std::string::npos) << error;
    }
    return;
  }
  ASSERT_TRUE(error.empty()) << error;
  if (n.contains("stream_checks")) {
    for (const Json& check : n["stream_checks"]) check_stream(check, snaps, all_deltas);
  }
  const Json& want = c["messages"];
  if (!want.is_array()) return;  // stream_checks-only case: no message completes
  const auto& got = parser.messages();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    const HarmonyMessage w = message_from(want[i]);
    EXPECT_EQ(got[i].role, w.role) << "message " << i;
    EXPECT_EQ(got[i].name, w.name) << "message " << i;
    EXPECT_EQ(got[i].recipient, w.recipient) << "message " << i;
    EXPECT_EQ(got[i].channel, w.channel) << "message " << i;
    EXPECT_EQ(got[i].content_type, w.content_type) << "message " << i;
    EXPECT_EQ(got[i].content, w.content) << "message " << i;
  }
}

class HarmonyCase : public ::testing::TestWithParam<std::string> {};

TEST_P(HarmonyCase, MatchesReference) {
  REQUIRE_TOKENIZER(tok);
  const Json c = Json::parse(tok_test::read_file(kHarmonyDir + "/cases/" + GetParam() + ".json"));
  if (c["mode"] == "parse") {
    run_parse_case(c, *tok);
  } else {
    run_render_case(c, *tok);
  }
}

INSTANTIATE_TEST_SUITE_P(Reference, HarmonyCase, ::testing::ValuesIn(case_names()),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

TEST(HarmonyCases, AllReferenceCasesPresent) {
  // The README lists 51 cases; a missing ../shared must fail loudly, not run zero cases.
  EXPECT_EQ(case_names().size(), 51u) << "harmony vectors not found under " << kHarmonyDir;
}

// Facts the reference tests assert about token-level decoding.
TEST(HarmonyCases, TokenFactsFromReferenceTests) {
  REQUIRE_TOKENIZER(tok);
  // 9552 is " " F0 9F: two of them are not valid UTF-8 as a whole.
  const std::string bytes = std::string(tok->token_bytes(9552)) + std::string(tok->token_bytes(9552));
  EXPECT_EQ(bytes, "\x20\xF0\x9F\x20\xF0\x9F");
  EXPECT_FALSE(utf8::is_valid(bytes));
  // The emoji needs two ordinary tokens (F0 9F 92 | 96).
  EXPECT_EQ(tok_test::ids_text(tok->encode("\xF0\x9F\x92\x96")), "[31446,244]");
  // decode_utf8([132990, 9552]) fails upstream; the lossy decode keeps "Chicken".
  std::string raw = std::string(tok->token_bytes(132990)) + std::string(tok->token_bytes(9552));
  EXPECT_FALSE(utf8::is_valid(raw));
  auto lossy = tok->decode({132990, 9552});
  ASSERT_TRUE(lossy.ok());
  EXPECT_NE(lossy.value().find("Chicken"), std::string::npos);
  EXPECT_NE(lossy.value().find("\xEF\xBF\xBD"), std::string::npos);
}

}  // namespace
}  // namespace gptoss
