// Config parsing (HF and original/ names), validation, serialisation and loading from a folder.
#include "model/config.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/log.h"

namespace gptoss {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Field readers: look up the first present (non-null) key among `names`; absent → default.
class Reader {
 public:
  Reader(const json& j, const std::string& source) : j_(j), source_(source) {}

  const json* find(std::initializer_list<const char*> names) const {
    for (const char* n : names) {
      auto it = j_.find(n);
      if (it != j_.end() && !it->is_null()) {
        last_ = n;
        return &*it;
      }
    }
    return nullptr;
  }

  Status get_int(std::initializer_list<const char*> names, int64_t* out) const {
    const json* v = find(names);
    if (!v) return {};
    if (v->is_number_integer()) {
      *out = v->get<int64_t>();
      return {};
    }
    // Some tools write integral values as floats (2880.0); accept those, reject 2880.5 / strings.
    if (v->is_number_float() && std::nearbyint(v->get<double>()) == v->get<double>() &&
        std::fabs(v->get<double>()) < 9.0e15) {
      *out = static_cast<int64_t>(v->get<double>());
      return {};
    }
    return make_error(ErrorCode::kFormat, "{}: field '{}' must be an integer, got {}", source_, last_, v->dump());
  }

  Status get_double(std::initializer_list<const char*> names, double* out) const {
    const json* v = find(names);
    if (!v) return {};
    if (!v->is_number())
      return make_error(ErrorCode::kFormat, "{}: field '{}' must be a number, got {}", source_, last_, v->dump());
    *out = v->get<double>();
    return {};
  }

  const std::string& last() const { return last_; }

