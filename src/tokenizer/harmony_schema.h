// Harmony's "# Tools" section: tool namespaces with JSON-schema parameters rendered as the
// TypeScript-like declarations the gpt-oss models were trained on (harmony json_schema_to_typescript).
// Internal to the tokenizer library; exposed for tests.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace gptoss::harmony_detail {

using OrderedJson = nlohmann::ordered_json;

struct ToolDef {
  std::string name;
  std::string description;
  std::optional<OrderedJson> parameters;  // nullopt renders `() => any`
};

struct ToolNamespace {
  std::string name;
  std::optional<std::string> description;
  std::vector<ToolDef> tools;
};

// The TypeScript-like type for a JSON schema; `indent` prefixes the lines of nested objects.
std::string json_schema_to_typescript(const OrderedJson& schema, const std::string& indent);

// "# Tools\n\n## ns\n..." for the given namespaces, in the order given.
std::string tools_section(const std::vector<ToolNamespace>& namespaces);

// The lines of `text` as Rust's str::lines() yields them: split at '\n', a trailing '\r' removed,
// no final empty line after a trailing newline, no lines at all for empty text.
std::vector<std::string_view> text_lines(std::string_view text);

// JSON value as serde_json's Display writes it (compact; exponents without '+').
std::string json_display(const OrderedJson& value);

// The built-in namespace "browser" or "python" (shared/reference/harmony/builtin_tools.json).
Result<ToolNamespace> builtin_tool_namespace(std::string_view name);

}  // namespace gptoss::harmony_detail
