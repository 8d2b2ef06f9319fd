// Model::load on the HF fixtures: shapes from the config, zero-copy bytes, progress reporting,
// and wrong shape / dtype / missing tensor / config mismatch / corrupt file errors naming the tensor.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>

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

std::vector<std::string> fixture_dirs() {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(GPTOSS_FIXTURES))
    if (fs::exists(e.path() / "config.json")) out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

void expect_weight(const Weight& w, DType dtype, std::vector<int64_t> shape, const std::vector<OwnedTensor>& file) {
  EXPECT_EQ(w.dtype, dtype) << w.name;
  EXPECT_EQ(w.shape, shape) << w.name;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  ASSERT_EQ(w.nbytes, static_cast<size_t>(n) * dtype_size(dtype)) << w.name;
  ASSERT_NE(w.data, nullptr);
  const OwnedTensor* t = nullptr;
  for (const auto& x : file)
    if (x.name == w.name) t = &x;
  ASSERT_NE(t, nullptr) << w.name;
  ASSERT_EQ(t->data.size(), w.nbytes);
  EXPECT_EQ(std::memcmp(t->data.data(), w.data, w.nbytes), 0) << w.name;
}

TEST(ModelLoad, EveryFixtureHasConfigShapesAndFileBytes) {
  const auto dirs = fixture_dirs();
  ASSERT_GE(dirs.size(), 2u);
  for (const std::string& dir : dirs) {
    SCOPED_TRACE(dir);
    auto m = Model::load(dir);
    ASSERT_TRUE(m.ok()) << m.status().to_string();
    const Config& c = (*m)->config();
    const ModelWeights& w = (*m)->weights();
    const auto file = testing::read_all(dir);
    EXPECT_EQ((*m)->source(), dir);
    const int64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_local_experts, V = c.vocab_size;
    const int64_t Q = c.num_attention_heads * c.head_dim, KV = c.num_key_value_heads * c.head_dim;
    expect_weight(w.embed, DType::kBF16, {V, H}, file);
    expect_weight(w.final_norm, DType::kBF16, {H}, file);
    expect_weight(w.lm_head, DType::kBF16, {V, H}, file);
    ASSERT_EQ(static_cast<int64_t>(w.layers.size()), c.num_hidden_layers);
    for (const LayerWeights& L : w.layers) {
      expect_weight(L.attn_norm, DType::kBF16, {H}, file);
      expect_weight(L.q_w, DType::kBF16, {Q, H}, file);
      expect_weight(L.q_b, DType::kBF16, {Q}, file);
      expect_weight(L.k_w, DType::kBF16, {KV, H}, file);
      expect_weight(L.k_b, DType::kBF16, {KV}, file);
      expect_weight(L.v_w, DType::kBF16, {KV, H}, file);
      expect_weight(L.v_b, DType::kBF16, {KV}, file);
      expect_weight(L.o_w, DType::kBF16, {H, Q}, file);
      expect_weight(L.o_b, DType::kBF16, {H}, file);
      expect_weight(L.sinks, DType::kBF16, {c.num_attention_heads}, file);
      expect_weight(L.mlp_norm, DType::kBF16, {H}, file);
      expect_weight(L.router_w, DType::kBF16, {E, H}, file);
      expect_weight(L.router_b, DType::kBF16, {E}, file);
      expect_weight(L.mlp1.blocks, DType::kU8, {E, 2 * I, H / 32, 16}, file);
      expect_weight(L.mlp1.scales, DType::kU8, {E, 2 * I, H / 32}, file);
      expect_weight(L.mlp1.bias, DType::kBF16, {E, 2 * I}, file);
      expect_weight(L.mlp2.blocks, DType::kU8, {E, H, I / 32, 16}, file);
      expect_weight(L.mlp2.scales, DType::kU8, {E, H, I / 32}, file);
      expect_weight(L.mlp2.bias, DType::kBF16, {E, H}, file);
      EXPECT_EQ(L.mlp1.rows, 2 * I);
      EXPECT_EQ(L.mlp1.cols, H);
      EXPECT_EQ(L.mlp2.rows, H);
      EXPECT_EQ(L.mlp2.cols, I);
    }
    // Every file tensor is used: 19 per layer + 3 global.
    EXPECT_EQ(file.size(), static_cast<size_t>(19 * c.num_hidden_layers + 3));
  }
}

TEST(ModelLoad, ProgressIsCumulativeAndCoversEveryTensor) {
  const std::string dir = fixture("pub-b");
  std::vector<LoadProgress> seen;
  std::set<std::string> names;
  auto m = Model::load(dir, [&](const LoadProgress& p) {
    seen.push_back(p);
    ASSERT_NE(p.tensor, nullptr);
    names.insert(*p.tensor);
  });
  ASSERT_TRUE(m.ok());
  auto store = TensorStore::open_dir(dir);
  ASSERT_TRUE(store.ok());
  ASSERT_EQ(seen.size(), (*store)->names().size());
  EXPECT_EQ(names.size(), seen.size());
  for (const auto& n : names) EXPECT_NE((*store)->find(n), nullptr) << n;
  size_t prev = 0;
  for (const auto& p : seen) {
    EXPECT_GT(p.bytes_done, prev);
    EXPECT_EQ(p.bytes_total, (*store)->total_bytes());
    prev = p.bytes_done;
  }
  EXPECT_EQ(seen.back().bytes_done, (*store)->total_bytes());
}

