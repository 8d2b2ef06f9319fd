// SafetensorsFile: write → read round trips, and every malformed-header case rejected with an
// error that names the file (and the tensor, where one is involved).
#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <vector>

#include "io/safetensors.h"
#include "io/test_util.h"

namespace gptoss {
namespace {

using testing::TempDir;
using testing::write_raw_safetensors;

TEST(Safetensors, RoundTripManyDtypesAndShapes) {
  TempDir dir;
  std::vector<uint16_t> bf16(2 * 3);
  std::iota(bf16.begin(), bf16.end(), 0x3f80);
  std::vector<uint8_t> u8(4 * 2 * 16);
  std::iota(u8.begin(), u8.end(), 0);
  const float scalar = 3.5f;
  std::vector<uint16_t> f16 = {1, 2, 3, 4, 5};  // 10 bytes: the next tensor starts unaligned
  std::vector<int32_t> i32 = {-7, 1 << 30, 0};
  const std::vector<TensorToWrite> tensors = {
      {"w.bf16", DType::kBF16, {2, 3}, bf16.data(), bf16.size() * 2},
      {"blocks", DType::kU8, {4, 2, 16}, u8.data(), u8.size()},
      {"scalar", DType::kF32, {}, &scalar, 4},
      {"empty", DType::kI32, {0, 5}, nullptr, 0},
      {"half", DType::kF16, {5}, f16.data(), 10},
      {"ints", DType::kI32, {3}, i32.data(), 12},
  };
  const std::string path = dir.file("m.safetensors");
  ASSERT_TRUE(safetensors_write(path, tensors, {{"format", "pt"}, {"note", "x y"}}).ok());
  auto f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ((*f)->path(), path);
  EXPECT_EQ((*f)->tensors().size(), tensors.size());
  EXPECT_EQ((*f)->metadata().at("format"), "pt");
  EXPECT_EQ((*f)->metadata().at("note"), "x y");
  for (const auto& t : tensors) {
    const TensorView* v = (*f)->find(t.name);
    ASSERT_NE(v, nullptr) << t.name;
    EXPECT_EQ(v->name, t.name);
    EXPECT_EQ(v->dtype, t.dtype);
    EXPECT_EQ(v->shape, t.shape);
    EXPECT_EQ(v->nbytes, t.nbytes);
    EXPECT_EQ(v->file, path);
    if (t.nbytes) {
      EXPECT_EQ(std::memcmp(v->data, t.data, t.nbytes), 0) << t.name;
    }
  }
  EXPECT_EQ((*f)->find("w.bf16")->shape_str(), "[2, 3]");
  EXPECT_EQ((*f)->find("scalar")->numel(), 1);
  EXPECT_EQ((*f)->find("empty")->numel(), 0);
  EXPECT_EQ((*f)->find("missing"), nullptr);
  // The header is padded so the data area starts 8-byte aligned.
  std::ifstream in(path, std::ios::binary);
  uint64_t hlen = 0;
  in.read(reinterpret_cast<char*>(&hlen), 8);
  EXPECT_EQ(hlen % 8, 0u);
}

TEST(Safetensors, WriteRejectsInconsistentInput) {
  TempDir dir;
  uint8_t buf[8] = {};
  auto st = safetensors_write(dir.file("a.safetensors"), {{"t", DType::kBF16, {3}, buf, 4}});
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("'t'"), std::string::npos);
  st = safetensors_write(dir.file("b.safetensors"), {{"t", DType::kU8, {1}, buf, 1}, {"t", DType::kU8, {1}, buf, 1}});
  EXPECT_FALSE(st.ok());
  st = safetensors_write(dir.file("c.safetensors"), {{"__metadata__", DType::kU8, {1}, buf, 1}});
  EXPECT_FALSE(st.ok());
  st = safetensors_write(dir.file("no/such/dir/d.safetensors"), {{"t", DType::kU8, {1}, buf, 1}});
  EXPECT_EQ(st.code(), ErrorCode::kIo);
}

struct BadCase {
  const char* label;
  std::string header;
  size_t data_bytes;
  const char* expect_in_message;  // besides the path; the tensor name where one is involved
};

TEST(Safetensors, EveryMalformedHeaderIsAnErrorNamingFileAndTensor) {
  const std::string ok_entry = R"("a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]})";
  const std::vector<BadCase> cases = {
      {"not json", "{\"a\": ", 0, "not valid JSON"},
      {"not an object", "[1, 2, 3]", 0, "not a JSON object"},
      {"string header", "\"hello\"", 0, "not a JSON object"},
      {"entry not object", R"({"t": [1]})", 0, "'t'"},
      {"missing dtype", R"({"t": {"shape": [1], "data_offsets": [0, 1]}})", 1, "'t'"},
      {"unknown dtype", R"({"t": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}})", 8, "'t'"},
      {"lowercase dtype", R"({"t": {"dtype": "bf16", "shape": [1], "data_offsets": [0, 2]}})", 2, "'t'"},
      {"shape not list", R"({"t": {"dtype": "U8", "shape": 4, "data_offsets": [0, 4]}})", 4, "'t'"},
      {"negative dim", R"({"t": {"dtype": "U8", "shape": [-1, 4], "data_offsets": [0, 4]}})", 4, "'t'"},
      {"float dim", R"({"t": {"dtype": "U8", "shape": [2.5], "data_offsets": [0, 2]}})", 2, "'t'"},
      {"string dim", R"({"t": {"dtype": "U8", "shape": ["4"], "data_offsets": [0, 4]}})", 4, "'t'"},
      {"missing offsets", R"({"t": {"dtype": "U8", "shape": [4]}})", 4, "'t'"},
      {"one offset", R"({"t": {"dtype": "U8", "shape": [4], "data_offsets": [4]}})", 4, "'t'"},
      {"three offsets", R"({"t": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4, 8]}})", 8, "'t'"},
      {"negative offset", R"({"t": {"dtype": "U8", "shape": [4], "data_offsets": [-4, 0]}})", 4, "'t'"},
      {"string offsets", R"({"t": {"dtype": "U8", "shape": [4], "data_offsets": ["0", "4"]}})", 4, "'t'"},
      {"begin after end", R"({"t": {"dtype": "U8", "shape": [0], "data_offsets": [4, 0]}})", 4, "'t'"},
      {"end past data", R"({"t": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}})", 7, "'t'"},
      {"size mismatch", R"({"t": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 4]}})", 4, "'t'"},
      {"numel overflow", R"({"t": {"dtype": "BF16", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 0]}})",
       0, "'t'"},
      {"overlap", "{" + ok_entry + R"(, "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}})", 8, "'b'"},
      {"metadata not object", R"({"__metadata__": ["x"]})", 0, "__metadata__"},
      {"metadata non-string", R"({"__metadata__": {"format": 1}})", 0, "'format'"},
  };
  TempDir dir;
  int k = 0;
  for (const BadCase& c : cases) {
    const std::string path = dir.file("bad" + std::to_string(k++) + ".safetensors");
    write_raw_safetensors(path, c.header, c.data_bytes);
    auto f = SafetensorsFile::open(path);
    ASSERT_FALSE(f.ok()) << c.label;
    EXPECT_EQ(f.status().code(), ErrorCode::kFormat) << c.label;
    EXPECT_NE(f.status().message().find(path), std::string::npos) << c.label << ": " << f.status().message();
    EXPECT_NE(f.status().message().find(c.expect_in_message), std::string::npos)
        << c.label << ": " << f.status().message();
  }
}

