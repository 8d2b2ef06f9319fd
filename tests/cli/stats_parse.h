// Parsers for what run/chat print: the per-turn summary line and the MoE routing report.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace gptoss::testing {

// "prompt N tokens (C cached), generated G tokens, TTFT ..., finish F [(interrupted)]"
struct TurnSummary {
  int64_t prompt = 0, cached = 0, generated = 0;
  std::string finish;
  bool interrupted = false;
};
std::vector<TurnSummary> parse_summaries(const std::string& text);

struct RoutingLayer {
  int64_t layer = 0;
  uint64_t tokens = 0;
  double balance = 0, usage_entropy = 0, usage_max = 0, token_entropy = 0, token_max = 0, top1 = 0;
  std::vector<uint64_t> counts;
};
struct RoutingReport {
  int64_t top_k = 0, experts = 0, layers = 0;
  std::vector<RoutingLayer> per_layer;
};
// The last routing report in `text`, if any.
std::optional<RoutingReport> parse_routing(const std::string& text);

}  // namespace gptoss::testing
