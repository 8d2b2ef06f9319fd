// `gptoss convert`: turns a checkpoint with unquantized experts (the HF dequantized layout,
// gate_up_proj [E, H, 2I] and down_proj [E, I, H], i.e. [E, in, out]; BF16/F16/F32) into the
// official layout: MXFP4 experts (*_blocks + E8M0 *_scales, [E, out, in/32, 16]) and BF16
// everything else, with config.json (+ quantization_config). --validate compares every converted
// tensor with its source and checks each element against the rounding bound of its format.
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <regex>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/common.h"
#include "core/dtype.h"
#include "core/mxfp4.h"
#include "core/threads.h"
#include "io/safetensors.h"
#include "model/config.h"

namespace gptoss::cli {
namespace {

namespace fs = std::filesystem;
constexpr const char* kName = "convert";

// ---------------------------------------------------------------------------------------------
// Error statistics against the source, with quantiles of the relative error from a log histogram
// (kBinsPerDecade bins per power of ten → quantiles within 0.9%). Exact elements (0) and elements
// flushed to zero (exactly 1) are counted apart, so those common values come out exact.

constexpr int kBinsPerDecade = 256;
constexpr int kMinDecade = -10, kMaxDecade = 2;
constexpr int kBins = (kMaxDecade - kMinDecade) * kBinsPerDecade;

struct ErrorStats {
  double max_abs = 0, sum_abs = 0;
  uint64_t n = 0;
  uint64_t rel_n = 0, rel_zero = 0, rel_one = 0;  // nonzero sources; of those exact / flushed to 0
  std::array<uint64_t, kBins> hist{};
  uint64_t violations = 0;  // elements whose error exceeds the format's rounding bound

  void add(double x, double q, double bound) {
    const double err = std::fabs(q - x);
    max_abs = std::max(max_abs, err);
    sum_abs += err;
    ++n;
    if (err > bound) ++violations;
    if (x == 0) return;
    ++rel_n;
    const double rel = err / std::fabs(x);
    if (rel == 0 || rel == 1) {
      ++(rel == 0 ? rel_zero : rel_one);
      return;
    }
    const int bin = static_cast<int>(std::floor((std::log10(rel) - kMinDecade) * kBinsPerDecade));
    ++hist[static_cast<size_t>(std::clamp(bin, 0, kBins - 1))];
  }

  void merge(const ErrorStats& o) {
    max_abs = std::max(max_abs, o.max_abs);
    sum_abs += o.sum_abs;
    n += o.n;
    rel_n += o.rel_n;
    rel_zero += o.rel_zero;
    rel_one += o.rel_one;
    violations += o.violations;
    for (size_t i = 0; i < hist.size(); ++i) hist[i] += o.hist[i];
  }

