// Config: HF and original/ names, defaults, eos merging, validation errors naming the field,
// serialisation round trips and presets.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "io/test_util.h"
#include "model/config.h"

namespace gptoss {
namespace {

using nlohmann::json;
using testing::TempDir;
using testing::write_text_file;

Config parse_ok(const json& j) {
  auto c = config_from_json_text(j.dump(), "test.json");
  EXPECT_TRUE(c.ok()) << c.status().to_string();
  return c.ok() ? *c : Config{};
}

std::vector<LayerType> alternating(int64_t n) {
  std::vector<LayerType> v;
  for (int64_t i = 0; i < n; ++i) v.push_back(i % 2 == 0 ? LayerType::kSlidingAttention : LayerType::kFullAttention);
  return v;
}

void expect_same(const Config& a, const Config& b) {
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
  EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
  EXPECT_EQ(a.num_key_value_heads, b.num_key_value_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.num_local_experts, b.num_local_experts);
  EXPECT_EQ(a.num_experts_per_tok, b.num_experts_per_tok);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.sliding_window, b.sliding_window);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.initial_context_length, b.initial_context_length);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.swiglu_limit, b.swiglu_limit);
  EXPECT_EQ(a.rope_scaling.factor, b.rope_scaling.factor);
  EXPECT_EQ(a.rope_scaling.beta_fast, b.rope_scaling.beta_fast);
  EXPECT_EQ(a.rope_scaling.beta_slow, b.rope_scaling.beta_slow);
  EXPECT_EQ(a.rope_scaling.original_max_position_embeddings, b.rope_scaling.original_max_position_embeddings);
  EXPECT_EQ(a.rope_scaling.truncate, b.rope_scaling.truncate);
  EXPECT_EQ(a.layer_types, b.layer_types);
  EXPECT_EQ(a.eos_token_ids, b.eos_token_ids);
  EXPECT_EQ(a.pad_token_id, b.pad_token_id);
}

TEST(Config, ParsesFixtureConfig) {
  auto c = config_load_dir(std::string(GPTOSS_FIXTURES) + "/pub-b");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->hidden_size, 256);
  EXPECT_EQ(c->intermediate_size, 320);
  EXPECT_EQ(c->num_hidden_layers, 4);
  EXPECT_EQ(c->num_attention_heads, 8);
  EXPECT_EQ(c->num_key_value_heads, 2);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->num_local_experts, 8);
  EXPECT_EQ(c->num_experts_per_tok, 4);
  EXPECT_EQ(c->vocab_size, 1000);
  EXPECT_EQ(c->sliding_window, 128);
  EXPECT_EQ(c->q_dim(), 512);
  EXPECT_EQ(c->kv_dim(), 128);
  EXPECT_EQ(c->layer_types, alternating(4));
  EXPECT_TRUE(c->is_sliding(0));
  EXPECT_FALSE(c->is_sliding(3));
  EXPECT_EQ(c->rope_scaling.factor, 32.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_FALSE(c->rope_scaling.truncate);
  // Vocabulary of 1000: none of the harmony stops exist, only the configured eos.
  EXPECT_EQ(c->eos_token_ids, std::vector<int32_t>{999});
  EXPECT_EQ(c->pad_token_id, 998);
}

TEST(Config, NonAlternatingLayerTypesAreKept) {
  auto c = config_load_dir(std::string(GPTOSS_FIXTURES) + "/fx-mixed-layers");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->layer_types, (std::vector<LayerType>{LayerType::kFullAttention, LayerType::kSlidingAttention,
                                                    LayerType::kSlidingAttention}));
}

// The published original/config.json keys (spec §1.2), 20b values.
json original_20b() {
  return json{{"num_hidden_layers", 24},   {"num_experts", 32},
              {"experts_per_token", 4},    {"vocab_size", 201088},
              {"hidden_size", 2880},       {"intermediate_size", 2880},
              {"swiglu_limit", 7.0},       {"head_dim", 64},
              {"num_attention_heads", 64}, {"num_key_value_heads", 8},
              {"sliding_window", 128},     {"initial_context_length", 4096},
              {"rope_theta", 150000},      {"rope_scaling_factor", 32.0},
              {"rope_ntk_alpha", 1.0},     {"rope_ntk_beta", 32.0}};
}

