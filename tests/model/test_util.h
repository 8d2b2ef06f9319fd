// Helpers for model tests: owned, editable copies of a checkpoint's tensors, and comparisons of
// loaded weights field by field.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "io/test_util.h"
#include "model/weights.h"

namespace gptoss::testing {

struct OwnedTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;
};

inline std::string fixture(const std::string& name) {
  return std::string(GPTOSS_FIXTURES) + "/" + name;
}

// Every tensor of a checkpoint folder, copied out (sorted by name).
inline std::vector<OwnedTensor> read_all(const std::string& dir) {
  auto store = TensorStore::open_dir(dir);
  EXPECT_TRUE(store.ok()) << store.status().to_string();
  std::vector<OwnedTensor> out;
  if (!store.ok()) return out;
  for (const auto& name : (*store)->names()) {
    const TensorView* v = (*store)->find(name);
    out.push_back({name, v->dtype, v->shape, std::vector<uint8_t>(v->data, v->data + v->nbytes)});
  }
  return out;
}

inline OwnedTensor* find_tensor(std::vector<OwnedTensor>& ts, const std::string& name) {
  for (auto& t : ts)
    if (t.name == name) return &t;
  ADD_FAILURE() << "no tensor " << name;
  return nullptr;
}

inline void write_all(const std::string& path, const std::vector<OwnedTensor>& ts) {
  std::vector<TensorToWrite> w;
  for (const auto& t : ts) w.push_back({t.name, t.dtype, t.shape, t.data.data(), t.data.size()});
  ASSERT_TRUE(safetensors_write(path, w).ok());
}

// Every Weight of a model in a fixed order (for field-by-field comparisons).
inline std::vector<const Weight*> all_weights(const ModelWeights& w) {
  std::vector<const Weight*> out = {&w.embed, &w.final_norm, &w.lm_head};
  for (const auto& L : w.layers) {
    for (const Weight* x : {&L.attn_norm, &L.q_w, &L.q_b, &L.k_w, &L.k_b, &L.v_w, &L.v_b, &L.o_w, &L.o_b, &L.sinks,
                            &L.mlp_norm, &L.router_w, &L.router_b, &L.mlp1.blocks, &L.mlp1.scales, &L.mlp1.bias,
                            &L.mlp2.blocks, &L.mlp2.scales, &L.mlp2.bias})
      out.push_back(x);
  }
  return out;
}

// Same shapes, dtypes and bytes in every field.
inline void expect_same_weights(const Model& a, const Model& b) {
  const auto wa = all_weights(a.weights()), wb = all_weights(b.weights());
  ASSERT_EQ(wa.size(), wb.size());
  for (size_t i = 0; i < wa.size(); ++i) {
    EXPECT_EQ(wa[i]->shape, wb[i]->shape) << wa[i]->name << " vs " << wb[i]->name;
    EXPECT_EQ(wa[i]->dtype, wb[i]->dtype) << wa[i]->name;
    ASSERT_EQ(wa[i]->nbytes, wb[i]->nbytes) << wa[i]->name;
    EXPECT_EQ(std::memcmp(wa[i]->data, wb[i]->data, wa[i]->nbytes), 0) << wa[i]->name << " vs " << wb[i]->name;
  }
}

}  // namespace gptoss::testing
