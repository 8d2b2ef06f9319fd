// TensorStore: the tensors of a checkpoint folder (single file, index-sharded or globbed shards).
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "io/safetensors.h"

namespace gptoss {

namespace fs = std::filesystem;
using nlohmann::json;

const TensorView* TensorStore::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, view] : index_) out.push_back(name);
  return out;
}

size_t TensorStore::total_bytes() const {
  size_t n = 0;
  for (const auto& [name, view] : index_) n += view->nbytes;
  return n;
}

Status TensorStore::add_file(std::unique_ptr<SafetensorsFile> f) {
  for (const auto& [name, view] : f->tensors()) {
    auto [it, inserted] = index_.emplace(name, &view);
    if (!inserted)
      return make_error(ErrorCode::kFormat, "tensor '{}' appears in two files: {} and {}", name, it->second->file,
                        f->path());
  }
  files_.push_back(std::move(f));
  return {};
}

Result<std::unique_ptr<TensorStore>> TensorStore::open_files(const std::vector<std::string>& files) {
  std::unique_ptr<TensorStore> store(new TensorStore());
  for (const auto& path : files) {
    GPTOSS_ASSIGN_OR_RETURN(auto f, SafetensorsFile::open(path));
    GPTOSS_RETURN_IF_ERROR(store->add_file(std::move(f)));
  }
  return store;
}

namespace {

// Opens the shards named by model.safetensors.index.json and checks the index against them.
Result<std::unique_ptr<TensorStore>> open_indexed(const fs::path& dir, const fs::path& index_path) {
  const std::string ipath = index_path.string();
  std::ifstream in(index_path);
  if (!in) return make_error(ErrorCode::kIo, "{}: cannot read", ipath);
  std::stringstream ss;
  ss << in.rdbuf();
  const json index = json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded() || !index.is_object()) return make_error(ErrorCode::kFormat, "{}: not a JSON object", ipath);
  auto wm = index.find("weight_map");
  if (wm == index.end() || !wm->is_object())
    return make_error(ErrorCode::kFormat, "{}: missing 'weight_map' object", ipath);
  std::vector<std::string> shards;
  for (const auto& [name, file] : wm->items()) {
    if (!file.is_string())
      return make_error(ErrorCode::kFormat, "{}: weight_map entry for '{}' is not a file name", ipath, name);
    const std::string fname = file.get<std::string>();
    // Shard names are plain file names inside the folder; anything else could escape it.
    if (fname.empty() || fname.find('/') != std::string::npos || fname == "." || fname == "..")
      return make_error(ErrorCode::kFormat, "{}: weight_map entry for '{}' names an invalid file '{}'", ipath, name,
                        fname);
    if (std::find(shards.begin(), shards.end(), fname) == shards.end()) shards.push_back(fname);
  }
  if (shards.empty()) return make_error(ErrorCode::kFormat, "{}: weight_map is empty", ipath);
  std::sort(shards.begin(), shards.end());
  std::vector<std::string> paths;
  for (const auto& s : shards) {
    const fs::path p = dir / s;
    if (!fs::exists(p))
      return make_error(ErrorCode::kNotFound, "{}: listed shard {} does not exist", ipath, p.string());
    paths.push_back(p.string());
  }
  GPTOSS_ASSIGN_OR_RETURN(auto store, TensorStore::open_files(paths));
  for (const auto& [name, file] : wm->items()) {
    const TensorView* v = store->find(name);
    const std::string want = (dir / file.get<std::string>()).string();
    if (!v)
      return make_error(ErrorCode::kNotFound, "{}: tensor '{}' is mapped to {} but not found there", ipath, name, want);
    if (v->file != want)
      return make_error(ErrorCode::kFormat, "{}: tensor '{}' is mapped to {} but is stored in {}", ipath, name, want,
                        v->file);
  }
  return store;
}

}  // namespace

Result<std::unique_ptr<TensorStore>> TensorStore::open_dir(const std::string& dir_str) {
  const fs::path dir(dir_str);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return make_error(ErrorCode::kNotFound, "{}: not a directory", dir_str);
  if (fs::exists(dir / "model.safetensors")) return open_files({(dir / "model.safetensors").string()});
  if (fs::exists(dir / "model.safetensors.index.json")) return open_indexed(dir, dir / "model.safetensors.index.json");
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.path().extension() == ".safetensors") files.push_back(entry.path().string());
  }
  if (ec) return make_error(ErrorCode::kIo, "{}: cannot list: {}", dir_str, ec.message());
  if (files.empty()) return make_error(ErrorCode::kNotFound, "{}: no *.safetensors files", dir_str);
  std::sort(files.begin(), files.end());
  return open_files(files);
}

}  // namespace gptoss
