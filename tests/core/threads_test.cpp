// ThreadPool::parallel_for covers [0, n) exactly once with contiguous chunks, for many pool sizes,
// n and grains, and stays correct across many back-to-back jobs.
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "core/threads.h"

namespace gptoss {
namespace {

void expect_exact_cover(ThreadPool& pool, int64_t n, int64_t grain) {
  std::vector<std::atomic<int>> hits(static_cast<size_t>(std::max<int64_t>(n, 1)));
  std::atomic<int> bad_chunks{0}, calls{0};
  pool.parallel_for(n, grain, [&](int64_t b, int64_t e) {
    calls.fetch_add(1);
    if (!(0 <= b && b < e && e <= n)) bad_chunks.fetch_add(1);
    for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
  });
  EXPECT_EQ(bad_chunks.load(), 0) << "n=" << n << " grain=" << grain;
  for (int64_t i = 0; i < n; ++i)
    ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << "n=" << n << " grain=" << grain << " i=" << i;
  if (n <= 0) {
    EXPECT_EQ(calls.load(), 0);
  }
  // No more chunks than threads, and a single call when one grain covers everything.
  EXPECT_LE(calls.load(), pool.size());
  if (n > 0 && grain >= n) {
    EXPECT_EQ(calls.load(), 1);
  }
}

TEST(ThreadPool, CoversEveryIndexExactlyOnce) {
  for (int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (int64_t n : {0, 1, 2, 3, 7, 63, 64, 65, 1000, 100003})
      for (int64_t grain : {0, 1, 2, 7, 64, 1000, 1 << 20}) expect_exact_cover(pool, n, grain);
  }
}

TEST(ThreadPool, DefaultSizeIsHardwareConcurrency) {
  ThreadPool pool;
  EXPECT_EQ(pool.size(), static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
}

TEST(ThreadPool, ManyBackToBackJobsAndWorkSpreads) {
  ThreadPool pool(4);
  int64_t total = 0;
  for (int rep = 0; rep < 2000; ++rep) {
    std::atomic<int64_t> sum{0};
    const int64_t n = 1 + rep % 37;
    pool.parallel_for(n, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) sum.fetch_add(i + 1);
    });
    ASSERT_EQ(sum.load(), n * (n + 1) / 2) << rep;
    total += sum.load();
  }
  EXPECT_GT(total, 0);
  // With grain 1 and n >= size, every thread gets a chunk (the caller included).
  std::mutex mu;
  std::set<std::thread::id> ids;
  pool.parallel_for(4, 1, [&](int64_t, int64_t) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::lock_guard<std::mutex> lock(mu);
    ids.insert(std::this_thread::get_id());
  });
  EXPECT_EQ(ids.size(), 4u);
  EXPECT_EQ(ids.count(std::this_thread::get_id()), 1u);
}

}  // namespace
}  // namespace gptoss