  // The q-quantile of the relative error: 0 or 1 when it falls among those counted apart, else
  // the upper edge of its histogram bin.
  double rel_quantile(double q) const {
    if (rel_n == 0) return 0;
    const auto rank = std::max<uint64_t>(1, static_cast<uint64_t>(std::ceil(q * static_cast<double>(rel_n))));
    uint64_t seen = rel_zero;
    if (seen >= rank) return 0;
    constexpr int kOneBin = -kMinDecade * kBinsPerDecade;  // first bin at or above 1
    for (int b = 0; b < kBins; ++b) {
      if (b == kOneBin) {
        seen += rel_one;
        if (seen >= rank) return 1;
      }
      seen += hist[static_cast<size_t>(b)];
      if (seen >= rank) return std::pow(10.0, kMinDecade + static_cast<double>(b + 1) / kBinsPerDecade);
    }
    return std::pow(10.0, kMaxDecade);
  }
};

// Largest error round-to-nearest onto the E2M1 grid may make for x in a block whose largest
// magnitude is amax, with the OCP scale 2^(floor(log2 amax) − 2): half a grid step, or the excess
// over 6·scale for values that saturate. Computed with frexp, so the exponent is exact.
double e2m1_bound(double x, float amax) {
  if (amax == 0) return 0;
  int ex = 0;
  std::frexp(amax, &ex);  // amax = m·2^ex, m ∈ [0.5, 1) → floor(log2 amax) = ex − 1
  const double s = std::ldexp(1.0, std::clamp(ex - 1 - 2, -127, 127));
  const double a = std::fabs(x) / s;
  if (a > 6) return (a - 6) * s;
  const double half_step = a <= 2 ? 0.25 : (a <= 4 ? 0.5 : 1.0);
  return half_step * s;
}

// Half a BF16 ulp at x (8 significant bits), at least half the smallest subnormal step.
double bf16_bound(double x) {
  if (x == 0) return 0;
  int ex = 0;
  std::frexp(x, &ex);
  return std::ldexp(1.0, std::max(ex - 9, -134));
}

float load_value(const uint8_t* data, DType t, size_t i) {
  switch (t) {
    case DType::kBF16: {
      uint16_t v;
      std::memcpy(&v, data + 2 * i, 2);
      return bf16_to_f32(v);
    }
    case DType::kF16: {
      uint16_t v;
      std::memcpy(&v, data + 2 * i, 2);
      return f16_to_f32(v);
    }
    default: {
      float v;
      std::memcpy(&v, data + 4 * i, 4);
      return v;
    }
  }
}

bool is_float(DType t) {
  return t == DType::kBF16 || t == DType::kF16 || t == DType::kF32;
}

// ---------------------------------------------------------------------------------------------
// Plan: what each input tensor becomes.

enum class Action { kToBf16, kQuantize, kCopy };

struct Item {
  Action action = Action::kToBf16;
  const TensorView* src = nullptr;
  std::string out_name;                     // kQuantize: the source name; outputs are <name>_blocks / <name>_scales
  int64_t experts = 0, rows = 0, cols = 0;  // kQuantize: E, output rows (out), cols (in)
  size_t out_bytes = 0;
  ErrorStats stats;  // filled when validating
};

// Matches the unquantized expert matrices; group 2 is the projection name.
const std::regex& expert_matrix_regex() {
  static const std::regex re(R"(^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$)");
  return re;
}

Result<Item> plan_expert(const TensorView& t, const Config& c, const std::smatch& m) {
  const int64_t layer = std::stoll(m[1].str());
  if (layer >= c.num_hidden_layers) {
    return make_error(ErrorCode::kFormat, "tensor {}: layer {} but the config has {} layers", t.name, layer,
                      c.num_hidden_layers);
  }
  const bool gate_up = m[2].str() == "gate_up_proj";
  const int64_t E = c.num_local_experts, H = c.hidden_size, I = c.intermediate_size;
  // HF's dequantized layout is [E, in, out] (transposed against the MXFP4 [E, out, in]).
  const std::vector<int64_t> want = gate_up ? std::vector<int64_t>{E, H, 2 * I} : std::vector<int64_t>{E, I, H};
  if (t.shape != want) {
    TensorView w;
    w.shape = want;
    return make_error(ErrorCode::kFormat, "tensor {}: shape {} but the config needs {} ([experts, in, out])", t.name,
                      t.shape_str(), w.shape_str());
  }
  if (!is_float(t.dtype)) {
    return make_error(ErrorCode::kFormat, "tensor {}: dtype {} (expected BF16, F16 or F32)", t.name,
                      dtype_name(t.dtype));
  }
  Item it;
  it.action = Action::kQuantize;
  it.src = &t;
  it.out_name = t.name;
  it.experts = E;
  it.rows = want[2];
  it.cols = want[1];
  const size_t nblocks = static_cast<size_t>(E * it.rows * (it.cols / kMxfp4BlockSize));
  it.out_bytes = nblocks * (kMxfp4BytesPerBlock + 1);
  return it;
}

Result<std::vector<Item>> make_plan(const TensorStore& store, const Config& c) {
  std::vector<Item> plan;
  for (const std::string& name : store.names()) {
    const TensorView& t = *store.find(name);
    std::smatch m;
    if (std::regex_match(name, m, expert_matrix_regex())) {
      GPTOSS_ASSIGN_OR_RETURN(Item it, plan_expert(t, c, m));
      plan.push_back(std::move(it));
      continue;
    }
    Item it;
    it.src = &t;
    it.out_name = name;
    const bool packed = name.ends_with("_blocks") || name.ends_with("_scales");
    if (packed && t.dtype == DType::kU8) {
      it.action = Action::kCopy;  // already MXFP4: kept byte for byte
      it.out_bytes = t.nbytes;
    } else if (is_float(t.dtype)) {
      it.action = Action::kToBf16;
      it.out_bytes = static_cast<size_t>(t.numel()) * 2;
    } else {
      return make_error(ErrorCode::kFormat, "tensor {}: dtype {} cannot be converted (expected BF16, F16 or F32)", name,
                        dtype_name(t.dtype));
    }
    plan.push_back(std::move(it));
  }
  // Every layer needs both expert matrices, in one form or the other (not both).
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    for (const char* proj : {"gate_up_proj", "down_proj"}) {
      const std::string base = fmt::format("model.layers.{}.mlp.experts.{}", l, proj);
      const bool raw = store.find(base) != nullptr;
      const bool packed = store.find(base + "_blocks") && store.find(base + "_scales");
      if (!raw && !packed)
        return make_error(ErrorCode::kNotFound, "the checkpoint has no {} (nor _blocks/_scales)", base);
      if (raw && packed) return make_error(ErrorCode::kFormat, "the checkpoint has both {} and its _blocks", base);
    }
  }
  return plan;
}

// ---------------------------------------------------------------------------------------------
// Conversion kernels

// Quantizes all experts of one [E, in, out] tensor into [E, out, in/32, 16] blocks and [E, out,
// in/32] scales. Works on tiles of kTile output rows so the strided source reads stay in cache.
Status quantize_item(Item& it, uint8_t* blocks, uint8_t* scales, ThreadPool& pool, bool validate) {
  constexpr int64_t kTile = 16;
  const int64_t rows = it.rows, cols = it.cols, nb = cols / kMxfp4BlockSize;
  const int64_t tiles = (rows + kTile - 1) / kTile;
  const TensorView& src = *it.src;
  std::mutex mu;
  std::string bad;  // first non-finite value found
  pool.parallel_for(it.experts * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> tile(static_cast<size_t>(kTile * cols)), deq(static_cast<size_t>(cols));
    ErrorStats local;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t e = task / tiles, r0 = (task % tiles) * kTile, nr = std::min(kTile, rows - r0);
      for (int64_t c = 0; c < cols; ++c) {
        const size_t base = static_cast<size_t>((e * cols + c) * rows + r0);
        for (int64_t t = 0; t < nr; ++t)
          tile[static_cast<size_t>(t * cols + c)] = load_value(src.data, src.dtype, base + t);
      }
      for (int64_t t = 0; t < nr; ++t) {
        const float* x = tile.data() + t * cols;
        const int64_t row = e * rows + r0 + t;
        for (int64_t c = 0; c < cols; ++c) {
          if (!std::isfinite(x[c])) {
            std::lock_guard<std::mutex> lock(mu);
            if (bad.empty()) bad = fmt::format("expert {}, in {}, out {}", e, c, r0 + t);
            return;
          }
        }
        uint8_t* b = blocks + row * nb * kMxfp4BytesPerBlock;
        uint8_t* s = scales + row * nb;
        mxfp4_quantize_row(x, static_cast<int>(cols), b, s);
        if (!validate) continue;
        mxfp4_dequantize_row(b, s, static_cast<int>(cols), deq.data());
        for (int64_t g = 0; g < nb; ++g) {
          float amax = 0;
          for (int64_t k = 0; k < kMxfp4BlockSize; ++k) amax = std::max(amax, std::fabs(x[g * kMxfp4BlockSize + k]));
          for (int64_t k = g * kMxfp4BlockSize; k < (g + 1) * kMxfp4BlockSize; ++k) {
            local.add(x[k], deq[static_cast<size_t>(k)], e2m1_bound(x[k], amax));
          }
        }
      }
    }
    std::lock_guard<std::mutex> lock(mu);
    it.stats.merge(local);
  });
  if (!bad.empty()) return make_error(ErrorCode::kFormat, "tensor {}: non-finite value at {}", src.name, bad);
  return {};
}

