// Loading a Hugging Face tokenizer.json (byte-level BPE): the vocab and merges are read with a
// hand-written scanner (the file is ~28 MB; a DOM parse would cost seconds), the small sections
// (added_tokens, pre_tokenizer, model flags) with nlohmann from the spans the scanner finds.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "tokenizer/json_scan.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"

namespace gptoss {

namespace {

constexpr long long kMaxTokenId = 1 << 24;  // sanity bound before sizing per-id tables

// GPT-2's byte <-> unicode mapping: printable Latin-1 bytes map to themselves, the other 68
// bytes to U+0100.. in byte order. Returns the inverse table (codepoint -> byte, -1 if none).
std::array<int16_t, 324> unicode_to_byte_table() {
  std::array<int16_t, 324> t;
  t.fill(-1);
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    t[printable ? b : next++] = static_cast<int16_t>(b);
  }
  return t;
}

// Converts a byte-level token string (GPT-2 unicode alphabet) back to raw bytes.
bool byte_level_to_bytes(std::string_view s, const std::array<int16_t, 324>& table, std::string* out) {
  out->clear();
  size_t pos = 0;
  while (pos < s.size()) {
    const uint32_t cp = utf8::next_codepoint(s, &pos);
    if (cp >= table.size() || table[cp] < 0) return false;
    out->push_back(static_cast<char>(table[cp]));
  }
  return true;
}

Result<std::string> read_file(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return make_error(ErrorCode::kNotFound, "cannot open tokenizer file '{}'", path);
  std::string data;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) data.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) return make_error(ErrorCode::kIo, "error reading tokenizer file '{}'", path);
  return data;
}

// Spans of the top-level and model-level sections we need.
struct Sections {
  std::string_view added_tokens, normalizer, pre_tokenizer, decoder;
  std::string_view model_type, ignore_merges, byte_fallback, continuing_prefix, end_suffix;
  bool have_model = false, have_vocab = false, have_merges = false;
};

Status parse_vocab(JsonScanner* js, TokenizerImpl* t, std::vector<VocabEntry>* entries) {
  const auto table = unicode_to_byte_table();
  GPTOSS_RETURN_IF_ERROR(js->expect('{'));
  std::string key, bytes;
  if (js->consume('}')) return {};
  while (true) {
    GPTOSS_RETURN_IF_ERROR(js->parse_string(&key));
    GPTOSS_RETURN_IF_ERROR(js->expect(':'));
    long long id;
    GPTOSS_RETURN_IF_ERROR(js->parse_int(&id));
    if (id < 0 || id >= kMaxTokenId) return js->error(fmt::format("vocab id {} out of range", id));
    if (!byte_level_to_bytes(key, table, &bytes)) {
      return js->error(fmt::format("vocab token '{}' is not in the byte-level alphabet", key));
    }
    entries->push_back(
        {static_cast<int32_t>(id), static_cast<uint32_t>(t->arena.size()), static_cast<uint32_t>(bytes.size())});
    t->arena.append(bytes);
    if (js->consume('}')) return {};
    GPTOSS_RETURN_IF_ERROR(js->expect(','));
  }
}

// Resolves one merge "a" + "b" to ids and records it with the given rank. `scratch` is reused
// across calls to avoid an allocation per merge (there are ~450k of them).
Status add_merge(const std::string& a, const std::string& b, uint32_t rank, TokenizerImpl* t,
                 const std::array<int16_t, 324>& table, const JsonScanner& js, std::string* scratch) {
  if (!byte_level_to_bytes(a, table, scratch)) {
    return js.error(fmt::format("merge '{} {}' is not in the byte-level alphabet", a, b));
  }
  const size_t a_len = scratch->size();
  std::string b_bytes;
  if (!byte_level_to_bytes(b, table, &b_bytes)) {
    return js.error(fmt::format("merge '{} {}' is not in the byte-level alphabet", a, b));
  }
  scratch->append(b_bytes);
  const std::string_view ab(*scratch);
  const int32_t ia = t->vocab.find(ab.substr(0, a_len)), ib = t->vocab.find(ab.substr(a_len)), im = t->vocab.find(ab);
  if (ia < 0 || ib < 0) return js.error(fmt::format("merge '{} {}' uses a token missing from the vocab", a, b));
  if (im < 0) return js.error(fmt::format("merge '{} {}' produces a token missing from the vocab", a, b));
  t->merges.insert(ia, ib, {rank, im});
  return {};
}