TEST(Config, HfAndOriginalNamesGiveTheSameConfig) {
  auto preset = config_preset("20b");
  ASSERT_TRUE(preset.ok());
  json hf_json = json::parse(config_to_json_text(*preset));
  const Config hf = parse_ok(hf_json);
  expect_same(hf, *preset);
  // original/config.json carries no pad id; everything else must agree.
  hf_json.erase("pad_token_id");
  const Config orig = parse_ok(original_20b());
  expect_same(parse_ok(hf_json), orig);
  EXPECT_EQ(orig.num_local_experts, 32);
  EXPECT_EQ(orig.rope_scaling.beta_fast, 32.0);
  EXPECT_EQ(orig.rope_scaling.beta_slow, 1.0);
  EXPECT_EQ(orig.eos_token_ids, (std::vector<int32_t>{200002, 200012, 199999}));
  // The ntk names map to the right betas (swap them and the betas swap back).
  json swapped = original_20b();
  swapped["rope_ntk_alpha"] = 2.0;
  swapped["rope_ntk_beta"] = 40.0;
  swapped["rope_scaling_factor"] = 16.0;
  const Config s = parse_ok(swapped);
  EXPECT_EQ(s.rope_scaling.beta_slow, 2.0);
  EXPECT_EQ(s.rope_scaling.beta_fast, 40.0);
  EXPECT_EQ(s.rope_scaling.factor, 16.0);
}

TEST(Config, AbsentFieldsTakeTheHfDefaults) {
  const Config c = parse_ok(json::object());
  EXPECT_EQ(c.num_hidden_layers, 36);  // HF GptOssConfig defaults are the 120b values
  EXPECT_EQ(c.num_local_experts, 128);
  EXPECT_EQ(c.num_experts_per_tok, 4);
  EXPECT_EQ(c.hidden_size, 2880);
  EXPECT_EQ(c.vocab_size, 201088);
  EXPECT_EQ(c.sliding_window, 128);
  EXPECT_EQ(c.rope_theta, 150000.0);
  EXPECT_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.swiglu_limit, 7.0);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_EQ(c.layer_types, alternating(36));
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{200002, 200012, 199999}));
  EXPECT_EQ(c.pad_token_id, -1);
  // layer_types absent (or null) follows num_hidden_layers, odd counts included.
  EXPECT_EQ(parse_ok({{"num_hidden_layers", 5}}).layer_types, alternating(5));
  EXPECT_EQ(parse_ok({{"num_hidden_layers", 1}, {"layer_types", nullptr}}).layer_types, alternating(1));
}

TEST(Config, EosIdsFromIntOrListMergedWithHarmonyStops) {
  EXPECT_EQ(parse_ok({{"eos_token_id", 5}}).eos_token_ids, (std::vector<int32_t>{5, 200002, 200012, 199999}));
  EXPECT_EQ(parse_ok({{"eos_token_id", json::array({199999, 7, 7})}}).eos_token_ids,
            (std::vector<int32_t>{199999, 7, 200002, 200012}));
  // Only harmony stops inside the vocabulary are added.
  EXPECT_EQ(parse_ok({{"vocab_size", 200010}, {"eos_token_id", 3}}).eos_token_ids,
            (std::vector<int32_t>{3, 200002, 199999}));
  EXPECT_EQ(parse_ok({{"vocab_size", 100}, {"eos_token_id", nullptr}}).eos_token_ids, std::vector<int32_t>{});
}

TEST(Config, GenerationConfigStopsAreMerged) {
  TempDir dir;
  json cfg = json::parse(config_to_json_text(*config_preset("tiny")));
  write_text_file(dir.file("config.json"), cfg.dump());
  write_text_file(dir.file("generation_config.json"), R"({"eos_token_id": [1023, 17, 200002], "do_sample": true})");
  auto c = config_load_dir(dir.str());
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  // 200002 is outside the 1024-token vocabulary: dropped (with a warning), not an error.
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{1023, 17}));
  write_text_file(dir.file("generation_config.json"), R"({"eos_token_id": 5})");
  EXPECT_EQ(config_load_dir(dir.str())->eos_token_ids, (std::vector<int32_t>{1023, 5}));
  write_text_file(dir.file("generation_config.json"), R"({"eos_token_id": "x"})");
  auto bad = config_load_dir(dir.str());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("generation_config.json"), std::string::npos);
}

