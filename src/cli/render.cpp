// `gptoss render`: the harmony prompt for an OpenAI chat-completions request file, as text (special
// tokens written literally) or, with --ids, as the JSON array of its token ids.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <ctime>
#include <fstream>
#include <sstream>
#include <string>

#include "cli/command.h"
#include "cli/common.h"
#include "tokenizer/harmony.h"
#include "tokenizer/tokenizer.h"

namespace gptoss::cli {
namespace {

constexpr const char* kName = "render";

Result<std::string> read_request(const std::string& path) {
  if (path == "-") {
    std::string data;
    char buf[1 << 16];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), stdin)) > 0) data.append(buf, n);
    return data;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(ErrorCode::kNotFound, "cannot open request file '{}'", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// "none" → no date line; "" → today (local time); otherwise YYYY-MM-DD.
Result<std::string> resolve_date(const std::string& flag) {
  if (flag == "none") return std::string();
  if (flag.empty()) {
    std::time_t now = std::time(nullptr);
    std::tm tm{};
    localtime_r(&now, &tm);
    char buf[16];
    std::strftime(buf, sizeof(buf), "%Y-%m-%d", &tm);
    return std::string(buf);
  }
  const bool shape = flag.size() == 10 && flag[4] == '-' && flag[7] == '-';
  bool digits = shape;
  for (size_t i = 0; shape && i < flag.size(); ++i) {
    if (i != 4 && i != 7 && (flag[i] < '0' || flag[i] > '9')) digits = false;
  }
  if (!digits) return make_error(ErrorCode::kInvalidArgument, "--date must be YYYY-MM-DD or none, got '{}'", flag);
  return flag;
}

int render_main(int argc, char** argv) {
  CLI::App app{"Print the harmony prompt for a chat-completions request", std::string("gptoss ") + kName};
  std::string request, tokenizer, date;
  bool ids = false;
  app.add_option("--request", request, "request JSON file (messages, tools, reasoning_effort); - for stdin")
      ->required();
  app.add_option("--tokenizer", tokenizer, "tokenizer.json for --ids (default: $GPTOSS_TOKENIZER)");
  app.add_option("--date", date, "Current date line: YYYY-MM-DD, or none (default: today)");
  app.add_flag("--ids", ids, "print the token ids (JSON array) instead of the text");
  if (auto rc = parse_flags(app, argc, argv, kName)) return *rc;
  auto day = resolve_date(date);
  if (!day.ok()) return report_error(kName, day.status());
  auto body = read_request(request);
  if (!body.ok()) return report_error(kName, body.status());
  auto conv = conversation_from_openai_json(body.value(), day.value());
  if (!conv.ok()) return report_error(kName, conv.status());
  if (!ids) {
    auto pieces = harmony_render_pieces(conv.value(), RenderOptions{});
    if (!pieces.ok()) return report_error(kName, pieces.status());
    const std::string text = harmony_pieces_text(pieces.value());
    std::fwrite(text.data(), 1, text.size(), stdout);
    return 0;
  }
  auto path = resolve_tokenizer_path(tokenizer);
  if (!path.ok()) return report_error(kName, path.status());
  auto tok = Tokenizer::load(path.value());
  if (!tok.ok()) return report_error(kName, tok.status());
  auto rendered = harmony_render(*tok.value(), conv.value(), RenderOptions{});
  if (!rendered.ok()) return report_error(kName, rendered.status());
  std::string out = "[";
  for (size_t i = 0; i < rendered.value().size(); ++i) {
    if (i) out += ',';
    out += std::to_string(rendered.value()[i]);
  }
  out += "]\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

}  // namespace

GPTOSS_COMMAND("render", "print the harmony prompt for a chat request (text or --ids)", render_main);

}  // namespace gptoss::cli
