// Harmony tool sections and JSON schema → TypeScript rendering (see harmony_schema.h). The rules
// and their quirks (where descriptions, defaults and nullability go) follow openai/harmony's
// json_schema_to_typescript byte for byte; the reference vectors pin them down.
#include "tokenizer/harmony_schema.h"

#include <charconv>
#include <cstdlib>
#include <set>

namespace gptoss::harmony_detail {

extern const char kBuiltinToolsJson[];

namespace {

const OrderedJson* get(const OrderedJson& j, const char* key) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(key);
  return it == j.end() ? nullptr : &*it;
}

std::optional<std::string> get_string(const OrderedJson& j, const char* key) {
  const OrderedJson* v = get(j, key);
  if (!v || !v->is_string()) return std::nullopt;
  return v->get<std::string>();
}

bool is_enum(const OrderedJson& schema) {
  const OrderedJson* e = get(schema, "enum");
  return e && e->is_array() && !e->empty();
}

bool is_nullable(const OrderedJson& schema) {
  const OrderedJson* n = get(schema, "nullable");
  return n && n->is_boolean() && n->get<bool>();
}

std::string join(const std::vector<std::string>& parts, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i) out += sep;
    out += parts[i];
  }
  return out;
}

// "default: ..." as harmony writes it next to properties and variants: strings quoted unless the
// schema is an enum (then raw), other values as JSON.
std::string default_text(const OrderedJson& schema, const OrderedJson& value) {
  if (value.is_string()) {
    const std::string s = value.get<std::string>();
    return is_enum(schema) ? "default: " + s : "default: \"" + s + "\"";
  }
  return "default: " + json_display(value);
}

// Appends " | null" for nullable schemas unless the type already mentions null.
std::string with_nullable(const OrderedJson& schema, std::string type) {
  if (is_nullable(schema) && type.find("null") == std::string::npos) type += " | null";
  return type;
}

// A top-level oneOf: each variant on its own " | " line with trailing comments.
std::string one_of_type(const OrderedJson& variants, const std::string& indent) {
  std::string out;
  for (const OrderedJson& v : variants) {
    out += "\n" + indent + " | " + with_nullable(v, json_schema_to_typescript(v, indent + "   "));
    std::vector<std::string> comments;
    if (auto d = get_string(v, "description")) comments.push_back(*d);
    if (const OrderedJson* def = get(v, "default")) {
      // Unlike property defaults, an enum's string default keeps its JSON quotes here.
      comments.push_back(def->is_string() && !is_enum(v) ? "default: \"" + def->get<std::string>() + "\""
                                                         : "default: " + json_display(*def));
    }
    if (!comments.empty()) out += " // " + join(comments, " ");
  }
  return out;
}

// A property whose schema is a oneOf: comments above the name, then one line per variant.
void one_of_property(const std::string& key, const OrderedJson& val, const OrderedJson& variants, bool required,
                     const std::string& indent, std::string* out) {
  const std::optional<std::string> prop_desc = get_string(val, "description");
  bool skip_desc = false;
  if (prop_desc && !variants.empty()) {
    const auto first = get_string(variants.front(), "description");
    skip_desc = first && *first == *prop_desc;
  }
  const bool desc_above = prop_desc && !skip_desc;
  if (desc_above) *out += indent + "// " + *prop_desc + "\n";
  if (const OrderedJson* def = get(val, "default")) *out += indent + "// " + default_text(val, *def) + "\n";
  *out += indent + key + (required ? "" : "?") + ":\n";
  for (size_t i = 0; i < variants.size(); ++i) {
    const OrderedJson& v = variants[i];
    *out += indent + " | " + with_nullable(v, json_schema_to_typescript(v, indent + "   "));
    std::vector<std::string> comments;
    if (!(i == 0 && desc_above)) {
      const auto d = get_string(v, "description");
      if (d && (!prop_desc || *d != *prop_desc)) comments.push_back(*d);
    }
    if (const OrderedJson* def = get(v, "default")) comments.push_back(default_text(v, *def));
    if (!comments.empty()) *out += " // " + join(comments, " ");
    *out += "\n";
  }
  *out += indent + ",\n";
}

std::string object_type(const OrderedJson& schema, const std::string& indent) {
  std::string out;
  if (auto d = get_string(schema, "description")) out += indent + "// " + *d + "\n";
  out += "{\n";
  const OrderedJson* props = get(schema, "properties");
  if (props && props->is_object()) {
    std::set<std::string> required;
    if (const OrderedJson* req = get(schema, "required"); req && req->is_array()) {
      for (const auto& r : *req) {
        if (r.is_string()) required.insert(r.get<std::string>());
      }
    }
    for (const auto& [key, val] : props->items()) {
      const bool is_required = required.count(key) > 0;
      if (auto title = get_string(val, "title")) out += indent + "// " + *title + "\n" + indent + "//\n";
      const OrderedJson* one_of = get(val, "oneOf");
      if (!one_of) {
        if (auto d = get_string(val, "description")) out += indent + "// " + *d + "\n";
      }
      if (const OrderedJson* ex = get(val, "examples"); ex && ex->is_array() && !ex->empty()) {
        out += indent + "// Examples:\n";
        for (const auto& e : *ex) {
          if (e.is_string()) out += indent + "// - \"" + e.get<std::string>() + "\"\n";
        }
      }
      if (one_of && one_of->is_array()) {
        one_of_property(key, val, *one_of, is_required, indent, &out);
        continue;
      }
      out += indent + key + (is_required ? "" : "?") + ": ";
      out += with_nullable(val, json_schema_to_typescript(val, indent + "    ")) + ",";
      if (!one_of) {
        if (const OrderedJson* def = get(val, "default")) out += " // " + default_text(val, *def);
      }
      out += "\n";
    }
  }
  out += indent + "}";
  return out;
}

