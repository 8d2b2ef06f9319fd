// The real `gptoss inspect` and `gptoss init-random` binaries: output on good checkpoints, exit
// status 1 with exactly one clear error line (no crash, no abort) on bad ones.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "model/config.h"
#include "model/test_util.h"
#include "model/weights.h"

namespace gptoss {
namespace {

namespace fs = std::filesystem;
using testing::fixture;
using testing::TempDir;

struct CliRun {
  int exit_code = -1;  // -1 when the process died from a signal
  int signal = 0;
  std::string out, err;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

CliRun run_gptoss(const std::string& args, const TempDir& tmp) {
  const std::string out = tmp.file("stdout.txt"), err = tmp.file("stderr.txt");
  const std::string cmd = std::string("'") + GPTOSS_BIN + "' " + args + " >'" + out + "' 2>'" + err + "'";
  const int status = std::system(cmd.c_str());
  CliRun r;
  // std::system runs through sh: a signal in the child shows up as exit status 128 + signal.
  if (WIFEXITED(status)) {
    r.exit_code = WEXITSTATUS(status);
    if (r.exit_code > 128) r.signal = r.exit_code - 128;
  } else if (WIFSIGNALED(status)) {
    r.signal = WTERMSIG(status);
  }
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

// Exit status exactly 1, one stderr line naming the command and `expect`.
void expect_one_line_error(const CliRun& r, const std::string& command, const std::string& expect) {
  EXPECT_EQ(r.signal, 0) << r.err;
  EXPECT_EQ(r.exit_code, 1) << r.err;
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.back(), '\n');
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(r.err.rfind("gptoss " + command + ": error: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find(expect), std::string::npos) << r.err;
}

std::string grouped(int64_t v) {
  std::string s = std::to_string(v), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i > 0 && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

TEST(InspectCli, PrintsCountsForAFixture) {
  TempDir tmp;
  const CliRun r = run_gptoss("inspect --model '" + fixture("pub-b") + "'", tmp);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto pc = Model::param_counts_for(*config_load_dir(fixture("pub-b")));
  EXPECT_NE(r.out.find("total " + grouped(pc.total)), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("active per token " + grouped(pc.active)), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("8, top-4"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("per token"), std::string::npos) << r.out;
}

TEST(InspectCli, JsonOutputHasExactCounts) {
  TempDir tmp;
  const CliRun r = run_gptoss("inspect --json --model '" + fixture("fx-mixed-layers") + "'", tmp);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  const Config c = *config_load_dir(fixture("fx-mixed-layers"));
  const auto pc = Model::param_counts_for(c);
  EXPECT_EQ(j["params"]["total"].get<int64_t>(), pc.total);
  EXPECT_EQ(j["params"]["active"].get<int64_t>(), pc.active);
  EXPECT_EQ(
      j["bytes"]["weights"].get<size_t>(), fs::file_size(fixture("fx-mixed-layers") + "/model.safetensors") - 8 - [&] {
        std::ifstream in(fixture("fx-mixed-layers") + "/model.safetensors", std::ios::binary);
        uint64_t h = 0;
        in.read(reinterpret_cast<char*>(&h), 8);
        return h;
      }());
  EXPECT_EQ(j["bytes"]["per_token"].get<size_t>(), pc.bytes_per_token);
  EXPECT_EQ(j["config"]["num_local_experts"], 16);
  EXPECT_EQ(j["config"]["layer_types"][0], "full_attention");
  EXPECT_EQ(j["sliding_layers"], 2);
}

TEST(InspectCli, BadCheckpointsFailWithOneLine) {
  TempDir tmp;
  // Missing folder.
  expect_one_line_error(run_gptoss("inspect --model '" + tmp.file("absent") + "'", tmp), "inspect", tmp.file("absent"));
  // Truncated weights.
  fs::create_directories(tmp.file("cut"));
  fs::copy_file(fixture("pub-a") + "/config.json", tmp.file("cut/config.json"));
  {
    const std::string bytes = slurp(fixture("pub-a") + "/model.safetensors");
    std::ofstream(tmp.file("cut/model.safetensors"), std::ios::binary) << bytes.substr(0, bytes.size() - 1000);
  }
  expect_one_line_error(run_gptoss("inspect --model '" + tmp.file("cut") + "'", tmp), "inspect",
                        tmp.file("cut/model.safetensors"));
  // Garbage weights (random text, including a huge little-endian header length).
  std::ofstream(tmp.file("cut/model.safetensors"), std::ios::binary) << "\xff\xff\xff\xff\xff\xff\xff\x7fgarbage!";
  expect_one_line_error(run_gptoss("inspect --model '" + tmp.file("cut") + "'", tmp), "inspect", "header length");
  std::ofstream(tmp.file("cut/model.safetensors"), std::ios::binary) << "abc";
  expect_one_line_error(run_gptoss("inspect --model '" + tmp.file("cut") + "'", tmp), "inspect", "8-byte");
  // Garbage config.
  std::ofstream(tmp.file("cut/config.json")) << "{\"hidden_size\": \"big\"}";
  expect_one_line_error(run_gptoss("inspect --model '" + tmp.file("cut") + "'", tmp), "inspect", "hidden_size");
}

TEST(InitRandomCli, WritesTheSameWeightsAsModelRandom) {
  TempDir tmp;
  const CliRun r = run_gptoss("init-random --preset tiny --seed 42 --out '" + tmp.file("m") + "'", tmp);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(tmp.file("m/config.json")));
  EXPECT_TRUE(fs::exists(tmp.file("m/model.safetensors")));
  auto loaded = Model::load(tmp.file("m"));
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  testing::expect_same_weights(**loaded, **Model::random(*config_preset("tiny"), 42));
  // Sharded output once the limit is small: index + several shards, same weights.
  const CliRun s =
      run_gptoss("init-random --preset tiny --seed 42 --shard-gib 0.0001 --out '" + tmp.file("s") + "'", tmp);
  ASSERT_EQ(s.exit_code, 0) << s.err;
  EXPECT_TRUE(fs::exists(tmp.file("s/model.safetensors.index.json")));
  EXPECT_FALSE(fs::exists(tmp.file("s/model.safetensors")));
  auto sharded = Model::load(tmp.file("s"));
  ASSERT_TRUE(sharded.ok()) << sharded.status().to_string();
  testing::expect_same_weights(**sharded, **loaded);
  // The inspect output of the written checkpoint agrees with the preset's counts.
  const CliRun i = run_gptoss("inspect --json --model '" + tmp.file("s") + "'", tmp);
  ASSERT_EQ(i.exit_code, 0) << i.err;
  EXPECT_EQ(nlohmann::json::parse(i.out)["params"]["total"].get<int64_t>(),
            Model::param_counts_for(*config_preset("tiny")).total);
}

TEST(InitRandomCli, BadArgumentsFail) {
  TempDir tmp;
  expect_one_line_error(run_gptoss("init-random --preset 7b --out '" + tmp.file("x") + "'", tmp), "init-random",
                        "'7b'");
  // Output path inside a regular file cannot be created.
  std::ofstream(tmp.file("file")) << "x";
  expect_one_line_error(run_gptoss("init-random --preset tiny --out '" + tmp.file("file/sub") + "'", tmp),
                        "init-random", tmp.file("file/sub"));
  const CliRun usage = run_gptoss("init-random --out '" + tmp.file("x") + "'", tmp);  // --preset missing
  EXPECT_EQ(usage.signal, 0);
  EXPECT_NE(usage.exit_code, 0);
  EXPECT_NE(usage.err.find("preset"), std::string::npos) << usage.err;
}

}  // namespace
}  // namespace gptoss
