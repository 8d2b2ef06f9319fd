// Shared helpers for the tokenizer/harmony tests: the real o200k_harmony tokenizer (loaded once per
// test binary; a missing file fails the test, it never skips) and file utilities.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace tok_test {

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The real tokenizer, or nullptr (with the load error in *error) when it cannot be loaded.
inline const gptoss::Tokenizer* real_tokenizer(std::string* error = nullptr) {
  static std::string load_error;
  static std::unique_ptr<gptoss::Tokenizer> tok = [] {
    auto r = gptoss::Tokenizer::load(GPTOSS_TOKENIZER);
    if (!r.ok()) {
      load_error = r.status().message();
      return std::unique_ptr<gptoss::Tokenizer>();
    }
    return std::move(r).value();
  }();
  if (error) *error = load_error;
  return tok.get();
}

inline std::string ids_text(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(ids[i]);
  }
  s += ']';
  return s;
}

}  // namespace tok_test

// Declares `const gptoss::Tokenizer* NAME` and fails the test (never skips) when
// assets/tokenizer.json is missing or broken: scripts/setup fetches it.
#define REQUIRE_TOKENIZER(NAME)                                                          \
  std::string NAME##_error;                                                              \
  const gptoss::Tokenizer* NAME = tok_test::real_tokenizer(&NAME##_error);               \
  ASSERT_NE(NAME, nullptr) << "cannot load " << GPTOSS_TOKENIZER << " (" << NAME##_error \
                           << "); run scripts/setup to fetch the o200k_harmony tokenizer.json"
