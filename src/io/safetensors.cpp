// safetensors single-file reading (strict header validation over an mmap) and writing.
#include "io/safetensors.h"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

namespace gptoss {

using nlohmann::json;

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorView::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

const TensorView* SafetensorsFile::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

namespace {

// Reads a JSON non-negative integer that fits in int64 (JSON floats such as 3.0 are rejected:
// safetensors writers always emit integers, so anything else means a corrupt header).
bool json_to_u63(const json& v, int64_t* out) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    *out = static_cast<int64_t>(u);
    return true;
  }
  if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    if (i < 0) return false;
    *out = i;
    return true;
  }
  return false;
}

struct Span {
  uint64_t begin, end;
  const std::string* name;
};

// Parses one tensor entry of the header into `tv` (without the data pointer).
Status parse_entry(const std::string& path, const std::string& name, const json& e, uint64_t data_size, TensorView* tv,
                   Span* span) {
  auto fail = [&](const std::string& what) {
    return make_error(ErrorCode::kFormat, "{}: tensor '{}': {}", path, name, what);
  };
  if (!e.is_object()) return fail("header entry is not an object");
  auto dt = e.find("dtype");
  if (dt == e.end() || !dt->is_string()) return fail("missing or non-string 'dtype'");
  const auto dtype = dtype_from_name(dt->get<std::string>());
  if (!dtype) return fail(fmt::format("unsupported dtype '{}'", dt->get<std::string>()));
  auto sh = e.find("shape");
  if (sh == e.end() || !sh->is_array()) return fail("missing 'shape' or not a list");
  uint64_t numel = 1;
  bool overflow = false;
  for (const json& d : *sh) {
    int64_t v;
    if (!json_to_u63(d, &v))
      return fail(fmt::format("shape {} has an entry that is not a non-negative integer", sh->dump()));
    tv->shape.push_back(v);
    overflow = overflow || __builtin_mul_overflow(numel, static_cast<uint64_t>(v), &numel);
  }
  auto off = e.find("data_offsets");
  int64_t b = 0, en = 0;
  if (off == e.end() || !off->is_array() || off->size() != 2 || !json_to_u63((*off)[0], &b) ||
      !json_to_u63((*off)[1], &en))
    return fail("'data_offsets' is not a list [begin, end] of two non-negative integers");
  if (b > en) return fail(fmt::format("data_offsets [{}, {}] has begin > end", b, en));
  if (static_cast<uint64_t>(en) > data_size)
    return fail(fmt::format("data_offsets [{}, {}] end beyond the data area of {} bytes", b, en, data_size));
  uint64_t expect = 0;
  if (overflow || __builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(*dtype)), &expect) ||
      expect != static_cast<uint64_t>(en - b))
    return fail(fmt::format("shape {} of {} needs {} bytes but data_offsets [{}, {}] span {}", tv->shape_str(),
                            dt->get<std::string>(), overflow ? std::string("too many") : std::to_string(expect), b, en,
                            en - b));
  tv->name = name;
  tv->dtype = *dtype;
  tv->nbytes = static_cast<size_t>(en - b);
  tv->file = path;
  *span = {static_cast<uint64_t>(b), static_cast<uint64_t>(en), nullptr};
  return {};
}

Status parse_metadata(const std::string& path, const json& m, std::map<std::string, std::string>* out) {
  if (!m.is_object()) return make_error(ErrorCode::kFormat, "{}: '__metadata__' is not an object", path);
  for (const auto& [k, v] : m.items()) {
    if (!v.is_string())
      return make_error(ErrorCode::kFormat, "{}: '__metadata__' value for '{}' is not a string", path, k);
    (*out)[k] = v.get<std::string>();
  }
  return {};
}

}  // namespace

Result<std::unique_ptr<SafetensorsFile>> SafetensorsFile::open(const std::string& path) {
  GPTOSS_ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> mf, MappedFile::open(path));
  if (mf->size() < 8)
    return make_error(ErrorCode::kFormat, "{}: file is {} bytes, shorter than the 8-byte header length", path,
                      mf->size());
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | mf->data()[i];  // little-endian u64
  if (hlen > mf->size() - 8)
    return make_error(ErrorCode::kFormat, "{}: header length {} runs past the end of the {}-byte file", path, hlen,
                      mf->size());
  const char* hbeg = reinterpret_cast<const char*>(mf->data() + 8);
  const json header = json::parse(hbeg, hbeg + hlen, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) return make_error(ErrorCode::kFormat, "{}: header is not valid JSON", path);
  if (!header.is_object()) return make_error(ErrorCode::kFormat, "{}: header is not a JSON object", path);

  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  const uint64_t data_start = 8 + hlen;
  const uint64_t data_size = mf->size() - data_start;
  std::vector<Span> spans;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      GPTOSS_RETURN_IF_ERROR(parse_metadata(path, entry, &f->metadata_));
      continue;
    }
    TensorView tv;
    Span span{};
    GPTOSS_RETURN_IF_ERROR(parse_entry(path, name, entry, data_size, &tv, &span));
    tv.data = mf->data() + data_start + span.begin;
    auto [it, inserted] = f->tensors_.emplace(name, std::move(tv));
    span.name = &it->first;
    spans.push_back(span);
  }
  // Overlap check: sort by begin; empty tensors occupy no bytes and cannot overlap anything.
  std::sort(spans.begin(), spans.end(),
            [](const Span& a, const Span& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  const Span* prev = nullptr;
  for (const Span& s : spans) {
    if (s.begin == s.end) continue;
    if (prev && s.begin < prev->end)
      return make_error(ErrorCode::kFormat, "{}: tensor '{}' bytes [{}, {}) overlap tensor '{}' bytes [{}, {})", path,
                        *s.name, s.begin, s.end, *prev->name, prev->begin, prev->end);
    if (!prev || s.end > prev->end) prev = &s;
  }
  f->file_ = std::move(mf);
  return f;
}

Status safetensors_write(const std::string& path, const std::vector<TensorToWrite>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  std::set<std::string> seen;
  for (const auto& t : tensors) {
    if (t.name == "__metadata__" || !seen.insert(t.name).second)
      return make_error(ErrorCode::kInvalidArgument, "{}: tensor name '{}' is reserved or repeated", path, t.name);
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0)
        return make_error(ErrorCode::kInvalidArgument, "{}: tensor '{}' has a negative dimension", path, t.name);
      numel *= static_cast<uint64_t>(d);
    }
    if (numel * dtype_size(t.dtype) != t.nbytes)
      return make_error(ErrorCode::kInvalidArgument, "{}: tensor '{}': {} bytes given, shape needs {}", path, t.name,
                        t.nbytes, numel * dtype_size(t.dtype));
    header[t.name] = {
        {"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.nbytes}}};
    offset += t.nbytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keep the data area 8-byte aligned
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return make_error(ErrorCode::kIo, "{}: cannot open for writing", path);
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
  bool ok = std::fwrite(len, 1, 8, f) == 8 && std::fwrite(text.data(), 1, text.size(), f) == text.size();
  for (size_t i = 0; ok && i < tensors.size(); ++i) {
    if (tensors[i].nbytes) ok = std::fwrite(tensors[i].data, 1, tensors[i].nbytes, f) == tensors[i].nbytes;
  }
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) return make_error(ErrorCode::kIo, "{}: write failed (disk full?)", path);
  return {};
}

}  // namespace gptoss
