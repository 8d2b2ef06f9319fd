// Memory and MoE routing statistics for `run --stats` and chat's /stats.
#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <numeric>

#include <fmt/format.h>

#include "cli/common.h"

namespace gptoss::cli {

LayerRouting summarize_layer(const RouterStats& stats, int64_t layer) {
  LayerRouting r;
  const auto l = static_cast<size_t>(layer);
  const auto e_count = static_cast<size_t>(stats.experts);
  r.counts.assign(stats.counts.begin() + static_cast<std::ptrdiff_t>(l * e_count),
                  stats.counts.begin() + static_cast<std::ptrdiff_t>((l + 1) * e_count));
  r.tokens = stats.tokens[l];
  const double assigned = static_cast<double>(std::accumulate(r.counts.begin(), r.counts.end(), uint64_t{0}));
  if (assigned > 0) {
    double sum_sq = 0;
    for (uint64_t c : r.counts) {
      const double f = static_cast<double>(c) / assigned;  // share of routing assignments
      sum_sq += f * f;
      if (f > 0) r.usage_entropy_bits -= f * std::log2(f);
    }
    r.balance = static_cast<double>(stats.experts) * sum_sq;
  }
  if (r.tokens > 0) {
    const double n = static_cast<double>(r.tokens);
    r.token_entropy_bits = stats.entropy_sum[l] / n / std::log(2.0);  // RouterStats sums nats
    r.mean_top1 = stats.top1_weight_sum[l] / n;
  }
  return r;
}

size_t peak_rss_bytes() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<size_t>(ru.ru_maxrss) * 1024;  // Linux reports kilobytes
}

size_t current_rss_bytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  unsigned long long total = 0, resident = 0;
  const int n = std::fscanf(f, "%llu %llu", &total, &resident);
  std::fclose(f);
  if (n != 2) return 0;
  return static_cast<size_t>(resident) * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

std::string format_memory_stats(const Model& model, const EngineStats& stats, const std::string& backend,
                                KvCacheType kv_cache) {
  const Model::ParamCounts pc = model.param_counts();
  const MemoryStats& m = stats.memory;
  std::string s = "memory\n";
  s += fmt::format("  weights   {} in the checkpoint: experts {}, attention {}, embedding {}, lm_head {}, other {}\n",
                   format_bytes(pc.weight_bytes), format_bytes(pc.expert_bytes), format_bytes(pc.attention_bytes),
                   format_bytes(pc.embedding_bytes), format_bytes(pc.lm_head_bytes), format_bytes(pc.other_bytes));
  s += fmt::format("  backend   {} of weights resident ({})\n", format_bytes(m.weight_bytes), backend);
  s += fmt::format("  KV cache  {} in use of {} reserved ({} of {} tokens, {})\n", format_bytes(m.kv_bytes_used),
                   format_bytes(m.kv_bytes_reserved), stats.kv_tokens_used, stats.kv_tokens_capacity,
                   kv_cache_name(kv_cache));
  s += fmt::format("  scratch   {}\n", format_bytes(m.scratch_bytes));
  s += fmt::format("  RSS       peak {}, now {}\n", format_bytes(peak_rss_bytes()), format_bytes(current_rss_bytes()));
  if (m.device_total > 0) {
    s += fmt::format("  device    {} used of {}\n", format_bytes(m.device_used), format_bytes(m.device_total));
  } else {
    s += "  device    none (CPU backend)\n";
  }
  return s;
}

std::string format_router_stats(const RouterStats& stats) {
  if (stats.layers == 0 || stats.tokens.empty() ||
      std::accumulate(stats.tokens.begin(), stats.tokens.end(), uint64_t{0}) == 0) {
    return "MoE routing: no tokens routed yet\n";
  }
  std::string s = fmt::format(
      "MoE routing: top-{} of {} experts, {} layers (real router decisions; balance = E*sum(f^2), 1 = even)\n",
      stats.top_k, stats.experts, stats.layers);
  const double max_usage = std::log2(static_cast<double>(stats.experts));
  const double max_token = std::log2(static_cast<double>(stats.top_k));
  for (int64_t l = 0; l < stats.layers; ++l) {
    const LayerRouting r = summarize_layer(stats, l);
    s += fmt::format(
        "  layer {}: tokens {}, balance {:.3f}, usage entropy {:.3f}/{:.3f} bits, token entropy {:.3f}/{:.3f} bits, "
        "mean top-1 weight {:.3f}\n",
        l, r.tokens, r.balance, r.usage_entropy_bits, max_usage, r.token_entropy_bits, max_token, r.mean_top1);
    s += "    counts:";
    for (uint64_t c : r.counts) s += fmt::format(" {}", c);
    s += "\n";
  }
  return s;
}

}  // namespace gptoss::cli