Status to_bf16_item(Item& it, uint16_t* out, ThreadPool& pool, bool validate) {
  const TensorView& src = *it.src;
  const int64_t n = src.numel();
  std::mutex mu;
  pool.parallel_for(n, 1 << 16, [&](int64_t begin, int64_t end) {
    ErrorStats local;
    for (int64_t i = begin; i < end; ++i) {
      const float x = load_value(src.data, src.dtype, static_cast<size_t>(i));
      out[i] = f32_to_bf16(x);
      if (validate && src.dtype != DType::kBF16) local.add(x, bf16_to_f32(out[i]), bf16_bound(x));
    }
    std::lock_guard<std::mutex> lock(mu);
    it.stats.merge(local);
  });
  return {};
}

// ---------------------------------------------------------------------------------------------
// Output

struct Options {
  std::string in, out;
  bool validate = false, force = false;
  double shard_gb = 4.0;
  int threads = 0;
};

// Converts the items of one shard and writes it.
Status write_shard(std::vector<Item*>& items, const std::string& path, ThreadPool& pool, bool validate,
                   ProgressBar& bar, size_t& done, size_t total) {
  std::vector<std::vector<uint8_t>> buffers;
  std::vector<TensorToWrite> tensors;
  buffers.reserve(items.size() * 2);
  for (Item* it : items) {
    const TensorView& src = *it->src;
    if (it->action == Action::kQuantize) {
      const int64_t nb = it->cols / kMxfp4BlockSize;
      auto& blocks = buffers.emplace_back(static_cast<size_t>(it->experts * it->rows * nb * kMxfp4BytesPerBlock));
      auto& scales = buffers.emplace_back(static_cast<size_t>(it->experts * it->rows * nb));
      GPTOSS_RETURN_IF_ERROR(quantize_item(*it, blocks.data(), scales.data(), pool, validate));
      tensors.push_back({it->out_name + "_blocks",
                         DType::kU8,
                         {it->experts, it->rows, nb, kMxfp4BytesPerBlock},
                         blocks.data(),
                         blocks.size()});
      tensors.push_back(
          {it->out_name + "_scales", DType::kU8, {it->experts, it->rows, nb}, scales.data(), scales.size()});
    } else if (it->action == Action::kToBf16) {
      auto& buf = buffers.emplace_back(it->out_bytes);
      GPTOSS_RETURN_IF_ERROR(to_bf16_item(*it, reinterpret_cast<uint16_t*>(buf.data()), pool, validate));
      tensors.push_back({it->out_name, DType::kBF16, src.shape, buf.data(), buf.size()});
    } else {
      tensors.push_back({it->out_name, src.dtype, src.shape, src.data, src.nbytes});
    }
    done += src.nbytes;
    bar.update(done, total, src.name);
  }
  return safetensors_write(path, tensors);
}

