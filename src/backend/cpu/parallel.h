// Allocation-free parallel loop over a ThreadPool (or inline when there is no pool).
#pragma once

#include <cstdint>
#include <functional>

#include "core/threads.h"

namespace gptoss::cpu {

// Calls fn(begin, end) over [0, n) split across `pool` (inline when pool is null). The callable is
// passed by reference so no std::function ever copies (and heap-allocates) a large lambda.
template <class F>
void parallel_ranges(ThreadPool* pool, int64_t n, int64_t grain, F& fn) {
  if (n <= 0) return;
  if (!pool || pool->size() <= 1) {
    fn(int64_t{0}, n);
    return;
  }
  pool->parallel_for(n, grain, std::ref(fn));
}

}  // namespace gptoss::cpu
