// KernelProfiler: per-kernel device times of eager steps (GPTOSS_CUDA_PROFILE=1), for the
// per-kernel breakdown in docs/PERFORMANCE.md.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>

#include "backend/cuda/cuda_internal.h"

namespace gptoss::cuda {

KernelProfiler::~KernelProfiler() {
  for (const Mark& m : marks_) cudaEventDestroy(m.start), cudaEventDestroy(m.stop);
  for (cudaEvent_t e : free_) cudaEventDestroy(e);
  if (open_) cudaEventDestroy(open_);
}

cudaEvent_t KernelProfiler::event() {
  if (!free_.empty()) {
    cudaEvent_t e = free_.back();
    free_.pop_back();
    return e;
  }
  cudaEvent_t e = nullptr;
  if (cudaEventCreate(&e) != cudaSuccess) return nullptr;
  return e;
}

void KernelProfiler::begin(cudaStream_t stream) {
  if (!on_) return;
  open_ = event();
  if (open_) cudaEventRecord(open_, stream);
}

void KernelProfiler::end(const std::string& name, double bytes, cudaStream_t stream) {
  if (!on_ || !open_) return;
  cudaEvent_t stop = event();
  if (!stop) return;
  cudaEventRecord(stop, stream);
  marks_.push_back({name, bytes, open_, stop});
  open_ = nullptr;
}

void KernelProfiler::add(std::map<std::string, Total>& totals, const Mark& m, float* step_ms) {
  float ms = 0;
  if (cudaEventElapsedTime(&ms, m.start, m.stop) != cudaSuccess) {
    cudaGetLastError();  // keep the failure from surfacing at the next launch
    return;
  }
  Total& t = totals[m.name];
  t.ms += ms, t.bytes += m.bytes, ++t.calls;
  *step_ms += ms;
}

void KernelProfiler::collect(const std::string& kind) {
  if (!on_ || marks_.empty()) return;
  auto& totals = totals_[kind];
  float step = 0;
  for (const Mark& m : marks_) add(totals, m, &step);
  float span = 0;
  if (cudaEventElapsedTime(&span, marks_.front().start, marks_.back().stop) == cudaSuccess) {
    step_ms_[kind] += span;
  } else {
    cudaGetLastError();
  }
  ++steps_[kind];
  for (const Mark& m : marks_) free_.push_back(m.start), free_.push_back(m.stop);
  marks_.clear();
}

std::string KernelProfiler::report() const {
  std::string out;
  for (const auto& [kind, totals] : totals_) {
    const double steps = static_cast<double>(steps_.at(kind));
    double sum = 0;
    for (const auto& [name, t] : totals) sum += t.ms;
    const auto span = step_ms_.find(kind);
    out += fmt::format("cuda profile: {} ({} steps, {:.3f} ms/step first-to-last event, {:.3f} ms/step in kernels)\n",
                       kind, steps_.at(kind), span == step_ms_.end() ? 0.0 : span->second / steps, sum / steps);
    out += fmt::format("  {:<28} {:>8} {:>11} {:>7} {:>10}\n", "kernel", "calls", "us/step", "share", "GB/s");
    std::vector<std::pair<std::string, Total>> rows(totals.begin(), totals.end());
    std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
    for (const auto& [name, t] : rows) {
      const std::string gbs = t.bytes > 0 ? fmt::format("{:.0f}", t.bytes / (t.ms * 1e-3) / 1e9) : "-";
      out += fmt::format("  {:<28} {:>8} {:>11.1f} {:>6.1f}% {:>10}\n", name, t.calls, 1e3 * t.ms / steps,
                         100.0 * t.ms / sum, gbs);
    }
  }
  return out;
}

}  // namespace gptoss::cuda
