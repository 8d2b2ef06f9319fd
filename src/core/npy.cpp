#include "core/npy.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>

namespace gptoss {

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::vector<float> NpyArray::as_f32() const {
  std::vector<float> out(static_cast<size_t>(numel()));
  if (descr == "<f4") std::memcpy(out.data(), data.data(), out.size() * 4);
  return out;
}

std::vector<int32_t> NpyArray::as_i32() const {
  std::vector<int32_t> out(static_cast<size_t>(numel()));
  if (descr == "<i4") {
    std::memcpy(out.data(), data.data(), out.size() * 4);
  } else if (descr == "<i8") {
    for (size_t i = 0; i < out.size(); ++i) {
      int64_t v;
      std::memcpy(&v, data.data() + i * 8, 8);
      out[i] = static_cast<int32_t>(v);
    }
  }
  return out;
}

Result<NpyArray> npy_read(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return make_error(ErrorCode::kNotFound, "{}: cannot open", path);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (bytes.size() < 10 || std::memcmp(bytes.data(), "\x93NUMPY", 6) != 0)
    return make_error(ErrorCode::kFormat, "{}: not a .npy file", path);
  const int major = bytes[6];
  size_t hlen, hstart;
  if (major == 1) {
    hlen = bytes[8] | (bytes[9] << 8);
    hstart = 10;
  } else {
    if (bytes.size() < 12) return make_error(ErrorCode::kFormat, "{}: truncated header", path);
    hlen = bytes[8] | (bytes[9] << 8) | (bytes[10] << 16) | (static_cast<size_t>(bytes[11]) << 24);
    hstart = 12;
  }
  if (hstart + hlen > bytes.size()) return make_error(ErrorCode::kFormat, "{}: truncated header", path);
  const std::string header(reinterpret_cast<const char*>(bytes.data() + hstart), hlen);
  NpyArray arr;
  auto field = [&](const char* key) -> std::string {
    auto p = header.find(key);
    if (p == std::string::npos) return {};
    p = header.find(':', p);
    return header.substr(p + 1);
  };
  std::string d = field("'descr'");
  auto q1 = d.find('\''), q2 = d.find('\'', q1 + 1);
  if (q1 == std::string::npos || q2 == std::string::npos) return make_error(ErrorCode::kFormat, "{}: no descr", path);
  arr.descr = d.substr(q1 + 1, q2 - q1 - 1);
  if (field("'fortran_order'").find("True") == 1) return make_error(ErrorCode::kFormat, "{}: fortran order", path);
  std::string s = field("'shape'");
  auto p1 = s.find('('), p2 = s.find(')');
  if (p1 == std::string::npos || p2 == std::string::npos) return make_error(ErrorCode::kFormat, "{}: no shape", path);
  std::string dims = s.substr(p1 + 1, p2 - p1 - 1);
  size_t pos = 0;
  while (pos < dims.size()) {
    while (pos < dims.size() && (dims[pos] == ' ' || dims[pos] == ',')) ++pos;
    if (pos >= dims.size()) break;
    arr.shape.push_back(std::stoll(dims.substr(pos)));
    while (pos < dims.size() && dims[pos] != ',') ++pos;
  }
  size_t esize = (arr.descr == "<i8") ? 8 : 4;
  if (arr.descr != "<f4" && arr.descr != "<i4" && arr.descr != "<i8")
    return make_error(ErrorCode::kFormat, "{}: unsupported dtype {}", path, arr.descr);
  const size_t nbytes = static_cast<size_t>(arr.numel()) * esize;
  if (hstart + hlen + nbytes > bytes.size()) return make_error(ErrorCode::kFormat, "{}: truncated data", path);
  arr.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(hstart + hlen),
                  bytes.begin() + static_cast<std::ptrdiff_t>(hstart + hlen + nbytes));
  return arr;
}

Status npy_write_f32(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  std::string dims;
  int64_t n = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    dims += std::to_string(shape[i]);
    if (shape.size() == 1 || i + 1 < shape.size()) dims += ",";
    if (i + 1 < shape.size()) dims += " ";
    n *= shape[i];
  }
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return make_error(ErrorCode::kIo, "{}: cannot open for writing", path);
  const uint8_t magic[8] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
  const uint16_t hl = static_cast<uint16_t>(header.size());
  bool ok = std::fwrite(magic, 1, 8, f) == 8 && std::fwrite(&hl, 2, 1, f) == 1 &&
            std::fwrite(header.data(), 1, header.size(), f) == header.size() &&
            std::fwrite(data, 4, static_cast<size_t>(n), f) == static_cast<size_t>(n);
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) return make_error(ErrorCode::kIo, "{}: write failed", path);
  return {};
}

}  // namespace gptoss
