// .npy reading and writing: round trips of many shapes, integer files, the fixture goldens, and
// malformed files reported as errors.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/npy.h"

namespace gptoss {
namespace {

namespace fs = std::filesystem;

std::string temp_path(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("gptoss_npy_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return (dir / name).string();
}

// A v1 .npy with an arbitrary descr/shape header and payload, padded like NumPy writes it.
void write_raw_npy(const std::string& path, const std::string& descr, const std::string& shape,
                   const std::vector<uint8_t>& payload) {
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  const char magic[8] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
  f.write(magic, 8);
  const uint16_t hl = static_cast<uint16_t>(header.size());
  f.write(reinterpret_cast<const char*>(&hl), 2);
  f << header;
  f.write(reinterpret_cast<const char*>(payload.data()), static_cast<std::streamsize>(payload.size()));
}

TEST(Npy, F32RoundTripManyShapes) {
  const std::vector<std::vector<int64_t>> shapes = {{}, {1}, {5}, {2, 3}, {1, 1, 7}, {3, 0}, {4, 129}};
  for (size_t k = 0; k < shapes.size(); ++k) {
    int64_t n = 1;
    for (int64_t d : shapes[k]) n *= d;
    std::vector<float> data(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) data[static_cast<size_t>(i)] = static_cast<float>(i) * 0.5f - 3.25f;
    const std::string path = temp_path("rt" + std::to_string(k) + ".npy");
    ASSERT_TRUE(npy_write_f32(path, data.data(), shapes[k]).ok());
    auto arr = npy_read(path);
    ASSERT_TRUE(arr.ok()) << arr.status().to_string();
    EXPECT_EQ(arr->descr, "<f4");
    EXPECT_EQ(arr->shape, shapes[k]);
    EXPECT_EQ(arr->numel(), n);
    EXPECT_EQ(arr->as_f32(), data);
    // NumPy requires the data to start on a 64-byte boundary (v1 header padding).
    EXPECT_EQ((fs::file_size(path) - static_cast<size_t>(n) * 4) % 64, 0u);
  }
}

TEST(Npy, ReadsInt32AndNarrowsInt64) {
  const std::vector<int32_t> v32 = {0, -1, 200002, 7};
  std::vector<uint8_t> p32(v32.size() * 4);
  std::memcpy(p32.data(), v32.data(), p32.size());
  write_raw_npy(temp_path("i4.npy"), "<i4", "(2, 2)", p32);
  auto a = npy_read(temp_path("i4.npy"));
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(a->as_i32(), v32);
  const std::vector<int64_t> v64 = {5, -9, 199999};
  std::vector<uint8_t> p64(v64.size() * 8);
  std::memcpy(p64.data(), v64.data(), p64.size());
  write_raw_npy(temp_path("i8.npy"), "<i8", "(3,)", p64);
  auto b = npy_read(temp_path("i8.npy"));
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  EXPECT_EQ(b->as_i32(), (std::vector<int32_t>{5, -9, 199999}));
}

TEST(Npy, ReadsFixtureGoldens) {
  auto tokens = npy_read(std::string(GPTOSS_FIXTURES) + "/pub-a/golden/tokens.npy");
  auto logits = npy_read(std::string(GPTOSS_FIXTURES) + "/pub-a/golden/logits.npy");
  ASSERT_TRUE(tokens.ok() && logits.ok());
  ASSERT_EQ(tokens->shape.size(), 1u);
  ASSERT_EQ(logits->shape.size(), 2u);
  EXPECT_EQ(logits->shape[0], tokens->shape[0]);
  EXPECT_EQ(logits->shape[1], 512);  // pub-a vocabulary
  for (int32_t t : tokens->as_i32()) {
    EXPECT_GE(t, 0);
    EXPECT_LT(t, 512);
  }
}

TEST(Npy, MalformedFilesAreErrorsNamingThePath) {
  const std::string missing = temp_path("does_not_exist.npy");
  auto r = npy_read(missing);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find(missing), std::string::npos);

  const std::string garbage = temp_path("garbage.npy");
  std::ofstream(garbage) << "this is not numpy";
  r = npy_read(garbage);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find(garbage), std::string::npos);

  const std::string truncated = temp_path("truncated.npy");
  write_raw_npy(truncated, "<f4", "(10,)", std::vector<uint8_t>(12));  // 3 of 10 floats
  r = npy_read(truncated);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("truncated"), std::string::npos);

  const std::string f64 = temp_path("f64.npy");
  write_raw_npy(f64, "<f8", "(1,)", std::vector<uint8_t>(8));
  r = npy_read(f64);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("<f8"), std::string::npos);
}

}  // namespace
}  // namespace gptoss
