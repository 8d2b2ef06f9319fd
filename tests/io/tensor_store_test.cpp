// TensorStore: single file, index-sharded folders (good, missing shard, wrong shard, unknown tensor,
// malformed index), globbed shards, and duplicate tensor names across files.
#include <gtest/gtest.h>

#include <vector>

#include "io/safetensors.h"
#include "io/test_util.h"

namespace gptoss {
namespace {

using testing::TempDir;
using testing::write_text_file;

// Writes `names` as U8 tensors of 3 bytes each (value = the name's first character).
void write_shard(const std::string& path, const std::vector<std::string>& names) {
  static std::vector<std::vector<uint8_t>> keep;  // data must outlive the write call only
  std::vector<TensorToWrite> ts;
  keep.clear();
  for (const auto& n : names) keep.push_back(std::vector<uint8_t>(3, static_cast<uint8_t>(n[0])));
  for (size_t i = 0; i < names.size(); ++i) ts.push_back({names[i], DType::kU8, {3}, keep[i].data(), 3});
  ASSERT_TRUE(safetensors_write(path, ts).ok());
}

const char* kIndex = R"({"metadata": {"total_size": 12}, "weight_map": {
  "alpha": "model-00000-of-00001.safetensors", "beta": "model-00000-of-00001.safetensors",
  "gamma": "model-00001-of-00001.safetensors", "delta": "model-00001-of-00001.safetensors"}})";

TEST(TensorStore, SingleFile) {
  TempDir dir;
  write_shard(dir.file("model.safetensors"), {"alpha", "beta"});
  // Stray shards next to model.safetensors are not read (the single file wins).
  write_shard(dir.file("other.safetensors"), {"alpha"});
  auto s = TensorStore::open_dir(dir.str());
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  EXPECT_EQ((*s)->names(), (std::vector<std::string>{"alpha", "beta"}));
  EXPECT_EQ((*s)->total_bytes(), 6u);
  EXPECT_EQ((*s)->files().size(), 1u);
  ASSERT_NE((*s)->find("beta"), nullptr);
  EXPECT_EQ((*s)->find("beta")->data[0], 'b');
  EXPECT_EQ((*s)->find("gamma"), nullptr);
}

TEST(TensorStore, ShardedIndex) {
  TempDir dir;
  write_shard(dir.file("model-00000-of-00001.safetensors"), {"alpha", "beta"});
  write_shard(dir.file("model-00001-of-00001.safetensors"), {"gamma", "delta"});
  write_text_file(dir.file("model.safetensors.index.json"), kIndex);
  auto s = TensorStore::open_dir(dir.str());
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  EXPECT_EQ((*s)->names().size(), 4u);
  EXPECT_EQ((*s)->total_bytes(), 12u);
  EXPECT_EQ((*s)->files().size(), 2u);
  EXPECT_EQ((*s)->find("delta")->file, dir.file("model-00001-of-00001.safetensors"));
  EXPECT_EQ((*s)->find("gamma")->data[2], 'g');
}

TEST(TensorStore, IndexNamesAMissingShard) {
  TempDir dir;
  write_shard(dir.file("model-00000-of-00001.safetensors"), {"alpha", "beta"});
  write_text_file(dir.file("model.safetensors.index.json"), kIndex);
  auto s = TensorStore::open_dir(dir.str());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), ErrorCode::kNotFound);
  EXPECT_NE(s.status().message().find("model-00001-of-00001.safetensors"), std::string::npos) << s.status().message();
}

TEST(TensorStore, TensorStoredInAnotherShardThanTheIndexSays) {
  TempDir dir;
  write_shard(dir.file("model-00000-of-00001.safetensors"), {"alpha", "beta", "gamma"});
  write_shard(dir.file("model-00001-of-00001.safetensors"), {"delta"});
  write_text_file(dir.file("model.safetensors.index.json"), kIndex);
  auto s = TensorStore::open_dir(dir.str());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("'gamma'"), std::string::npos) << s.status().message();
}