Result<std::string> read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return make_error(ErrorCode::kNotFound, "cannot read {}", p.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Status write_text(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return make_error(ErrorCode::kIo, "cannot write {}", p.string());
  return {};
}

// config.json with quantization_config for MXFP4 experts; key order of the source is kept.
Status write_config(const std::string& source_text, const fs::path& src_path, const fs::path& out_dir) {
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(source_text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return make_error(ErrorCode::kFormat, "{}: not a JSON object", src_path.string());
  j["quantization_config"] = {
      {"quant_method", "mxfp4"},
      {"modules_to_not_convert",
       {"model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"}}};
  if (j.contains("torch_dtype")) j["torch_dtype"] = "bfloat16";
  return write_text(out_dir / "config.json", j.dump(2) + "\n");
}

// Groups items into shards of at most max_bytes (a larger item gets a shard of its own).
std::vector<std::vector<Item*>> make_shards(std::vector<Item>& plan, size_t max_bytes) {
  std::vector<std::vector<Item*>> shards(1);
  size_t size = 0;
  for (Item& it : plan) {
    if (!shards.back().empty() && size + it.out_bytes > max_bytes) {
      shards.emplace_back();
      size = 0;
    }
    shards.back().push_back(&it);
    size += it.out_bytes;
  }
  return shards;
}

Status write_checkpoint(std::vector<Item>& plan, const Options& o, ThreadPool& pool, size_t total_in) {
  auto shards = make_shards(plan, static_cast<size_t>(o.shard_gb * 1e9));
  ProgressBar bar("converting");
  size_t done = 0;
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  size_t total_out = 0;
  for (size_t k = 0; k < shards.size(); ++k) {
    const std::string file = shards.size() == 1
                                 ? "model.safetensors"
                                 : fmt::format("model-{:05d}-of-{:05d}.safetensors", k + 1, shards.size());
    GPTOSS_RETURN_IF_ERROR(
        write_shard(shards[k], (fs::path(o.out) / file).string(), pool, o.validate, bar, done, total_in));
    for (Item* it : shards[k]) {
      total_out += it->out_bytes;
      if (it->action == Action::kQuantize) {
        weight_map[it->out_name + "_blocks"] = file;
        weight_map[it->out_name + "_scales"] = file;
      } else {
        weight_map[it->out_name] = file;
      }
    }
  }
  bar.finish();
  if (shards.size() == 1) return {};
  nlohmann::ordered_json index = {{"metadata", {{"total_size", total_out}}}, {"weight_map", weight_map}};
  return write_text(fs::path(o.out) / "model.safetensors.index.json", index.dump(2) + "\n");
}

// Prints the per-tensor error table; returns the number of tensors outside their bound.
int print_validation(const std::vector<Item>& plan) {
  size_t width = 6;
  for (const Item& it : plan) width = std::max(width, it.out_name.size());
  std::printf(
      "validation: per element, MXFP4 must be within half an E2M1 step at the block's OCP scale (or the\n"
      "clipped excess above 6 x scale); BF16 within half a BF16 ulp. Quantiles from a log histogram (within 1%%).\n");
  std::printf("%-*s  %-5s  %-10s %-10s %-10s %-10s %s\n", static_cast<int>(width), "tensor", "kind", "max_abs",
              "mean_abs", "median_rel", "p99_rel", "outside_bound");
  int failed = 0;
  size_t checked = 0;
  for (const Item& it : plan) {
    if (it.stats.n == 0) continue;
    ++checked;
    const ErrorStats& s = it.stats;
    std::printf("%-*s  %-5s  %-10.3e %-10.3e %-10.3e %-10.3e %llu of %llu\n", static_cast<int>(width),
                it.out_name.c_str(), it.action == Action::kQuantize ? "mxfp4" : "bf16", s.max_abs,
                s.sum_abs / static_cast<double>(s.n), s.rel_quantile(0.5), s.rel_quantile(0.99),
                static_cast<unsigned long long>(s.violations), static_cast<unsigned long long>(s.n));
    if (s.violations > 0) ++failed;
  }
  if (failed == 0) {
    std::printf("verdict: PASS (%zu converted tensors, every element within its rounding bound)\n", checked);
  } else {
    std::printf("verdict: FAIL (%d of %zu converted tensors have elements outside their rounding bound)\n", failed,
                checked);
  }
  std::fflush(stdout);
  return failed;
}

Status check_output_dir(const Options& o, const fs::path& in_dir) {
  std::error_code ec;
  if (fs::exists(o.out, ec) && fs::equivalent(o.out, in_dir, ec)) {
    return make_error(ErrorCode::kInvalidArgument, "--out {} is the input folder; choose another folder", o.out);
  }
  if (fs::exists(o.out, ec) && !fs::is_directory(o.out, ec)) {
    return make_error(ErrorCode::kInvalidArgument, "--out {} exists and is not a folder", o.out);
  }
  if (!o.force && fs::is_directory(o.out, ec)) {
    for (const auto& e : fs::directory_iterator(o.out, ec)) {
      const std::string n = e.path().filename().string();
      if (n == "config.json" || n.ends_with(".safetensors")) {
        return make_error(ErrorCode::kInvalidArgument,
                          "--out {} already holds a checkpoint ({}); pass --force to replace it", o.out, n);
      }
    }
  }
  fs::create_directories(o.out, ec);
  if (ec) return make_error(ErrorCode::kIo, "cannot create {}: {}", o.out, ec.message());
  return {};
}

Status convert(const Options& o, int* failed_tensors) {
  std::error_code ec;
  const bool is_dir = fs::is_directory(o.in, ec);
  if (!is_dir && !fs::is_regular_file(o.in, ec)) {
    return make_error(ErrorCode::kNotFound, "--in {} does not exist", o.in);
  }
  const fs::path in_dir = is_dir ? fs::path(o.in) : fs::path(o.in).parent_path();
  auto store = is_dir ? TensorStore::open_dir(o.in) : TensorStore::open_files({o.in});
  if (!store.ok()) return store.status();
  const fs::path config_path = in_dir / "config.json";
  GPTOSS_ASSIGN_OR_RETURN(std::string config_text, read_text(config_path));
  GPTOSS_ASSIGN_OR_RETURN(Config config, config_from_json_text(config_text, config_path.string()));
  GPTOSS_ASSIGN_OR_RETURN(std::vector<Item> plan, make_plan(**store, config));
  GPTOSS_RETURN_IF_ERROR(check_output_dir(o, in_dir));

  const auto t0 = std::chrono::steady_clock::now();
  ThreadPool pool(o.threads);
  GPTOSS_RETURN_IF_ERROR(write_checkpoint(plan, o, pool, (*store)->total_bytes()));
  GPTOSS_RETURN_IF_ERROR(write_config(config_text, config_path, o.out));
  for (const char* side : {"generation_config.json", "tokenizer.json", "tokenizer_config.json",
                           "special_tokens_map.json", "chat_template.jinja"}) {
    if (fs::is_regular_file(in_dir / side, ec)) {
      fs::copy_file(in_dir / side, fs::path(o.out) / side, fs::copy_options::overwrite_existing, ec);
      if (ec) return make_error(ErrorCode::kIo, "cannot copy {}: {}", (in_dir / side).string(), ec.message());
    }
  }
  size_t quantized = 0, out_bytes = 0;
  for (const Item& it : plan) {
    quantized += it.action == Action::kQuantize;
    out_bytes += it.out_bytes;
  }
  std::fprintf(stderr, "converted %zu tensors (%zu expert matrices to MXFP4) into %s: %s in %.2f s\n", plan.size(),
               quantized, o.out.c_str(), format_bytes(out_bytes).c_str(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  *failed_tensors = o.validate ? print_validation(plan) : 0;
  return {};
}

int convert_main(int argc, char** argv) {
  CLI::App app{"Quantize unquantized expert weights (HF dequantized layout) to the official MXFP4 checkpoint.",
               "gptoss convert"};
  Options o;
  app.add_option("--in", o.in, "checkpoint folder or .safetensors file (config.json beside it)")->required();
  app.add_option("--out", o.out, "output folder")->required();
  app.add_flag("--validate", o.validate, "print per-tensor errors against the source and a verdict");
  app.add_flag("--force", o.force, "replace a checkpoint already in --out");
  app.add_option("--shard-gb", o.shard_gb, "largest output shard in GB (default 4)")->check(positive_number());
  app.add_option("--threads", o.threads, "threads (0 = all cores)")->check(non_negative_number());
  if (auto code = parse_flags(app, argc, argv, kName)) return *code;
  int failed = 0;
  if (Status st = convert(o, &failed); !st.ok()) return report_error(kName, st);
  if (failed > 0) {
    return report_error(kName,
                        make_error(ErrorCode::kInternal, "validation failed: {} tensors exceed their bound", failed));
  }
  return 0;
}

}  // namespace

GPTOSS_COMMAND("convert", "quantize unquantized experts to an MXFP4 checkpoint (--validate reports errors)",
               convert_main);

}  // namespace gptoss::cli
