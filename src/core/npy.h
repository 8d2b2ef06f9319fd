// Minimal .npy (NumPy format v1/v2) reader and writer for float32/int32 C-order arrays.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace gptoss {

struct NpyArray {
  std::string descr;  // "<f4" or "<i4"
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;  // raw little-endian bytes
  int64_t numel() const;
  std::vector<float> as_f32() const;    // requires descr "<f4"
  std::vector<int32_t> as_i32() const;  // accepts "<i4" or "<i8" (narrowed)
};

Result<NpyArray> npy_read(const std::string& path);
Status npy_write_f32(const std::string& path, const float* data, const std::vector<int64_t>& shape);

}  // namespace gptoss
