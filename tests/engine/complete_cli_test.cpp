// `gptoss complete` end to end: greedy --print-ids reproduces the HF golden continuation of every
// fixture, stop ids end the output, and bad input gives one clear error line and a non-zero exit.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/npy.h"
#include "tokenizer/tokenizer.h"

namespace {

struct RunResult {
  int exit_code = -1;
  std::string out, err;
};

// Runs the gptoss binary with `args` (shell-quoted by the caller), capturing stdout and stderr.
RunResult run_gptoss(const std::string& args) {
  std::string err_path = std::filesystem::temp_directory_path() / ("gptoss_complete_err_" + std::to_string(getpid()));
  // `complete` runs on the CPU backend (goldens and determinism are checked there) unless the
  // arguments name one.
  std::string full = args;
  if (args.starts_with("complete") && args.find("--backend") == std::string::npos) full += " --backend cpu";
  std::string cmd = std::string(GPTOSS_BIN) + " " + full + " 2>" + err_path;
  RunResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream e(err_path);
  r.err.assign(std::istreambuf_iterator<char>(e), {});
  std::filesystem::remove(err_path);
  return r;
}

std::string join(const std::vector<int32_t>& ids, const char* sep) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? sep : "") + std::to_string(ids[i]);
  return s;
}

struct Golden {
  std::string dir;
  std::vector<int32_t> prompt, continuation;
};

std::vector<Golden> goldens() {
  std::vector<Golden> out;
  for (const auto& d : std::filesystem::directory_iterator(GPTOSS_FIXTURES)) {
    auto g = d.path() / "golden";
    if (!std::filesystem::exists(g / "tokens.npy")) continue;
    auto arr = gptoss::npy_read((g / "tokens.npy").string());
    EXPECT_TRUE(arr.ok());
    std::vector<int32_t> all = arr->as_i32();
    std::ifstream meta(g / "meta.json");
    size_t n_new = nlohmann::json::parse(meta).at("new").get<size_t>();
    out.push_back({d.path().string(),
                   {all.begin(), all.end() - static_cast<std::ptrdiff_t>(n_new)},
                   {all.end() - static_cast<std::ptrdiff_t>(n_new), all.end()}});
  }
  return out;
}

TEST(CompleteCli, GreedyReproducesGoldenContinuation) {
  auto gs = goldens();
  ASSERT_GE(gs.size(), 2u);
  for (const auto& g : gs) {
    RunResult r = run_gptoss("complete --model " + g.dir + " --tokens " + join(g.prompt, ",") + " --max-tokens " +
                             std::to_string(g.continuation.size()) + " --temperature 0 --backend cpu --print-ids");
    ASSERT_EQ(r.exit_code, 0) << g.dir << ": " << r.err;
    EXPECT_EQ(r.out, join(g.continuation, " ") + "\n") << g.dir;
  }
}

TEST(CompleteCli, StopIdsEndTheContinuation) {
  auto g = goldens().front();
  // Stop at the golden continuation's 4th token: it is printed, nothing after it.
  int32_t stop = g.continuation[3];
  size_t first = std::find(g.continuation.begin(), g.continuation.end(), stop) - g.continuation.begin();
  RunResult r =
      run_gptoss("complete --model " + g.dir + " --tokens " + join(g.prompt, ",") + " --max-tokens " +
                 std::to_string(g.continuation.size()) + " --stop 99999," + std::to_string(stop) + " --print-ids");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, join({g.continuation.begin(), g.continuation.begin() + first + 1}, " ") + "\n");
}

TEST(CompleteCli, SeededSamplingIsReproducible) {
  auto g = goldens().front();
  std::string args = "complete --model " + g.dir + " --tokens " + join(g.prompt, ",") +
                     " --max-tokens 16 --temperature 1.0 --top-k 50 --top-p 0.9 --print-ids --seed ";
  RunResult a = run_gptoss(args + "5"), b = run_gptoss(args + "5"), c = run_gptoss(args + "6");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);
  std::istringstream ss(a.out);
  int n = 0, id;
  while (ss >> id) ++n;
  EXPECT_EQ(n, 16);
}

