// The tokenize / detokenize / render commands driven through the real gptoss binary: exact
// output formats, flags, the GPTOSS_TOKENIZER fallback, and clear errors with exit code 1.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>

#include "tok_test_util.h"
#include "tokenizer/harmony.h"

namespace gptoss {
namespace {

struct Output {
  int code = -1;
  std::string out, err;
};

class TokenizerCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("gptoss_tokcli_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string file(const std::string& name, const std::string& text) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }

  // Runs `env gptoss args` with `input` on stdin.
  Output run(const std::string& args, const std::string& input, const std::string& env = "") {
    const std::string in = file("stdin", input), out = (dir_ / "stdout").string(), err = (dir_ / "stderr").string();
    const std::string cmd =
        env + " '" + std::string(GPTOSS_BIN) + "' " + args + " < '" + in + "' > '" + out + "' 2> '" + err + "'";
    const int status = std::system(cmd.c_str());
    Output o;
    o.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    o.out = tok_test::read_file(out);
    o.err = tok_test::read_file(err);
    return o;
  }

  const std::string tok_flag_ = std::string("--tokenizer '") + GPTOSS_TOKENIZER + "'";
  std::filesystem::path dir_;
};

TEST_F(TokenizerCli, Tokenize) {
  Output o = run("tokenize " + tok_flag_, "hello world");
  EXPECT_EQ(o.code, 0) << o.err;
  EXPECT_EQ(o.out, "[24912,2375]\n");
  o = run("tokenize " + tok_flag_, "<|start|>");
  EXPECT_EQ(o.out, "[27,91,5236,91,29]\n");
  o = run("tokenize --special " + tok_flag_, "<|start|>");
  EXPECT_EQ(o.out, "[200006]\n");
  o = run("tokenize " + tok_flag_, "");
  EXPECT_EQ(o.out, "[]\n");
  // stdin is taken byte for byte: a trailing newline is text.
  o = run("tokenize " + tok_flag_, "hello world\n");
  EXPECT_EQ(o.out, "[24912,2375,198]\n");
}

TEST_F(TokenizerCli, TokenizeJsonLines) {
  Output o = run("tokenize --jsonl --special " + tok_flag_, "\"hello world\"\n\n\"<|end|>\"\r\n\"a\\nb\"");
  EXPECT_EQ(o.code, 0) << o.err;
  EXPECT_EQ(o.out, "[24912,2375]\n[200007]\n[64,198,65]\n");
  o = run("tokenize --jsonl " + tok_flag_, "\"ok\"\n{\"not\": \"a string\"}\n");
  EXPECT_EQ(o.code, 1);
  EXPECT_NE(o.err.find("line 2"), std::string::npos) << o.err;
}

TEST_F(TokenizerCli, Detokenize) {
  Output o = run("detokenize " + tok_flag_, "[24912, 2375]");
  EXPECT_EQ(o.code, 0) << o.err;
  EXPECT_EQ(o.out, "hello world");
  o = run("detokenize " + tok_flag_, "[200006, 31446]");  // special text; a dangling byte prefix
  EXPECT_EQ(o.out, "<|start|>\xEF\xBF\xBD");
  o = run("detokenize " + tok_flag_, "[24912, 201088]");
  EXPECT_EQ(o.code, 1);
  EXPECT_NE(o.err.find("201088"), std::string::npos) << o.err;
  EXPECT_EQ(o.out, "");
  o = run("detokenize " + tok_flag_, "[1, \"two\"]");
  EXPECT_EQ(o.code, 1);
  EXPECT_NE(o.err.find("element 1"), std::string::npos) << o.err;
  o = run("detokenize " + tok_flag_, "hello");
  EXPECT_EQ(o.code, 1);
  EXPECT_NE(o.err.find("JSON array"), std::string::npos) << o.err;
}

TEST_F(TokenizerCli, TokenizerPathFromEnvironmentOrError) {
  Output o = run("tokenize", "hello world", std::string("GPTOSS_TOKENIZER='") + GPTOSS_TOKENIZER + "'");
  EXPECT_EQ(o.code, 0) << o.err;
  EXPECT_EQ(o.out, "[24912,2375]\n");
  o = run("tokenize", "x", "env -u GPTOSS_TOKENIZER");
  EXPECT_EQ(o.code, 1);
  EXPECT_NE(o.err.find("gptoss tokenize: error: no tokenizer given"), std::string::npos) << o.err;
  o = run("detokenize --tokenizer /no/such/tokenizer.json", "[1]");
  EXPECT_EQ(o.code, 1);
  EXPECT_NE(o.err.find("/no/such/tokenizer.json"), std::string::npos) << o.err;
}

const char* kRequest = R"({"messages":[{"role":"system","content":"Be terse."},{"role":"user","content":"2+2?"}],
  "tools":[{"type":"function","function":{"name":"calc","description":"Evaluate","parameters":{"type":"object",
  "properties":{"expr":{"type":"string"}},"required":["expr"]}}}],"reasoning_effort":"low"})";

