// CUDA attention kernels against the CPU reference: qkv bias + YaRN RoPE + KV-cache store, and
// flash attention with sinks (GQA/MQA/MHA, sliding windows, ring wrap, key splits, padded head
// dims, prefill and decode items).
#include <gtest/gtest.h>

#include <cmath>

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
  DevArray<float> q32(static_cast<size_t>(n) * hq * dp), kc(static_cast<size_t>(slots) * hkv * cap * dp),
      vc(static_cast<size_t>(slots) * hkv * cap * dp);
  cuda::QkvRopeArgs a;
  a.parts = pd.get(), a.nparts = nparts, a.part_stride = static_cast<int64_t>(n) * cols, a.stride = cols;
  a.bias = bd.get(), a.pos = posd.get(), a.slot = slotd.get(), a.inv_freq = inv.get();
  a.concentration = rope.concentration, a.q32 = q32.get();
  cuda::KvLayer kv;
  kv.k = kc.get(), kv.v = vc.get(), kv.cap = cap;
  CUDA_ASSERT(cuda::qkv_rope_launch(a, n, cuda::AttnShape{hq, hkv, d, dp}, kv, nullptr));
  const auto q = q32.download(), k = kc.download(), v = vc.download();
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
          const size_t at = ((static_cast<size_t>(slot[static_cast<size_t>(t)]) * hkv + kvh) * cap + idx) * dp + i;
          got = h < hq + hkv ? k[at] : v[at];
        }
        ASSERT_NEAR(got, want, 1e-5 * std::fabs(want) + 1e-5) << "token " << t << " head " << h << " dim " << i;
      }
  }
}

struct Seq {
  int slot, pos0, n;
};

struct AttnCase {
  std::string name;
  int head_dim, n_heads, n_kv_heads, window, cap, splits;
  bool decode;  // one token per item
  std::vector<Seq> seqs;
};

class CudaAttention : public ::testing::TestWithParam<AttnCase> {};

TEST_P(CudaAttention, MatchesCpuSinkAttention) {
  const AttnCase& c = GetParam();
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
  const std::vector<float> kf = padded_random(cache_rows, 51, 1.0f), vf = padded_random(cache_rows, 52, 2.0f);
  const std::vector<float> qf = padded_random(static_cast<size_t>(T) * hq, 53, 3.0f);
  const std::vector<float> sinks = random_f32(static_cast<size_t>(hq), 54, 2.0f);
  std::vector<int32_t> pos;
  std::vector<cuda::AttnItem> items;
  const int hc = cuda::attention_heads_per_chunk(cuda::AttnShape{hq, hkv, d, dp});
  const int tpi = c.decode ? 1 : std::max(1, 64 / hc);
  int max_count = 1;
  for (const Seq& s : c.seqs) {
    for (int i = 0; i < s.n; i += tpi) {
      items.push_back({static_cast<int32_t>(pos.size()) + i, std::min(tpi, s.n - i), s.slot, 0});
      max_count = std::max(max_count, std::min(tpi, s.n - i));
    }
    for (int i = 0; i < s.n; ++i) pos.push_back(s.pos0 + i);
  }
  DevArray<float> kd(kf), vd(vf), qd(qf);
  DevArray<uint16_t> o16(static_cast<size_t>(T) * 2 * hq * d);  // fp16 pairs: [hi][lo] per token
  o16.fill_bytes(0xff);
  DevArray<float> sd(sinks), po(static_cast<size_t>(c.splits) * T * hq * dp),
      pml(static_cast<size_t>(c.splits) * T * hq * 2);
  DevArray<int32_t> posd(pos);
  DevArray<cuda::AttnItem> itd(items);
  cuda::AttnArgs a;
  a.q32 = qd.get(), a.pos = posd.get(), a.items = itd.get(), a.n_items = static_cast<int>(items.size());
  a.tokens_per_item = max_count, a.sinks = sd.get(), a.scale = 1.0f / std::sqrt(static_cast<float>(d));
  a.splits = c.splits, a.o16 = o16.get(), a.o_stride = 2 * static_cast<int64_t>(hq) * d;
  a.o_lo = static_cast<int64_t>(hq) * d;
  a.part_o = po.get(), a.part_ml = pml.get(), a.n_tokens = T;
  cuda::KvLayer kv;
  kv.k = kd.get(), kv.v = vd.get(), kv.cap = c.cap, kv.window = c.window;
  const cuda::AttnShape shape{hq, hkv, d, dp};
  CUDA_ASSERT(cuda::attention_launch(a, shape, kv, nullptr));
  CUDA_ASSERT(cuda::attention_combine_launch(a, shape, nullptr));
  const std::vector<float> o = from_f16(o16.download());
  CUDA_ASSERT(cudaGetLastError());

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
      cpu::attention_sinks(qrow.data(), hq, hkv, d, first, p, k_at, v_at, sinks.data(), a.scale, out.data());
      for (int h = 0; h < hq; ++h) {
        std::vector<float> got(static_cast<size_t>(d));  // o16 columns are stored in k_phys order
        for (int x = 0; x < d; ++x)
          got[static_cast<size_t>(x)] = o[static_cast<size_t>(t) * 2 * hq * d + cuda::k_phys(h * d + x)] +
                                        o[static_cast<size_t>(t) * 2 * hq * d + hq * d + cuda::k_phys(h * d + x)];
        const float* want = &out[static_cast<size_t>(h) * d];
        for (int x = 0; x < d; ++x)
          ASSERT_TRUE(std::isfinite(got[static_cast<size_t>(x)])) << "token " << t << " head " << h << " unwritten";
        // Split-fp16 products (hi·hi + hi·lo + lo·hi) and f32 accumulation: near-f32 attention.
        EXPECT_LE(rel_l2(got.data(), want, static_cast<size_t>(d)), 5e-5)
            << "token " << t << " (pos " << p << ") head " << h;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, CudaAttention,
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
        AttnCase{"mqa_128heads_chunks", 64, 128, 1, 32, 256, 1, false, {{0, 0, 40}}}),
    [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace gptoss::testing
