// Model::random (determinism, alignment, per-tensor magnitudes like mkckpt.py, MXFP4 scale/code
// statistics) and parameter/byte accounting against spec §8 and independent sums.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "core/mxfp4.h"
#include "model/config.h"
#include "model/test_util.h"
#include "model/weights.h"

namespace gptoss {
namespace {

using testing::fixture;

std::shared_ptr<const Model> random_model(const Config& c, uint64_t seed) {
  auto m = Model::random(c, seed);
  EXPECT_TRUE(m.ok()) << m.status().to_string();
  return m.ok() ? *m : nullptr;
}

TEST(ModelRandom, DeterministicInSeedAndDifferentAcrossSeeds) {
  const Config tiny = *config_preset("tiny");
  auto a = random_model(tiny, 7), b = random_model(tiny, 7), c = random_model(tiny, 8);
  ASSERT_TRUE(a && b && c);
  testing::expect_same_weights(*a, *b);
  EXPECT_EQ(a->source(), "random:7");
  const auto wa = testing::all_weights(a->weights()), wc = testing::all_weights(c->weights());
  for (size_t i = 0; i < wa.size(); ++i)
    EXPECT_NE(std::memcmp(wa[i]->data, wc[i]->data, wa[i]->nbytes), 0) << wa[i]->name;
}

TEST(ModelRandom, ShapesMatchTheHfTableAndDataIsAligned) {
  for (const char* preset : {"tiny", "demo"}) {
    auto m = random_model(*config_preset(preset), 1);
    ASSERT_TRUE(m);
    const auto ts = m->tensors_for_writing();
    EXPECT_EQ(ts.size(), static_cast<size_t>(19 * m->config().num_hidden_layers + 3));
    size_t total = 0;
    for (const auto& t : ts) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 64, 0u) << t.name;
      total += t.nbytes;
    }
    EXPECT_EQ(total, m->param_counts().weight_bytes);
    const LayerWeights& L = m->weights().layers.back();
    EXPECT_EQ(L.mlp1.blocks.shape,
              (std::vector<int64_t>{m->config().num_local_experts, 2 * m->config().intermediate_size,
                                    m->config().hidden_size / 32, 16}));
  }
}

TEST(ModelRandom, InvalidConfigIsRejectedNamingTheField) {
  Config c = *config_preset("tiny");
  c.hidden_size = 100;
  auto m = Model::random(c, 0);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("hidden_size"), std::string::npos);
  c = *config_preset("tiny");
  c.layer_types.pop_back();
  EXPECT_FALSE(Model::random(c, 0).ok());
}

struct Moments {
  double mean = 0, std = 0, max_dev = 0;
  int64_t n = 0;
};

Moments bf16_moments(const Weight& w) {
  Moments m;
  m.n = static_cast<int64_t>(w.nbytes / 2);
  double s = 0, s2 = 0;
  for (int64_t i = 0; i < m.n; ++i) {
    const double v = bf16_to_f32(w.bf16()[i]);
    s += v;
    s2 += v * v;
  }
  m.mean = s / m.n;
  m.std = std::sqrt(std::max(0.0, s2 / m.n - m.mean * m.mean));
  for (int64_t i = 0; i < m.n; ++i) m.max_dev = std::max(m.max_dev, std::fabs(bf16_to_f32(w.bf16()[i]) - m.mean));
  return m;
}

// Expected (mean, std) of each dense tensor, restated from /work/shared/tools/mkckpt.py.
std::pair<double, double> expected_moments(const std::string& name, const Config& c) {
  auto ends = [&](const char* s) { return name.size() >= std::strlen(s) && name.ends_with(s); };
  const double H = static_cast<double>(c.hidden_size);
  if (ends("layernorm.weight") || name == "model.norm.weight") return {1.0, 0.1};
  if (ends("q_proj.weight") || ends("k_proj.weight") || ends("v_proj.weight")) return {0.0, 1.5 / std::sqrt(H)};
  if (ends("o_proj.weight")) return {0.0, 1.0 / std::sqrt(static_cast<double>(c.q_dim()))};
  if (ends("sinks") || name == "model.embed_tokens.weight") return {0.0, 1.0};
  if (ends("router.weight")) return {0.0, 2.0 / std::sqrt(H)};
  if (ends("router.bias")) return {0.0, 0.5};
  if (name == "lm_head.weight") return {0.0, c.vocab_size < 200000 ? 0.5 : 2.0 / std::sqrt(H)};
  return {0.0, 0.1};  // q/k/v/o and expert biases
}

TEST(ModelRandom, DenseMagnitudesFollowMkckpt) {
  Config c = *config_preset("tiny");
  c.hidden_size = 256;  // larger tensors → tighter sample statistics
  c.num_attention_heads = 8;
  auto m = random_model(c, 3);
  ASSERT_TRUE(m);
  std::vector<const Weight*> dense;
  for (const Weight* w : testing::all_weights(m->weights()))
    if (w->dtype == DType::kBF16) dense.push_back(w);
  for (const Weight* w : dense) {
    const Moments mo = bf16_moments(*w);
    const auto [mean, std] = expected_moments(w->name, c);
    if (mo.n < 200) continue;  // too few samples for a meaningful check (sinks, router bias)
    // Sample mean within 5 standard errors; sample std within 10 %; a bounded approximate normal
    // (no value beyond 3.5 std, but some beyond 2 std, as a normal would have).
    EXPECT_NEAR(mo.mean, mean, 5 * std / std::sqrt(static_cast<double>(mo.n))) << w->name;
    EXPECT_NEAR(mo.std, std, 0.1 * std) << w->name;
    EXPECT_LE(mo.max_dev, 3.5 * std * 1.01) << w->name;
    EXPECT_GE(mo.max_dev, 2.0 * std) << w->name;
  }
}

