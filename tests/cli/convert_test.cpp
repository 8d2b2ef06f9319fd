// `gptoss convert` driven as a real process: synthetic unquantized checkpoints (BF16/F16/F32,
// crafted rounding ties, saturation, zero blocks) checked against an independent round-to-nearest
// E2M1 reference; the converted checkpoint loads; pub-a's experts survive a dequantize → convert
// round trip byte for byte; --validate numbers match an exact recomputation; bad input fails cleanly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <regex>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/process.h"
#include "core/dtype.h"
#include "core/mxfp4.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/weights.h"

namespace gptoss::testing {
namespace {

namespace fs = std::filesystem;

// ---- independent reference: OCP scale from the exact exponent, nearest E2M1, ties to even code.

int ocp_exponent(float amax) {
  if (amax == 0) return -127;
  int ex = 0;
  std::frexp(amax, &ex);
  return std::clamp(ex - 1 - 2, -127, 127);
}

float reference_round(float x, int e) {
  static const float kGrid[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
  const double a = std::fabs(static_cast<double>(x)) / std::ldexp(1.0, e);
  int best = 0;
  for (int c = 1; c < 8; ++c) {
    const double d = std::fabs(a - kGrid[c]), db = std::fabs(a - kGrid[best]);
    if (d < db || (d == db && c % 2 == 0)) best = c;
  }
  const float v = static_cast<float>(std::ldexp(static_cast<double>(kGrid[best]), e));
  return std::signbit(x) ? -v : v;
}

// ---- synthetic checkpoints

std::vector<uint8_t> encode(const std::vector<float>& v, DType t) {
  std::vector<uint8_t> out(v.size() * dtype_size(t));
  for (size_t i = 0; i < v.size(); ++i) {
    if (t == DType::kF32) {
      std::memcpy(out.data() + 4 * i, &v[i], 4);
    } else {
      const uint16_t h = t == DType::kBF16 ? f32_to_bf16(v[i]) : f32_to_f16(v[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}

// Logical expert weights W[e][r][c] (out rows × in cols), exactly representable in `t`: Gaussian
// blocks with magnitudes spread over many binades, a zero block, tiny values, and one crafted block
// per expert with every E2M1 rounding tie and a saturating value.
std::vector<float> make_logical(int64_t E, int64_t rows, int64_t cols, DType t, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  std::uniform_int_distribution<int> binade(-12, 6);
  std::vector<float> w(static_cast<size_t>(E * rows * cols));
  const int64_t nb = cols / 32;
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t g = 0; g < nb; ++g) {
        float* b = w.data() + ((e * rows + r) * cols + g * 32);
        const float mag = std::ldexp(1.0f, t == DType::kF16 ? std::max(binade(rng), -6) : binade(rng));
        const bool zero_block = (r == 1 && g == 0);
        const bool crafted = (r == 0 && g == nb - 1);
        for (int k = 0; k < 32; ++k) b[k] = zero_block ? 0.0f : gauss(rng) * mag;
        if (crafted) {
          const float ties[] = {7,     6,  5,      3.5f,  2.5f, 1.75f, 1.25f, 0.75f,
                                0.25f, -5, -0.25f, -3.5f, 0,    -0.0f, 6.5f,  1e-3f};
          for (int k = 0; k < 16; ++k) b[k] = ties[k] * mag;
        }
        if (r == 2 && g == 0 && t != DType::kF16) b[3] = 1e-30f;  // a value far below its block's scale
      }
    }
  }
  // Round to the storage type so the source values are exactly what the converter reads.
  for (float& x : w)
    x = t == DType::kF32 ? x : (t == DType::kBF16 ? bf16_to_f32(f32_to_bf16(x)) : f16_to_f32(f32_to_f16(x)));
  return w;
}

// [E, rows, cols] logical → HF dequantized layout [E, cols, rows].
std::vector<float> to_in_out(const std::vector<float>& w, int64_t E, int64_t rows, int64_t cols) {
  std::vector<float> out(w.size());
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        out[static_cast<size_t>((e * cols + c) * rows + r)] = w[static_cast<size_t>((e * rows + r) * cols + c)];
  return out;
}

Config synthetic_config() {
  Config c = config_preset("tiny").value();
  c.hidden_size = 96;
  c.intermediate_size = 160;
  c.num_local_experts = 5;
  c.num_experts_per_tok = 2;
  return c;
}

struct Synthetic {
  std::string dir;
  Config config;
  std::map<std::string, std::vector<float>> logical;    // expert matrix name → W[e][r][c]
  std::map<std::string, std::vector<float>> f32_other;  // non-expert tensors written as F32
};

// Writes an unquantized checkpoint: layer l's experts in BF16 / F32 / F16 (l % 3), two other
// tensors as F32 with values BF16 cannot hold, the rest BF16 from Model::random.
Synthetic write_synthetic(const std::string& dir) {
  Synthetic s;
  s.dir = dir;
  s.config = synthetic_config();
  const Config& c = s.config;
  auto model = Model::random(c, 99);
  EXPECT_TRUE(model.ok()) << model.status().to_string();
  std::vector<TensorToWrite> tensors;
  std::vector<std::vector<uint8_t>> keep;
  keep.reserve(64);
  const DType kinds[] = {DType::kBF16, DType::kF32, DType::kF16};
  for (const TensorToWrite& t : (*model)->tensors_for_writing()) {
    static const std::regex packed(R"(^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)_(blocks|scales)$)");
    std::smatch m;
    if (std::regex_match(t.name, m, packed)) {
      if (m[3].str() == "scales") continue;
      const int64_t l = std::stoll(m[1].str());
      const bool gate_up = m[2].str() == "gate_up_proj";
      const int64_t rows = gate_up ? 2 * c.intermediate_size : c.hidden_size;
      const int64_t cols = gate_up ? c.hidden_size : c.intermediate_size;
      const DType dt = kinds[l % 3];
      const std::string name = "model.layers." + m[1].str() + ".mlp.experts." + m[2].str();
      s.logical[name] = make_logical(c.num_local_experts, rows, cols, dt, static_cast<uint32_t>(17 * l + gate_up));
      keep.push_back(encode(to_in_out(s.logical[name], c.num_local_experts, rows, cols), dt));
      tensors.push_back({name, dt, {c.num_local_experts, cols, rows}, keep.back().data(), keep.back().size()});
      continue;
    }
    if (t.name == "model.norm.weight" || t.name == "model.layers.0.mlp.router.weight") {
      std::vector<float> v(t.nbytes / 2);
      for (size_t i = 0; i < v.size(); ++i) {
        uint16_t h;
        std::memcpy(&h, static_cast<const uint8_t*>(t.data) + 2 * i, 2);
        v[i] = bf16_to_f32(h) * (1.0f + 1.0f / 3000.0f);  // off the BF16 grid
      }
      s.f32_other[t.name] = v;
      keep.push_back(encode(v, DType::kF32));
      tensors.push_back({t.name, DType::kF32, t.shape, keep.back().data(), keep.back().size()});
      continue;
    }
    tensors.push_back(t);
  }
  fs::create_directories(dir);
  EXPECT_TRUE(safetensors_write((fs::path(dir) / "model.safetensors").string(), tensors).ok());
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(config_to_json_text(c));
  j.erase("quantization_config");
  std::ofstream(fs::path(dir) / "config.json") << j.dump(2);
  return s;
}

// ---- checks

// Every expert matrix of the converted checkpoint (through Model::load) equals the reference.
void expect_experts_match_reference(const Synthetic& s, const std::string& out_dir) {
  auto model = Model::load(out_dir);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  const Config& c = s.config;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& lw = (*model)->weights().layers[static_cast<size_t>(l)];
    for (const auto* ex : {&lw.mlp1, &lw.mlp2}) {
      const std::string name =
          "model.layers." + std::to_string(l) + ".mlp.experts." + (ex == &lw.mlp1 ? "gate_up_proj" : "down_proj");
      const std::vector<float>& w = s.logical.at(name);
      const int64_t rows = ex->rows, cols = ex->cols, nb = cols / 32;
      std::vector<float> deq(static_cast<size_t>(cols));
      int64_t mismatches = 0;
      for (int64_t er = 0; er < c.num_local_experts * rows; ++er) {
        mxfp4_dequantize_row(ex->blocks.u8() + er * nb * 16, ex->scales.u8() + er * nb, static_cast<int>(cols),
                             deq.data());
        for (int64_t g = 0; g < nb; ++g) {
          const float* x = w.data() + er * cols + g * 32;
          float amax = 0;
          for (int k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(x[k]));
          const int e = ocp_exponent(amax);
          if (ex->scales.u8()[er * nb + g] != static_cast<uint8_t>(e + 127)) ++mismatches;
          for (int k = 0; k < 32; ++k)
            if (deq[static_cast<size_t>(g * 32 + k)] != reference_round(x[k], e)) ++mismatches;
        }
      }
      EXPECT_EQ(mismatches, 0) << name;
    }
  }
  // F32 non-expert tensors became their nearest BF16 values.
  for (const auto& [name, v] : s.f32_other) {
    const Weight* w =
        name == "model.norm.weight" ? &(*model)->weights().final_norm : &(*model)->weights().layers[0].router_w;
    ASSERT_EQ(w->dtype, DType::kBF16);
    for (size_t i = 0; i < v.size(); ++i) {
      int ex = 0;
      std::frexp(v[i], &ex);
      EXPECT_LE(std::fabs(bf16_to_f32(w->bf16()[i]) - v[i]), std::ldexp(1.0, ex - 9)) << name << " " << i;
    }
  }
}

struct ValidationRow {
  std::string kind;
  double max_abs, mean_abs, median_rel, p99_rel;
  uint64_t outside, n;
};

std::map<std::string, ValidationRow> parse_validation(const std::string& out) {
  static const std::regex row(R"((\S+)\s+(mxfp4|bf16)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\d+) of (\d+))");
  std::map<std::string, ValidationRow> rows;
  for (auto it = std::sregex_iterator(out.begin(), out.end(), row); it != std::sregex_iterator(); ++it) {
    const std::smatch& m = *it;
    rows[m[1].str()] = {m[2].str(),
                        std::stod(m[3].str()),
                        std::stod(m[4].str()),
                        std::stod(m[5].str()),
                        std::stod(m[6].str()),
                        std::stoull(m[7].str()),
                        std::stoull(m[8].str())};
  }
  return rows;
}

// The printed statistics of one expert matrix against an exact recomputation from the reference.
void expect_row_matches(const ValidationRow& row, const std::vector<float>& w, int64_t cols) {
  std::vector<double> rel;
  double max_abs = 0, sum_abs = 0;
  for (size_t b = 0; b < w.size(); b += 32) {
    float amax = 0;
    for (int k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(w[b + k]));
    const int e = ocp_exponent(amax);
    for (int k = 0; k < 32; ++k) {
      const double x = w[b + k], err = std::fabs(reference_round(w[b + k], e) - x);
      max_abs = std::max(max_abs, err);
      sum_abs += err;
      if (x != 0) rel.push_back(err / std::fabs(x));
    }
  }
  std::sort(rel.begin(), rel.end());
  auto quantile = [&](double q) {
    return rel[static_cast<size_t>(std::ceil(q * static_cast<double>(rel.size()))) - 1];
  };
  EXPECT_EQ(row.kind, "mxfp4");
  EXPECT_EQ(row.n, w.size());
  EXPECT_EQ(row.outside, 0u);
  EXPECT_NEAR(row.max_abs, max_abs, 1e-3 * max_abs);  // printed with 4 significant digits
  EXPECT_NEAR(row.mean_abs, sum_abs / static_cast<double>(w.size()), 1e-3 * sum_abs / static_cast<double>(w.size()));
  // Quantiles come from a log histogram with 256 bins per decade (upper bin edge, ≤ 0.9% above);
  // exact (0) and flushed-to-zero (1) elements are counted exactly.
  for (const auto& [printed, exact] :
       {std::pair{row.median_rel, quantile(0.5)}, std::pair{row.p99_rel, quantile(0.99)}}) {
    if (exact == 0) {
      EXPECT_EQ(printed, 0);
      continue;
    }
    EXPECT_GE(printed, exact * (1 - 1e-3));
    if (exact == 1) {
      EXPECT_EQ(printed, 1);
      continue;
    }
    EXPECT_LE(printed, exact * std::pow(10.0, 1.0 / 256) * (1 + 1e-3));
  }
}

class CliConvert : public ::testing::Test {
 protected:
  void SetUp() override { tmp_ = make_temp_dir("convert"); }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(tmp_);
  }
  std::string path(const std::string& name) const { return (fs::path(tmp_) / name).string(); }
  std::string tmp_;
};

TEST_F(CliConvert, SyntheticExpertsQuantizeToTheReferenceAndValidate) {
  const Synthetic s = write_synthetic(path("src"));
  const ProcResult r = run_gptoss({"convert", "--in", s.dir, "--out", path("out"), "--validate", "--threads", "2"});
  ASSERT_TRUE(r.exited && r.exit_code == 0) << r.out << r.err;
  EXPECT_NE(r.out.find("verdict: PASS"), std::string::npos) << r.out;
  expect_experts_match_reference(s, path("out"));
  const auto rows = parse_validation(r.out);
  for (const auto& [name, w] : s.logical) {
    ASSERT_TRUE(rows.count(name)) << name << "\n" << r.out;
    const bool gate_up = name.find("gate_up") != std::string::npos;
    expect_row_matches(rows.at(name), w, gate_up ? s.config.hidden_size : s.config.intermediate_size);
  }
  for (const auto& [name, v] : s.f32_other) {
    ASSERT_TRUE(rows.count(name)) << name;
    EXPECT_EQ(rows.at(name).kind, "bf16");
    EXPECT_EQ(rows.at(name).outside, 0u);
    EXPECT_EQ(rows.at(name).n, v.size());
  }
  // config.json gained quantization_config and stays loadable.
  std::ifstream cfg(path("out/config.json"));
  const auto j = nlohmann::json::parse(cfg);
  EXPECT_EQ(j.at("quantization_config").at("quant_method"), "mxfp4");
  EXPECT_EQ(j.at("hidden_size"), 96);
}

TEST_F(CliConvert, ShardedOutputFromASingleFileInput) {
  const Synthetic s = write_synthetic(path("src"));
  // --in names the file; config.json is read beside it. 50 kB shards force several files.
  const ProcResult r =
      run_gptoss({"convert", "--in", path("src/model.safetensors"), "--out", path("out"), "--shard-gb", "0.00005"});
  ASSERT_TRUE(r.exited && r.exit_code == 0) << r.err;
  EXPECT_TRUE(fs::exists(path("out/model.safetensors.index.json")));
  EXPECT_FALSE(fs::exists(path("out/model.safetensors")));
  int shards = 0;
  for (const auto& e : fs::directory_iterator(path("out"))) shards += e.path().extension() == ".safetensors";
  EXPECT_GT(shards, 2);
  expect_experts_match_reference(s, path("out"));
}

// pub-a's experts dequantized to the unquantized HF layout and converted back give the original
// bytes: every block whose largest code is ±4 or ±6 (the OCP scale of its max is the stored one)
// bit for bit, any other block the same values.
TEST_F(CliConvert, RoundTripOfPubAExperts) {
  const std::string pub = std::string(GPTOSS_FIXTURES) + "/pub-a";
  auto store = TensorStore::open_dir(pub);
  ASSERT_TRUE(store.ok()) << store.status().to_string();
  std::vector<TensorToWrite> tensors;
  std::vector<std::vector<uint8_t>> keep;
  keep.reserve(64);
  for (const std::string& name : (*store)->names()) {
    const TensorView& t = *(*store)->find(name);
    if (name.ends_with("_scales")) continue;
    if (!name.ends_with("_blocks")) {
      tensors.push_back({name, t.dtype, t.shape, t.data, t.nbytes});
      continue;
    }
    const std::string base = name.substr(0, name.size() - 7);
    const TensorView& sc = *(*store)->find(base + "_scales");
    const int64_t E = t.shape[0], rows = t.shape[1], cols = t.shape[2] * 32;
    std::vector<float> logical(static_cast<size_t>(E * rows * cols));
    for (int64_t er = 0; er < E * rows; ++er)
      mxfp4_dequantize_row(t.data + er * cols / 2, sc.data + er * cols / 32, static_cast<int>(cols),
                           logical.data() + er * cols);
    keep.push_back(encode(to_in_out(logical, E, rows, cols), DType::kBF16));
    tensors.push_back({base, DType::kBF16, {E, cols, rows}, keep.back().data(), keep.back().size()});
  }
  fs::create_directories(path("src"));
  ASSERT_TRUE(safetensors_write(path("src/model.safetensors"), tensors).ok());
  std::ifstream in(pub + "/config.json");
  auto j = nlohmann::ordered_json::parse(in);
  j.erase("quantization_config");
  std::ofstream(path("src/config.json")) << j.dump(2);

  const ProcResult r = run_gptoss({"convert", "--in", path("src"), "--out", path("out"), "--validate"});
  ASSERT_TRUE(r.exited && r.exit_code == 0) << r.out << r.err;
  EXPECT_NE(r.out.find("verdict: PASS"), std::string::npos);
  auto out = TensorStore::open_dir(path("out"));
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  int64_t canonical = 0, other = 0, checked_tensors = 0;
  for (const std::string& name : (*store)->names()) {
    const TensorView& a = *(*store)->find(name);
    const TensorView* b = (*out)->find(name);
    ASSERT_NE(b, nullptr) << name;
    ASSERT_EQ(a.shape, b->shape) << name;
    ASSERT_EQ(a.dtype, b->dtype) << name;
    if (!name.ends_with("_blocks")) {
      if (!name.ends_with("_scales")) {
        EXPECT_EQ(std::memcmp(a.data, b->data, a.nbytes), 0) << name;
      }
      continue;
    }
    ++checked_tensors;
    const std::string base = name.substr(0, name.size() - 7);
    const uint8_t* sa = (*store)->find(base + "_scales")->data;
    const uint8_t* sb = (*out)->find(base + "_scales")->data;
    for (int64_t blk = 0; blk < a.numel() / 16; ++blk) {
      const uint8_t* ba = a.data + blk * 16;
      bool has_top = false;  // a code of magnitude 4 or 6
      for (int k = 0; k < 16; ++k) has_top |= (ba[k] & 7) >= 6 || ((ba[k] >> 4) & 7) >= 6;
      if (has_top) {
        ++canonical;
        EXPECT_EQ(std::memcmp(ba, b->data + blk * 16, 16), 0) << name << " block " << blk;
        EXPECT_EQ(sa[blk], sb[blk]) << name << " block " << blk;
      } else {
        ++other;
        float va[32], vb[32];
        mxfp4_dequantize_row(ba, sa + blk, 32, va);
        mxfp4_dequantize_row(b->data + blk * 16, sb + blk, 32, vb);
        for (int k = 0; k < 32; ++k) EXPECT_EQ(va[k], vb[k]) << name << " block " << blk;
      }
    }
  }
  EXPECT_EQ(checked_tensors, 4);  // 2 layers × (gate_up, down)
  EXPECT_GT(canonical, 1000 * std::max<int64_t>(other, 1) / 2) << "random codes: nearly every block is canonical";
}

TEST_F(CliConvert, BadInputFailsWithAClearMessage) {
  auto expect_fail = [](const ProcResult& r, const std::string& needle) {
    EXPECT_TRUE(r.exited) << "signal " << r.term_signal;
    EXPECT_TRUE(r.exit_code == 1 || r.exit_code == 2) << r.exit_code << " " << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << "expected '" << needle << "' in: " << r.err;
  };
  expect_fail(run_gptoss({"convert", "--in", "/nonexistent/ckpt", "--out", path("x")}), "does not exist");
  expect_fail(run_gptoss({"convert", "--in", path("x")}), "--out");
  // Experts in the MXFP4 orientation [E, out, in] instead of HF's dequantized [E, in, out].
  const Synthetic s = write_synthetic(path("src"));
  auto store = TensorStore::open_dir(s.dir);
  ASSERT_TRUE(store.ok());
  std::vector<TensorToWrite> tensors;
  std::vector<uint8_t> wrong;
  for (const std::string& name : (*store)->names()) {
    const TensorView& t = *(*store)->find(name);
    if (name == "model.layers.1.mlp.experts.down_proj") {
      tensors.push_back({name, t.dtype, {t.shape[0], t.shape[2], t.shape[1]}, t.data, t.nbytes});
    } else if (name != "model.layers.2.mlp.experts.gate_up_proj") {
      tensors.push_back({name, t.dtype, t.shape, t.data, t.nbytes});
    }
  }
  fs::create_directories(path("bad"));
  fs::copy_file(path("src/config.json"), path("bad/config.json"));
  ASSERT_TRUE(safetensors_write(path("bad/model.safetensors"), tensors).ok());
  expect_fail(run_gptoss({"convert", "--in", path("bad"), "--out", path("o1")}),
              "model.layers.1.mlp.experts.down_proj: shape [5, 96, 160]");
  tensors.erase(std::remove_if(tensors.begin(), tensors.end(),
                               [](const TensorToWrite& t) { return t.name == "model.layers.1.mlp.experts.down_proj"; }),
                tensors.end());
  ASSERT_TRUE(safetensors_write(path("bad/model.safetensors"), tensors).ok());
  expect_fail(run_gptoss({"convert", "--in", path("bad"), "--out", path("o2")}), "experts.down_proj");
  // An output folder that already holds a checkpoint is not overwritten without --force.
  ASSERT_EQ(run_gptoss({"convert", "--in", s.dir, "--out", path("out")}).exit_code, 0);
  expect_fail(run_gptoss({"convert", "--in", s.dir, "--out", path("out")}), "--force");
  expect_fail(run_gptoss({"convert", "--in", s.dir, "--out", s.dir, "--force"}), "input folder");
  const ProcResult forced = run_gptoss({"convert", "--in", s.dir, "--out", path("out"), "--force"});
  EXPECT_EQ(forced.exit_code, 0) << forced.err;
}

}  // namespace
}  // namespace gptoss::testing
