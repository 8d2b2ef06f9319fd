// `gptoss logits` driven through the real binary: the .npy it writes for a fixture matches the HF
// golden, and bad input exits 1 with a one-line message naming the problem.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "backend/cpu/ops.h"
#include "core/npy.h"
#include "test_util.h"

namespace gptoss::testing {
namespace {

namespace fs = std::filesystem;

struct CmdResult {
  int exit_code = -1;
  std::string output;  // stdout + stderr
};

class LogitsCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("gptoss-logits-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  CmdResult run(const std::string& args) const {
    const fs::path log = dir_ / "output.txt";
    const std::string cmd = std::string(GPTOSS_BIN) + " logits " + args + " > '" + log.string() + "' 2>&1";
    const int status = std::system(cmd.c_str());
    CmdResult r;
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    std::ifstream f(log);
    std::stringstream ss;
    ss << f.rdbuf();
    r.output = ss.str();
    return r;
  }
  // Asserts the exit code (1 for bad values, 2 for usage errors such as a missing or malformed
  // flag) and a message on one line containing `needle`.
  void expect_failure(const std::string& args, const std::string& needle, int code = 1) const {
    const CmdResult r = run(args);
    EXPECT_EQ(r.exit_code, code) << args << "\n" << r.output;
    EXPECT_NE(r.output.find(needle), std::string::npos) << args << "\n" << r.output;
    EXPECT_NE(r.output.find("gptoss logits: error:"), std::string::npos) << r.output;
  }

  fs::path dir_;
};

std::string fixture(const std::string& name) {
  return std::string(GPTOSS_FIXTURES) + "/" + name;
}

std::string join(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(ids[i]);
  }
  return s;
}

TEST_F(LogitsCli, WritesGoldenLogitsForPubA) {
  const Golden g = load_golden(fixture("pub-a"));
  const fs::path out = dir_ / "logits.npy";
  const CmdResult r =
      run("--model " + fixture("pub-a") + " --tokens " + join(g.tokens) + " --out " + out.string() + " --threads 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto arr = npy_read(out.string());
  ASSERT_TRUE(arr.ok()) << arr.status().to_string();
  EXPECT_EQ(arr->descr, "<f4");
  ASSERT_EQ(arr->shape, (std::vector<int64_t>{static_cast<int64_t>(g.tokens.size()), g.vocab}));
  const std::vector<float> logits = arr->as_f32();
  EXPECT_LE(rel_l2(logits.data(), g.logits.data(), static_cast<int64_t>(logits.size())), 1e-4);
  for (size_t t = 0; t < g.tokens.size(); ++t) {
    EXPECT_EQ(cpu::argmax(logits.data() + t * g.vocab, g.vocab), cpu::argmax(g.logits.data() + t * g.vocab, g.vocab))
        << "position " << t;
  }
}

// --kv-cache f16 reaches the backend: the logits move (the cache rounds keys and values to fp16)
// but stay close to the golden, and f32 (the default, spelled out) gives the default's bits.
TEST_F(LogitsCli, KvCacheFlagSelectsTheCacheType) {
  const Golden g = load_golden(fixture("pub-a"));
  const std::string base = "--model " + fixture("pub-a") + " --tokens " + join(g.tokens) + " --threads 2 --out ";
  const fs::path def = dir_ / "def.npy", f32 = dir_ / "f32.npy", f16 = dir_ / "f16.npy";
  ASSERT_EQ(run(base + def.string()).exit_code, 0);
  ASSERT_EQ(run(base + f32.string() + " --kv-cache f32").exit_code, 0);
  const CmdResult r = run(base + f16.string() + " --kv-cache f16");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::vector<float> ld = npy_read(def.string())->as_f32(), l32 = npy_read(f32.string())->as_f32(),
                           l16 = npy_read(f16.string())->as_f32();
  ASSERT_EQ(l16.size(), ld.size());
  EXPECT_TRUE(std::equal(ld.begin(), ld.end(), l32.begin()));
  const double moved = rel_l2(l16.data(), ld.data(), static_cast<int64_t>(ld.size()));
  EXPECT_GT(moved, 0.0);
  EXPECT_LE(rel_l2(l16.data(), g.logits.data(), static_cast<int64_t>(l16.size())), 2e-2);
}

TEST_F(LogitsCli, PrefixOfTokensGivesPrefixOfLogits) {
  // Spaces around ids are accepted; the first rows of a longer pass equal a shorter pass.
  const Golden g = load_golden(fixture("pub-a"));
  const fs::path a = dir_ / "a.npy", b = dir_ / "b.npy";
  ASSERT_EQ(run("--model " + fixture("pub-a") + " --tokens '7, 8,9' --out " + a.string()).exit_code, 0);
  ASSERT_EQ(run("--model " + fixture("pub-a") + " --tokens 7,8,9,10,11 --out " + b.string()).exit_code, 0);
  const std::vector<float> la = npy_read(a.string())->as_f32(), lb = npy_read(b.string())->as_f32();
  ASSERT_EQ(la.size(), 3u * static_cast<size_t>(g.vocab));
  EXPECT_TRUE(std::equal(la.begin(), la.end(), lb.begin()));
}

TEST_F(LogitsCli, BadInputExitsWithClearMessage) {
  const std::string model = "--model " + fixture("pub-a");
  const std::string out = " --out " + (dir_ / "x.npy").string();
  expect_failure(model + " --tokens '' " + out, "empty token list");
  expect_failure(model + " --tokens 1,abc,3" + out, "'abc' is not a token id");
  expect_failure(model + " --tokens 1,,3" + out, "empty item");
  expect_failure(model + " --tokens=-4" + out, "'-4'");
  expect_failure(model + " --tokens 1,2.5" + out, "'2.5'");
  expect_failure(model + " --tokens 3,512" + out, "token id 512");
  expect_failure(model + " --tokens 3,512" + out, "vocab_size 512");
  expect_failure(model + " --tokens 99999999999" + out, "too large");
  expect_failure("--model " + (dir_ / "missing").string() + " --tokens 1" + out, "missing");
  expect_failure(model + " --tokens 1 --out " + (dir_ / "no-such-dir" / "x.npy").string(), "no-such-dir");
  expect_failure(model + " --tokens 1", "--out", 2);
  expect_failure(model + " --tokens 1 --backend tpu" + out, "tpu", 2);
  expect_failure(model + " --tokens 1 --threads -1" + out, "must be a number >= 0 (got -1)", 2);
  expect_failure(model + " --tokens 1 --kv-cache bf16" + out, "unknown KV cache type 'bf16' (expected f32 or f16)", 2);
#ifndef GPTOSS_HAVE_CUDA
  expect_failure(model + " --tokens 1 --backend cuda" + out, "without CUDA");
#endif
  EXPECT_FALSE(fs::exists(dir_ / "x.npy"));
}

TEST_F(LogitsCli, HelpExitsZero) {
  const CmdResult r = run("--help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.output.find("--tokens"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace gptoss::testing