TEST(ModelRandom, ExpertScalesAndCodesHaveTheIntendedDistribution) {
  Config c = *config_preset("tiny");
  auto m = random_model(c, 5);
  ASSERT_TRUE(m);
  for (const LayerWeights& L : m->weights().layers) {
    for (const Mxfp4Experts* x : {&L.mlp1, &L.mlp2}) {
      const double target = 1.0 / std::sqrt(static_cast<double>(x->cols));
      const int base = 127 + static_cast<int>(std::lround(std::log2(target / 2.93)));
      std::map<int, int64_t> hist;
      for (size_t i = 0; i < x->scales.nbytes; ++i) ++hist[x->scales.u8()[i]];
      ASSERT_EQ(hist.size(), 3u) << x->scales.name;  // jitter −1, 0, +1 only
      for (int d = -1; d <= 1; ++d) {
        ASSERT_TRUE(hist.count(base + d)) << x->scales.name;
        EXPECT_NEAR(static_cast<double>(hist[base + d]) / x->scales.nbytes, 1.0 / 3, 0.05) << x->scales.name;
      }
      // Codes: each nibble value ~1/16; dequantised weights have std within the jitter's reach.
      std::vector<int64_t> nib(16, 0);
      for (size_t i = 0; i < x->blocks.nbytes; ++i) {
        ++nib[x->blocks.u8()[i] & 15];
        ++nib[x->blocks.u8()[i] >> 4];
      }
      for (int v = 0; v < 16; ++v) EXPECT_NEAR(nib[v] / (2.0 * x->blocks.nbytes), 1.0 / 16, 0.01) << v;
      const int64_t rows = x->rows * c.num_local_experts;
      std::vector<float> row(static_cast<size_t>(x->cols));
      double s2 = 0;
      for (int64_t r = 0; r < rows; ++r) {
        mxfp4_dequantize_row(x->blocks.u8() + r * x->cols / 2, x->scales.u8() + r * x->cols / 32,
                             static_cast<int>(x->cols), row.data());
        for (float v : row) s2 += static_cast<double>(v) * v;
      }
      const double std = std::sqrt(s2 / static_cast<double>(rows * x->cols));
      EXPECT_GT(std, target * 0.5) << x->blocks.name;
      EXPECT_LT(std, target * 2.5) << x->blocks.name;
    }
  }
}

TEST(ParamCounts, PublishedModelsMatchSpec) {
  const auto b20 = Model::param_counts_for(*config_preset("20b"));
  EXPECT_EQ(b20.total, 20'914'757'184);
  EXPECT_EQ(b20.active, 3'608'307'264);
  EXPECT_EQ(b20.bytes_per_token, 3'708'089'088u);
  EXPECT_EQ(b20.weight_bytes, 13'761'264'768u);
  EXPECT_EQ(b20.embedding_bytes, 1'158'266'880u);
  EXPECT_EQ(b20.lm_head_bytes, 1'158'266'880u);
  const auto b120 = Model::param_counts_for(*config_preset("120b"));
  EXPECT_EQ(b120.total, 116'829'156'672);
  EXPECT_EQ(b120.active, 5'132'849'472);
  EXPECT_EQ(b120.bytes_per_token, 5'002'907'904u);
  EXPECT_EQ(b120.weight_bytes, 65'248'815'744u);
  for (const auto& pc : {b20, b120})
    EXPECT_EQ(pc.expert_bytes + pc.attention_bytes + pc.embedding_bytes + pc.lm_head_bytes + pc.other_bytes,
              pc.weight_bytes);
  // Per layer attention = 53,100,288 bytes (spec §8.2).
  EXPECT_EQ(b20.attention_bytes, 24u * 53'100'288u);
  EXPECT_EQ(b120.attention_bytes, 36u * 53'100'288u);
}

TEST(ParamCounts, FixturesMatchAnIndependentSumOverTheirFiles) {
  for (const char* name : {"pub-a", "pub-b", "fx-k1-odd", "fx-mixed-layers"}) {
    auto m = Model::load(fixture(name));
    ASSERT_TRUE(m.ok());
    const Config& c = (*m)->config();
    auto store = TensorStore::open_dir(fixture(name));
    int64_t total = 0, experts = 0, embed = 0;
    for (const auto& n : (*store)->names()) {
      const TensorView* v = (*store)->find(n);
      const bool is_blocks = n.ends_with("_blocks"), is_scales = n.ends_with("_scales");
      const int64_t params = is_blocks ? 2 * v->numel() : is_scales ? 0 : v->numel();
      total += params;
      if (n.find(".mlp.experts.") != std::string::npos) experts += params;
      if (n == "model.embed_tokens.weight") embed += params;
    }
    const auto pc = (*m)->param_counts();
    EXPECT_EQ(pc.total, total) << name;
    EXPECT_EQ(pc.active, total - embed - experts + experts / c.num_local_experts * c.num_experts_per_tok) << name;
    EXPECT_EQ(pc.weight_bytes, (*store)->total_bytes()) << name;
  }
}

TEST(ModelRandom, WrittenCheckpointLoadsBackIdentically) {
  auto m = random_model(*config_preset("tiny"), 11);
  ASSERT_TRUE(m);
  testing::TempDir dir;
  ASSERT_TRUE(model_write_hf(*m, dir.str(), 100000).ok());  // sharded
  auto back = Model::load(dir.str());
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  testing::expect_same_weights(*m, **back);
  EXPECT_EQ((*back)->config().eos_token_ids, m->config().eos_token_ids);
  EXPECT_EQ((*back)->config().pad_token_id, 1022);
}

}  // namespace
}  // namespace gptoss