// A copy of pub-a in a temp folder with edited tensors and/or config.
class BrokenCopy {
 public:
  BrokenCopy(const std::function<void(std::vector<OwnedTensor>&)>& edit_tensors,
             const std::function<void(json&)>& edit_config = {}) {
    auto ts = testing::read_all(fixture("pub-a"));
    if (edit_tensors) edit_tensors(ts);
    std::ifstream in(fixture("pub-a") + "/config.json");
    json cfg = json::parse(in);
    if (edit_config) edit_config(cfg);
    testing::write_text_file(dir_.file("config.json"), cfg.dump());
    testing::write_all(dir_.file("model.safetensors"), ts);
  }
  std::string dir() const { return dir_.str(); }
  std::string file() const { return dir_.file("model.safetensors"); }
  Status load() const { return Model::load(dir()).status(); }

 private:
  TempDir dir_;
};

TEST(ModelLoad, WrongShapeNamesTensorShapesAndFile) {
  BrokenCopy copy([](std::vector<OwnedTensor>& ts) {
    OwnedTensor* t = testing::find_tensor(ts, "model.layers.1.self_attn.q_proj.weight");
    t->shape = {128, 160};
    t->data.resize(128 * 160 * 2);
  });
  const Status st = copy.load();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.message(),
            "model.layers.1.self_attn.q_proj.weight: shape [128, 160] expected [128, 128] (file " + copy.file() + ")");
}

TEST(ModelLoad, WrongDtypeNamesTensor) {
  BrokenCopy dense([](std::vector<OwnedTensor>& ts) {
    OwnedTensor* t = testing::find_tensor(ts, "model.layers.0.mlp.router.weight");
    t->dtype = DType::kF32;
    t->data.resize(t->data.size() * 2);
  });
  Status st = dense.load();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.message(), "model.layers.0.mlp.router.weight: dtype F32 expected BF16 (file " + dense.file() + ")");
  // MXFP4 payload stored as BF16 of the same byte size.
  BrokenCopy blocks([](std::vector<OwnedTensor>& ts) {
    OwnedTensor* t = testing::find_tensor(ts, "model.layers.1.mlp.experts.down_proj_blocks");
    t->dtype = DType::kBF16;
    t->shape.back() = 8;
  });
  st = blocks.load();
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("model.layers.1.mlp.experts.down_proj_blocks: dtype BF16 expected U8"), std::string::npos)
      << st.message();
}

TEST(ModelLoad, MissingTensorIsNamed) {
  for (const char* name :
       {"model.layers.1.mlp.experts.down_proj_scales", "lm_head.weight", "model.layers.0.self_attn.sinks"}) {
    BrokenCopy copy(
        [&](std::vector<OwnedTensor>& ts) { std::erase_if(ts, [&](const OwnedTensor& t) { return t.name == name; }); });
    const Status st = copy.load();
    ASSERT_FALSE(st.ok()) << name;
    EXPECT_EQ(st.code(), ErrorCode::kNotFound);
    EXPECT_NE(st.message().find(std::string("'") + name + "'"), std::string::npos) << st.message();
  }
}

TEST(ModelLoad, ConfigWeightMismatchesNameTheFirstDisagreeingTensor) {
  struct Case {
    std::function<void(json&)> edit;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {[](json& c) { c["num_local_experts"] = 8; },
       "model.layers.0.mlp.router.weight: shape [4, 128] expected [8, 128]"},
      {[](json& c) { c["vocab_size"] = 1024; }, "model.embed_tokens.weight: shape [512, 128] expected [1024, 128]"},
      {[](json& c) { c["intermediate_size"] = 96; },
       "model.layers.0.mlp.experts.gate_up_proj_blocks: shape [4, 256, 4, 16] expected [4, 192, 4, 16]"},
      {[](json& c) { c["num_key_value_heads"] = 2; },
       "model.layers.0.self_attn.k_proj.weight: shape [64, 128] expected [128, 128]"},
      {[](json& c) {
         c["num_hidden_layers"] = 3;
         c.erase("layer_types");
       },
       "'model.layers.2.input_layernorm.weight'"},
  };
  for (const Case& c : cases) {
    BrokenCopy copy({}, c.edit);
    const Status st = copy.load();
    ASSERT_FALSE(st.ok()) << c.expect;
    EXPECT_NE(st.message().find(c.expect), std::string::npos) << st.message();
  }
}