TEST(Safetensors, TruncatedFilesAreErrors) {
  TempDir dir;
  for (size_t n : {0, 1, 7}) {
    const std::string path = dir.file("short" + std::to_string(n));
    std::ofstream(path, std::ios::binary) << std::string(n, '\x01');
    auto f = SafetensorsFile::open(path);
    ASSERT_FALSE(f.ok()) << n;
    EXPECT_NE(f.status().message().find(path), std::string::npos);
    EXPECT_NE(f.status().message().find("8-byte"), std::string::npos) << f.status().message();
  }
  // Header length pointing past the end (a file cut short while downloading), and an absurd one.
  const std::string header = R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}})";
  for (uint64_t len : {uint64_t{header.size() + 5}, uint64_t{1} << 62, UINT64_MAX - 1}) {
    const std::string path = dir.file("cut.safetensors");
    write_raw_safetensors(path, header, 4, len);
    auto f = SafetensorsFile::open(path);
    ASSERT_FALSE(f.ok()) << len;
    EXPECT_NE(f.status().message().find("header length"), std::string::npos) << f.status().message();
  }
  // Data area cut short: the entry's end offset now lies past the data.
  const std::string path = dir.file("cutdata.safetensors");
  write_raw_safetensors(path, header, 3);
  auto f = SafetensorsFile::open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("'a'"), std::string::npos);
}

TEST(Safetensors, AcceptsEdgeCasesTheFormatAllows) {
  TempDir dir;
  // Empty header object, padding spaces, zero-size tensors sharing an offset, unordered offsets.
  const std::string header =
      R"({"z": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}, "y": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},)"
      R"( "e1": {"dtype": "F32", "shape": [0], "data_offsets": [2, 2]}, "e2": {"dtype": "BF16", "shape": [3, 0], "data_offsets": [2, 2]}}   )";
  write_raw_safetensors(dir.file("ok.safetensors"), header, 4);
  auto f = SafetensorsFile::open(dir.file("ok.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ((*f)->tensors().size(), 4u);
  EXPECT_EQ((*f)->find("z")->data[0], 2);
  EXPECT_EQ((*f)->find("y")->data[1], 1);
  write_raw_safetensors(dir.file("empty.safetensors"), "{}", 0);
  auto e = SafetensorsFile::open(dir.file("empty.safetensors"));
  ASSERT_TRUE(e.ok());
  EXPECT_TRUE((*e)->tensors().empty());
}

TEST(MappedFile, MissingDirectoryAndEmptyFiles) {
  TempDir dir;
  auto m = MappedFile::open(dir.file("nope"));
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), ErrorCode::kNotFound);
  EXPECT_NE(m.status().message().find(dir.file("nope")), std::string::npos);
  EXPECT_FALSE(MappedFile::open(dir.str()).ok());
  std::ofstream(dir.file("empty")).close();
  auto e = MappedFile::open(dir.file("empty"));
  ASSERT_TRUE(e.ok());
  EXPECT_EQ((*e)->size(), 0u);
  std::ofstream(dir.file("four")) << "abcd";
  auto four = MappedFile::open(dir.file("four"));
  ASSERT_TRUE(four.ok());
  ASSERT_EQ((*four)->size(), 4u);
  EXPECT_EQ(std::memcmp((*four)->data(), "abcd", 4), 0);
}

}  // namespace
}  // namespace gptoss