TEST(Config, LoadDirFallsBackToOriginalAndReportsMissing) {
  TempDir dir;
  auto missing = config_load_dir(dir.str());
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), ErrorCode::kNotFound);
  EXPECT_NE(missing.status().message().find("config.json"), std::string::npos);
  std::filesystem::create_directories(dir.file("original"));
  write_text_file(dir.file("original/config.json"), original_20b().dump());
  auto c = config_load_dir(dir.str());
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->num_local_experts, 32);
  write_text_file(dir.file("config.json"), "{ not json");
  auto bad = config_load_dir(dir.str());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find(dir.file("config.json")), std::string::npos);
}

struct BadField {
  json patch;         // merged into a valid tiny config
  std::string field;  // must appear in the error
};

TEST(Config, BadValuesAreRejectedNamingTheField) {
  const json base = json::parse(config_to_json_text(*config_preset("tiny")));
  const std::vector<BadField> cases = {
      {{{"hidden_size", 0}}, "hidden_size"},
      {{{"hidden_size", -64}}, "hidden_size"},
      {{{"hidden_size", 100}}, "hidden_size"},
      {{{"hidden_size", "64"}}, "hidden_size"},
      {{{"hidden_size", 64.5}}, "hidden_size"},
      {{{"intermediate_size", 33}}, "intermediate_size"},
      {{{"num_hidden_layers", 0}}, "num_hidden_layers"},
      {{{"num_hidden_layers", 1000000000000}}, "num_hidden_layers"},
      {{{"num_local_experts", 65536}, {"hidden_size", 1 << 20}, {"intermediate_size", 1 << 20}}, "parameters"},
      {{{"num_attention_heads", 0}}, "num_attention_heads"},
      {{{"num_key_value_heads", 3}}, "num_key_value_heads"},
      {{{"num_key_value_heads", 8}}, "num_key_value_heads"},
      {{{"num_key_value_heads", 0}}, "num_key_value_heads"},
      {{{"head_dim", 15}}, "head_dim"},
      {{{"head_dim", 0}}, "head_dim"},
      {{{"num_local_experts", 0}}, "num_local_experts"},
      {{{"num_experts_per_tok", 0}}, "num_experts_per_tok"},
      {{{"num_experts_per_tok", 7}}, "num_experts_per_tok"},
      {{{"vocab_size", 0}}, "vocab_size"},
      {{{"sliding_window", 0}}, "sliding_window"},
      {{{"max_position_embeddings", 0}}, "max_position_embeddings"},
      {{{"rope_theta", -1.0}}, "rope_theta"},
      {{{"rope_theta", "big"}}, "rope_theta"},
      {{{"rms_norm_eps", 0.0}}, "rms_norm_eps"},
      {{{"swiglu_limit", 0.0}}, "swiglu_limit"},
      {{{"rope_scaling", {{"factor", 0.5}}}}, "rope_scaling.factor"},
      {{{"rope_scaling", {{"beta_fast", 1.0}, {"beta_slow", 1.0}}}}, "beta_fast"},
      {{{"rope_scaling", {{"rope_type", "linear"}}}}, "rope_type"},
      {{{"rope_scaling", {{"truncate", "no"}}}}, "truncate"},
      {{{"rope_scaling", 3}}, "rope_scaling"},
      {{{"layer_types", {"sliding_attention", "full_attention"}}}, "layer_types"},
      {{{"layer_types", {"sliding_attention", "local_attention", "full_attention"}}}, "layer_types[1]"},
      {{{"layer_types", "sliding_attention"}}, "layer_types"},
      {{{"eos_token_id", 1024}}, "eos_token_id"},
      {{{"eos_token_id", -1}}, "eos_token_id"},
      {{{"eos_token_id", {1, "two"}}}, "eos_token_id"},
      {{{"pad_token_id", 5000}}, "pad_token_id"},
      {{{"pad_token_id", {1, 2}}}, "pad_token_id"},
  };
  for (const BadField& c : cases) {
    json j = base;
    j.merge_patch(c.patch);
    auto r = config_from_json_text(j.dump(), "bad.json");
    ASSERT_FALSE(r.ok()) << c.patch.dump();
    EXPECT_NE(r.status().message().find(c.field), std::string::npos) << c.patch.dump() << " → " << r.status().message();
    EXPECT_NE(r.status().message().find("bad.json"), std::string::npos) << r.status().message();
  }
  for (const char* text : {"", "[]", "{\"hidden_size\": 64", "42"}) {
    auto r = config_from_json_text(text, "bad.json");
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_NE(r.status().message().find("bad.json"), std::string::npos);
  }
}

