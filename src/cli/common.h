// Shared helpers of the interactive commands (run, chat, convert): flags, terminal detection and
// colours, SIGINT handling, model + tokenizer loading with a progress bar, harmony output streaming
// (answer vs reasoning), generation turns on the Engine, and memory / MoE routing statistics.
#pragma once

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/status.h"
#include "engine/engine.h"
#include "engine/sampler.h"
#include "model/weights.h"
#include "tokenizer/harmony.h"
#include "tokenizer/tokenizer.h"

namespace gptoss::cli {

// ---------------------------------------------------------------------------------------------
// Terminal

// True when `f` is attached to a terminal.
bool is_terminal(FILE* f);
// True when ANSI styles should be written to `f`: a terminal, NO_COLOR unset and TERM not "dumb".
bool use_colors(FILE* f);

// Installs a SIGINT handler for its lifetime (restores the previous one on destruction). The
// handler only sets a flag; callers poll triggered() (any thread of the process may take the
// signal, so a blocked call in the main thread is not guaranteed to see EINTR). One scope at a
// time per process.
class SigintScope {
 public:
  SigintScope();
  ~SigintScope();
  SigintScope(const SigintScope&) = delete;
  SigintScope& operator=(const SigintScope&) = delete;
  // True when Ctrl-C was pressed since the last clear().
  static bool triggered();
  static void clear();
};

// Exit status of a command stopped by Ctrl-C (128 + SIGINT, the shell convention).
inline constexpr int kExitInterrupted = 130;

// ---------------------------------------------------------------------------------------------
// Flags

// Where the model comes from and how it runs.
struct ModelFlags {
  std::string model_dir;
  std::string tokenizer;  // empty: DIR/tokenizer.json
  std::string backend = "auto";
  int threads = 0;      // CPU threads, 0 = all cores
  int64_t context = 0;  // tokens of KV cache per sequence; 0 = min(4096, max_position_embeddings)
  KvCacheType kv_cache = KvCacheType::kF32;
  bool verbose = false;
  bool stats = false;
};

// What to generate and how to sample.
struct GenerationFlags {
  std::string prompt;
  std::string system;  // developer instructions; empty = none
  std::string effort = "medium";
  std::string date;  // YYYY-MM-DD; "today" (default) or "none"
  int64_t max_tokens = 512;
  SamplingParams sampling;
  std::optional<uint64_t> seed;  // unset: a fresh random seed
  bool show_reasoning = false;
};

void add_model_flags(CLI::App& app, ModelFlags& flags);
// `with_prompt` adds --prompt (run) – chat reads its prompts from stdin.
void add_generation_flags(CLI::App& app, GenerationFlags& flags, bool with_prompt);

// Parses argv. Returns an exit code when the command should stop now (0 after --help, 2 with a
// one-line error for bad usage), or nullopt to go on.
std::optional<int> parse_flags(CLI::App& app, int argc, char** argv, const std::string& command);

// Flag validators with short messages ("must be a number >= 0 (got -1)"); CLI11's own print the
// whole double range.
CLI::Validator non_negative_number();
CLI::Validator positive_number();

// --kv-cache f32|f16 into `type` (BackendOptions::kv_cache; other values are a usage error).
CLI::Option* add_kv_cache_option(CLI::App& app, KvCacheType& type);

// Checks values that CLI11 cannot (effort, date, sampling ranges, max_tokens, context, threads),
// resolves "today" and a missing seed, and applies --verbose. Errors name the flag.
Status finalize_flags(ModelFlags& model, GenerationFlags& gen);

// Checks a reasoning effort name (low | medium | high).
Status check_effort(const std::string& effort);

// ---------------------------------------------------------------------------------------------
// Progress

// A one-line progress bar redrawn in place on stderr (only when stderr is a terminal), throttled.
class ProgressBar {
 public:
  explicit ProgressBar(std::string label);
  ~ProgressBar();
  // `detail` is shown after the bar (e.g. the tensor being checked).
  void update(size_t done, size_t total, const std::string& detail = "");
  // Clears the bar line.
  void finish();
  bool active() const { return enabled_; }