TEST(ModelLoad, ExtraTensorsAreIgnored) {
  BrokenCopy copy([](std::vector<OwnedTensor>& ts) {
    ts.push_back({"model.layers.0.mlp.extra.weight", DType::kF32, {3}, std::vector<uint8_t>(12, 0)});
  });
  auto m = Model::load(copy.dir());
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  testing::expect_same_weights(**m, **Model::load(fixture("pub-a")));
}

TEST(ModelLoad, CorruptMissingAndEmptyCheckpoints) {
  TempDir dir;
  // Missing folder.
  auto m = Model::load(dir.file("nope"));
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), ErrorCode::kNotFound);
  EXPECT_NE(m.status().message().find(dir.file("nope")), std::string::npos);
  // Folder without config.json.
  m = Model::load(dir.str());
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("config.json"), std::string::npos);
  // Config but no weights.
  fs::copy_file(fixture("pub-a") + "/config.json", dir.file("config.json"));
  m = Model::load(dir.str());
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("safetensors"), std::string::npos) << m.status().message();
  // Truncated weights (a cut download).
  {
    std::ifstream in(fixture("pub-a") + "/model.safetensors", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(dir.file("model.safetensors"), std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  }
  m = Model::load(dir.str());
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), ErrorCode::kFormat);
  EXPECT_NE(m.status().message().find(dir.file("model.safetensors")), std::string::npos) << m.status().message();
}

TEST(ModelLoad, TensorsForWritingAreTheHfTableInOrder) {
  auto m = Model::load(fixture("pub-b"));
  ASSERT_TRUE(m.ok());
  const auto ts = (*m)->tensors_for_writing();
  const Config& c = (*m)->config();
  ASSERT_EQ(ts.size(), static_cast<size_t>(19 * c.num_hidden_layers + 3));
  EXPECT_EQ(ts.front().name, "model.embed_tokens.weight");
  EXPECT_EQ(ts[1].name, "model.layers.0.input_layernorm.weight");
  EXPECT_EQ(ts[ts.size() - 2].name, "model.norm.weight");
  EXPECT_EQ(ts.back().name, "lm_head.weight");
  EXPECT_EQ(ts.front().data, (*m)->weights().embed.data);  // views, not copies
  auto store = TensorStore::open_dir(fixture("pub-b"));
  std::set<std::string> names;
  for (const auto& t : ts) {
    const TensorView* v = (*store)->find(t.name);
    ASSERT_NE(v, nullptr) << t.name;
    EXPECT_EQ(v->shape, t.shape) << t.name;
    EXPECT_EQ(v->dtype, t.dtype) << t.name;
    ASSERT_EQ(v->nbytes, t.nbytes);
    EXPECT_EQ(std::memcmp(v->data, t.data, t.nbytes), 0) << t.name;
    names.insert(t.name);
  }
  EXPECT_EQ(names.size(), ts.size());
}

TEST(ModelLoad, WriteThenLoadRoundTripsSingleAndSharded) {
  auto m = Model::load(fixture("pub-a"));
  ASSERT_TRUE(m.ok());
  TempDir single, sharded;
  ASSERT_TRUE(model_write_hf(**m, single.str()).ok());
  EXPECT_TRUE(fs::exists(single.file("model.safetensors")));
  auto back = Model::load(single.str());
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  testing::expect_same_weights(**m, **back);
  EXPECT_EQ(back->get()->config().eos_token_ids, (*m)->config().eos_token_ids);
  // 200 kB shards: pub-a (~680 kB) splits into several files named like the official converter.
  ASSERT_TRUE(model_write_hf(**m, sharded.str(), 200000).ok());
  EXPECT_FALSE(fs::exists(sharded.file("model.safetensors")));
  std::ifstream in(sharded.file("model.safetensors.index.json"));
  const json index = json::parse(in);
  std::set<std::string> files;
  size_t total = 0;
  for (const auto& [name, file] : index["weight_map"].items()) files.insert(file.get<std::string>());
  for (const auto& t : (*m)->tensors_for_writing()) total += t.nbytes;
  EXPECT_EQ(index["metadata"]["total_size"].get<size_t>(), total);
  ASSERT_GE(files.size(), 3u);
  const size_t n = files.size();
  for (size_t k = 0; k < n; ++k) {
    const std::string name = fmt::format("model-{:05d}-of-{:05d}.safetensors", k, n - 1);
    EXPECT_TRUE(files.count(name)) << name;
    EXPECT_TRUE(fs::exists(sharded.file(name))) << name;
  }
  auto back2 = Model::load(sharded.str());
  ASSERT_TRUE(back2.ok()) << back2.status().to_string();
  testing::expect_same_weights(**m, **back2);
  // Rewriting unsharded into the same folder leaves a loadable single-file checkpoint.
  ASSERT_TRUE(model_write_hf(**m, sharded.str()).ok());
  EXPECT_FALSE(fs::exists(sharded.file("model.safetensors.index.json")));
  ASSERT_TRUE(Model::load(sharded.str()).ok());
}

}  // namespace
}  // namespace gptoss
