// Per-token CUDA kernels against the CPU reference: embedding, residual add + RMSNorm (dense and
// weighted-expert contributions), argmax (ties, NaN, huge rows) and the router (top-k, softmax,
// tie order, statistics).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <set>

#include "backend/cpu/ops.h"
#include "backend/cuda/kernels.h"
#include "backend_cuda/cuda_test_util.h"

namespace gptoss::testing {
namespace {

TEST(CudaEmbed, CopiesRowsExactly) {
  const int64_t vocab = 1000, dim = 2880;
  const std::vector<uint16_t> table = random_bf16(static_cast<size_t>(vocab * dim), 5, 4.0f);
  const std::vector<int32_t> tokens = {0, 999, 17, 17, 500};
  DevArray<uint16_t> t(table);
  DevArray<int32_t> tok(tokens);
  DevArray<float> h(tokens.size() * dim);
  CUDA_ASSERT(cuda::embed_launch(t.get(), dim, tok.get(), static_cast<int>(tokens.size()), h.get(), test_launch()));
  std::vector<float> ref(tokens.size() * dim);
  cpu::embed_rows(table.data(), dim, tokens.data(), static_cast<int64_t>(tokens.size()), ref.data());
  EXPECT_EQ(h.download(), ref);
}

struct NormCase {
  int n, dim, nparts, top_k;
};

class CudaAddRmsNorm : public ::testing::TestWithParam<NormCase> {};

TEST_P(CudaAddRmsNorm, MatchesReference) {
  const NormCase c = GetParam();
  const int E = 6, stride = c.dim, x16_stride = static_cast<int>(cuda::round_up(c.dim, 64));
  const std::vector<float> h0 = random_f32(static_cast<size_t>(c.n) * c.dim, 11, 30.0f);
  const int groups = c.top_k > 0 ? c.top_k : 1;
  const size_t rows = static_cast<size_t>(c.n) * groups;
  const std::vector<float> parts = random_f32(static_cast<size_t>(std::max(c.nparts, 1)) * rows * stride, 12, 2.0f);
  const std::vector<float> bias = random_f32(static_cast<size_t>(E) * c.dim, 13, 1.0f);
  const std::vector<uint16_t> gain = random_bf16(static_cast<size_t>(c.dim), 14, 2.0f);
  std::vector<int32_t> experts(rows);
  std::vector<float> weights(rows);
  for (size_t i = 0; i < rows; ++i)
    experts[i] = static_cast<int32_t>((i * 5 + 1) % E), weights[i] = 0.1f + 0.2f * (i % 4);
  std::vector<float> gain_f(gain.size());
  for (size_t i = 0; i < gain.size(); ++i) gain_f[i] = bf16_to_f32(gain[i]);

  DevArray<float> h(h0), p(parts), b(bias), g(gain_f), w(weights), x32(static_cast<size_t>(c.n) * c.dim);
  DevArray<int32_t> ex(experts);
  DevArray<uint16_t> x16(static_cast<size_t>(c.n) * 2 * x16_stride);  // fp16 pairs: [hi][lo] per row
  cuda::ResidualAdd add;
  add.parts = p.get();
  add.nparts = c.nparts;
  add.part_stride = static_cast<int64_t>(rows) * stride;
  add.stride = stride;
  if (c.top_k == 0) {
    add.bias = b.get();
  } else {
    add.top_k = c.top_k, add.experts = ex.get(), add.weights = w.get();
    add.expert_bias = b.get(), add.expert_bias_stride = c.dim;
  }
  CUDA_ASSERT(cuda::add_rmsnorm_launch(h.get(), c.n, c.dim, add, g.get(), 1e-5f, x16.get(), 2 * x16_stride, x16_stride,
                                       x32.get(), test_launch()));

  // Host: the same sums in double, then the CPU RMSNorm.
  std::vector<float> href = h0;
  for (int t = 0; t < c.n && c.nparts > 0; ++t)
    for (int i = 0; i < c.dim; ++i) {
      double v = 0;
      for (int j = 0; j < groups; ++j) {
        const size_t r = static_cast<size_t>(t) * groups + j;
        double s = 0;
        for (int sp = 0; sp < c.nparts; ++sp) s += parts[static_cast<size_t>(sp) * rows * stride + r * stride + i];
        if (c.top_k == 0) {
          v += s + bias[static_cast<size_t>(i)];
        } else {
          v += weights[r] * (s + bias[static_cast<size_t>(experts[r]) * c.dim + i]);
        }
      }
      href[static_cast<size_t>(t) * c.dim + i] += static_cast<float>(v);
    }
  std::vector<float> xref(href.size());
  cpu::rmsnorm(href.data(), c.n, c.dim, gain.data(), 1e-5f, xref.data());
  const std::vector<float> hd = h.download(), xd = x32.download();
  const std::vector<float> x16d = from_f16(x16.download());  // hi at [0, half), lo at [half, 2·half)
  for (size_t i = 0; i < href.size(); ++i) ASSERT_NEAR(hd[i], href[i], 1e-5 * (std::fabs(href[i]) + 10)) << i;
  EXPECT_LE(rel_l2(xd.data(), xref.data(), xref.size()), 1e-6);
  // A second launch with no contribution: the norm of the updated residual, residual untouched.
  DevArray<float> x32b(static_cast<size_t>(c.n) * c.dim);
  CUDA_ASSERT(cuda::add_rmsnorm_launch(h.get(), c.n, c.dim, cuda::ResidualAdd{}, g.get(), 1e-5f, x16.get(),
                                       2 * x16_stride, x16_stride, x32b.get(), test_launch()));
  const std::vector<float> xb = x32b.download();
  EXPECT_LE(rel_l2(xb.data(), xref.data(), xref.size()), 1e-6);
  EXPECT_EQ(h.download(), hd);
  for (int t = 0; t < c.n; ++t)
    for (int i = 0; i < c.dim; ++i) {
      const float r = xref[static_cast<size_t>(t) * c.dim + i];
      const size_t at = static_cast<size_t>(t) * 2 * x16_stride + cuda::k_phys(i);
      ASSERT_NEAR(x16d[at] + x16d[at + x16_stride], r, 1e-6 * std::fabs(r) + 1e-7) << t << "," << i;
    }
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaAddRmsNorm,
                         ::testing::Values(NormCase{1, 2880, 0, 0}, NormCase{5, 2880, 1, 0}, NormCase{3, 2880, 6, 0},
                                           NormCase{7, 96, 2, 4}, NormCase{2, 2880, 1, 4}, NormCase{4, 100, 3, 1},
                                           NormCase{65, 256, 1, 2}, NormCase{1, 2880, 1, 4}, NormCase{1, 2880, 3, 4},
                                           NormCase{8, 2880, 2, 4}, NormCase{6, 2880, 2, 0}, NormCase{1, 4, 1, 1},
                                           NormCase{3, 3004, 1, 4}, NormCase{2, 12288, 2, 0}, NormCase{4, 10236, 1, 3},
                                           NormCase{70, 2880, 2, 4}, NormCase{260, 2880, 2, 4},
                                           NormCase{256, 12288, 1, 0}));

// The single-block kernel (for GPUs or builds without clusters) against the cluster kernel on the
// same inputs: the residual, the f32 and the fp16-pair outputs bit for bit (run where the device
// runs sm_90 code; elsewhere MatchesReference checks the single-block kernel, the only one there).
TEST_P(CudaAddRmsNorm, SingleBlockKernelGivesClusterBits) {
  const NormCase c = GetParam();
  cuda::Launch cluster = test_launch();
  if (!cluster.clusters) GTEST_SKIP() << "the device runs no sm_90 code: no cluster kernel to compare with";
  cluster.cluster_max_tokens = c.n;  // the cluster kernel whatever the step size
  cuda::Launch block = cluster;
  block.clusters = false;
  const int E = 5, groups = c.top_k > 0 ? c.top_k : 1, x16_stride = static_cast<int>(cuda::round_up(c.dim, 64));
  const size_t rows = static_cast<size_t>(c.n) * groups;
  const std::vector<float> h0 = random_f32(static_cast<size_t>(c.n) * c.dim, 51, 30.0f);
  DevArray<float> p(random_f32(static_cast<size_t>(std::max(c.nparts, 1)) * rows * c.dim, 52, 2.0f));
  DevArray<float> b(random_f32(static_cast<size_t>(E) * c.dim, 53, 1.0f)), g(random_f32(c.dim, 54, 2.0f));
  std::vector<int32_t> experts(rows);
  std::vector<float> weights(rows);
  for (size_t i = 0; i < rows; ++i)
    experts[i] = static_cast<int32_t>((i * 3 + 2) % E), weights[i] = 0.15f + 0.1f * (i % 6);
  DevArray<int32_t> ex(experts);
  DevArray<float> w(weights);
  cuda::ResidualAdd add;
  add.parts = p.get(), add.nparts = c.nparts, add.part_stride = static_cast<int64_t>(rows) * c.dim;
  add.stride = c.dim;
  if (c.top_k == 0) {
    add.bias = b.get();
  } else {
    add.top_k = c.top_k, add.experts = ex.get(), add.weights = w.get();
    add.expert_bias = b.get(), add.expert_bias_stride = c.dim;
  }
  struct Out {
    std::vector<float> h, x32;
    std::vector<uint16_t> x16;
  };
  auto run = [&](const cuda::Launch& ln, Out* o) {
    DevArray<float> h(h0), x32(static_cast<size_t>(c.n) * c.dim);
    DevArray<uint16_t> x16(static_cast<size_t>(c.n) * 2 * x16_stride);
    x32.fill_bytes(0xff), x16.fill_bytes(0xff);
    CUDA_ASSERT(cuda::add_rmsnorm_launch(h.get(), c.n, c.dim, add, g.get(), 1e-5f, x16.get(), 2 * x16_stride,
                                         x16_stride, x32.get(), ln));
    *o = Out{h.download(), x32.download(), x16.download()};
  };
  Out oc, ob;
  run(cluster, &oc);
  run(block, &ob);
  EXPECT_EQ(0, std::memcmp(oc.h.data(), ob.h.data(), oc.h.size() * sizeof(float))) << "residual";
  EXPECT_EQ(0, std::memcmp(oc.x32.data(), ob.x32.data(), oc.x32.size() * sizeof(float))) << "f32 output";
  EXPECT_EQ(oc.x16, ob.x16) << "fp16-pair output";
  for (float v : oc.x32) ASSERT_TRUE(std::isfinite(v));
}

// Each token's residual and normalised row are bit-identical whether it is launched alone or with
// others (expert contributions from 4 experts, split in 2 parts), across the batch sizes where
// add_rmsnorm_launch switches from the cluster kernel (≤ 16 tokens on sm_90) to one block per token,
// and from 1024-thread to 256-thread blocks (256 tokens).
TEST(CudaAddRmsNormBatch, RowsIndependentOfBatchSize) {
  const int dim = 2880, k = 4, nparts = 2, E = 6, x16_stride = 2880;
  constexpr int kMaxTokens = 260;
  const int64_t part_stride = int64_t{kMaxTokens} * k * dim;
  const std::vector<float> h0 = random_f32(kMaxTokens * static_cast<size_t>(dim), 41, 30.0f);
  DevArray<float> p(random_f32(static_cast<size_t>(nparts * part_stride), 42, 2.0f));
  DevArray<float> b(random_f32(static_cast<size_t>(E) * dim, 43, 1.0f)), g(random_f32(dim, 44, 2.0f));
  std::vector<int32_t> experts(kMaxTokens * k);
  std::vector<float> weights(kMaxTokens * k);
  for (int i = 0; i < kMaxTokens * k; ++i) experts[i] = (i * 5 + 2) % E, weights[i] = 0.05f + 0.1f * (i % 5);
  DevArray<int32_t> ex(experts);
  DevArray<float> w(weights);
  auto run = [&](int t0, int n, std::vector<float>* h_out, std::vector<float>* x_out) {
    DevArray<float> h(std::vector<float>(h0.begin() + static_cast<int64_t>(t0) * dim,
                                         h0.begin() + static_cast<int64_t>(t0 + n) * dim));
    DevArray<float> x32(static_cast<size_t>(n) * dim);
    DevArray<uint16_t> x16(static_cast<size_t>(n) * 2 * x16_stride);
    cuda::ResidualAdd add;
    add.parts = p.get() + static_cast<int64_t>(t0) * k * dim;
    add.nparts = nparts, add.part_stride = part_stride, add.stride = dim;
    add.top_k = k, add.experts = ex.get() + t0 * k, add.weights = w.get() + t0 * k;
    add.expert_bias = b.get(), add.expert_bias_stride = dim;
    CUDA_ASSERT(cuda::add_rmsnorm_launch(h.get(), n, dim, add, g.get(), 1e-5f, x16.get(), 2 * x16_stride, x16_stride,
                                         x32.get(), test_launch()));
    *h_out = h.download(), *x_out = x32.download();
  };
  for (int n : {1, 2, 3, 4, 5, 6, 7, 8, 16, 17, 40, 255, 256, kMaxTokens}) {
    std::vector<float> hb, xb;
    run(0, n, &hb, &xb);
    for (int t = 0; t < n; ++t) {
      std::vector<float> h1, x1;
      run(t, 1, &h1, &x1);
      ASSERT_EQ(0, std::memcmp(h1.data(), hb.data() + static_cast<size_t>(t) * dim, dim * sizeof(float)))
          << n << "," << t;
      ASSERT_EQ(0, std::memcmp(x1.data(), xb.data() + static_cast<size_t>(t) * dim, dim * sizeof(float)))
          << n << "," << t;
    }
  }
}

TEST(CudaArgmax, LowestIndexOnTiesAndNaNNeverWins) {
  const int64_t vocab = 201088;
  std::vector<float> logits = random_f32(static_cast<size_t>(5 * vocab), 21, 10.0f);
  logits[100] = 50.0f, logits[7000] = 50.0f;                        // row 0: tie → 100
  logits[vocab + 200000] = 40.0f;                                   // row 1: near the end
  logits[2 * vocab + 3] = std::numeric_limits<float>::quiet_NaN();  // row 2: NaN ignored
  logits[2 * vocab + 9] = 60.0f;
  for (int64_t i = 0; i < vocab; ++i) logits[static_cast<size_t>(3 * vocab + i)] = -1.0f;  // row 3: all equal → 0
  logits[static_cast<size_t>(4 * vocab)] = -std::numeric_limits<float>::infinity();
  DevArray<float> d(logits);
  DevArray<int32_t> out(5);
  DevArray<unsigned long long> keys(5);
  CUDA_ASSERT(cuda::argmax_launch(d.get(), 5, vocab, keys.get(), out.get(), test_launch()));
  auto got = out.download();
  for (unsigned long long k : keys.download()) EXPECT_EQ(k, 0u);
  CUDA_ASSERT(cuda::argmax_launch(d.get(), 5, vocab, keys.get(), out.get(), test_launch()));  // workspace reuse
  EXPECT_EQ(out.download(), got);
  for (int r = 0; r < 5; ++r)
    EXPECT_EQ(got[static_cast<size_t>(r)], cpu::argmax(&logits[static_cast<size_t>(r) * vocab], vocab)) << "row " << r;
  EXPECT_EQ(got[0], 100);
  EXPECT_EQ(got[3], 0);
}

// −0 and +0 are equal logits: the lower id wins, as on the CPU (a key that ordered −0 below +0 would
// take the later +0).
TEST(CudaArgmax, SignedZerosTieToTheLowerId) {
  const int64_t vocab = 5000;
  std::vector<float> logits(static_cast<size_t>(2 * vocab), -3.0f);
  logits[17] = -0.0f, logits[4000] = 0.0f;              // row 0: −0 first → 17
  logits[vocab + 8] = 0.0f, logits[vocab + 9] = -0.0f;  // row 1: +0 first → 8
  DevArray<float> d(logits);
  DevArray<int32_t> out(2);
  DevArray<unsigned long long> keys(2);
  CUDA_ASSERT(cuda::argmax_launch(d.get(), 2, vocab, keys.get(), out.get(), test_launch()));
  const auto got = out.download();
  EXPECT_EQ(got[0], 17);
  EXPECT_EQ(got[1], 8);
  for (int r = 0; r < 2; ++r)
    EXPECT_EQ(got[static_cast<size_t>(r)], cpu::argmax(&logits[static_cast<size_t>(r) * vocab], vocab)) << "row " << r;
}

TEST(CudaArgmax, SmallAndOddRows) {
  for (int64_t vocab : {1, 7, 300, 4097, 100003}) {
    const std::vector<float> logits = random_f32(static_cast<size_t>(3 * vocab), 22 + vocab, 5.0f);
    DevArray<float> d(logits);
    DevArray<int32_t> out(3);
    DevArray<unsigned long long> keys(3);
    CUDA_ASSERT(cuda::argmax_launch(d.get(), 3, vocab, keys.get(), out.get(), test_launch()));
    const auto got = out.download();
    for (int r = 0; r < 3; ++r)
      EXPECT_EQ(got[static_cast<size_t>(r)], cpu::argmax(&logits[static_cast<size_t>(r) * vocab], vocab)) << vocab;
  }
}

// Router workspace (logits + zeroed arrival counters) for n tokens.
struct RouterWorkspace {
  DevArray<float> logits;
  DevArray<unsigned int> counters;
  RouterWorkspace(int n, int experts) : logits(static_cast<size_t>(n) * experts), counters(static_cast<size_t>(n)) {}
  cuda::RouterWork get() const { return cuda::RouterWork{logits.get(), counters.get()}; }
};

struct RouterCase {
  int n, dim, experts, top_k;
};

class CudaRouter : public ::testing::TestWithParam<RouterCase> {};

TEST_P(CudaRouter, MatchesCpuTopkSoftmaxAndStats) {
  const RouterCase c = GetParam();
  std::vector<uint16_t> w = random_bf16(static_cast<size_t>(c.experts) * c.dim, 31, 0.2f);
  // Experts 1 and 2 share a row and a bias: exactly tied logits, so expert 1 must come first.
  for (int i = 0; i < c.dim; ++i) w[static_cast<size_t>(2 * c.dim + i)] = w[static_cast<size_t>(c.dim + i)];
  std::vector<uint16_t> bias = random_bf16(static_cast<size_t>(c.experts), 32, 0.5f);
  bias[2] = bias[1];
  std::vector<float> bias_f(bias.size());
  for (size_t i = 0; i < bias.size(); ++i) bias_f[i] = bf16_to_f32(bias[i]);
  const std::vector<float> x = random_f32(static_cast<size_t>(c.n) * c.dim, 33, 3.0f);
  DevArray<uint16_t> wd(w);
  DevArray<float> bd(bias_f), xd(x), wt(static_cast<size_t>(c.n) * c.top_k);
  DevArray<int32_t> idx(static_cast<size_t>(c.n) * c.top_k);
  DevArray<unsigned long long> counts(static_cast<size_t>(c.experts)), tokens(1);
  DevArray<double> top1(1), entropy(1);
  cuda::RouterStatsDev st{counts.get(), top1.get(), entropy.get(), tokens.get()};
  RouterWorkspace work(c.n, c.experts);
  CUDA_ASSERT(cuda::router_launch(xd.get(), c.n, c.dim, wd.get(), bd.get(), c.experts, c.top_k, idx.get(), wt.get(), st,
                                  nullptr, work.get(), test_launch()));
  const auto gi = idx.download();
  const auto gw = wt.download();

  std::vector<float> logits(static_cast<size_t>(c.n) * c.experts);
  cpu::matmul_bf16(x.data(), c.n, c.dim, w.data(), bias.data(), c.experts, logits.data(), nullptr);
  std::vector<int32_t> ri(static_cast<size_t>(c.top_k));
  std::vector<float> rw(static_cast<size_t>(c.top_k));
  std::vector<uint64_t> ref_counts(static_cast<size_t>(c.experts), 0);
  double ref_top1 = 0, ref_ent = 0;
  for (int t = 0; t < c.n; ++t) {
    const float* lt = &logits[static_cast<size_t>(t) * c.experts];
    cpu::router_topk_softmax(lt, c.experts, c.top_k, ri.data(), rw.data());
    // Summation order differs from the CPU's; only compare where the choice is not a near-tie.
    std::vector<float> sorted(lt, lt + c.experts);
    std::sort(sorted.begin(), sorted.end(), std::greater<float>());
    bool clear =
        c.top_k == c.experts || sorted[static_cast<size_t>(c.top_k - 1)] - sorted[static_cast<size_t>(c.top_k)] > 1e-4f;
    for (int k = 0; k + 1 < c.top_k; ++k)
      clear = clear && (sorted[static_cast<size_t>(k)] - sorted[static_cast<size_t>(k + 1)] > 1e-4f ||
                        sorted[static_cast<size_t>(k)] == sorted[static_cast<size_t>(k + 1)]);
    double wsum = 0;
    for (int k = 0; k < c.top_k; ++k) {
      const size_t i = static_cast<size_t>(t) * c.top_k + k;
      if (clear) {
        EXPECT_EQ(gi[i], ri[static_cast<size_t>(k)]) << "token " << t << " k " << k;
        EXPECT_NEAR(gw[i], rw[static_cast<size_t>(k)], 1e-5f);
      }
      wsum += gw[i];
      ++ref_counts[static_cast<size_t>(gi[i])];
      ref_ent -= gw[i] > 0 ? gw[i] * std::log(static_cast<double>(gw[i])) : 0.0;
      if (k > 0) {
        EXPECT_GE(gw[i - 1], gw[i]);
      }
    }
    EXPECT_NEAR(wsum, 1.0, 1e-5);
    ref_top1 += gw[static_cast<size_t>(t) * c.top_k];
  }
  const auto dc = counts.download();
  for (int e = 0; e < c.experts; ++e) EXPECT_EQ(dc[static_cast<size_t>(e)], ref_counts[static_cast<size_t>(e)]);
  EXPECT_EQ(tokens.download()[0], static_cast<unsigned long long>(c.n));
  EXPECT_NEAR(top1.download()[0], ref_top1, 1e-4 * c.n);
  EXPECT_NEAR(entropy.download()[0], ref_ent, 1e-4 * c.n);
}

TEST(CudaRouterTies, EqualLogitsPickLowerIndexFirst) {
  const int dim = 64, experts = 8, top_k = 3;
  std::vector<uint16_t> w(static_cast<size_t>(experts * dim), 0);  // all logits equal the bias
  std::vector<float> bias = {0.5f, 1.0f, 1.0f, 0.25f, 1.0f, -2.0f, 0.5f, 0.0f};
  DevArray<uint16_t> wd(w);
  DevArray<float> bd(bias), xd(random_f32(dim, 3, 1.0f)), wt(top_k);
  DevArray<int32_t> idx(top_k);
  RouterWorkspace work(1, experts);
  CUDA_ASSERT(cuda::router_launch(xd.get(), 1, dim, wd.get(), bd.get(), experts, top_k, idx.get(), wt.get(), {},
                                  nullptr, work.get(), test_launch()));
  EXPECT_EQ(idx.download(), (std::vector<int32_t>{1, 2, 4}));
  for (float v : wt.download()) EXPECT_NEAR(v, 1.0f / 3, 1e-6f);
}

// Decode-sized batches group the pairs in the router launch: same routing, and a grouping that
// covers every pair once in its expert's tile.
TEST(CudaRouterFusedGrouping, MatchesSeparateGrouping) {
  const int dim = 2880, experts = 32, top_k = 4;
  for (int n : {1, 2}) {
    ASSERT_TRUE(cuda::router_fuses_grouping(n, dim, experts));
    const std::vector<uint16_t> w = random_bf16(static_cast<size_t>(experts) * dim, 61, 0.2f);
    DevArray<uint16_t> wd(w);
    DevArray<float> bd(random_f32(experts, 62, 0.5f)), xd(random_f32(static_cast<size_t>(n) * dim, 63 + n, 3.0f));
    DevArray<float> wt(static_cast<size_t>(n) * top_k);
    DevArray<int32_t> idx(static_cast<size_t>(n) * top_k), st(static_cast<size_t>(n) * top_k),
        sp(static_cast<size_t>(n) * top_k), tiles(64 * 4), n_tiles(1);
    const cuda::MoeGroupOut g{8,           st.get(),      sp.get(),
                              tiles.get(), n_tiles.get(), cuda::moe_max_tiles(n * top_k, experts, 8)};
    RouterWorkspace work(n, experts);
    CUDA_ASSERT(cuda::router_launch(xd.get(), n, dim, wd.get(), bd.get(), experts, top_k, idx.get(), wt.get(), {}, &g,
                                    work.get(), test_launch()));
    for (unsigned v : work.counters.download()) EXPECT_EQ(v, 0u) << "arrival counters must be left at zero";
    const auto ids = idx.download(), sorted = sp.download(), tl = tiles.download();
    const int nt = n_tiles.download()[0];
    EXPECT_EQ(nt, n * top_k <= experts ? static_cast<int>(std::set<int32_t>(ids.begin(), ids.end()).size()) : nt);
    std::vector<int> seen(ids.size(), 0);
    for (int i = 0; i < nt; ++i)
      for (int j = tl[4 * i + 1]; j < tl[4 * i + 1] + tl[4 * i + 2]; ++j) {
        ASSERT_EQ(ids[static_cast<size_t>(sorted[static_cast<size_t>(j)])], tl[4 * i]);
        ++seen[static_cast<size_t>(sorted[static_cast<size_t>(j)])];
      }
    for (int v : seen) EXPECT_EQ(v, 1);
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaRouter,
                         ::testing::Values(RouterCase{1, 2880, 32, 4}, RouterCase{70, 2880, 32, 4},
                                           RouterCase{9, 2880, 128, 4}, RouterCase{33, 96, 5, 1},
                                           RouterCase{17, 160, 7, 3}, RouterCase{5, 64, 4, 4},
                                           RouterCase{3, 128, 256, 8}, RouterCase{2, 4096, 16, 4}));

}  // namespace
}  // namespace gptoss::testing
