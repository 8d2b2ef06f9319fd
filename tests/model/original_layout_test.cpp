// The original/ (OpenAI) checkpoint layout: a converted copy of a fixture (fused qkv, block.N names,
// original/config.json) loads to byte-identical weights, q/k/v are row views of the fused tensor,
// and shape errors name the fused tensor.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "model/config.h"
#include "model/test_util.h"
#include "model/weights.h"

namespace gptoss {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::fixture;
using testing::OwnedTensor;
using testing::TempDir;

// The original/config.json keys for an HF config (spec §1.2); no eos/pad, no layer_types.
json original_config(const json& hf) {
  return json{{"num_hidden_layers", hf["num_hidden_layers"]},
              {"num_experts", hf["num_local_experts"]},
              {"experts_per_token", hf["num_experts_per_tok"]},
              {"vocab_size", hf["vocab_size"]},
              {"hidden_size", hf["hidden_size"]},
              {"intermediate_size", hf["intermediate_size"]},
              {"swiglu_limit", hf["swiglu_limit"]},
              {"head_dim", hf["head_dim"]},
              {"num_attention_heads", hf["num_attention_heads"]},
              {"num_key_value_heads", hf["num_key_value_heads"]},
              {"sliding_window", hf["sliding_window"]},
              {"initial_context_length", hf["initial_context_length"]},
              {"rope_theta", hf["rope_theta"]},
              {"rope_scaling_factor", hf["rope_scaling"]["factor"]},
              {"rope_ntk_alpha", hf["rope_scaling"]["beta_slow"]},
              {"rope_ntk_beta", hf["rope_scaling"]["beta_fast"]}};
}

// Renames HF tensors to the OpenAI names and fuses q/k/v (rows concatenated in q, k, v order).
std::vector<OwnedTensor> to_original(std::vector<OwnedTensor> hf, int64_t layers) {
  std::vector<OwnedTensor> out;
  auto take = [&](const std::string& from, const std::string& to) {
    OwnedTensor t = *testing::find_tensor(hf, from);
    t.name = to;
    out.push_back(std::move(t));
  };
  take("model.embed_tokens.weight", "embedding.weight");
  take("model.norm.weight", "norm.scale");
  take("lm_head.weight", "unembedding.weight");
  for (int64_t n = 0; n < layers; ++n) {
    const std::string h = "model.layers." + std::to_string(n) + ".", o = "block." + std::to_string(n) + ".";
    take(h + "input_layernorm.weight", o + "attn.norm.scale");
    for (const char* kind : {"weight", "bias"}) {
      OwnedTensor fused{o + "attn.qkv." + kind, DType::kBF16, {}, {}};
      for (const char* p : {"q_proj.", "k_proj.", "v_proj."}) {
        const OwnedTensor* part = testing::find_tensor(hf, h + "self_attn." + p + kind);
        if (fused.shape.empty())
          fused.shape = part->shape;
        else
          fused.shape[0] += part->shape[0];
        fused.data.insert(fused.data.end(), part->data.begin(), part->data.end());
      }
      out.push_back(std::move(fused));
    }
    take(h + "self_attn.sinks", o + "attn.sinks");
    take(h + "self_attn.o_proj.weight", o + "attn.out.weight");
    take(h + "self_attn.o_proj.bias", o + "attn.out.bias");
    take(h + "post_attention_layernorm.weight", o + "mlp.norm.scale");
    take(h + "mlp.router.weight", o + "mlp.gate.weight");
    take(h + "mlp.router.bias", o + "mlp.gate.bias");
    take(h + "mlp.experts.gate_up_proj_blocks", o + "mlp.mlp1_weight.blocks");
    take(h + "mlp.experts.gate_up_proj_scales", o + "mlp.mlp1_weight.scales");
    take(h + "mlp.experts.gate_up_proj_bias", o + "mlp.mlp1_bias");
    take(h + "mlp.experts.down_proj_blocks", o + "mlp.mlp2_weight.blocks");
    take(h + "mlp.experts.down_proj_scales", o + "mlp.mlp2_weight.scales");
    take(h + "mlp.experts.down_proj_bias", o + "mlp.mlp2_bias");
  }
  return out;
}

json fixture_config(const std::string& name) {
  std::ifstream in(fixture(name) + "/config.json");
  return json::parse(in);
}

// Writes DIR/original/{config.json, model.safetensors} converted from fixture `name`.
void write_original(const std::string& name, const std::string& dir, const std::string& sub = "original") {
  const json hf = fixture_config(name);
  const fs::path out = fs::path(dir) / sub;
  fs::create_directories(out);
  testing::write_text_file((out / "config.json").string(), original_config(hf).dump());
  testing::write_all((out / "model.safetensors").string(),
                     to_original(testing::read_all(fixture(name)), hf["num_hidden_layers"].get<int64_t>()));
}

TEST(OriginalLayout, LoadsByteIdenticalWeightsForEveryFixtureShape) {
  for (const char* name : {"pub-a", "pub-b", "fx-k3-gqa", "fx-k4-mha"}) {
    SCOPED_TRACE(name);
    TempDir dir;
    write_original(name, dir.str());
    auto orig = Model::load(dir.str());
    ASSERT_TRUE(orig.ok()) << orig.status().to_string();
    auto hf = Model::load(fixture(name));
    ASSERT_TRUE(hf.ok());
    testing::expect_same_weights(**hf, **orig);
    const Config& c = (*orig)->config();
    EXPECT_EQ(c.num_local_experts, (*hf)->config().num_local_experts);
    EXPECT_EQ(c.layer_types, (*hf)->config().layer_types);
    // q, k, v are consecutive row ranges of the one fused tensor (views, no copies).
    const LayerWeights& L = (*orig)->weights().layers.at(1);
    const auto* base = static_cast<const uint8_t*>(L.q_w.data);
    const size_t row = static_cast<size_t>(c.hidden_size) * 2;
    EXPECT_EQ(L.k_w.data, base + static_cast<size_t>(c.q_dim()) * row);
    EXPECT_EQ(L.v_w.data, base + static_cast<size_t>(c.q_dim() + c.kv_dim()) * row);
    EXPECT_EQ(L.k_b.data, static_cast<const uint8_t*>(L.q_b.data) + c.q_dim() * 2);
    EXPECT_EQ(L.q_w.name, fmt::format("block.1.attn.qkv.weight[0:{}]", c.q_dim()));
    EXPECT_EQ(L.v_b.name,
              fmt::format("block.1.attn.qkv.bias[{}:{}]", c.q_dim() + c.kv_dim(), c.q_dim() + 2 * c.kv_dim()));
    EXPECT_EQ(L.mlp1.blocks.name, "block.1.mlp.mlp1_weight.blocks");
  }
}

TEST(OriginalLayout, OriginalNamesAtTheTopLevelAlsoLoad) {
  TempDir dir;
  write_original("pub-b", dir.str(), ".");
  auto orig = Model::load(dir.str());
  ASSERT_TRUE(orig.ok()) << orig.status().to_string();
  testing::expect_same_weights(**Model::load(fixture("pub-b")), **orig);
}

TEST(OriginalLayout, HfTensorsWinOverAnOriginalFolder) {
  TempDir dir;
  for (const char* f : {"config.json", "model.safetensors"}) fs::copy_file(fixture("pub-a") + "/" + f, dir.file(f));
  fs::create_directories(dir.file("original"));
  testing::write_raw_safetensors(dir.file("original/model.safetensors"), "{broken", 0);
  auto m = Model::load(dir.str());
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_EQ(m->get()->weights().layers[0].q_w.name, "model.layers.0.self_attn.q_proj.weight");
}

TEST(OriginalLayout, FusedQkvWithWrongRowsNamesTheFusedTensor) {
  TempDir dir;
  write_original("pub-a", dir.str());
  auto ts = testing::read_all(dir.file("original"));
  OwnedTensor* qkv = testing::find_tensor(ts, "block.0.attn.qkv.weight");
  qkv->shape[0] -= 64;  // v rows missing
  qkv->data.resize(static_cast<size_t>(qkv->shape[0] * qkv->shape[1] * 2));
  testing::write_all(dir.file("original/model.safetensors"), ts);
  auto m = Model::load(dir.str());
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().message(), "block.0.attn.qkv.weight: shape [192, 128] expected [256, 128] (file " +
                                      dir.file("original/model.safetensors") + ")");
}

TEST(OriginalLayout, ConvertsToHfThroughTheWriter) {
  TempDir orig_dir, hf_dir;
  write_original("pub-b", orig_dir.str());
  auto orig = Model::load(orig_dir.str());
  ASSERT_TRUE(orig.ok());
  ASSERT_TRUE(model_write_hf(**orig, hf_dir.str()).ok());
  auto back = Model::load(hf_dir.str());
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  testing::expect_same_weights(**Model::load(fixture("pub-b")), **back);
  // The written file is an HF checkpoint: separate q/k/v tensors with HF names.
  auto store = TensorStore::open_dir(hf_dir.str());
  ASSERT_TRUE(store.ok());
  EXPECT_NE((*store)->find("model.layers.3.self_attn.v_proj.bias"), nullptr);
  EXPECT_EQ((*store)->find("block.0.attn.qkv.weight"), nullptr);
}

}  // namespace
}  // namespace gptoss