// Shortest round-trip digits laid out the way Rust's ryu (serde_json) does: plain notation for
// decimal exponents in (-5, 16], scientific ("1e21", "1.5e-7") outside.
std::string format_float(double v) {
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  std::string sign;
  if (!sci.empty() && sci[0] == '-') {
    sign = "-";
    sci.erase(0, 1);
  }
  const size_t e = sci.find('e');
  if (e == std::string::npos) return sign + sci;  // inf/nan never occur in parsed JSON
  std::string digits = sci.substr(0, e);
  if (digits.size() > 1) digits.erase(1, 1);  // drop the '.'
  const int exp10 = std::atoi(sci.c_str() + e + 1);
  const int n = static_cast<int>(digits.size());
  const int point = exp10 + 1;  // position of the decimal point after the first `point` digits
  if (point >= n && point <= 16) return sign + digits + std::string(point - n, '0') + ".0";
  if (point > 0 && point <= 16) return sign + digits.substr(0, point) + "." + digits.substr(point);
  if (point > -5 && point <= 0) return sign + "0." + std::string(-point, '0') + digits;
  std::string mant = n == 1 ? digits : digits.substr(0, 1) + "." + digits.substr(1);
  return sign + mant + "e" + std::to_string(point - 1);
}

}  // namespace

std::string json_display(const OrderedJson& value) {
  if (value.is_number_float()) return format_float(value.get<double>());
  if (value.is_array()) {
    std::string out = "[";
    for (size_t i = 0; i < value.size(); ++i) out += (i ? "," : "") + json_display(value[i]);
    return out + "]";
  }
  if (value.is_object()) {
    std::string out = "{";
    bool first = true;
    for (const auto& [k, v] : value.items()) {
      out += (first ? "" : ",") + OrderedJson(k).dump() + ":" + json_display(v);
      first = false;
    }
    return out + "}";
  }
  return value.dump();
}

std::string json_schema_to_typescript(const OrderedJson& schema, const std::string& indent) {
  if (const OrderedJson* one_of = get(schema, "oneOf"); one_of && one_of->is_array()) {
    return one_of_type(*one_of, indent);
  }
  const OrderedJson* type = get(schema, "type");
  if (type && type->is_array()) {
    std::vector<std::string> names;
    for (const auto& t : *type) {
      if (t.is_string()) names.push_back(t.get<std::string>() == "integer" ? "number" : t.get<std::string>());
    }
    if (!names.empty()) return join(names, " | ");
  }
  if (!type || !type->is_string()) return "any";
  const std::string t = type->get<std::string>();
  if (t == "object") return object_type(schema, indent);
  if (t == "string") {
    if (const OrderedJson* e = get(schema, "enum"); e && e->is_array()) {
      std::vector<std::string> values;
      for (const auto& v : *e) {
        if (v.is_string()) values.push_back(fmt::format("\"{}\"", v.get<std::string>()));
      }
      if (!values.empty()) return join(values, " | ");
    }
    return "string";
  }
  if (t == "number" || t == "integer") return "number";
  if (t == "boolean") return "boolean";
  if (t == "array") {
    const OrderedJson* items = get(schema, "items");
    return items ? json_schema_to_typescript(*items, indent) + "[]" : "Array<any>";
  }
  return "any";
}

std::vector<std::string_view> text_lines(std::string_view text) {
  std::vector<std::string_view> lines;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    std::string_view line = text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    if (nl != std::string_view::npos && !line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back(line);
    if (nl == std::string_view::npos) break;
    pos = nl + 1;
  }
  return lines;
}

std::string tools_section(const std::vector<ToolNamespace>& namespaces) {
  std::vector<std::string> sections = {"# Tools"};
  for (const ToolNamespace& ns : namespaces) {
    std::vector<std::string> lines = {"## " + ns.name + "\n"};
    if (ns.description) {
      // Namespaces with tools put their description in comments; a bare namespace as plain text.
      for (std::string_view line : text_lines(*ns.description)) {
        lines.push_back(ns.tools.empty() ? std::string(line) : "// " + std::string(line));
      }
    }
    if (!ns.tools.empty()) {
      lines.push_back("namespace " + ns.name + " {\n");
      for (const ToolDef& tool : ns.tools) {
        for (std::string_view line : text_lines(tool.description)) lines.push_back("// " + std::string(line));
        if (tool.parameters) {
          lines.push_back("type " + tool.name + " = (_: " + json_schema_to_typescript(*tool.parameters, "") +
                          ") => any;\n");
        } else {
          lines.push_back("type " + tool.name + " = () => any;\n");
        }
      }
      lines.push_back("} // namespace " + ns.name);
    }
    sections.push_back(join(lines, "\n"));
  }
  return join(sections, "\n\n");
}

Result<ToolNamespace> builtin_tool_namespace(std::string_view name) {
  const OrderedJson all = OrderedJson::parse(kBuiltinToolsJson);
  if (name.empty() || name[0] == '_' || !all.contains(std::string(name))) {
    return make_error(ErrorCode::kInvalidArgument, "unknown built-in tool '{}' (known: browser, python)", name);
  }
  const OrderedJson& ns = all[std::string(name)];
  ToolNamespace out;
  out.name = ns.at("name").get<std::string>();
  if (ns.contains("description") && ns["description"].is_string()) out.description = ns["description"];
  for (const auto& t : ns.at("tools")) {
    ToolDef def{t.at("name").get<std::string>(), t.value("description", ""), std::nullopt};
    if (t.contains("parameters") && !t["parameters"].is_null()) def.parameters = t["parameters"];
    out.tools.push_back(std::move(def));
  }
  return out;
}

}  // namespace gptoss::harmony_detail
