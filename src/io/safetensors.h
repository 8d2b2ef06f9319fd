// safetensors reading (mmap, strict header validation, single file or sharded via
// model.safetensors.index.json) and writing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"

namespace gptoss {

// Read-only memory mapping of a whole file (RAII). madvise/mlock failures are not errors.
class MappedFile {
 public:
  static Result<std::shared_ptr<MappedFile>> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// One tensor inside a mapped file: a non-owning view (the file stays mapped while the
// SafetensorsFile / TensorStore that produced it lives).
struct TensorView {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  std::string file;  // path of the file holding it (for error messages)

  int64_t numel() const;
  std::string shape_str() const;  // "[2880, 4096]"
};

class SafetensorsFile {
 public:
  // Validates: 8-byte header length within the file, header is a JSON object, every entry has a
  // known dtype, shape and data_offsets, offsets inside the data area, no overlaps, and
  // numel × dtype size == end − begin. Errors name the file and the tensor.
  static Result<std::unique_ptr<SafetensorsFile>> open(const std::string& path);

  const std::string& path() const { return file_->path(); }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorView* find(const std::string& name) const;

 private:
  std::shared_ptr<MappedFile> file_;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a checkpoint folder: `model.safetensors`, or the shards listed in
// `model.safetensors.index.json` (every listed shard must exist and hold the tensors the index
// assigns to it), or, when neither exists, every `*.safetensors` in the folder. A tensor name
// appearing in two files is an error.
class TensorStore {
 public:
  static Result<std::unique_ptr<TensorStore>> open_dir(const std::string& dir);
  // Opens exactly these files (tests, tools).
  static Result<std::unique_ptr<TensorStore>> open_files(const std::vector<std::string>& files);

  const TensorView* find(const std::string& name) const;
  std::vector<std::string> names() const;
  size_t total_bytes() const;
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  Status add_file(std::unique_ptr<SafetensorsFile> f);
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> index_;
};

// A tensor to write: data is copied from `data` (nbytes must equal numel × dtype size).
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;
  size_t nbytes;
};

// Writes one safetensors file (tensors in the given order, 8-byte aligned header).
Status safetensors_write(const std::string& path, const std::vector<TensorToWrite>& tensors,
                         const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace gptoss
