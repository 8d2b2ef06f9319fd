// `gptoss init-random --preset NAME --out DIR [--seed S]`: writes a random-weight checkpoint of a
// preset shape in the HF layout (config.json + safetensors, MXFP4 experts, sharded above 4 GiB).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "cli/command.h"
#include "cli/common.h"

namespace gptoss::cli {
namespace {

constexpr const char* kName = "init-random";

int init_random_main(int argc, char** argv) {
  CLI::App app{"Write a checkpoint with random weights in the Hugging Face layout.", "gptoss init-random"};
  std::string preset, out;
  uint64_t seed = 0;
  double shard_gib = 4.0;
  std::string names;
  for (const auto& n : config_preset_names()) names += (names.empty() ? "" : ", ") + n;
  app.add_option("--preset", preset, "model shape: " + names)->required();
  app.add_option("--out,-o", out, "output folder (created if needed)")->required();
  app.add_option("--seed", seed, "random seed (same seed, same weights)");
  app.add_option("--shard-gib", shard_gib, "largest safetensors file before sharding, in GiB")
      ->check(positive_number());
  if (auto code = parse_flags(app, argc, argv, kName)) return *code;

  auto config = config_preset(preset);
  if (!config.ok()) return report_error(kName, config.status());
  const auto t0 = std::chrono::steady_clock::now();
  auto model = Model::random(*config, seed);
  if (!model.ok()) return report_error(kName, model.status());
  const auto t1 = std::chrono::steady_clock::now();
  const size_t shard_bytes = static_cast<size_t>(std::max(1.0, std::ldexp(shard_gib, 30)));
  if (Status st = model_write_hf(**model, out, shard_bytes); !st.ok()) return report_error(kName, st);
  const auto t2 = std::chrono::steady_clock::now();
  const Model::ParamCounts pc = (*model)->param_counts();
  std::fprintf(stderr, "wrote %s: preset %s, seed %llu, %s of weights (generated in %.2f s, written in %.2f s)\n",
               out.c_str(), preset.c_str(), static_cast<unsigned long long>(seed),
               format_bytes(pc.weight_bytes).c_str(), std::chrono::duration<double>(t1 - t0).count(),
               std::chrono::duration<double>(t2 - t1).count());
  return 0;
}

}  // namespace

GPTOSS_COMMAND("init-random", "write a random-weight checkpoint of a preset shape (20b, 120b, demo, tiny)",
               init_random_main);

}  // namespace gptoss::cli