TEST(Config, IntegralFloatsAreAcceptedForIntegerFields) {
  json j = json::parse(config_to_json_text(*config_preset("tiny")));
  j["hidden_size"] = 64.0;
  j["num_hidden_layers"] = 3.0;
  const Config c = parse_ok(j);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_hidden_layers, 3);
}

TEST(Config, SerialisationRoundTripsEveryPresetAndFixture) {
  for (const std::string& name : config_preset_names()) {
    auto p = config_preset(name);
    ASSERT_TRUE(p.ok()) << name;
    EXPECT_TRUE(p->validate().ok()) << name;
    const json j = json::parse(config_to_json_text(*p));
    EXPECT_EQ(j["quantization_config"]["quant_method"], "mxfp4");
    EXPECT_EQ(j["architectures"][0], "GptOssForCausalLM");
    EXPECT_EQ(j["experts_per_token"], j["num_experts_per_tok"]);
    expect_same(parse_ok(j), *p);
  }
  for (const char* fx : {"pub-a", "fx-mixed-layers", "fx-k1-odd"}) {
    auto c = config_load_dir(std::string(GPTOSS_FIXTURES) + "/" + fx);
    ASSERT_TRUE(c.ok()) << fx;
    expect_same(parse_ok(json::parse(config_to_json_text(*c))), *c);
  }
}

TEST(Config, Presets) {
  EXPECT_EQ(config_preset_names(), (std::vector<std::string>{"20b", "120b", "demo", "tiny"}));
  const Config b20 = *config_preset("20b"), b120 = *config_preset("120b");
  EXPECT_EQ(b20.num_hidden_layers, 24);
  EXPECT_EQ(b20.num_local_experts, 32);
  EXPECT_EQ(b120.num_hidden_layers, 36);
  EXPECT_EQ(b120.num_local_experts, 128);
  for (const Config* c : {&b20, &b120}) {
    EXPECT_EQ(c->hidden_size, 2880);
    EXPECT_EQ(c->q_dim(), 4096);
    EXPECT_EQ(c->kv_dim(), 512);
    EXPECT_EQ(c->vocab_size, 201088);
    EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{200002, 200012, 199999}));
    EXPECT_EQ(c->pad_token_id, 199999);
    EXPECT_EQ(c->layer_types, alternating(c->num_hidden_layers));
  }
  const Config demo = *config_preset("demo");
  EXPECT_EQ(demo.vocab_size, 201088);
  EXPECT_EQ(demo.hidden_size, 64);
  EXPECT_EQ(demo.intermediate_size, 64);
  EXPECT_EQ(demo.num_hidden_layers, 2);
  EXPECT_EQ(demo.num_attention_heads, 4);
  EXPECT_EQ(demo.num_key_value_heads, 1);
  EXPECT_EQ(demo.head_dim, 16);
  EXPECT_EQ(demo.num_local_experts, 4);
  EXPECT_EQ(demo.num_experts_per_tok, 2);
  EXPECT_EQ(demo.sliding_window, 128);
  EXPECT_EQ(demo.eos_token_ids.front(), 200002);
  EXPECT_EQ(demo.pad_token_id, 199999);
  const Config tiny = *config_preset("tiny");
  EXPECT_EQ(tiny.vocab_size, 1024);
  EXPECT_EQ(tiny.intermediate_size, 96);
  EXPECT_EQ(tiny.num_hidden_layers, 3);
  EXPECT_EQ(tiny.num_key_value_heads, 2);
  EXPECT_EQ(tiny.num_local_experts, 6);
  EXPECT_EQ(tiny.num_experts_per_tok, 3);
  EXPECT_EQ(tiny.sliding_window, 16);
  EXPECT_EQ(tiny.eos_token_ids, std::vector<int32_t>{1023});
  EXPECT_EQ(tiny.pad_token_id, 1022);
  auto unknown = config_preset("7b");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("'7b'"), std::string::npos);
  EXPECT_NE(unknown.status().message().find("tiny"), std::string::npos);
}

}  // namespace
}  // namespace gptoss
