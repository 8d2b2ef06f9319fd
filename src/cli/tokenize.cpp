// `gptoss tokenize`: UTF-8 text on stdin → the JSON array of its token ids; with --jsonl each stdin
// line is a JSON string and each output line the JSON array of its ids.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/command.h"
#include "cli/common.h"
#include "tokenizer/tokenizer.h"

namespace gptoss::cli {
namespace {

constexpr const char* kName = "tokenize";

std::string read_stdin() {
  std::string data;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), stdin)) > 0) data.append(buf, n);
  return data;
}

void print_ids(const std::vector<int32_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out += ",";
    out += std::to_string(ids[i]);
  }
  out += "]\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
}

// One JSON string per line (blank lines are skipped) → one id array per line.
Status tokenize_jsonl(const Tokenizer& tok, const std::string& input, bool special) {
  size_t pos = 0, line_no = 0;
  while (pos < input.size()) {
    size_t nl = input.find('\n', pos);
    if (nl == std::string::npos) nl = input.size();
    const std::string line = input.substr(pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_string()) {
      return make_error(ErrorCode::kInvalidArgument, "stdin line {}: expected a JSON string, got: {}", line_no,
                        line.substr(0, 80));
    }
    print_ids(tok.encode(j.get<std::string>(), special));
    std::fflush(stdout);  // lets a caller feed lines and read answers one at a time
  }
  return {};
}

int tokenize_main(int argc, char** argv) {
  CLI::App app{"Encode UTF-8 text from stdin to token ids (JSON array)", std::string("gptoss ") + kName};
  std::string tokenizer;
  bool special = false, jsonl = false;
  app.add_option("--tokenizer", tokenizer, "tokenizer.json (default: $GPTOSS_TOKENIZER)");
  app.add_flag("--special", special, "turn special-token text such as <|start|> into its id");
  app.add_flag("--jsonl", jsonl, "each stdin line is a JSON string; print one id array per line");
  if (auto rc = parse_flags(app, argc, argv, kName)) return *rc;
  auto path = resolve_tokenizer_path(tokenizer);
  if (!path.ok()) return report_error(kName, path.status());
  auto tok = Tokenizer::load(path.value());
  if (!tok.ok()) return report_error(kName, tok.status());
  const std::string input = read_stdin();
  if (jsonl) {
    Status st = tokenize_jsonl(*tok.value(), input, special);
    return st.ok() ? 0 : report_error(kName, st);
  }
  print_ids(tok.value()->encode(input, special));
  return 0;
}

}  // namespace

GPTOSS_COMMAND("tokenize", "encode stdin text to token ids (JSON)", tokenize_main);

}  // namespace gptoss::cli
