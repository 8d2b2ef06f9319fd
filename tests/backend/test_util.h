// Helpers shared by the CPU backend tests: fixture discovery, golden loading, error metrics and
// small drivers that run token sequences through a Backend.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/weights.h"

namespace gptoss::testing {

// Every folder under GPTOSS_FIXTURES that holds golden/logits.npy, sorted by name.
std::vector<std::string> golden_fixture_dirs();
// The folder name, made safe for a gtest parameter name (letters, digits, '_').
std::string fixture_test_name(const std::string& dir);

struct Golden {
  std::vector<int32_t> tokens;  // prompt + greedy continuation
  std::vector<float> logits;    // [tokens.size(), vocab]
  int64_t prompt_len = 0, n_new = 0, vocab = 0;
};
// Loads DIR/golden/{tokens,logits}.npy and meta.json; asserts (gtest) on malformed files.
Golden load_golden(const std::string& dir);

// ‖a − b‖ / ‖b‖ over n values (double accumulation).
double rel_l2(const float* a, const float* b, int64_t n);

// Largest minus second largest value of row [vocab].
float top2_margin(const float* row, int64_t vocab);

// Comparisons with an fp16 KV cache (gtest). The keys and values of two runs (CPU and GPU, two
// chunkings, or the golden's f32) differ by ~1e-6 before rounding, so a few land on the other side
// of an fp16 rounding boundary; in a random model such a flip can move a router near-tie at one
// position and change a few rows by O(0.1) (measured on the CPU by perturbing its keys and values
// by 1e-6 relative before the rounding: 2 of pub-b's 320 rows moved by > 1e-2, the others by
// ≤ 9e-4; an f32 cache moved by 3e-6). So: at most max(2, 2 %) of got's rows [n, vocab] beyond
// row_tol of ref's, and in every other row the argmax agrees wherever ref's top-2 margin exceeds
// `margin`.
void expect_close_f16(const std::vector<float>& got, const std::vector<float>& ref, int64_t vocab, double row_tol,
                      float margin, const std::string& what);

// Backend options sized for sequences of up to `context` tokens.
BackendOptions test_options(int64_t context, int slots = 1, int threads = 2);

// Feeds `tokens` to `slot` starting at `pos` in chunks of the given sizes (cycled; the last chunk
// is cut to fit) and returns the logits of every fed position [n, vocab]. Asserts on errors.
std::vector<float> run_chunks(Backend& backend, int slot, int64_t pos, const std::vector<int32_t>& tokens,
                              const std::vector<int64_t>& chunk_sizes, int64_t vocab);

// One pass over `tokens` from position 0 in a fresh slot 0 of a new backend; [n, vocab].
std::vector<float> one_pass_logits(std::shared_ptr<const Model> model, const std::vector<int32_t>& tokens,
                                   int threads = 2);

}  // namespace gptoss::testing
