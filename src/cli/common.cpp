// Shared helpers of run / chat / convert: flags, terminal, SIGINT, loading with progress.
// Output streaming and statistics live in common_output.cpp and common_stats.cpp.
#include "cli/common.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <random>

#include <fmt/format.h>

#include "core/log.h"

namespace gptoss::cli {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// Terminal

bool is_terminal(FILE* f) {
  return f && isatty(fileno(f)) == 1;
}

bool use_colors(FILE* f) {
  if (!is_terminal(f)) return false;
  if (const char* nc = std::getenv("NO_COLOR"); nc && *nc) return false;
  const char* term = std::getenv("TERM");
  return !(term && std::strcmp(term, "dumb") == 0);
}

namespace {
// A signal handler may only touch lock-free atomics / sig_atomic_t, hence process-level state;
// it is the Ctrl-C flag only, never model state.
volatile std::sig_atomic_t g_sigint = 0;
struct sigaction g_previous_action;

void on_sigint(int) {
  g_sigint = 1;
}
}  // namespace

SigintScope::SigintScope() {
  g_sigint = 0;
  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  // SA_RESTART: whichever thread takes the signal, its interrupted system calls resume; the
  // commands notice Ctrl-C by polling the flag.
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, &g_previous_action);
}

SigintScope::~SigintScope() {
  sigaction(SIGINT, &g_previous_action, nullptr);
}

bool SigintScope::triggered() {
  return g_sigint != 0;
}
void SigintScope::clear() {
  g_sigint = 0;
}

// ---------------------------------------------------------------------------------------------
// Flags

void add_model_flags(CLI::App& app, ModelFlags& f) {
  app.add_option("--model", f.model_dir, "checkpoint folder (config.json + *.safetensors)")->required();
  app.add_option("--tokenizer", f.tokenizer, "tokenizer.json (default: MODEL/tokenizer.json)");
  app.add_option("--backend", f.backend, "cpu | cuda | auto")->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  app.add_option("--threads", f.threads, "CPU threads (0 = all cores)");
  app.add_option("--context", f.context, "context length in tokens (default: min(4096, the model's maximum))");
  add_kv_cache_option(app, f.kv_cache);
  app.add_flag("--stats", f.stats, "print memory and MoE routing statistics");
  app.add_flag("-v,--verbose", f.verbose, "debug logging with timestamps on stderr (also GPTOSS_LOG=debug)");
}

void add_generation_flags(CLI::App& app, GenerationFlags& f, bool with_prompt) {
  if (with_prompt) app.add_option("-p,--prompt", f.prompt, "the user message")->required();
  app.add_option("--system", f.system, "instructions (rendered as the harmony developer message)");
  app.add_option("--reasoning-effort", f.effort, "low | medium | high");
  app.add_option("--max-tokens", f.max_tokens, "most tokens to generate per answer");
  app.add_option("--temperature", f.sampling.temperature, "0 = greedy");
  app.add_option("--top-p", f.sampling.top_p, "nucleus sampling mass, in (0, 1]");
  app.add_option("--top-k", f.sampling.top_k, "keep the k most likely tokens (0 = off)");
  app.add_option("--min-p", f.sampling.min_p, "drop tokens below min_p x the top probability");
  app.add_option("--repeat-penalty", f.sampling.repetition_penalty, "repetition penalty (1 = off)");
  app.add_option("--presence-penalty", f.sampling.presence_penalty, "OpenAI presence penalty");
  app.add_option("--frequency-penalty", f.sampling.frequency_penalty, "OpenAI frequency penalty");
  app.add_option_function<uint64_t>(
      "--seed", [&f](const uint64_t& v) { f.seed = v; }, "random seed (default: a fresh one)");
  app.add_flag("--show-reasoning", f.show_reasoning, "show the analysis channel apart from the answer");
  app.add_option("--date", f.date, "current date for the system message: YYYY-MM-DD, today (default) or none");
}

std::optional<int> parse_flags(CLI::App& app, int argc, char** argv, const std::string& command) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::fputs(app.help().c_str(), stdout);
    return 0;
  } catch (const CLI::CallForAllHelp&) {
    std::fputs(app.help("", CLI::AppFormatMode::All).c_str(), stdout);
    return 0;
  } catch (const CLI::ParseError& e) {
    // Usage errors exit 2 (the getopt convention), runtime errors 1.
    std::fprintf(stderr, "gptoss %s: error: %s (see gptoss %s --help)\n", command.c_str(), e.what(), command.c_str());
    return 2;
  }
  return std::nullopt;
}

namespace {
CLI::Validator number_at_least(bool allow_zero) {
  return CLI::Validator(
      [allow_zero](std::string& v) -> std::string {
        char* end = nullptr;
        const double d = std::strtod(v.c_str(), &end);
        const bool ok = end != v.c_str() && *end == '\0' && (allow_zero ? d >= 0 : d > 0);
        if (ok) return {};
        return std::string("must be a number ") + (allow_zero ? ">= 0" : "> 0") + " (got " + v + ")";
      },
      allow_zero ? "NUMBER>=0" : "NUMBER>0");
}
}  // namespace