 private:
  const json& j_;
  const std::string& source_;
  mutable std::string last_;
};

Status parse_rope(const json& j, const std::string& source, Config* c) {
  const Reader top(j, source);
  // original/ names live at the top level.
  GPTOSS_RETURN_IF_ERROR(top.get_double({"rope_scaling_factor"}, &c->rope_scaling.factor));
  GPTOSS_RETURN_IF_ERROR(top.get_double({"rope_ntk_alpha"}, &c->rope_scaling.beta_slow));
  GPTOSS_RETURN_IF_ERROR(top.get_double({"rope_ntk_beta"}, &c->rope_scaling.beta_fast));
  c->rope_scaling.original_max_position_embeddings = c->initial_context_length;
  const json* rs = top.find({"rope_scaling"});
  if (!rs) return {};
  if (!rs->is_object()) return make_error(ErrorCode::kFormat, "{}: field 'rope_scaling' must be an object", source);
  const Reader r(*rs, source);
  if (const json* t = r.find({"rope_type", "type"})) {
    if (!t->is_string() || t->get<std::string>() != "yarn")
      return make_error(ErrorCode::kFormat, "{}: field 'rope_scaling.rope_type' must be \"yarn\", got {}", source,
                        t->dump());
  }
  GPTOSS_RETURN_IF_ERROR(r.get_double({"factor"}, &c->rope_scaling.factor));
  GPTOSS_RETURN_IF_ERROR(r.get_double({"beta_fast"}, &c->rope_scaling.beta_fast));
  GPTOSS_RETURN_IF_ERROR(r.get_double({"beta_slow"}, &c->rope_scaling.beta_slow));
  GPTOSS_RETURN_IF_ERROR(
      r.get_int({"original_max_position_embeddings"}, &c->rope_scaling.original_max_position_embeddings));
  if (const json* t = r.find({"truncate"})) {
    if (!t->is_boolean())
      return make_error(ErrorCode::kFormat, "{}: field 'rope_scaling.truncate' must be a boolean, got {}", source,
                        t->dump());
    c->rope_scaling.truncate = t->get<bool>();
  }
  return {};
}

Status parse_layer_types(const json& j, const std::string& source, Config* c) {
  auto it = j.find("layer_types");
  c->layer_types.clear();
  if (it == j.end() || it->is_null()) {
    // HF default: sliding when (i+1) is odd, i.e. even layers slide. An absurd layer count is
    // left for validate() to report instead of building a huge list here.
    const int64_t n = c->num_hidden_layers <= kConfigMaxLayers ? c->num_hidden_layers : 0;
    for (int64_t i = 0; i < n; ++i)
      c->layer_types.push_back(i % 2 == 0 ? LayerType::kSlidingAttention : LayerType::kFullAttention);
    return {};
  }
  if (!it->is_array()) return make_error(ErrorCode::kFormat, "{}: field 'layer_types' must be a list", source);
  for (size_t i = 0; i < it->size(); ++i) {
    const json& v = (*it)[i];
    if (v == "sliding_attention")
      c->layer_types.push_back(LayerType::kSlidingAttention);
    else if (v == "full_attention")
      c->layer_types.push_back(LayerType::kFullAttention);
    else
      return make_error(ErrorCode::kFormat,
                        "{}: field 'layer_types[{}]' is {}, expected \"sliding_attention\" or "
                        "\"full_attention\"",
                        source, i, v.dump());
  }
  return {};
}

void add_unique(std::vector<int32_t>* ids, int32_t id) {
  if (std::find(ids->begin(), ids->end(), id) == ids->end()) ids->push_back(id);
}

// Reads a token id field: an integer or a list of integers. Appends the ids not yet in `out`.
Status parse_eos(const json& v, const std::string& source, const char* field, std::vector<int32_t>* out) {
  auto one = [&](const json& e) -> Status {
    if (!e.is_number_integer() || e.get<int64_t>() < 0 || e.get<int64_t>() > INT32_MAX)
      return make_error(ErrorCode::kFormat, "{}: field '{}' has an invalid token id {}", source, field, e.dump());
    add_unique(out, static_cast<int32_t>(e.get<int64_t>()));
    return {};
  };
  if (v.is_null()) return {};
  if (!v.is_array()) return one(v);
  for (const json& e : v) GPTOSS_RETURN_IF_ERROR(one(e));
  return {};
}

void add_harmony_stops(Config* c) {
  for (int32_t id : kHarmonyStopTokens)
    if (id < c->vocab_size) add_unique(&c->eos_token_ids, id);
}

Result<json> read_json_file(const fs::path& path) {
  std::ifstream in(path);
  if (!in) return make_error(ErrorCode::kNotFound, "{}: cannot open", path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  json j = json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return make_error(ErrorCode::kFormat, "{}: not valid JSON", path.string());
  return j;
}

}  // namespace

Result<Config> config_from_json_text(const std::string& text, const std::string& source) {
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return make_error(ErrorCode::kFormat, "{}: not valid JSON", source);
  if (!j.is_object()) return make_error(ErrorCode::kFormat, "{}: not a JSON object", source);
  Config c;
  // Absent fields take the HF GptOssConfig class defaults, which are the 120b values (spec §1.1).
  c.num_hidden_layers = 36;
  c.num_local_experts = 128;
  const Reader r(j, source);
  GPTOSS_RETURN_IF_ERROR(r.get_int({"hidden_size"}, &c.hidden_size));
  GPTOSS_RETURN_IF_ERROR(r.get_int({"intermediate_size"}, &c.intermediate_size));
  GPTOSS_RETURN_IF_ERROR(r.get_int({"num_hidden_layers"}, &c.num_hidden_layers));
  GPTOSS_RETURN_IF_ERROR(r.get_int({"num_attention_heads"}, &c.num_attention_heads));
  GPTOSS_RETURN_IF_ERROR(r.get_int({"num_key_value_heads"}, &c.num_key_value_heads));
  GPTOSS_RETURN_IF_ERROR(r.get_int({"head_dim"}, &c.head_dim));
  GPTOSS_RETURN_IF_ERROR(r.get_int({"num_local_experts", "num_experts"}, &c.num_local_experts));
  GPTOSS_RETURN_IF_ERROR(r.get_int({"num_experts_per_tok", "experts_per_token"}, &c.num_experts_per_tok));
  GPTOSS_RETURN_IF_ERROR(r.get_int({"vocab_size"}, &c.vocab_size));
  GPTOSS_RETURN_IF_ERROR(r.get_int({"sliding_window"}, &c.sliding_window));
  GPTOSS_RETURN_IF_ERROR(r.get_int({"max_position_embeddings"}, &c.max_position_embeddings));
  GPTOSS_RETURN_IF_ERROR(r.get_int({"initial_context_length"}, &c.initial_context_length));
  GPTOSS_RETURN_IF_ERROR(r.get_double({"rope_theta"}, &c.rope_theta));
  GPTOSS_RETURN_IF_ERROR(r.get_double({"rms_norm_eps"}, &c.rms_norm_eps));
  GPTOSS_RETURN_IF_ERROR(r.get_double({"swiglu_limit"}, &c.swiglu_limit));
  GPTOSS_RETURN_IF_ERROR(parse_rope(j, source, &c));
  GPTOSS_RETURN_IF_ERROR(parse_layer_types(j, source, &c));
  if (const json* e = r.find({"eos_token_id"}))
    GPTOSS_RETURN_IF_ERROR(parse_eos(*e, source, "eos_token_id", &c.eos_token_ids));
  std::vector<int32_t> pad;
  if (const json* p = r.find({"pad_token_id"})) GPTOSS_RETURN_IF_ERROR(parse_eos(*p, source, "pad_token_id", &pad));
  if (pad.size() > 1) return make_error(ErrorCode::kFormat, "{}: field 'pad_token_id' must be one id", source);
  c.pad_token_id = pad.empty() ? -1 : pad[0];
  add_harmony_stops(&c);
  Status st = c.validate();
  if (!st.ok()) return Status(st.code(), fmt::format("{}: {}", source, st.message()));
  return c;
}

Result<Config> config_load_dir(const std::string& dir) {
  fs::path path = fs::path(dir) / "config.json";
  if (!fs::exists(path)) path = fs::path(dir) / "original" / "config.json";
  if (!fs::exists(path)) return make_error(ErrorCode::kNotFound, "{}: no config.json (nor original/config.json)", dir);
  std::ifstream in(path);
  if (!in) return make_error(ErrorCode::kIo, "{}: cannot read", path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  GPTOSS_ASSIGN_OR_RETURN(Config c, config_from_json_text(ss.str(), path.string()));
  const fs::path gen = fs::path(dir) / "generation_config.json";
  if (fs::exists(gen)) {
    GPTOSS_ASSIGN_OR_RETURN(json g, read_json_file(gen));
    if (!g.is_object()) return make_error(ErrorCode::kFormat, "{}: not a JSON object", gen.string());
    std::vector<int32_t> ids;
    if (auto it = g.find("eos_token_id"); it != g.end())
      GPTOSS_RETURN_IF_ERROR(parse_eos(*it, gen.string(), "eos_token_id", &ids));
    for (int32_t id : ids) {
      // Generation configs are often copied between models; ids outside this vocabulary cannot be
      // produced, so they are dropped rather than failing the load.
      if (id < c.vocab_size)
        add_unique(&c.eos_token_ids, id);
      else
        log_warn("{}: eos_token_id {} is outside the vocabulary ({}), ignored", gen.string(), id, c.vocab_size);
    }
  }
  return c;
}

}  // namespace gptoss
