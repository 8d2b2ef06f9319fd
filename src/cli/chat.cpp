// `gptoss chat`: interactive multi-turn conversation read line by line from stdin (a terminal or
// a pipe). The KV cache is kept across turns (one sticky engine slot + prefix reuse, so only the
// new part of the rendered history is prefilled); analysis is dropped from the history after a
// final answer, as harmony does. Commands: /reset, /stats, /effort low|medium|high, /help, /exit.
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "cli/command.h"
#include "cli/common.h"
#include "core/log.h"

namespace gptoss::cli {
namespace {

constexpr const char* kName = "chat";
constexpr const char* kPrompt = ">>> ";

// Reads lines from a file descriptor. It waits with poll(2) and a short timeout rather than a
// blocking read, because SIGINT may be delivered to any thread of the process (the engine's
// included), in which case a blocked read in this thread would never see EINTR.
class LineReader {
 public:
  enum class Outcome { kLine, kEof, kInterrupted, kError };
  explicit LineReader(int fd) : fd_(fd) {}

  Outcome next(std::string& line) {
    for (;;) {
      if (const size_t nl = buf_.find('\n'); nl != std::string::npos) {
        line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        return Outcome::kLine;
      }
      if (SigintScope::triggered()) return Outcome::kInterrupted;
      pollfd p{fd_, POLLIN, 0};
      const int ready = ::poll(&p, 1, 100);
      if (ready == 0 || (ready < 0 && errno == EINTR)) continue;
      if (ready < 0) return Outcome::kError;
      char chunk[4096];
      const ssize_t n = ::read(fd_, chunk, sizeof chunk);
      if (n > 0) {
        buf_.append(chunk, static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Outcome::kError;
      if (buf_.empty()) return Outcome::kEof;
      line.swap(buf_);  // last line without a newline
      buf_.clear();
      return Outcome::kLine;
    }
  }

 private:
  int fd_;
  std::string buf_;
};

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

class ChatSession {
 public:
  ChatSession(LoadedModel& loaded, const ModelFlags& mflags, const GenerationFlags& gflags)
      : m_(loaded),
        mflags_(mflags),
        gflags_(gflags),
        conv_(make_conversation(gflags)),
        interactive_(is_terminal(stdin)),
        sink_(stdout, stderr, gflags.show_reasoning) {}

  int loop();

 private:
  // Returns false when the session should end.
  bool command(const std::string& line);
  void turn(const std::string& text);
  void print_stats(FILE* f);

  LoadedModel& m_;
  ModelFlags mflags_;
  GenerationFlags gflags_;
  Conversation conv_;
  bool interactive_;
  ConsoleSink sink_;
};

int ChatSession::loop() {
  SigintScope sigint;
  if (interactive_) {
    std::fprintf(stderr, "chatting with %s (effort %s) - /help for commands, /exit or Ctrl-D to quit\n",
                 m_.model->source().c_str(), gflags_.effort.c_str());
  }
  LineReader reader(STDIN_FILENO);
  for (;;) {
    if (interactive_) {
      // The prompt belongs to the terminal: with stdout redirected it goes to stderr instead.
      FILE* f = is_terminal(stdout) ? stdout : stderr;
      std::fputs(kPrompt, f);
      std::fflush(f);
    }
    std::string line;
    const LineReader::Outcome got = reader.next(line);
    if (got == LineReader::Outcome::kInterrupted) {
      if (interactive_) std::fputs("\n", stdout);
      return kExitInterrupted;
    }
    if (got != LineReader::Outcome::kLine) {
      if (interactive_) std::fputs("\n", stdout);
      if (got == LineReader::Outcome::kError) {
        return report_error(kName, make_error(ErrorCode::kIo, "reading stdin failed: {}", std::strerror(errno)));
      }
      return 0;
    }
    line = trim(line);
    if (line.empty()) continue;
    if (line[0] == '/') {
      if (!command(line)) return 0;
      continue;
    }
    turn(line);
  }
}

bool ChatSession::command(const std::string& line) {
  const size_t sp = line.find(' ');
  const std::string cmd = line.substr(0, sp);
  const std::string arg = sp == std::string::npos ? "" : trim(line.substr(sp + 1));
  if (cmd == "/exit" || cmd == "/quit") return false;
  if (cmd == "/reset") {
    conv_ = make_conversation(gflags_);
    std::fprintf(stderr, "conversation cleared\n");
  } else if (cmd == "/stats") {
    print_stats(stdout);
  } else if (cmd == "/effort") {
    if (Status st = check_effort(arg); !st.ok()) {
      std::fprintf(stderr, "error: %s\n", st.message().c_str());
    } else {
      gflags_.effort = arg;
      conv_.system.reasoning_effort = arg;
      std::fprintf(stderr, "reasoning effort: %s\n", arg.c_str());
    }
  } else if (cmd == "/help") {
    std::fputs(
        "/reset                  forget the conversation\n"
        "/stats                  memory and MoE routing statistics\n"
        "/effort low|medium|high reasoning effort for the next turns\n"
        "/exit                   quit (also Ctrl-D)\n",
        stdout);
  } else {
    std::fprintf(stderr, "error: unknown command '%s' (try /help)\n", cmd.c_str());
  }
  std::fflush(stdout);
  return true;
}

void ChatSession::print_stats(FILE* f) {
  const EngineStats stats = m_.engine->stats();
  std::fputs(
      format_memory_stats(*m_.model, stats, m_.engine->backend_name(), m_.engine->backend_options().kv_cache).c_str(),
      f);
  std::fputs(format_router_stats(stats.router).c_str(), f);
  std::fflush(f);
}

void ChatSession::turn(const std::string& text) {
  HarmonyMessage user;
  user.role = "user";
  user.content = text;
  conv_.messages.push_back(std::move(user));
  auto prompt = harmony_render(*m_.tokenizer, conv_, RenderOptions{});
  if (prompt.ok() && static_cast<int64_t>(prompt->size()) >= mflags_.context) {
    prompt = make_error(ErrorCode::kOutOfRange,
                        "the conversation is {} tokens but the context holds {}; /reset to start over", prompt->size(),
                        mflags_.context);
  }
  if (!prompt.ok()) {
    conv_.messages.pop_back();
    std::fprintf(stderr, "error: %s\n", prompt.status().message().c_str());
    return;
  }
  GenerationRequest req;
  req.prompt = std::move(prompt).value();
  req.sampling = gflags_.sampling;
  req.max_tokens = gflags_.max_tokens;
  req.stop_ids = m_.model->config().eos_token_ids;
  req.preferred_slot = 0;  // the conversation's slot: its cached prefix is reused
  HarmonyStream stream(*m_.tokenizer, sink_);
  auto result = generate_turn(*m_.engine, std::move(req), stream);
  sink_.end_turn();
  SigintScope::clear();  // Ctrl-C during an answer stops that answer only
  if (!result.ok()) {
    conv_.messages.pop_back();
    std::fprintf(stderr, "error: %s\n", result.status().message().c_str());
    return;
  }
  for (HarmonyMessage& msg : stream.messages()) conv_.messages.push_back(std::move(msg));
  std::fprintf(stderr, "%s\n", format_turn_summary(*result).c_str());
  if (result->finish == FinishReason::kError) std::fprintf(stderr, "error: %s\n", result->error.message().c_str());
  if (mflags_.stats) print_stats(stderr);
}

int chat_main(int argc, char** argv) {
  CLI::App app{
      "Chat with the model: one user turn per line of stdin (a terminal or a pipe); the KV cache is kept across "
      "turns. Commands: /reset, /stats, /effort low|medium|high, /help, /exit. Ctrl-C stops the current answer; at "
      "the prompt it ends the chat (exit 130). Reasoning is shown as in `gptoss run`.",
      "gptoss chat"};
  ModelFlags mflags;
  GenerationFlags gflags;
  add_model_flags(app, mflags);
  add_generation_flags(app, gflags, /*with_prompt=*/false);
  if (auto code = parse_flags(app, argc, argv, kName)) return *code;
  if (Status st = finalize_flags(mflags, gflags); !st.ok()) return report_error(kName, st);

  LoadOptions lopts;
  lopts.engine.collect_router_stats = true;  // /stats can be asked for at any time
  lopts.rewind_anywhere = true;
  auto loaded = load_model(mflags, lopts);
  if (!loaded.ok()) return report_error(kName, loaded.status());
  ChatSession session(*loaded, mflags, gflags);
  return session.loop();
}

}  // namespace

GPTOSS_COMMAND("chat", "interactive multi-turn chat (keeps the KV cache across turns)", chat_main);

}  // namespace gptoss::cli