CLI::Validator non_negative_number() {
  return number_at_least(true);
}
CLI::Validator positive_number() {
  return number_at_least(false);
}

CLI::Option* add_kv_cache_option(CLI::App& app, KvCacheType& type) {
  return app.add_option_function<std::string>(
      "--kv-cache",
      [&type](const std::string& v) {
        Result<KvCacheType> t = parse_kv_cache(v);
        if (!t.ok()) throw CLI::ValidationError("--kv-cache", t.status().message());
        type = *t;
      },
      "KV cache element type: f32 (default, near-exact attention) or f16 (half the memory and the KV reads)");
}

Status check_effort(const std::string& effort) {
  if (effort == "low" || effort == "medium" || effort == "high") return {};
  return make_error(ErrorCode::kInvalidArgument, "reasoning effort must be low, medium or high, got '{}'", effort);
}

namespace {
std::string today_local() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[16];
  std::strftime(buf, sizeof buf, "%Y-%m-%d", &tm);
  return buf;
}

// Strict YYYY-MM-DD with a real month and a day that exists in that month.
bool valid_date(const std::string& d) {
  if (d.size() != 10 || d[4] != '-' || d[7] != '-') return false;
  for (size_t i : {0, 1, 2, 3, 5, 6, 8, 9})
    if (d[i] < '0' || d[i] > '9') return false;
  const int y = std::stoi(d.substr(0, 4)), m = std::stoi(d.substr(5, 2)), day = std::stoi(d.substr(8, 2));
  if (m < 1 || m > 12 || day < 1) return false;
  static const int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return day <= kDays[m - 1] + (m == 2 && leap ? 1 : 0);
}
// SamplingParams names its fields; the user typed flags, so say which flag is wrong.
Status sampling_error_as_flag(const Status& st) {
  static const std::pair<const char*, const char*> kFlags[] = {{"temperature", "--temperature"},
                                                               {"top_p", "--top-p"},
                                                               {"top_k", "--top-k"},
                                                               {"min_p", "--min-p"},
                                                               {"repetition_penalty", "--repeat-penalty"},
                                                               {"presence_penalty", "--presence-penalty"},
                                                               {"frequency_penalty", "--frequency-penalty"}};
  std::string msg = st.message();
  for (const auto& [field, flag] : kFlags) {
    const std::string f = field;
    if (msg.compare(0, f.size(), f) == 0 && (msg.size() == f.size() || msg[f.size()] == ' ')) {
      msg = flag + msg.substr(f.size());
      break;
    }
  }
  return Status(ErrorCode::kInvalidArgument, msg);
}
}  // namespace

Status finalize_flags(ModelFlags& model, GenerationFlags& gen) {
  if (model.verbose) log_set_level(LogLevel::kDebug);
  if (model.threads < 0)
    return make_error(ErrorCode::kInvalidArgument, "--threads must be >= 0, got {}", model.threads);
  if (model.context != 0 && model.context < 2)
    return make_error(ErrorCode::kInvalidArgument, "--context must be >= 2, got {}", model.context);
  if (gen.max_tokens < 1) {
    return make_error(ErrorCode::kInvalidArgument, "--max-tokens must be >= 1, got {}", gen.max_tokens);
  }
  if (Status st = check_effort(gen.effort); !st.ok()) {
    return make_error(ErrorCode::kInvalidArgument, "--reasoning-effort must be low, medium or high, got '{}'",
                      gen.effort);
  }
  if (gen.date.empty() || gen.date == "today") {
    gen.date = today_local();
  } else if (gen.date == "none") {
    gen.date.clear();
  } else if (!valid_date(gen.date)) {
    return make_error(ErrorCode::kInvalidArgument, "--date must be YYYY-MM-DD, today or none, got '{}'", gen.date);
  }
  if (!gen.seed) gen.seed = (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
  gen.sampling.seed = *gen.seed;
  if (Status st = gen.sampling.validate(); !st.ok()) return sampling_error_as_flag(st);
  return {};
}

// ---------------------------------------------------------------------------------------------
// Progress

ProgressBar::ProgressBar(std::string label) : label_(std::move(label)), enabled_(is_terminal(stderr)) {}

ProgressBar::~ProgressBar() {
  finish();
}

void ProgressBar::update(size_t done, size_t total, const std::string& detail) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  // Redraw at most ~12 times a second (and always for the last update).
  if (drawn_ && done < total && now - last_draw_ < std::chrono::milliseconds(80)) return;
  last_draw_ = now;
  drawn_ = true;
  constexpr int kWidth = 30;
  const double frac = total ? std::min(1.0, static_cast<double>(done) / static_cast<double>(total)) : 1.0;
  const int filled = static_cast<int>(frac * kWidth);
  std::string bar(static_cast<size_t>(filled), '#');
  bar.append(static_cast<size_t>(kWidth - filled), '.');
  std::string d = detail.size() > 40 ? "..." + detail.substr(detail.size() - 37) : detail;
  // \r + erase-line keeps the bar on one terminal line.
  std::fprintf(stderr, "\r\033[2K%s [%s] %3d%% %s / %s %s", label_.c_str(), bar.c_str(), static_cast<int>(frac * 100),
               format_bytes(done).c_str(), format_bytes(total).c_str(), d.c_str());
  std::fflush(stderr);
}

