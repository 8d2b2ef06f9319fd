// ServerMetrics and Histogram: Prometheus text exposition (format 0.0.4).
#include "server/metrics.h"

#include <fmt/format.h>

#include <algorithm>

namespace gptoss::server {

namespace {

void series(std::string& out, const char* name, const char* type, const char* help) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

void value(std::string& out, const char* name, const char* type, const char* help, double v) {
  series(out, name, type, help);
  out += fmt::format("{} {}\n", name, v);
}

void render_router(std::string& out, const RouterStats& r) {
  if (r.layers == 0) return;
  series(out, "gptoss_router_expert_selections_total", "counter",
         "Times each expert was selected by the router, per layer.");
  for (int64_t l = 0; l < r.layers; ++l)
    for (int64_t e = 0; e < r.experts; ++e)
      out += fmt::format("gptoss_router_expert_selections_total{{layer=\"{}\",expert=\"{}\"}} {}\n", l, e,
                         r.counts[static_cast<size_t>(l * r.experts + e)]);
  series(out, "gptoss_router_tokens_total", "counter", "Tokens routed, per layer.");
  for (int64_t l = 0; l < r.layers; ++l)
    out += fmt::format("gptoss_router_tokens_total{{layer=\"{}\"}} {}\n", l, r.tokens[static_cast<size_t>(l)]);
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double v) {
  size_t i = static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  ++counts_[i];
  sum_ += v;
  ++count_;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& help) const {
  out += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  uint64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[i], cum);
  }
  cum += counts_.back();
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, cum, name, sum_, name, count_);
}

ServerMetrics::ServerMetrics()
    : ttft_({0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}),
      latency_({0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}) {}

void ServerMetrics::count_request(const std::string& route, int status) {
  std::lock_guard lk(mu_);
  ++requests_[{route, status}];
}

void ServerMetrics::observe_generation(bool had_token, double ttft_s, double total_s) {
  std::lock_guard lk(mu_);
  if (had_token) ttft_.observe(ttft_s);
  latency_.observe(total_s);
}

void ServerMetrics::count_disconnect() {
  std::lock_guard lk(mu_);
  ++disconnects_;
}

std::string ServerMetrics::render(const EngineStats& s) const {
  std::string out;
  {
    std::lock_guard lk(mu_);
    series(out, "gptoss_http_requests_total", "counter", "HTTP requests answered, by route and status code.");
    for (const auto& [key, n] : requests_)
      out += fmt::format("gptoss_http_requests_total{{route=\"{}\",code=\"{}\"}} {}\n", key.first, key.second, n);
    value(out, "gptoss_client_disconnects_total", "counter", "Streams/requests cancelled because the client left.",
          static_cast<double>(disconnects_));
    ttft_.render(out, "gptoss_time_to_first_token_seconds", "Time from request to first generated token.");
    latency_.render(out, "gptoss_request_latency_seconds", "Time from request to the end of generation.");
  }
  auto d = [](int64_t v) { return static_cast<double>(v); };
  value(out, "gptoss_requests_submitted_total", "counter", "Generation requests accepted by the engine.",
        d(s.requests_total));
  value(out, "gptoss_requests_finished_total", "counter", "Generation requests finished.", d(s.requests_finished));
  value(out, "gptoss_requests_cancelled_total", "counter", "Generation requests cancelled (client left, timeout).",
        d(s.requests_cancelled));
  value(out, "gptoss_requests_failed_total", "counter", "Generation requests ended by an engine error.",
        d(s.requests_failed));
  value(out, "gptoss_requests_rejected_total", "counter", "Requests turned away because the queue was full.",
        d(s.requests_rejected));
  value(out, "gptoss_requests_running", "gauge", "Requests holding a KV slot.", d(s.requests_active));
  value(out, "gptoss_queue_depth", "gauge", "Requests waiting for a slot.", d(s.requests_queued));
  value(out, "gptoss_slots_busy", "gauge", "KV slots in use.", d(s.slots_busy));
  value(out, "gptoss_slots_total", "gauge", "KV slots.", d(s.slots_total));
  value(out, "gptoss_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", d(s.prompt_tokens_total));
  value(out, "gptoss_prompt_tokens_cached_total", "counter", "Prompt tokens served from a reused KV prefix.",
        d(s.cached_tokens_total));
  value(out, "gptoss_generation_tokens_total", "counter", "Tokens generated.", d(s.generated_tokens_total));
  value(out, "gptoss_engine_steps_total", "counter", "Forward steps run.", d(s.steps));
  value(out, "gptoss_batch_size", "gauge", "Sequences in the last forward step.", d(s.last_batch_size));
  value(out, "gptoss_batch_tokens", "gauge", "Tokens in the last forward step.", d(s.last_batch_tokens));
  value(out, "gptoss_kv_tokens_used", "gauge", "Tokens held in the KV cache (all slots).", d(s.kv_tokens_used));
  value(out, "gptoss_kv_tokens_capacity", "gauge", "Token capacity of the KV cache (all slots).",
        d(s.kv_tokens_capacity));
  value(out, "gptoss_kv_usage_ratio", "gauge", "kv_tokens_used / kv_tokens_capacity.",
        s.kv_tokens_capacity > 0 ? d(s.kv_tokens_used) / d(s.kv_tokens_capacity) : 0.0);
  value(out, "gptoss_kv_bytes_reserved", "gauge", "Bytes reserved for the KV cache.",
        static_cast<double>(s.memory.kv_bytes_reserved));
  value(out, "gptoss_weight_bytes", "gauge", "Bytes of resident weights.", static_cast<double>(s.memory.weight_bytes));
  render_router(out, s.router);
  return out;
}

}  // namespace gptoss::server
