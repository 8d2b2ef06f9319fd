// CUDA attention kernels against the CPU reference: qkv bias + YaRN RoPE + KV-cache store, and
// flash attention with sinks (GQA/MQA/MHA, sliding windows, ring wrap, key splits, padded head
// dims, prefill items and the decode kernel up to 32k keys), each over an f32 and an fp16 cache; a
// decode item's output bits do not depend on the other items of its step.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <tuple>

#include "backend/cpu/ops.h"
#include "backend/cuda/kernels.h"
#include "backend_cuda/cuda_test_util.h"
#include "model/config.h"

namespace gptoss::testing {
namespace {

int padded_dim(int d) {
  for (int dp : {16, 32, 64, 128})
    if (d <= dp) return dp;
  return 0;
}

// Value i of cache row `row` (dp values a row) of an f32 cache: its hi plus its lo plane.
float plane_value(const std::vector<uint16_t>& c, size_t row, int dp, int i) {
  const size_t at = row * 2 * static_cast<size_t>(dp) + static_cast<size_t>(i);
  return f16_to_f32(c[at]) + f16_to_f32(c[at + static_cast<size_t>(dp)]);
}

TEST(CudaQkvRope, RotatesQAndStoresKvAtRingIndex) {
  Config cfg;
  cfg.head_dim = 64, cfg.num_attention_heads = 8, cfg.num_key_value_heads = 2;
  const cpu::RopeTable rope = cpu::rope_table(cfg);
  const int n = 6, hq = 8, hkv = 2, d = 64, dp = 64, slots = 3, cap = 50;
  const int cols = (hq + 2 * hkv) * d, nparts = 2;
  const std::vector<int32_t> pos = {0, 1, 49, 50, 4095, 131071}, slot = {0, 1, 2, 2, 1, 0};
  const std::vector<float> parts = random_f32(static_cast<size_t>(nparts) * n * cols, 41, 2.0f);
  const std::vector<float> bias = random_f32(static_cast<size_t>(cols), 42, 0.5f);
  DevArray<float> pd(parts), bd(bias), inv(rope.inv_freq);
  DevArray<int32_t> posd(pos), slotd(slot);
  DevArray<float> q32(static_cast<size_t>(n) * hq * dp);
  DevArray<uint16_t> kc(static_cast<size_t>(slots) * hkv * cap * 2 * dp), vc(kc.size());  // hi and lo planes
  cuda::QkvRopeArgs a;
  a.parts = pd.get(), a.nparts = nparts, a.part_stride = static_cast<int64_t>(n) * cols, a.stride = cols;
  a.bias = bd.get(), a.pos = posd.get(), a.slot = slotd.get(), a.inv_freq = inv.get();
  a.concentration = rope.concentration, a.q32 = q32.get();
  cuda::KvLayer kv;
  kv.k = kc.get(), kv.v = vc.get(), kv.cap = cap;
  CUDA_ASSERT(cuda::qkv_rope_launch(a, n, cuda::AttnShape{hq, hkv, d, dp}, kv, test_launch()));
  const auto q = q32.download();
  const auto k = kc.download(), v = vc.download();
  for (int t = 0; t < n; ++t) {
    std::vector<float> row(static_cast<size_t>(cols));
    for (int c = 0; c < cols; ++c)
      row[static_cast<size_t>(c)] = parts[static_cast<size_t>(t) * cols + c] +
                                    parts[static_cast<size_t>(n + t) * cols + c] + bias[static_cast<size_t>(c)];
    cpu::rope_apply(row.data(), hq + hkv, rope, pos[static_cast<size_t>(t)]);  // q heads then k heads
    const int idx = pos[static_cast<size_t>(t)] % cap;
    for (int h = 0; h < hq + 2 * hkv; ++h)
      for (int i = 0; i < d; ++i) {
        const float want = row[static_cast<size_t>(h * d + i)];
        float got;
        if (h < hq) {
          got = q[(static_cast<size_t>(t) * hq + h) * dp + i];
        } else {
          const int kvh = h < hq + hkv ? h - hq : h - hq - hkv;
          const size_t row = (static_cast<size_t>(slot[static_cast<size_t>(t)]) * hkv + kvh) * cap + idx;
          got = plane_value(h < hq + hkv ? k : v, row, dp, i);
        }
        ASSERT_NEAR(got, want, 1e-5 * std::fabs(want) + 1e-5) << "token " << t << " head " << h << " dim " << i;
      }
  }

  // An L2 prefetch riding on the launch (a span at an odd address and length, as the bulk prefetch
  // rounds it inward) changes no bit; a negative span is refused.
  DevArray<float> q2(q.size());
  DevArray<uint16_t> k2(k.size()), v2(v.size());
  cuda::QkvRopeArgs b = a;
  b.q32 = q2.get();
  b.prefetch = cuda::L2Span{reinterpret_cast<const char*>(pd.get()) + 3, static_cast<int64_t>(parts.size()) * 4 - 5};
  kv.k = k2.get(), kv.v = v2.get();
  CUDA_ASSERT(cuda::qkv_rope_launch(b, n, cuda::AttnShape{hq, hkv, d, dp}, kv, test_launch()));
  const auto q2h = q2.download();
  const auto k2h = k2.download(), v2h = v2.download();
  EXPECT_EQ(0, std::memcmp(q2h.data(), q.data(), q.size() * sizeof(float))) << "q";
  for (int t = 0; t < n; ++t)  // the cache rows this step wrote
    for (int kvh = 0; kvh < hkv; ++kvh) {
      const size_t at = ((static_cast<size_t>(slot[static_cast<size_t>(t)]) * hkv + kvh) * cap +
                         static_cast<size_t>(pos[static_cast<size_t>(t)] % cap)) *
                        2 * dp;
      ASSERT_EQ(0, std::memcmp(&k2h[at], &k[at], 2 * dp * sizeof(uint16_t))) << "k, token " << t << " head " << kvh;
      ASSERT_EQ(0, std::memcmp(&v2h[at], &v[at], 2 * dp * sizeof(uint16_t))) << "v, token " << t << " head " << kvh;
    }
  b.prefetch.bytes = -16;
  EXPECT_EQ(cuda::qkv_rope_launch(b, n, cuda::AttnShape{hq, hkv, d, dp}, kv, test_launch()), cudaErrorInvalidValue);
}

// An fp16 cache holds exactly the f32 cache's hi plane (the values rounded to nearest, ties to
// even), saturated at ±65504 where that plane is infinite; q is unchanged. Gpt-oss shapes and a
// padded head dim.
TEST(CudaQkvRope, F16CacheStoresTheRoundedF32Values) {
  for (const auto& [hq, hkv, d, dp] : {std::tuple{64, 8, 64, 64}, std::tuple{6, 2, 24, 32}}) {
    Config cfg;
    cfg.head_dim = d, cfg.num_attention_heads = hq, cfg.num_key_value_heads = hkv;
    const cpu::RopeTable rope = cpu::rope_table(cfg);
    const int n = 9, slots = 2, cap = 64, cols = (hq + 2 * hkv) * d;
    std::vector<int32_t> pos(n), slot(n);
    for (int t = 0; t < n; ++t) pos[static_cast<size_t>(t)] = 3 * t + 1, slot[static_cast<size_t>(t)] = t % slots;
    std::vector<float> bias = random_f32(static_cast<size_t>(cols), 72, 0.5f);
    bias[static_cast<size_t>((hq + hkv) * d)] = 1e5f, bias[static_cast<size_t>((hq + hkv) * d + 1)] = -7e4f;  // v
    DevArray<float> pd(random_f32(static_cast<size_t>(n) * cols, 71, 3.0f)), bd(bias), inv(rope.inv_freq);
    DevArray<int32_t> posd(pos), slotd(slot);
    const size_t cache = static_cast<size_t>(slots) * hkv * cap * dp;
    DevArray<float> q32(static_cast<size_t>(n) * hq * dp), q16(q32.size());
    DevArray<uint16_t> k32(2 * cache), v32(2 * cache), k16(cache), v16(cache);  // hi/lo planes; one plane
    cuda::QkvRopeArgs a;
    a.parts = pd.get(), a.nparts = 1, a.part_stride = static_cast<int64_t>(n) * cols, a.stride = cols;
    a.bias = bd.get(), a.pos = posd.get(), a.slot = slotd.get(), a.inv_freq = inv.get();
    a.concentration = rope.concentration, a.q32 = q32.get();
    const cuda::AttnShape shape{hq, hkv, d, dp};
    cuda::KvLayer kv;
    kv.k = k32.get(), kv.v = v32.get(), kv.cap = cap;
    CUDA_ASSERT(cuda::qkv_rope_launch(a, n, shape, kv, test_launch()));
    a.q32 = q16.get();
    kv.k = k16.get(), kv.v = v16.get(), kv.f16 = true;
    CUDA_ASSERT(cuda::qkv_rope_launch(a, n, shape, kv, test_launch()));
    const auto qa = q32.download(), qb = q16.download();
    const auto ka = k32.download(), va = v32.download();
    const auto kb = k16.download(), vb = v16.download();
    EXPECT_EQ(0, std::memcmp(qa.data(), qb.data(), qa.size() * sizeof(float))) << "q";
    auto expect_f16 = [](uint16_t hi) -> uint16_t {
      if ((hi & 0x7fffu) != 0x7c00u) return hi;  // finite
      return hi & 0x8000u ? 0xfbffu : 0x7bffu;   // ±inf → ±65504
    };
    for (int t = 0; t < n; ++t)
      for (int h = 0; h < hkv; ++h)
        for (int i = 0; i < dp; ++i) {
          const size_t row =
              (static_cast<size_t>(slot[static_cast<size_t>(t)]) * hkv + h) * cap + pos[static_cast<size_t>(t)] % cap;
          const size_t at = row * dp + i, hi = row * 2 * dp + i;
          ASSERT_EQ(kb[at], expect_f16(ka[hi])) << "k, token " << t << " head " << h << " dim " << i;
          ASSERT_EQ(vb[at], expect_f16(va[hi])) << "v, token " << t << " head " << h << " dim " << i;
        }
    // The saturated values: v dims 0 and 1 of KV head 0 of every token.
    const size_t at0 = (static_cast<size_t>(slot[0]) * hkv * cap + pos[0] % cap) * dp;
    EXPECT_EQ(vb[at0], 0x7bffu) << "+65504";
    EXPECT_EQ(vb[at0 + 1], 0xfbffu) << "-65504";
  }
}

// Prefill-sized launches give each block several tokens (qkv_rope_launch): a 517-token launch (the
// last group partial, gpt-oss shapes, 3 partials) writes the bits of 1-token-per-block launches of
// the same tokens in chunks of 100, for q and both cache halves.
// Steps of ≥ 512 tokens give each block 8 tokens, smaller steps one: the same bits for every token,
// every element written (NaN-poisoned outputs), on the gpt-oss shape and on head dims with padding
// (dp > d), an odd number of heads and MHA.
struct RopeShape {
  int hq, hkv, d, dp;
};
class CudaQkvRopeShapes : public ::testing::TestWithParam<RopeShape> {};

TEST_P(CudaQkvRopeShapes, TokenGroupsPerBlockGiveTheSameBits) {
  const RopeShape sh = GetParam();
  Config cfg;
  cfg.head_dim = sh.d, cfg.num_attention_heads = sh.hq, cfg.num_key_value_heads = sh.hkv;
  const cpu::RopeTable rope = cpu::rope_table(cfg);
  const int n = 517, hq = sh.hq, hkv = sh.hkv, d = sh.d, dp = sh.dp, slots = 2, cap = 1024, nparts = 3;
  const int cols = (hq + 2 * hkv) * d;
  std::vector<int32_t> pos(n), slot(n);
  for (int t = 0; t < n; ++t) slot[static_cast<size_t>(t)] = t % slots, pos[static_cast<size_t>(t)] = 700 + t / slots;
  const std::vector<float> parts = random_f32(static_cast<size_t>(nparts) * n * cols, 91, 2.0f);
  DevArray<float> pd(parts), bd(random_f32(static_cast<size_t>(cols), 92, 0.5f)), inv(rope.inv_freq);
  DevArray<int32_t> posd(pos), slotd(slot);
  const cuda::AttnShape shape{hq, hkv, d, dp};
  auto run = [&](int chunk, std::vector<float>* q, std::vector<uint16_t>* k, std::vector<uint16_t>* v) {
    DevArray<float> q32(static_cast<size_t>(n) * hq * dp);
    DevArray<uint16_t> kc(static_cast<size_t>(slots) * hkv * cap * 2 * dp), vc(kc.size());
    q32.fill_bytes(0xff), kc.fill_bytes(0xff), vc.fill_bytes(0xff);  // NaN: whatever is not written
    cuda::KvLayer kv;
    kv.k = kc.get(), kv.v = vc.get(), kv.cap = cap;
    for (int t0 = 0; t0 < n; t0 += chunk) {
      cuda::QkvRopeArgs a;
      a.parts = pd.get() + static_cast<int64_t>(t0) * cols, a.nparts = nparts;
      a.part_stride = static_cast<int64_t>(n) * cols, a.stride = cols;
      a.bias = bd.get(), a.pos = posd.get() + t0, a.slot = slotd.get() + t0, a.inv_freq = inv.get();
      a.concentration = rope.concentration, a.q32 = q32.get() + static_cast<int64_t>(t0) * hq * dp;
      CUDA_ASSERT(cuda::qkv_rope_launch(a, std::min(chunk, n - t0), shape, kv, test_launch()));
    }
    *q = q32.download(), *k = kc.download(), *v = vc.download();
  };
  std::vector<float> q1, q8;
  std::vector<uint16_t> k1, v1, k8, v8;
  ASSERT_NO_FATAL_FAILURE(run(100, &q1, &k1, &v1));
  ASSERT_NO_FATAL_FAILURE(run(n, &q8, &k8, &v8));
  EXPECT_EQ(0, std::memcmp(q1.data(), q8.data(), q1.size() * sizeof(float))) << "q";
  EXPECT_EQ(0, std::memcmp(k1.data(), k8.data(), k1.size() * sizeof(uint16_t))) << "k cache";
  EXPECT_EQ(0, std::memcmp(v1.data(), v8.data(), v1.size() * sizeof(uint16_t))) << "v cache";
  // Every q element of every token was written, the padding past d included (as zeros).
  for (size_t e = 0; e < q8.size(); ++e) {
    ASSERT_FALSE(std::isnan(q8[e])) << "q element " << e << " not written";
    if (static_cast<int>(e % dp) >= d) {
      ASSERT_EQ(q8[e], 0.0f) << "q padding element " << e;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaQkvRopeShapes,
                         ::testing::Values(RopeShape{64, 8, 64, 64}, RopeShape{12, 4, 40, 48}, RopeShape{6, 2, 96, 112},
                                           RopeShape{5, 5, 16, 16}),
                         [](const auto& info) {
                           const RopeShape& r = info.param;
                           return "q" + std::to_string(r.hq) + "_kv" + std::to_string(r.hkv) + "_d" +
                                  std::to_string(r.d) + "_dp" + std::to_string(r.dp);
                         });

struct Seq {
  int slot, pos0, n;
};

struct AttnCase {
  std::string name;
  int head_dim, n_heads, n_kv_heads, window, cap, splits;  // splits 0: the backend's decode rule
  bool decode;                                             // one token per item
  std::vector<Seq> seqs;
};

// Most key splits of one decode item on this device, as the CUDA backend sizes them.
int decode_split_cap(const cuda::AttnShape& shape, bool kv_f16) {
  int sms = 0, slots = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0) != cudaSuccess ||
      cuda::attention_decode_slots(shape, kv_f16, sms, &slots) != cudaSuccess)
    return 0;
  return std::clamp(slots / (shape.n_kv_heads * cuda::attention_decode_chunks(shape)), 1, 256);
}

// Keys a decode query at position p attends to.
int decode_keys(int p, int window) {
  return window > 0 ? std::min(p + 1, window) : p + 1;
}

// One attention launch (+ merge) over device K/V, q, sinks; returns o16 as floats (poisoned first).
std::vector<float> run_attention(const cuda::AttnShape& shape, const cuda::KvLayer& kv, const DevArray<float>& qd,
                                 const DevArray<float>& sd, const std::vector<int32_t>& pos,
                                 const std::vector<cuda::AttnItem>& items, int tokens_per_item, int splits,
                                 const cuda::Launch& ln = test_launch()) {
  const int T = static_cast<int>(pos.size()), hq = shape.n_heads, d = shape.head_dim;
  DevArray<uint16_t> o16(static_cast<size_t>(T) * 2 * hq * d);  // fp16 pairs: [hi][lo] per token
  o16.fill_bytes(0xff);
  DevArray<float> po(static_cast<size_t>(splits) * T * hq * shape.dp), pml(static_cast<size_t>(splits) * T * hq * 2);
  DevArray<int32_t> posd(pos);
  DevArray<cuda::AttnItem> itd(items);
  cuda::AttnArgs a;
  a.q32 = qd.get(), a.pos = posd.get(), a.items = itd.get(), a.n_items = static_cast<int>(items.size());
  a.tokens_per_item = tokens_per_item, a.sinks = sd.get(), a.scale = 1.0f / std::sqrt(static_cast<float>(d));
  a.splits = splits, a.o16 = o16.get(), a.o_stride = 2 * static_cast<int64_t>(hq) * d;
  a.o_lo = static_cast<int64_t>(hq) * d;
  a.part_o = po.get(), a.part_ml = pml.get(), a.n_tokens = T;
  EXPECT_EQ(cuda::attention_launch(a, shape, kv, ln), cudaSuccess);
  EXPECT_EQ(cuda::attention_combine_launch(a, shape, ln), cudaSuccess);
  const std::vector<float> o = from_f16(o16.download());
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  return o;
}

// A cache of f32 values (rows of dp as hi and lo fp16 planes, as qkv_rope stores them), or the
// same values rounded to fp16 (the CPU reference then attends over the rounded values).
struct TestCache {
  std::vector<float> values;  // what the reference reads
  DevArray<uint16_t> dev;
  TestCache(std::vector<float> v, int dp, bool half)
      : values(std::move(v)), dev(half ? to_f16(values) : kv_cache_planes(values, dp)) {
    if (half) values = from_f16(to_f16(values));
  }
  void* get() const { return dev.get(); }
};

class CudaAttention : public ::testing::TestWithParam<std::tuple<AttnCase, bool>> {};

TEST_P(CudaAttention, MatchesCpuSinkAttention) {
  const AttnCase& c = std::get<0>(GetParam());
  const bool half = std::get<1>(GetParam());
  const int d = c.head_dim, dp = padded_dim(d), hq = c.n_heads, hkv = c.n_kv_heads;
  int slots = 0, T = 0;
  for (const Seq& s : c.seqs) slots = std::max(slots, s.slot + 1), T += s.n;
  // Random f32 cache (zero padding past head_dim), queries, sinks.
  auto padded_random = [&](size_t rows, uint64_t seed, float scale) {
    std::vector<float> f = random_f32(rows * dp, seed, scale);
    for (size_t r = 0; r < rows; ++r)
      for (int i = d; i < dp; ++i) f[r * dp + i] = 0.0f;  // the cache's zero padding
    return f;
  };
  const size_t cache_rows = static_cast<size_t>(slots) * hkv * c.cap;
  const TestCache kc(padded_random(cache_rows, 51, 1.0f), dp, half), vc(padded_random(cache_rows, 52, 2.0f), dp, half);
  const std::vector<float>&kf = kc.values, &vf = vc.values;
  const std::vector<float> qf = padded_random(static_cast<size_t>(T) * hq, 53, 3.0f);
  const std::vector<float> sinks = random_f32(static_cast<size_t>(hq), 54, 2.0f);
  std::vector<int32_t> pos;
  std::vector<cuda::AttnItem> items;
  const cuda::AttnShape shape{hq, hkv, d, dp};
  const int hc = cuda::attention_heads_per_chunk(shape);
  const int tpi = c.decode ? 1 : std::max(1, cuda::kAttnMaxWarps * cuda::kAttnRowsPerWarp / hc);
  int max_count = 1, splits = c.splits;
  if (splits == 0) {
    ASSERT_TRUE(c.decode);
    const int cap = decode_split_cap(shape, half);
    ASSERT_GT(cap, 0);
    splits = 1;
    for (const Seq& s : c.seqs)
      splits = std::max(splits, cuda::attention_item_splits(decode_keys(s.pos0, c.window), cap));
  }
  for (const Seq& s : c.seqs) {
    for (int i = 0; i < s.n; i += tpi) {
      items.push_back({static_cast<int32_t>(pos.size()) + i, std::min(tpi, s.n - i), s.slot, 0});
      max_count = std::max(max_count, std::min(tpi, s.n - i));
    }
    for (int i = 0; i < s.n; ++i) pos.push_back(s.pos0 + i);
  }
  DevArray<float> qd(qf), sd(sinks);
  cuda::KvLayer kv;
  kv.k = kc.get(), kv.v = vc.get(), kv.cap = c.cap, kv.window = c.window, kv.f16 = half;
  const std::vector<float> o = run_attention(shape, kv, qd, sd, pos, items, max_count, splits);
  if (!c.decode) {
    // With one tile stage (what a device with less shared memory per block gets): the same bits.
    cuda::Launch one_stage = test_launch();
    one_stage.smem_optin = static_cast<int>(cuda::attention_smem_bytes(dp, half, 2)) - 1;
    ASSERT_LE(cuda::attention_smem_bytes(dp, half, 1), static_cast<size_t>(one_stage.smem_optin));
    const std::vector<float> o1 = run_attention(shape, kv, qd, sd, pos, items, max_count, splits, one_stage);
    ASSERT_EQ(o1.size(), o.size());
    EXPECT_EQ(0, std::memcmp(o1.data(), o.data(), o.size() * sizeof(float))) << "one tile stage";
  }
  double worst = 0;

  int t = 0;
  std::vector<float> qrow(static_cast<size_t>(hq) * d), out(static_cast<size_t>(hq) * d),
      kv_row(static_cast<size_t>(hkv) * d);
  std::vector<float> kbuf, vbuf;
  for (const Seq& s : c.seqs) {
    // Keys/values of this slot by position, unpadded [pos][hkv][d].
    const int last = s.pos0 + s.n - 1;
    kbuf.assign(static_cast<size_t>(last + 1) * hkv * d, 0.0f);
    vbuf = kbuf;
    for (int j = 0; j <= last; ++j)
      for (int h = 0; h < hkv; ++h)
        for (int i = 0; i < d; ++i) {
          const size_t src = ((static_cast<size_t>(s.slot) * hkv + h) * c.cap + j % c.cap) * dp + i;
          kbuf[(static_cast<size_t>(j) * hkv + h) * d + i] = kf[src];
          vbuf[(static_cast<size_t>(j) * hkv + h) * d + i] = vf[src];
        }
    auto k_at = [&](int64_t j) { return &kbuf[static_cast<size_t>(j) * hkv * d]; };
    auto v_at = [&](int64_t j) { return &vbuf[static_cast<size_t>(j) * hkv * d]; };
    for (int i = 0; i < s.n; ++i, ++t) {
      const int p = s.pos0 + i;
      for (int h = 0; h < hq; ++h)
        for (int x = 0; x < d; ++x)
          qrow[static_cast<size_t>(h * d + x)] = qf[(static_cast<size_t>(t) * hq + h) * dp + x];
      const int first = c.window > 0 ? std::max(0, p - c.window + 1) : 0;
      cpu::attention_sinks(qrow.data(), hq, hkv, d, first, p, k_at, v_at, sinks.data(),
                           1.0f / std::sqrt(static_cast<float>(d)), out.data());
      for (int h = 0; h < hq; ++h) {
        std::vector<float> got(static_cast<size_t>(d));  // o16 columns are stored in k_phys order
        for (int x = 0; x < d; ++x)
          got[static_cast<size_t>(x)] = o[static_cast<size_t>(t) * 2 * hq * d + cuda::k_phys(h * d + x)] +
                                        o[static_cast<size_t>(t) * 2 * hq * d + hq * d + cuda::k_phys(h * d + x)];
        const float* want = &out[static_cast<size_t>(h) * d];
        for (int x = 0; x < d; ++x)
          ASSERT_TRUE(std::isfinite(got[static_cast<size_t>(x)])) << "token " << t << " head " << h << " unwritten";
        // Split-fp16 products (prefill hi·hi + hi·lo + lo·hi, decode all four; an fp16 cache has
        // no lo), f32 accumulation: near-f32 attention over the cached values.
        const double err = rel_l2(got.data(), want, static_cast<size_t>(d));
        worst = std::max(worst, err);
        EXPECT_LE(err, 5e-5) << "token " << t << " (pos " << p << ") head " << h;
      }
    }
  }
  std::printf("  %s (%s cache): %d key splits, worst rel L2 %.2e\n", c.name.c_str(), half ? "f16" : "f32", splits,
              worst);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, CudaAttention,
    ::testing::Combine(
        ::testing::Values(
            AttnCase{"gptoss_prefill_sliding", 64, 64, 8, 128, 2176, 1, false, {{0, 0, 300}}},
            AttnCase{"gptoss_prefill_full_resume", 64, 64, 8, 0, 4096, 1, false, {{1, 250, 77}}},
            AttnCase{"gptoss_decode_split", 64, 64, 8, 0, 4096, 17, true, {{0, 1000, 1}, {1, 5, 1}, {2, 0, 1}}},
            AttnCase{"ring_wrap_split", 64, 64, 8, 128, 200, 3, false, {{0, 1000, 20}}},
            AttnCase{"decode_ring", 64, 64, 8, 128, 1152, 5, true, {{0, 5000, 1}, {3, 127, 1}}},
            AttnCase{"mixed_prefill_decode", 64, 64, 8, 0, 600, 2, false, {{0, 300, 1}, {1, 0, 90}, {2, 17, 5}}},
            AttnCase{"hd8_gqa8_window5", 8, 16, 2, 5, 64, 1, false, {{0, 0, 48}}},
            AttnCase{"hd32_g3_window16", 32, 3, 1, 16, 100, 2, false, {{0, 0, 60}}},
            AttnCase{"hd16_mha_full", 16, 4, 4, 0, 256, 1, false, {{0, 0, 200}}},
            AttnCase{"hd128_g8", 128, 8, 1, 0, 512, 4, false, {{0, 10, 100}}},
            AttnCase{"hd24_padded", 24, 6, 3, 0, 128, 1, false, {{0, 0, 70}}},
            AttnCase{"mqa_64heads", 64, 64, 1, 0, 256, 2, false, {{0, 3, 9}}},
            AttnCase{"mqa_128heads_chunks", 64, 128, 1, 32, 256, 1, false, {{0, 0, 40}}},
            // Decode kernel: gpt-oss shapes at 1 … 32768 keys (full and window 128 in a ring), several
            // sequences at different depths per step, with the backend's split rule; then awkward shapes.
            AttnCase{"gptoss_decode_full_32k", 64, 64, 8, 0, 32768, 0, true, {{0, 32767, 1}, {1, 1000, 1}}},
            AttnCase{"gptoss_decode_full_depths",
                     64,
                     64,
                     8,
                     0,
                     4097,
                     0,
                     true,
                     {{0, 0, 1}, {1, 126, 1}, {2, 127, 1}, {3, 128, 1}, {4, 999, 1}, {5, 4096, 1}}},
            AttnCase{"gptoss_decode_sliding_depths",
                     64,
                     64,
                     8,
                     128,
                     192,
                     0,
                     true,
                     {{0, 0, 1}, {1, 126, 1}, {2, 127, 1}, {3, 128, 1}, {4, 999, 1}, {5, 4096, 1}, {6, 32767, 1}}},
            AttnCase{"decode_split_cap5", 64, 8, 2, 0, 6000, 5, true, {{0, 4999, 1}, {1, 600, 1}, {2, 2, 1}}},
            AttnCase{"decode_gqa4_hd32", 32, 16, 4, 0, 3000, 0, true, {{0, 2999, 1}, {1, 40, 1}}},
            AttnCase{"decode_mha_hd16_window16", 16, 4, 4, 16, 40, 0, true, {{0, 100, 1}, {1, 3, 1}}},
            AttnCase{"decode_hd8_g3", 8, 6, 2, 0, 700, 3, true, {{0, 699, 1}, {1, 1, 1}}},
            AttnCase{"decode_hd24_padded", 24, 6, 3, 0, 600, 4, true, {{0, 550, 1}}},
            AttnCase{"decode_hd128_g12", 128, 24, 2, 0, 1500, 0, true, {{0, 1400, 1}, {1, 7, 1}}},
            AttnCase{"decode_mqa_64heads", 64, 64, 1, 0, 2100, 0, true, {{0, 2050, 1}}}),
        ::testing::Bool()),
    [](const auto& info) { return std::get<0>(info.param).name + (std::get<1>(info.param) ? "_f16" : "_f32"); });

// A decode item's output (both fp16 halves) is bit-identical whether it runs alone or in a step
// with longer sequences that need key splits (and the merge kernel) while it needs none, over an
// f32 and an fp16 cache.
class CudaAttentionDecode : public ::testing::TestWithParam<bool> {};

TEST_P(CudaAttentionDecode, ItemResultIndependentOfTheStep) {
  const bool half = GetParam();
  const int hq = 64, hkv = 8, d = 64, cap = 8192;
  const cuda::AttnShape shape{hq, hkv, d, d};
  const int split_cap = decode_split_cap(shape, half);
  ASSERT_GT(split_cap, 0);
  const std::vector<int> p = {8000, 3, 700, 255, 127};
  const int n = static_cast<int>(p.size());
  const size_t rows = static_cast<size_t>(n) * hkv * cap;
  const TestCache kc(random_f32(rows * d, 61, 1.0f), d, half), vc(random_f32(rows * d, 62, 2.0f), d, half);
  DevArray<float> qd(random_f32(static_cast<size_t>(n) * hq * d, 63, 3.0f)), sd(random_f32(hq, 64, 2.0f));
  for (int window : {0, 128}) {
    cuda::KvLayer kv;
    kv.k = kc.get(), kv.v = vc.get(), kv.cap = cap, kv.window = window, kv.f16 = half;
    std::vector<cuda::AttnItem> items;
    int splits = 1;
    for (int i = 0; i < n; ++i) {
      items.push_back({i, 1, i, 0});
      splits = std::max(splits, cuda::attention_item_splits(decode_keys(p[i], window), split_cap));
    }
    const std::vector<float> all =
        run_attention(shape, kv, qd, sd, std::vector<int32_t>(p.begin(), p.end()), items, 1, splits);
    for (int i = 0; i < n; ++i) {
      // Token i alone: the same q row and slot, as a one-token step.
      std::vector<int32_t> pos(static_cast<size_t>(n), 0);
      pos[static_cast<size_t>(i)] = p[static_cast<size_t>(i)];
      const int own = cuda::attention_item_splits(decode_keys(p[i], window), split_cap);
      const std::vector<float> alone = run_attention(shape, kv, qd, sd, pos, {{i, 1, i, 0}}, 1, own);
      const size_t row = static_cast<size_t>(i) * 2 * hq * d;
      for (size_t x = 0; x < static_cast<size_t>(2 * hq * d); ++x) {
        ASSERT_TRUE(std::isfinite(all[row + x])) << "token " << i << " element " << x << " unwritten";
        ASSERT_EQ(std::memcmp(&alone[row + x], &all[row + x], sizeof(float)), 0)
            << "window " << window << " token " << i << " (pos " << p[i] << ", " << own << " of " << splits
            << " splits) element " << x;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Caches, CudaAttentionDecode, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "f16" : "f32"; });

}  // namespace
}  // namespace gptoss::testing