TEST(TensorStore, TensorInTheIndexButInNoShard) {
  TempDir dir;
  write_shard(dir.file("model-00000-of-00001.safetensors"), {"alpha", "beta"});
  write_shard(dir.file("model-00001-of-00001.safetensors"), {"gamma"});
  write_text_file(dir.file("model.safetensors.index.json"), kIndex);
  auto s = TensorStore::open_dir(dir.str());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("'delta'"), std::string::npos) << s.status().message();
}

TEST(TensorStore, DuplicateTensorAcrossShardsIsAnError) {
  TempDir dir;
  write_shard(dir.file("model-00000-of-00001.safetensors"), {"alpha", "beta"});
  write_shard(dir.file("model-00001-of-00001.safetensors"), {"gamma", "delta", "alpha"});
  write_text_file(dir.file("model.safetensors.index.json"), kIndex);
  auto s = TensorStore::open_dir(dir.str());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("'alpha'"), std::string::npos) << s.status().message();
  EXPECT_NE(s.status().message().find("two files"), std::string::npos) << s.status().message();
}

TEST(TensorStore, MalformedIndexes) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"not json {", "not a JSON object"},
      {R"({"metadata": {}})", "weight_map"},
      {R"({"weight_map": []})", "weight_map"},
      {R"({"weight_map": {}})", "empty"},
      {R"({"weight_map": {"alpha": 3}})", "'alpha'"},
      {R"({"weight_map": {"alpha": "../model-00000-of-00001.safetensors"}})", "'alpha'"},
  };
  for (const auto& [text, expect] : cases) {
    TempDir dir;
    write_shard(dir.file("model-00000-of-00001.safetensors"), {"alpha"});
    write_text_file(dir.file("model.safetensors.index.json"), text);
    auto s = TensorStore::open_dir(dir.str());
    ASSERT_FALSE(s.ok()) << text;
    EXPECT_NE(s.status().message().find("model.safetensors.index.json"), std::string::npos) << s.status().message();
    EXPECT_NE(s.status().message().find(expect), std::string::npos) << s.status().message();
  }
}

TEST(TensorStore, GlobsAllShardsWithoutIndexAndRejectsDuplicates) {
  TempDir dir;
  write_shard(dir.file("b.safetensors"), {"gamma"});
  write_shard(dir.file("a.safetensors"), {"alpha", "beta"});
  write_text_file(dir.file("notes.txt"), "ignored");
  auto s = TensorStore::open_dir(dir.str());
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  EXPECT_EQ((*s)->names(), (std::vector<std::string>{"alpha", "beta", "gamma"}));
  write_shard(dir.file("c.safetensors"), {"beta"});
  s = TensorStore::open_dir(dir.str());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("'beta'"), std::string::npos);
  EXPECT_NE(s.status().message().find(dir.file("a.safetensors")), std::string::npos) << s.status().message();
  EXPECT_NE(s.status().message().find(dir.file("c.safetensors")), std::string::npos) << s.status().message();
}

TEST(TensorStore, EmptyOrMissingFolderAndBadShard) {
  TempDir dir;
  auto s = TensorStore::open_dir(dir.str());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), ErrorCode::kNotFound);
  EXPECT_NE(s.status().message().find(dir.str()), std::string::npos);
  s = TensorStore::open_dir(dir.file("missing"));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), ErrorCode::kNotFound);
  // A corrupt file anywhere fails the whole folder with that file's name.
  testing::write_raw_safetensors(dir.file("model.safetensors"), "{oops", 0);
  s = TensorStore::open_dir(dir.str());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), ErrorCode::kFormat);
  EXPECT_NE(s.status().message().find(dir.file("model.safetensors")), std::string::npos);
}

TEST(TensorStore, OpenFilesExplicitList) {
  TempDir dir;
  write_shard(dir.file("x.safetensors"), {"alpha"});
  write_shard(dir.file("y.safetensors"), {"beta"});
  auto s = TensorStore::open_files({dir.file("y.safetensors"), dir.file("x.safetensors")});
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)->names().size(), 2u);
  auto dup = TensorStore::open_files({dir.file("x.safetensors"), dir.file("x.safetensors")});
  EXPECT_FALSE(dup.ok());
}

}  // namespace
}  // namespace gptoss
