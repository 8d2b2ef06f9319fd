// OpenAI chat-completions request JSON → harmony Conversation (see conversation_from_openai_json).
#include <map>
#include <nlohmann/json.hpp>

#include "tokenizer/harmony.h"

namespace gptoss {

namespace {

using Json = nlohmann::ordered_json;  // ordered: tool parameter schemas keep their key order

Status bad(std::string_view where, std::string_view what) {
  return make_error(ErrorCode::kInvalidArgument, "{}: {}", where, what);
}

// Message content as text: a string, or an array of parts whose text parts are concatenated.
// nullopt when absent or null.
Result<std::optional<std::string>> content_text(const Json& m, const std::string& where) {
  auto it = m.find("content");
  if (it == m.end() || it->is_null()) return std::optional<std::string>();
  if (it->is_string()) return std::optional<std::string>(it->get<std::string>());
  if (!it->is_array()) return bad(where, "content must be a string or an array of parts");
  std::string text;
  for (const Json& part : *it) {
    if (part.is_string()) {
      text += part.get<std::string>();
      continue;
    }
    const std::string type = part.is_object() && part.contains("type") && part["type"].is_string()
                                 ? part["type"].get<std::string>()
                                 : std::string("text");
    if (type != "text" && type != "input_text" && type != "output_text") {
      return bad(where, fmt::format("unsupported content part type '{}'", type));
    }
    if (!part.is_object() || !part.contains("text") || !part["text"].is_string()) {
      return bad(where, "text content part without a string \"text\"");
    }
    text += part["text"].get<std::string>();
  }
  return std::optional<std::string>(text);
}

Result<std::vector<ToolSpec>> parse_tools(const Json& req) {
  std::vector<ToolSpec> tools;
  auto it = req.find("tools");
  if (it == req.end() || it->is_null()) return tools;
  if (!it->is_array()) return bad("tools", "must be an array");
  for (size_t i = 0; i < it->size(); ++i) {
    const Json& t = (*it)[i];
    const std::string where = fmt::format("tools[{}]", i);
    if (!t.is_object()) return bad(where, "must be an object");
    if (t.contains("type") && t["type"] != "function")
      return bad(where, "only tools of type \"function\" are supported");
    // Chat-completions nests the definition under "function"; the Responses API puts it flat.
    const Json& f = t.contains("function") ? t["function"] : t;
    if (!f.is_object() || !f.contains("name") || !f["name"].is_string() || f["name"].get<std::string>().empty()) {
      return bad(where, "function tool without a name");
    }
    ToolSpec spec;
    spec.name = f["name"].get<std::string>();
    if (f.contains("description") && !f["description"].is_null()) {
      if (!f["description"].is_string()) return bad(where, "description must be a string");
      spec.description = f["description"].get<std::string>();
    }
    if (f.contains("parameters") && !f["parameters"].is_null()) spec.parameters_json = f["parameters"].dump();
    tools.push_back(std::move(spec));
  }
  return tools;
}

// Reasoning text of an assistant message (vLLM/DeepSeek "reasoning_content", "reasoning", or
// the HF chat template's "thinking").
std::optional<std::string> reasoning_text(const Json& m) {
  for (const char* key : {"reasoning_content", "reasoning", "thinking"}) {
    auto it = m.find(key);
    if (it != m.end() && it->is_string() && !it->get<std::string>().empty()) return it->get<std::string>();
  }
  return std::nullopt;
}

Status add_assistant(const Json& m, const std::string& where, Conversation* conv,
                     std::map<std::string, std::string>* call_names) {
  GPTOSS_ASSIGN_OR_RETURN(std::optional<std::string> content, content_text(m, where));
  const std::optional<std::string> reasoning = reasoning_text(m);
  auto calls = m.find("tool_calls");
  const bool has_calls = calls != m.end() && !calls->is_null() && !(calls->is_array() && calls->empty());
  if (has_calls && !calls->is_array()) return bad(where, "tool_calls must be an array");
  if (!content && !reasoning && !has_calls) return bad(where, "assistant message without content or tool_calls");
  if (reasoning) conv->messages.push_back({"assistant", "", "", "analysis", "", *reasoning});
  // Text beside tool calls is a preamble (commentary); otherwise it is the answer (final).
  if (content && (!content->empty() || !has_calls)) {
    conv->messages.push_back({"assistant", "", "", has_calls ? "commentary" : "final", "", *content});
  }
  if (!has_calls) return {};
  for (size_t k = 0; k < calls->size(); ++k) {
    const Json& c = (*calls)[k];
    const std::string cw = fmt::format("{}.tool_calls[{}]", where, k);
    const Json* f = c.is_object() && c.contains("function") ? &c["function"] : nullptr;
    if (!f || !f->is_object() || !f->contains("name") || !(*f)["name"].is_string()) {
      return bad(cw, "tool call without function.name");
    }
    const std::string name = (*f)["name"].get<std::string>();
    std::string args;
    if (f->contains("arguments") && !(*f)["arguments"].is_null()) {
      const Json& a = (*f)["arguments"];
      args = a.is_string() ? a.get<std::string>() : a.dump();  // "arguments as given"
    }
    if (c.contains("id") && c["id"].is_string()) (*call_names)[c["id"].get<std::string>()] = name;
    conv->messages.push_back({"assistant", "", "functions." + name, "commentary", "<|constrain|>json", args});
  }
  return {};
}

Status add_tool_result(const Json& m, const std::string& where, Conversation* conv,
                       const std::map<std::string, std::string>& call_names) {
  GPTOSS_ASSIGN_OR_RETURN(std::optional<std::string> content, content_text(m, where));
  if (!content) return bad(where, "tool message without content");
  std::string name;
  if (m.contains("name") && m["name"].is_string()) name = m["name"].get<std::string>();
  if (name.empty() && m.contains("tool_call_id") && m["tool_call_id"].is_string()) {
    auto it = call_names.find(m["tool_call_id"].get<std::string>());
    if (it != call_names.end()) name = it->second;
  }
  if (name.empty()) return bad(where, "tool message without a name or a tool_call_id of an earlier tool call");
  if (!name.starts_with("functions.")) name = "functions." + name;
  conv->messages.push_back({"tool", name, "assistant", "commentary", "", *content});
  return {};
}

Status parse_messages(const Json& req, Conversation* conv) {
  auto it = req.find("messages");
  if (it == req.end() || !it->is_array() || it->empty()) return bad("messages", "must be a non-empty array");
  std::vector<std::string> instructions;
  std::map<std::string, std::string> call_names;  // tool_call_id → function name
  for (size_t i = 0; i < it->size(); ++i) {
    const Json& m = (*it)[i];
    const std::string where = fmt::format("messages[{}]", i);
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) return bad(where, "missing role");
    const std::string role = m["role"].get<std::string>();
    if (role == "system" || role == "developer" || role == "user") {
      GPTOSS_ASSIGN_OR_RETURN(std::optional<std::string> content, content_text(m, where));
      if (!content) return bad(where, fmt::format("{} message without content", role));
      if (role == "user") {
        conv->messages.push_back({"user", "", "", "", "", *content});
      } else {
        instructions.push_back(*content);
      }
    } else if (role == "assistant") {
      GPTOSS_RETURN_IF_ERROR(add_assistant(m, where, conv, &call_names));
    } else if (role == "tool") {
      GPTOSS_RETURN_IF_ERROR(add_tool_result(m, where, conv, call_names));
    } else {
      return bad(where, fmt::format("unknown role '{}'", role));
    }
  }
  for (size_t i = 0; i < instructions.size(); ++i) conv->instructions += (i ? "\n\n" : "") + instructions[i];
  return {};
}

}  // namespace

