// Helpers for io tests: a per-test temporary folder and raw safetensors files with any header.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

namespace gptoss::testing {

// A fresh folder named after the running test, removed when the object goes away.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::temp_directory_path() /
            ("gptoss_" + std::string(info->test_suite_name()) + "_" + info->name() + "_" + std::to_string(::getpid()));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::string& str() const { return s_ = path_.string(); }

 private:
  std::filesystem::path path_;
  mutable std::string s_;
};

// Writes a safetensors file byte by byte: u64 LE header length, `header`, then `data_bytes`
// bytes of payload (value i & 0xff at offset i).
inline void write_raw_safetensors(const std::string& path, const std::string& header, size_t data_bytes,
                                  uint64_t header_len_override = UINT64_MAX) {
  std::ofstream f(path, std::ios::binary);
  const uint64_t len = header_len_override == UINT64_MAX ? header.size() : header_len_override;
  for (int i = 0; i < 8; ++i) f.put(static_cast<char>((len >> (8 * i)) & 0xff));
  f << header;
  for (size_t i = 0; i < data_bytes; ++i) f.put(static_cast<char>(i & 0xff));
}

inline void write_text_file(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

}  // namespace gptoss::testing
