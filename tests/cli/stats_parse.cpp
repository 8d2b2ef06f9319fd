// Parsers for the CLI's summary line and MoE routing report (see stats_parse.h).
#include "cli/stats_parse.h"

#include <regex>
#include <sstream>

namespace gptoss::testing {

std::vector<TurnSummary> parse_summaries(const std::string& text) {
  static const std::regex re(
      R"(prompt (\d+) tokens(?: \((\d+) cached\))?, generated (\d+) tokens, TTFT [0-9.]+ s, [0-9.]+ tok/s, total [0-9.]+ s, finish (\w+)( \(interrupted\))?)");
  std::vector<TurnSummary> out;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator(); ++it) {
    const std::smatch& m = *it;
    TurnSummary s;
    s.prompt = std::stoll(m[1].str());
    s.cached = m[2].matched ? std::stoll(m[2].str()) : 0;
    s.generated = std::stoll(m[3].str());
    s.finish = m[4].str();
    s.interrupted = m[5].matched;
    out.push_back(s);
  }
  return out;
}

std::optional<RoutingReport> parse_routing(const std::string& text) {
  static const std::regex head(R"(MoE routing: top-(\d+) of (\d+) experts, (\d+) layers)");
  static const std::regex layer(
      R"(layer (\d+): tokens (\d+), balance ([0-9.]+), usage entropy ([0-9.]+)/([0-9.]+) bits, token entropy ([0-9.]+)/([0-9.]+) bits, mean top-1 weight ([0-9.]+)\s*\n\s*counts:([ 0-9]*))");
  size_t start = text.rfind("MoE routing: top-");
  if (start == std::string::npos) return std::nullopt;
  const std::string tail = text.substr(start);
  std::smatch m;
  if (!std::regex_search(tail, m, head)) return std::nullopt;
  RoutingReport r;
  r.top_k = std::stoll(m[1].str());
  r.experts = std::stoll(m[2].str());
  r.layers = std::stoll(m[3].str());
  for (auto it = std::sregex_iterator(tail.begin(), tail.end(), layer); it != std::sregex_iterator(); ++it) {
    const std::smatch& l = *it;
    if (static_cast<int64_t>(r.per_layer.size()) == r.layers) break;  // a later report
    RoutingLayer x;
    x.layer = std::stoll(l[1].str());
    x.tokens = std::stoull(l[2].str());
    x.balance = std::stod(l[3].str());
    x.usage_entropy = std::stod(l[4].str());
    x.usage_max = std::stod(l[5].str());
    x.token_entropy = std::stod(l[6].str());
    x.token_max = std::stod(l[7].str());
    x.top1 = std::stod(l[8].str());
    std::istringstream counts(l[9].str());
    for (uint64_t c; counts >> c;) x.counts.push_back(c);
    r.per_layer.push_back(std::move(x));
  }
  return r;
}

}  // namespace gptoss::testing