Result<Conversation> conversation_from_openai_json(const std::string& request_json, const std::string& date) {
  Json req;
  try {
    req = Json::parse(request_json);
  } catch (const nlohmann::json::parse_error& e) {
    return make_error(ErrorCode::kInvalidArgument, "request is not valid JSON: {}", e.what());
  }
  if (!req.is_object()) return bad("request", "must be a JSON object");
  Conversation conv;
  conv.system.current_date = date;
  if (auto e = req.find("reasoning_effort"); e != req.end() && !e->is_null()) {
    const std::string effort = e->is_string() ? e->get<std::string>() : e->dump();
    if (effort != "low" && effort != "medium" && effort != "high") {
      return bad("reasoning_effort", fmt::format("must be \"low\", \"medium\" or \"high\", got {}", e->dump()));
    }
    conv.system.reasoning_effort = effort;
  }
  if (auto b = req.find("builtin_tools"); b != req.end() && !b->is_null()) {
    if (!b->is_array()) return bad("builtin_tools", "must be an array of \"browser\" / \"python\"");
    for (const Json& name : *b) {
      if (name != "browser" && name != "python") {
        return bad("builtin_tools", fmt::format("unknown built-in tool {}", name.dump()));
      }
      conv.system.builtin_tools.push_back(name.get<std::string>());
    }
  }
  GPTOSS_ASSIGN_OR_RETURN(conv.tools, parse_tools(req));
  GPTOSS_RETURN_IF_ERROR(parse_messages(req, &conv));
  conv.has_developer = !conv.instructions.empty() || !conv.tools.empty();
  return conv;
}

}  // namespace gptoss
