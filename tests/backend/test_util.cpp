// Helpers shared by the CPU backend tests (see test_util.h).
#include "test_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <span>

#include "backend/cpu/ops.h"
#include "core/npy.h"

namespace gptoss::testing {

std::vector<std::string> golden_fixture_dirs() {
  namespace fs = std::filesystem;
  std::vector<std::string> dirs;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(GPTOSS_FIXTURES, ec)) {
    if (entry.is_directory() && fs::exists(entry.path() / "golden" / "logits.npy"))
      dirs.push_back(entry.path().string());
  }
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

std::string fixture_test_name(const std::string& dir) {
  std::string name = std::filesystem::path(dir).filename().string();
  for (char& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return name;
}

Golden load_golden(const std::string& dir) {
  Golden g;
  auto tokens = npy_read(dir + "/golden/tokens.npy");
  auto logits = npy_read(dir + "/golden/logits.npy");
  EXPECT_TRUE(tokens.ok()) << tokens.status().to_string();
  EXPECT_TRUE(logits.ok()) << logits.status().to_string();
  if (!tokens.ok() || !logits.ok()) return g;
  g.tokens = tokens->as_i32();
  g.logits = logits->as_f32();
  EXPECT_EQ(logits->shape.size(), 2u);
  EXPECT_EQ(logits->shape[0], static_cast<int64_t>(g.tokens.size()));
  g.vocab = logits->shape.size() == 2 ? logits->shape[1] : 0;
  std::ifstream meta(dir + "/golden/meta.json");
  const nlohmann::json j = nlohmann::json::parse(meta);
  g.prompt_len = j.at("prompt_len").get<int64_t>();
  g.n_new = j.at("new").get<int64_t>();
  EXPECT_EQ(g.prompt_len + g.n_new, static_cast<int64_t>(g.tokens.size()));
  return g;
}

double rel_l2(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

float top2_margin(const float* row, int64_t vocab) {
  float a = -INFINITY, b = -INFINITY;
  for (int64_t i = 0; i < vocab; ++i) {
    if (row[i] > a)
      b = a, a = row[i];
    else if (row[i] > b)
      b = row[i];
  }
  return a - b;
}

void expect_close_f16(const std::vector<float>& got, const std::vector<float>& ref, int64_t vocab, double row_tol,
                      float margin, const std::string& what) {
  ASSERT_EQ(got.size(), ref.size());
  const size_t rows = ref.size() / static_cast<size_t>(vocab);
  size_t off = 0;
  double worst = 0;
  for (size_t r = 0; r < rows; ++r) {
    const float* g = &got[r * vocab];
    const float* w = &ref[r * vocab];
    const double e = rel_l2(g, w, vocab);
    worst = std::max(worst, e);
    if (e > row_tol) {
      ++off;
      continue;
    }
    if (top2_margin(w, vocab) > margin) {
      EXPECT_EQ(cpu::argmax(g, vocab), cpu::argmax(w, vocab)) << what << " row " << r;
    }
  }
  EXPECT_LE(off, std::max<size_t>(2, rows / 50)) << what << ": rows beyond " << row_tol << " (worst " << worst << ")";
}

BackendOptions test_options(int64_t context, int slots, int threads) {
  BackendOptions o;
  o.kind = "cpu";
  o.threads = threads;
  o.max_slots = slots;
  o.max_context = context;
  o.rollback = 64;
  o.max_batch_tokens = std::max<int64_t>(context * slots, 1);
  return o;
}

std::vector<float> run_chunks(Backend& backend, int slot, int64_t pos, const std::vector<int32_t>& tokens,
                              const std::vector<int64_t>& chunk_sizes, int64_t vocab) {
  std::vector<float> out(tokens.size() * static_cast<size_t>(vocab));
  size_t done = 0, k = 0;
  while (done < tokens.size()) {
    const size_t len =
        std::min<size_t>(static_cast<size_t>(chunk_sizes[k++ % chunk_sizes.size()]), tokens.size() - done);
    SeqBatch seq;
    seq.slot = slot;
    seq.pos = pos + static_cast<int64_t>(done);
    seq.tokens = std::span<const int32_t>(tokens.data() + done, len);
    seq.all_logits = true;
    StepOutputs o;
    o.logits = out.data() + done * static_cast<size_t>(vocab);
    const Status st = backend.forward(std::span<const SeqBatch>(&seq, 1), o);
    EXPECT_TRUE(st.ok()) << st.to_string();
    if (!st.ok()) break;
    done += len;
  }
  return out;
}

std::vector<float> one_pass_logits(std::shared_ptr<const Model> model, const std::vector<int32_t>& tokens,
                                   int threads) {
  const int64_t vocab = model->config().vocab_size;
  auto backend = backend_create(model, test_options(static_cast<int64_t>(tokens.size()), 1, threads));
  EXPECT_TRUE(backend.ok()) << backend.status().to_string();
  if (!backend.ok()) return {};
  return run_chunks(**backend, 0, 0, tokens, {static_cast<int64_t>(tokens.size())}, vocab);
}

}  // namespace gptoss::testing
