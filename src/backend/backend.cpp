#include "backend/backend.h"

#include <algorithm>

namespace gptoss {

void RouterStats::reset(int64_t n_layers, int64_t n_experts, int64_t k) {
  layers = n_layers;
  experts = n_experts;
  top_k = k;
  counts.assign(static_cast<size_t>(n_layers * n_experts), 0);
  top1_weight_sum.assign(static_cast<size_t>(n_layers), 0.0);
  entropy_sum.assign(static_cast<size_t>(n_layers), 0.0);
  tokens.assign(static_cast<size_t>(n_layers), 0);
}

void RouterStats::merge(const RouterStats& o) {
  if (layers == 0) reset(o.layers, o.experts, o.top_k);
  for (size_t i = 0; i < counts.size() && i < o.counts.size(); ++i) counts[i] += o.counts[i];
  for (size_t i = 0; i < tokens.size() && i < o.tokens.size(); ++i) {
    top1_weight_sum[i] += o.top1_weight_sum[i];
    entropy_sum[i] += o.entropy_sum[i];
    tokens[i] += o.tokens[i];
  }
}

}  // namespace gptoss
