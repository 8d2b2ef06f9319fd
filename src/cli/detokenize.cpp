// `gptoss detokenize`: a JSON array of token ids on stdin → the decoded text on stdout (exactly,
// no newline added; invalid UTF-8 becomes U+FFFD). Ids outside the vocabulary are an error.
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

constexpr const char* kName = "detokenize";

Result<std::vector<int32_t>> parse_id_array(const std::string& text) {
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_array()) {
    return Status(ErrorCode::kInvalidArgument, "stdin must be a JSON array of token ids, e.g. [24912, 2375]");
  }
  std::vector<int32_t> ids;
  for (size_t i = 0; i < j.size(); ++i) {
    const auto& v = j[i];
    if (!v.is_number_integer() || v.get<long long>() < INT32_MIN || v.get<long long>() > INT32_MAX) {
      return make_error(ErrorCode::kInvalidArgument, "element {} of the id array is not a token id: {}", i, v.dump());
    }
    ids.push_back(static_cast<int32_t>(v.get<long long>()));
  }
  return ids;
}

int detokenize_main(int argc, char** argv) {
  CLI::App app{"Decode a JSON array of token ids from stdin to text", std::string("gptoss ") + kName};
  std::string tokenizer;
  app.add_option("--tokenizer", tokenizer, "tokenizer.json (default: $GPTOSS_TOKENIZER)");
  if (auto rc = parse_flags(app, argc, argv, kName)) return *rc;
  auto path = resolve_tokenizer_path(tokenizer);
  if (!path.ok()) return report_error(kName, path.status());
  std::string input;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), stdin)) > 0) input.append(buf, n);
  auto ids = parse_id_array(input);
  if (!ids.ok()) return report_error(kName, ids.status());
  auto tok = Tokenizer::load(path.value());
  if (!tok.ok()) return report_error(kName, tok.status());
  auto text = tok.value()->decode(ids.value());
  if (!text.ok()) return report_error(kName, text.status());
  std::fwrite(text.value().data(), 1, text.value().size(), stdout);
  return 0;
}

}  // namespace

GPTOSS_COMMAND("detokenize", "decode token ids (JSON array on stdin) to text", detokenize_main);

}  // namespace gptoss::cli