 private:
  std::string label_;
  bool enabled_ = false;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point last_draw_{};
};

// Bytes as "12.81 GB" (decimal units, like the model card) or "512 MB"/"9.4 kB".
std::string format_bytes(size_t bytes);

// ---------------------------------------------------------------------------------------------
// Loading

struct LoadedModel {
  std::shared_ptr<const Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Engine> engine;
};

// How the loaded model will be used.
struct LoadOptions {
  EngineOptions engine;
  // A conversation rewinds its slot to where the re-rendered history first differs from what the
  // cache holds (the dropped analysis): allow rewinding across the whole context.
  bool rewind_anywhere = false;
};

// Loads the tokenizer (DIR/tokenizer.json unless --tokenizer), the model (progress bar on a
// terminal) and starts an Engine with one slot of `flags.context` tokens (resolved here when 0);
// prints "loaded N GB in X s ..." on stderr.
Result<LoadedModel> load_model(ModelFlags& flags, const LoadOptions& options);

// The system + developer part of a conversation for these flags (no messages yet).
Conversation make_conversation(const GenerationFlags& flags);

// ---------------------------------------------------------------------------------------------
// Output

// Where streamed text goes. Answer text (final channel, preambles) is the command's output;
// reasoning (analysis channel, tool calls) is shown apart from it, or not at all.
class TextSink {
 public:
  virtual ~TextSink() = default;
  virtual void answer(const std::string& text) = 0;
  virtual void reasoning(const std::string& text) = 0;
  // A message ended: the next text of either kind starts on a fresh line.
  virtual void message_break() = 0;
};

// The terminal presentation. stdout a terminal: reasoning is dim text on stdout, the answer
// follows on its own line. stdout not a terminal: stdout carries only the answer; reasoning goes
// to stderr with every line prefixed "[reasoning] ". Without show_reasoning it is dropped.
class ConsoleSink : public TextSink {
 public:
  ConsoleSink(FILE* out, FILE* err, bool show_reasoning);
  void answer(const std::string& text) override;
  void reasoning(const std::string& text) override;
  void message_break() override;
  // Ends the current line on both streams (after a turn) and resets styles.
  void end_turn();

 private:
  enum class Where { kNone, kAnswer, kReasoning };
  void switch_to(Where w);
  FILE* out_;
  FILE* err_;
  bool show_reasoning_;
  bool dim_;  // reasoning shown dim on out_ (else prefixed on err_)
  Where where_ = Where::kNone;
  bool out_line_start_ = true, err_line_start_ = true;
};

// Turns generated token ids into text on a TextSink through the harmony parser, in its tolerant
// (non-strict) mode so a model that forgets an <|end|> still has its reasoning kept apart. When
// the output is not harmony at all (a parse error, a header longer than kMaxHeaderTokens, or a
// stream that ends in a header without <|channel|> — what random demo weights produce) it warns
// once and shows the rest as plain answer text (special tokens skipped) so nothing is lost.
class HarmonyStream {
 public:
  static constexpr size_t kMaxHeaderTokens = 32;
  HarmonyStream(const Tokenizer& tok, TextSink& sink);
  void push(int32_t token);
  // End of generation: completes a message in progress.
  void finish();
  // Assistant messages seen (after finish(): including a message cut short). In plain mode the
  // text shown so far is one final-channel message.
  std::vector<HarmonyMessage> messages() const;
  bool plain_mode() const { return plain_; }

 private:
  void to_plain(const std::string& why);
  void route(const std::string& text, const HarmonyMessage& msg);

  const Tokenizer& tok_;
  TextSink& sink_;
  HarmonyParser parser_;
  StreamDecoder plain_decoder_;
  bool plain_ = false;
  bool finished_ = false;
  std::vector<int32_t> header_;               // tokens since the last message boundary while not in content
  HarmonyMessage active_;                     // header of the message whose content is streaming
  std::vector<HarmonyMessage> plain_prefix_;  // messages completed before plain mode
  std::string plain_text_;
};

// ---------------------------------------------------------------------------------------------
// Generation

struct TurnResult {
  FinishReason finish = FinishReason::kStop;
  Status error;
  int64_t prompt_tokens = 0, cached_prompt_tokens = 0, generated_tokens = 0;
  double ttft_s = 0, total_s = 0;
  std::vector<int32_t> tokens;  // generated ids, in order
  bool interrupted = false;     // Ctrl-C
};

// Submits `request` (its on_event is replaced), feeds each token to `stream` on this thread, and
// cancels the request when Ctrl-C is pressed (SigintScope). Errors are submission failures;
// generation errors come back in TurnResult::error.
Result<TurnResult> generate_turn(Engine& engine, GenerationRequest request, HarmonyStream& stream);

// "prompt 42 tokens (30 cached), generated 17 tokens, TTFT 0.12 s, 35.1 tok/s, finish stop".
std::string format_turn_summary(const TurnResult& r);

// ---------------------------------------------------------------------------------------------
// Statistics

// Routing metrics of one layer, from real router decisions.
struct LayerRouting {
  uint64_t tokens = 0;
  std::vector<uint64_t> counts;   // per expert
  double usage_entropy_bits = 0;  // entropy of the expert-usage distribution f (max log2 E)
  double token_entropy_bits = 0;  // mean per-token entropy of the top-k routing weights (max log2 k)
  double balance = 0;             // E·Σ f², 1 = perfectly even, E/k = always the same k experts
  double mean_top1 = 0;           // mean largest routing weight
};
LayerRouting summarize_layer(const RouterStats& stats, int64_t layer);

// Peak resident set size of this process (bytes), and the current one.
size_t peak_rss_bytes();
size_t current_rss_bytes();

// Memory report: weights by kind, KV cache in use / reserved (and its type), scratch, RSS, device memory.
std::string format_memory_stats(const Model& model, const EngineStats& stats, const std::string& backend,
                                KvCacheType kv_cache);
// Per-layer MoE routing report; "no tokens routed yet" when empty.
std::string format_router_stats(const RouterStats& stats);

}  // namespace gptoss::cli