Status parse_merges(JsonScanner* js, TokenizerImpl* t) {
  const auto table = unicode_to_byte_table();
  GPTOSS_RETURN_IF_ERROR(js->expect('['));
  std::string a, b, legacy, scratch;
  uint32_t rank = 0;
  if (js->consume(']')) return {};
  while (true) {
    if (js->peek_is('[')) {  // current format: ["a", "b"]
      GPTOSS_RETURN_IF_ERROR(js->expect('['));
      GPTOSS_RETURN_IF_ERROR(js->parse_string(&a));
      GPTOSS_RETURN_IF_ERROR(js->expect(','));
      GPTOSS_RETURN_IF_ERROR(js->parse_string(&b));
      GPTOSS_RETURN_IF_ERROR(js->expect(']'));
    } else {  // legacy format: "a b"
      GPTOSS_RETURN_IF_ERROR(js->parse_string(&legacy));
      const size_t sp = legacy.find(' ');
      if (sp == std::string::npos || legacy.find(' ', sp + 1) != std::string::npos) {
        return js->error(fmt::format("merge '{}' is not two space-separated tokens", legacy));
      }
      a = legacy.substr(0, sp);
      b = legacy.substr(sp + 1);
    }
    GPTOSS_RETURN_IF_ERROR(add_merge(a, b, rank++, t, table, *js, &scratch));
    if (js->consume(']')) return {};
    GPTOSS_RETURN_IF_ERROR(js->expect(','));
  }
}

Status scan_model(JsonScanner* js, TokenizerImpl* t, Sections* s, std::vector<VocabEntry>* entries,
                  size_t* merges_pos) {
  GPTOSS_RETURN_IF_ERROR(js->expect('{'));
  std::string key;
  if (js->consume('}')) return {};
  while (true) {
    GPTOSS_RETURN_IF_ERROR(js->parse_string(&key));
    GPTOSS_RETURN_IF_ERROR(js->expect(':'));
    std::string_view span;
    if (key == "vocab") {
      GPTOSS_RETURN_IF_ERROR(parse_vocab(js, t, entries));
      s->have_vocab = true;
    } else {
      // Merges need the vocab first; remember where they are and parse them afterwards.
      if (key == "merges") {
        js->skip_ws();
        *merges_pos = js->pos();
        s->have_merges = true;
      }
      GPTOSS_RETURN_IF_ERROR(js->skip_value(&span));
      if (key == "type") s->model_type = span;
      if (key == "ignore_merges") s->ignore_merges = span;
      if (key == "byte_fallback") s->byte_fallback = span;
      if (key == "continuing_subword_prefix") s->continuing_prefix = span;
      if (key == "end_of_word_suffix") s->end_suffix = span;
    }
    if (js->consume('}')) return {};
    GPTOSS_RETURN_IF_ERROR(js->expect(','));
  }
}

Result<nlohmann::json> parse_span(std::string_view span, const std::string& path, const char* what) {
  if (span.empty()) return nlohmann::json();
  auto j = nlohmann::json::parse(span, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return make_error(ErrorCode::kFormat, "{}: invalid JSON in {}", path, what);
  return j;
}

// Checks the pre_tokenizer section and returns its Split regex. We support exactly what the
// o200k tokenizers use: Sequence[Split(Regex, Isolated), ByteLevel(use_regex=false)].
Result<std::string> pre_tokenizer_regex(const nlohmann::json& pre, const std::string& path) {
  auto bad = [&](const std::string& why) {
    return make_error(ErrorCode::kFormat, "{}: unsupported pre_tokenizer: {}", path, why);
  };
  if (!pre.is_object() || pre.value("type", "") != "Sequence" || !pre.contains("pretokenizers") ||
      !pre["pretokenizers"].is_array()) {
    return bad("expected a Sequence of Split and ByteLevel");
  }
  std::string regex;
  bool have_split = false;
  for (const auto& p : pre["pretokenizers"]) {
    const std::string type = p.is_object() ? p.value("type", "") : "";
    if (type == "Split") {
      if (have_split) return bad("more than one Split");
      if (!p.contains("pattern") || !p["pattern"].is_object() || !p["pattern"].contains("Regex") ||
          !p["pattern"]["Regex"].is_string()) {
        return bad("Split without a Regex pattern");
      }
      if (p.value("behavior", "") != "Isolated") return bad("Split behavior is not Isolated");
      if (p.value("invert", false)) return bad("Split with invert=true");
      regex = p["pattern"]["Regex"].get<std::string>();
      have_split = true;
    } else if (type == "ByteLevel") {
      if (p.value("use_regex", true)) return bad("ByteLevel with use_regex=true");
      if (p.value("add_prefix_space", false)) return bad("ByteLevel with add_prefix_space=true");
    } else {
      return bad(fmt::format("pre-tokenizer type '{}'", type));
    }
  }
  if (!have_split) return bad("no Split regex");
  return regex;
}

Status check_model_flags(const Sections& s, const std::string& path, TokenizerImpl* t) {
  GPTOSS_ASSIGN_OR_RETURN(auto type, parse_span(s.model_type, path, "model.type"));
  if (!type.is_string() || type.get<std::string>() != "BPE") {
    return make_error(ErrorCode::kFormat, "{}: model.type must be \"BPE\"", path);
  }
  GPTOSS_ASSIGN_OR_RETURN(auto im, parse_span(s.ignore_merges, path, "model.ignore_merges"));
  t->ignore_merges = im.is_boolean() && im.get<bool>();
  GPTOSS_ASSIGN_OR_RETURN(auto bf, parse_span(s.byte_fallback, path, "model.byte_fallback"));
  if (bf.is_boolean() && bf.get<bool>())
    return make_error(ErrorCode::kFormat, "{}: byte_fallback is not supported", path);
  for (auto [span, name] :
       {std::pair{s.continuing_prefix, "continuing_subword_prefix"}, std::pair{s.end_suffix, "end_of_word_suffix"}}) {
    GPTOSS_ASSIGN_OR_RETURN(auto v, parse_span(span, path, name));
    if (!v.is_null() && !(v.is_string() && v.get<std::string>().empty())) {
      return make_error(ErrorCode::kFormat, "{}: model.{} is not supported", path, name);
    }
  }
  return {};
}

}  // namespace

