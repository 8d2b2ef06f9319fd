// Prometheus metrics of the server: HTTP requests by route and status, TTFT and latency
// histograms, and the engine's counters (tokens, queue, batch, KV use, per-expert routing).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "engine/engine.h"

namespace gptoss::server {

// A cumulative histogram with fixed upper bounds (seconds); not thread-safe on its own.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double v);
  // Appends the _bucket/_sum/_count series of `name` in Prometheus text format.
  void render(std::string& out, const std::string& name, const std::string& help) const;
  uint64_t count() const { return count_; }

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative; the last is +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

// Thread-safe: HTTP threads record, /metrics renders.
class ServerMetrics {
 public:
  ServerMetrics();
  void count_request(const std::string& route, int status);
  // One finished generation: time to first token (when a token came) and total latency.
  void observe_generation(bool had_token, double ttft_s, double total_s);
  void count_disconnect();
  // The whole exposition: server series plus the engine's `stats`.
  std::string render(const EngineStats& stats) const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  Histogram ttft_, latency_;
  uint64_t disconnects_ = 0;
};

}  // namespace gptoss::server