void ProgressBar::finish() {
  if (enabled_ && drawn_) {
    std::fputs("\r\033[2K", stderr);
    std::fflush(stderr);
  }
  drawn_ = false;
}

std::string format_bytes(size_t bytes) {
  const double b = static_cast<double>(bytes);
  if (b >= 1e9) return fmt::format("{:.2f} GB", b / 1e9);
  if (b >= 1e6) return fmt::format("{:.1f} MB", b / 1e6);
  if (b >= 1e3) return fmt::format("{:.1f} kB", b / 1e3);
  return fmt::format("{} B", bytes);
}

// ---------------------------------------------------------------------------------------------
// Loading

namespace {
constexpr int64_t kDefaultContext = 4096;

BackendOptions backend_options_from(const ModelFlags& flags, bool rewind_anywhere) {
  BackendOptions o;
  o.kind = flags.backend;
  o.threads = flags.threads;
  o.max_slots = 1;
  o.max_context = flags.context;
  o.kv_cache = flags.kv_cache;
  if (rewind_anywhere) o.rollback = flags.context;
  return o;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

Result<std::unique_ptr<Tokenizer>> load_tokenizer(const ModelFlags& flags) {
  const std::string path =
      flags.tokenizer.empty() ? (fs::path(flags.model_dir) / "tokenizer.json").string() : flags.tokenizer;
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    return make_error(ErrorCode::kNotFound, "no tokenizer: '{}' does not exist (pass --tokenizer FILE)", path);
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto tok = Tokenizer::load(path);
  if (tok.ok()) log_debug("tokenizer {} loaded in {:.2f} s ({} ids)", path, seconds_since(t0), (*tok)->vocab_size());
  return tok;
}

// The prompt uses harmony's structural ids, so the model must have rows for them. Resolves the
// default context.
Status check_compatible(const Config& config, const Tokenizer& tok, ModelFlags& flags) {
  if (config.vocab_size < tok.vocab_size()) {
    return make_error(ErrorCode::kInvalidArgument,
                      "the model's vocabulary ({} ids) is smaller than the tokenizer's ({} ids): use the tokenizer "
                      "that belongs to this model",
                      config.vocab_size, tok.vocab_size());
  }
  if (flags.context == 0) flags.context = std::min(kDefaultContext, config.max_position_embeddings);
  if (flags.context > config.max_position_embeddings) {
    return make_error(ErrorCode::kInvalidArgument, "--context {} exceeds the model's max_position_embeddings {}",
                      flags.context, config.max_position_embeddings);
  }
  return {};
}
}  // namespace

Result<LoadedModel> load_model(ModelFlags& flags, const LoadOptions& options) {
  std::error_code ec;
  if (!fs::is_directory(flags.model_dir, ec)) {
    return make_error(ErrorCode::kNotFound, "model folder '{}' does not exist or is not a folder", flags.model_dir);
  }
  LoadedModel out;
  GPTOSS_ASSIGN_OR_RETURN(out.tokenizer, load_tokenizer(flags));

  const auto t0 = std::chrono::steady_clock::now();
  {
    ProgressBar bar("loading");
    auto model = Model::load(flags.model_dir, [&bar](const LoadProgress& p) {
      bar.update(p.bytes_done, p.bytes_total, p.tensor ? *p.tensor : std::string());
    });
    bar.finish();
    if (!model.ok()) return model.status();
    out.model = std::move(model).value();
  }
  GPTOSS_RETURN_IF_ERROR(check_compatible(out.model->config(), *out.tokenizer, flags));
  const double t_model = seconds_since(t0);
  const BackendOptions backend = backend_options_from(flags, options.rewind_anywhere);
  GPTOSS_ASSIGN_OR_RETURN(out.engine, Engine::create(out.model, backend, options.engine));
  const Config& c = out.model->config();
  std::fprintf(stderr, "loaded %s in %.2f s (%s; %lld layers, %lld experts, top-%lld; context %lld)\n",
               format_bytes(out.model->param_counts().weight_bytes).c_str(), seconds_since(t0),
               out.engine->backend_name().c_str(), static_cast<long long>(c.num_hidden_layers),
               static_cast<long long>(c.num_local_experts), static_cast<long long>(c.num_experts_per_tok),
               static_cast<long long>(backend.max_context));
  log_debug("checkpoint checked in {:.2f} s, backend ready after {:.2f} s", t_model, seconds_since(t0));
  return out;
}

Conversation make_conversation(const GenerationFlags& flags) {
  Conversation c;
  c.has_system = true;
  c.system.reasoning_effort = flags.effort;
  c.system.current_date = flags.date;
  if (!flags.system.empty()) {
    c.has_developer = true;
    c.instructions = flags.system;
  }
  return c;
}

}  // namespace gptoss::cli