Status tokenizer_load_into(const std::string& path, TokenizerImpl* t) {
  GPTOSS_ASSIGN_OR_RETURN(std::string data, read_file(path));
  JsonScanner js(data, path);
  Sections s;
  std::vector<VocabEntry> entries;
  size_t merges_pos = 0;
  GPTOSS_RETURN_IF_ERROR(js.expect('{'));
  std::string key;
  while (!js.consume('}')) {
    GPTOSS_RETURN_IF_ERROR(js.parse_string(&key));
    GPTOSS_RETURN_IF_ERROR(js.expect(':'));
    if (key == "model") {
      GPTOSS_RETURN_IF_ERROR(scan_model(&js, t, &s, &entries, &merges_pos));
      s.have_model = true;
    } else {
      std::string_view span;
      GPTOSS_RETURN_IF_ERROR(js.skip_value(&span));
      if (key == "added_tokens") s.added_tokens = span;
      if (key == "normalizer") s.normalizer = span;
      if (key == "pre_tokenizer") s.pre_tokenizer = span;
      if (key == "decoder") s.decoder = span;
    }
    if (!js.consume(',')) {
      GPTOSS_RETURN_IF_ERROR(js.expect('}'));
      break;
    }
  }
  if (!s.have_model || !s.have_vocab || !s.have_merges) {
    return make_error(ErrorCode::kFormat, "{}: missing model.vocab or model.merges (not a BPE tokenizer.json?)", path);
  }
  GPTOSS_RETURN_IF_ERROR(check_model_flags(s, path, t));
  GPTOSS_ASSIGN_OR_RETURN(auto normalizer, parse_span(s.normalizer, path, "normalizer"));
  if (!normalizer.is_null()) return make_error(ErrorCode::kFormat, "{}: normalizers are not supported", path);
  GPTOSS_ASSIGN_OR_RETURN(auto decoder, parse_span(s.decoder, path, "decoder"));
  if (!decoder.is_null() && !(decoder.is_object() && decoder.value("type", "") == "ByteLevel")) {
    return make_error(ErrorCode::kFormat, "{}: only the ByteLevel decoder is supported", path);
  }
  GPTOSS_ASSIGN_OR_RETURN(auto pre, parse_span(s.pre_tokenizer, path, "pre_tokenizer"));
  GPTOSS_ASSIGN_OR_RETURN(std::string regex, pre_tokenizer_regex(pre, path));
  auto pt = PreTokenizer::create(regex);
  if (!pt.ok()) return make_error(ErrorCode::kFormat, "{}: {}", path, pt.status().message());
  t->pre = std::move(pt).value();
  GPTOSS_ASSIGN_OR_RETURN(auto added, parse_span(s.added_tokens, path, "added_tokens"));

  GPTOSS_RETURN_IF_ERROR(tokenizer_finish_load(t, entries, added));

  JsonScanner mjs(std::string_view(data).substr(merges_pos), path);
  const Status ms = parse_merges(&mjs, t);
  if (!ms.ok()) return make_error(ErrorCode::kFormat, "{} (model.merges)", ms.message());
  return {};
}

}  // namespace gptoss