TEST_F(TokenizerCli, RenderText) {
  const std::string req = file("req.json", kRequest);
  Output o = run("render --request '" + req + "' --date 2025-06-28", "");
  EXPECT_EQ(o.code, 0) << o.err;
  EXPECT_EQ(o.out,
            "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
            "Knowledge cutoff: 2024-06\nCurrent date: 2025-06-28\n\nReasoning: low\n\n"
            "# Valid channels: analysis, commentary, final. Channel must be included for every message.\n"
            "Calls to these tools must go to the commentary channel: 'functions'.<|end|>"
            "<|start|>developer<|message|># Instructions\n\nBe terse.\n\n# Tools\n\n## functions\n\n"
            "namespace functions {\n\n// Evaluate\ntype calc = (_: {\nexpr: string,\n}) => any;\n\n"
            "} // namespace functions<|end|><|start|>user<|message|>2+2?<|end|><|start|>assistant");
  o = run("render --request - --date none", kRequest);
  EXPECT_EQ(o.code, 0) << o.err;
  EXPECT_EQ(o.out.find("Current date"), std::string::npos);
  // Default date: today, local time.
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char today[16];
  std::strftime(today, sizeof(today), "%Y-%m-%d", &tm);
  o = run("render --request '" + req + "'", "");
  EXPECT_NE(o.out.find(std::string("Current date: ") + today), std::string::npos) << o.out.substr(0, 200);
}

TEST_F(TokenizerCli, RenderIds) {
  REQUIRE_TOKENIZER(tok);
  const std::string req = file("req.json", kRequest);
  Output o = run("render --ids --date 2025-06-28 --request '" + req + "' " + tok_flag_, "");
  EXPECT_EQ(o.code, 0) << o.err;
  auto conv = conversation_from_openai_json(kRequest, "2025-06-28");
  ASSERT_TRUE(conv.ok());
  auto ids = harmony_render(*tok, conv.value(), RenderOptions{});
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(o.out, tok_test::ids_text(ids.value()) + "\n");
  o = run("render --ids --request '" + req + "'", "", "env -u GPTOSS_TOKENIZER");
  EXPECT_EQ(o.code, 1);
  EXPECT_NE(o.err.find("no tokenizer given"), std::string::npos) << o.err;
}

TEST_F(TokenizerCli, RenderErrors) {
  Output o = run("render --request /no/such/request.json", "");
  EXPECT_EQ(o.code, 1);
  EXPECT_NE(o.err.find("/no/such/request.json"), std::string::npos) << o.err;
  o = run("render --request '" + file("bad.json", R"({"messages":[{"role":"alien","content":"x"}]})") + "'", "");
  EXPECT_EQ(o.code, 1);
  EXPECT_NE(o.err.find("gptoss render: error: messages[0]: unknown role 'alien'"), std::string::npos) << o.err;
  o = run("render --request '" + file("req.json", kRequest) + "' --date 28/06/2025", "");
  EXPECT_EQ(o.code, 1);
  EXPECT_NE(o.err.find("--date"), std::string::npos) << o.err;
  o = run("render", "");
  EXPECT_NE(o.code, 0);
  EXPECT_NE(o.err.find("--request"), std::string::npos) << o.err;
}

}  // namespace
}  // namespace gptoss