TEST(CompleteCli, BadInputGivesOneErrorLine) {
  auto g = goldens().front();
  const std::string m = " --model " + g.dir;
  struct Case {
    std::string args, needle;
  };
  std::vector<Case> cases = {
      {"complete" + m + " --tokens 1,x,3 --print-ids", "'x'"},
      {"complete" + m + " --tokens 1,,3 --print-ids", "--tokens"},
      {"complete" + m + " --tokens 1,2,999999 --print-ids", "999999"},
      {"complete" + m + " --tokens '' --print-ids", "--tokens"},
      {"complete" + m + " --tokens 1,2 --max-tokens 0 --print-ids", "--max-tokens"},
      {"complete" + m + " --tokens 1,2 --temperature -1 --print-ids", "temperature"},
      {"complete" + m + " --tokens 1,2 --top-p 1.5 --print-ids", "top_p"},
      {"complete" + m + " --tokens 1,2 --stop 1,a --print-ids", "--stop"},
      {"complete" + m + " --tokens 1,2,3,4,5 --ctx 4 --print-ids", "context"},
      {"complete --model /nonexistent/dir --tokens 1,2 --print-ids", "/nonexistent/dir"},
      {"complete" + m + " --tokens 1,2 --backend tpu --print-ids", "tpu"},
  };
  for (const auto& c : cases) {
    RunResult r = run_gptoss(c.args);
    EXPECT_NE(r.exit_code, 0) << c.args;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << c.args << "\n" << r.err;
    EXPECT_NE(r.err.find(c.needle), std::string::npos) << c.args << "\n" << r.err;
    EXPECT_TRUE(r.out.empty()) << c.args;
  }
}

// Text in and out on the demo preset (real vocabulary): --prompt encodes like the tokenizer
// (special tokens allowed), and without --print-ids the output is the decoded continuation.
TEST(CompleteCli, PromptTextAndDecodedOutput) {
  auto tok = gptoss::Tokenizer::load(GPTOSS_TOKENIZER);
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  std::string dir = std::filesystem::temp_directory_path() / ("gptoss_complete_demo_" + std::to_string(getpid()));
  RunResult init = run_gptoss("init-random --preset demo --out " + dir);
  ASSERT_EQ(init.exit_code, 0) << init.err;
  const std::string m = " --model " + dir + " --tokenizer " + GPTOSS_TOKENIZER + " --max-tokens 6";
  const std::string prompt = "<|start|>user<|message|>Hello, world<|end|>";
  RunResult by_text = run_gptoss("complete" + m + " --prompt '" + prompt + "' --print-ids");
  ASSERT_EQ(by_text.exit_code, 0) << by_text.err;
  std::vector<int32_t> ids = (*tok)->encode(prompt, /*allow_special=*/true);
  EXPECT_EQ(ids.front(), 200006);  // <|start|> became its id
  RunResult by_ids = run_gptoss("complete" + m + " --tokens " + join(ids, ",") + " --print-ids");
  EXPECT_EQ(by_ids.out, by_text.out);
  std::vector<int32_t> out;
  std::istringstream ss(by_ids.out);
  for (int32_t id; ss >> id;) out.push_back(id);
  ASSERT_EQ(out.size(), 6u);
  RunResult text = run_gptoss("complete" + m + " --prompt '" + prompt + "'");
  ASSERT_EQ(text.exit_code, 0) << text.err;
  auto decoded = (*tok)->decode(out);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(text.out, *decoded + "\n");
  RunResult both = run_gptoss("complete" + m + " --prompt x --tokens 1");
  EXPECT_NE(both.exit_code, 0);
  EXPECT_NE(both.err.find("not both"), std::string::npos) << both.err;
  std::filesystem::remove_all(dir);
}

}  // namespace
