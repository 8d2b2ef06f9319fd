// `gptoss run`: renders one prompt in the harmony format, streams the answer to stdout as it is
// generated (reasoning apart, only with --show-reasoning), and prints a summary line on stderr.
#include <cstdio>

#include "cli/command.h"
#include "cli/common.h"
#include "core/log.h"

namespace gptoss::cli {
namespace {

constexpr const char* kName = "run";

// Renders the conversation and checks it leaves room for at least one new token.
Result<std::vector<int32_t>> render_prompt(const Tokenizer& tok, const Conversation& conv, int64_t context) {
  GPTOSS_ASSIGN_OR_RETURN(std::vector<int32_t> prompt, harmony_render(tok, conv, RenderOptions{}));
  if (static_cast<int64_t>(prompt.size()) >= context) {
    return make_error(ErrorCode::kOutOfRange,
                      "the prompt is {} tokens but the context holds {} (raise --context or shorten the prompt)",
                      prompt.size(), context);
  }
  return prompt;
}

int run_main(int argc, char** argv) {
  CLI::App app{
      "Generate an answer to one prompt, streamed to stdout as it is produced; a summary line (tokens, TTFT, "
      "tok/s) goes to stderr. With --show-reasoning the analysis channel is shown dim before the answer on a "
      "terminal, or, when stdout is not a terminal, on stderr with each line prefixed \"[reasoning] \". Ctrl-C stops "
      "generation (exit 130).",
      "gptoss run"};
  ModelFlags mflags;
  GenerationFlags gflags;
  add_model_flags(app, mflags);
  add_generation_flags(app, gflags, /*with_prompt=*/true);
  if (auto code = parse_flags(app, argc, argv, kName)) return *code;
  if (Status st = finalize_flags(mflags, gflags); !st.ok()) return report_error(kName, st);

  LoadOptions lopts;
  lopts.engine.collect_router_stats = mflags.stats;
  auto loaded = load_model(mflags, lopts);
  if (!loaded.ok()) return report_error(kName, loaded.status());
  Engine& engine = *loaded->engine;
  const Tokenizer& tok = *loaded->tokenizer;

  Conversation conv = make_conversation(gflags);
  HarmonyMessage user;
  user.role = "user";
  user.content = gflags.prompt;
  conv.messages.push_back(std::move(user));
  auto prompt = render_prompt(tok, conv, mflags.context);
  if (!prompt.ok()) return report_error(kName, prompt.status());

  GenerationRequest req;
  req.prompt = std::move(prompt).value();
  req.sampling = gflags.sampling;
  req.max_tokens = gflags.max_tokens;
  req.stop_ids = loaded->model->config().eos_token_ids;
  log_info("prompt {} tokens, seed {}, max {} new tokens", req.prompt.size(), gflags.sampling.seed, req.max_tokens);

  SigintScope sigint;
  ConsoleSink sink(stdout, stderr, gflags.show_reasoning);
  HarmonyStream stream(tok, sink);
  auto turn = generate_turn(engine, std::move(req), stream);
  sink.end_turn();
  if (!turn.ok()) return report_error(kName, turn.status());
  std::fprintf(stderr, "%s\n", format_turn_summary(*turn).c_str());
  if (mflags.stats) {
    const EngineStats stats = engine.stats();
    std::fputs(
        format_memory_stats(*loaded->model, stats, engine.backend_name(), engine.backend_options().kv_cache).c_str(),
        stderr);
    std::fputs(format_router_stats(stats.router).c_str(), stderr);
  }
  if (turn->interrupted) return kExitInterrupted;
  if (turn->finish == FinishReason::kError) return report_error(kName, turn->error);
  return 0;
}

}  // namespace

GPTOSS_COMMAND("run", "generate an answer to one prompt (streamed; harmony format)", run_main);

}  // namespace gptoss::cli
