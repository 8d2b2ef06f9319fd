// Harmony prompt rendering (openai/harmony render_conversation*): system and developer messages,
// conversation messages with their headers, analysis dropping, training and generation suffixes.
#include <algorithm>

#include "tokenizer/harmony.h"
#include "tokenizer/harmony_schema.h"

namespace gptoss {

namespace {

using harmony_detail::OrderedJson;
namespace ht = harmony_tokens;

const char* structural_token_text(int32_t id) {
  switch (id) {
    case ht::kStart: return "<|start|>";
    case ht::kEnd: return "<|end|>";
    case ht::kMessage: return "<|message|>";
    case ht::kChannel: return "<|channel|>";
    case ht::kConstrain: return "<|constrain|>";
    case ht::kReturn: return "<|return|>";
    case ht::kCall: return "<|call|>";
    case ht::kEndOfText: return "<|endoftext|>";
    case ht::kStartOfText: return "<|startoftext|>";
    default: return nullptr;
  }
}

constexpr std::string_view kConstrainMarker = "<|constrain|>";

class PieceWriter {
 public:
  void token(int32_t id) { out_.push_back({id, {}}); }
  void text(std::string s) {
    if (!s.empty()) out_.push_back({-1, std::move(s)});  // empty text encodes to nothing
  }
  std::vector<PromptPiece>& pieces() { return out_; }

 private:
  std::vector<PromptPiece> out_;
};

Result<std::string> system_body(const SystemOptions& sys, bool has_function_tools) {
  std::vector<std::string> sections;
  std::vector<std::string> top;
  if (!sys.model_identity.empty()) top.push_back(sys.model_identity);
  if (!sys.knowledge_cutoff.empty()) top.push_back("Knowledge cutoff: " + sys.knowledge_cutoff);
  if (!sys.current_date.empty()) top.push_back("Current date: " + sys.current_date);
  if (!top.empty()) {
    std::string s = top[0];
    for (size_t i = 1; i < top.size(); ++i) s += "\n" + top[i];
    sections.push_back(s);
  }
  if (!sys.reasoning_effort.empty()) sections.push_back("Reasoning: " + sys.reasoning_effort);
  if (!sys.builtin_tools.empty()) {
    // Upstream keeps namespaces in a sorted map: name order, each once.
    std::vector<std::string> names = sys.builtin_tools;
    std::sort(names.begin(), names.end());
    names.erase(std::unique(names.begin(), names.end()), names.end());
    std::vector<harmony_detail::ToolNamespace> namespaces;
    for (const auto& n : names) {
      GPTOSS_ASSIGN_OR_RETURN(auto ns, harmony_detail::builtin_tool_namespace(n));
      namespaces.push_back(std::move(ns));
    }
    sections.push_back(harmony_detail::tools_section(namespaces));
  }
  if (!sys.valid_channels.empty()) {
    std::string line = "# Valid channels: ";
    for (size_t i = 0; i < sys.valid_channels.size(); ++i) line += (i ? ", " : "") + sys.valid_channels[i];
    line += ".";
    if (sys.channel_required) line += " Channel must be included for every message.";
    if (has_function_tools) line += "\nCalls to these tools must go to the commentary channel: 'functions'.";
    sections.push_back(line);
  }
  std::string body;
  for (size_t i = 0; i < sections.size(); ++i) body += (i ? "\n\n" : "") + sections[i];
  return body;
}

Result<std::string> developer_body(const Conversation& conv) {
  std::vector<std::string> sections;
  if (!conv.instructions.empty()) {
    sections.push_back("# Instructions");
    sections.push_back(conv.instructions);
  }
  if (!conv.tools.empty()) {
    harmony_detail::ToolNamespace ns{"functions", std::nullopt, {}};
    for (const ToolSpec& t : conv.tools) {
      if (t.name.empty()) return make_error(ErrorCode::kInvalidArgument, "function tool without a name");
      harmony_detail::ToolDef def{t.name, t.description, std::nullopt};
      if (!t.parameters_json.empty()) {
        auto params = OrderedJson::parse(t.parameters_json, nullptr, /*allow_exceptions=*/false);
        if (params.is_discarded()) {
          return make_error(ErrorCode::kInvalidArgument, "tool '{}': parameters are not valid JSON", t.name);
        }
        if (!params.is_null()) def.parameters = std::move(params);
      }
      ns.tools.push_back(std::move(def));
    }
    sections.push_back(harmony_detail::tools_section({ns}));
  }
  std::string body;
  for (size_t i = 0; i < sections.size(); ++i) body += (i ? "\n\n" : "") + sections[i];
  return body;
}

void render_simple(PieceWriter* w, const char* role, std::string body) {
  w->token(ht::kStart);
  w->text(role);
  w->token(ht::kMessage);
  w->text(std::move(body));
  w->token(ht::kEnd);
}

Status render_message(PieceWriter* w, const HarmonyMessage& m) {
  static const std::vector<std::string> kRoles = {"system", "developer", "user", "assistant", "tool"};
  if (std::find(kRoles.begin(), kRoles.end(), m.role) == kRoles.end()) {
    return make_error(ErrorCode::kInvalidArgument, "message with unknown role '{}'", m.role);
  }
  w->token(ht::kStart);
  if (m.role == "tool") {
    // Tool messages are authored by the tool itself: the header starts with its name alone.
    if (m.name.empty()) return make_error(ErrorCode::kInvalidArgument, "tool message without a name (author)");
    w->text(m.name);
  } else {
    w->text(m.role);
    if (!m.name.empty()) w->text(":" + m.name);
  }
  if (!m.recipient.empty() && m.recipient != "all") w->text(" to=" + m.recipient);
  if (!m.channel.empty()) {
    w->token(ht::kChannel);
    w->text(m.channel);
  }
  if (!m.content_type.empty()) {
    if (m.content_type.starts_with(kConstrainMarker)) {
      // The marker is a structural token, never text: " " <|constrain|> "json".
      w->text(" ");
      w->token(ht::kConstrain);
      w->text(m.content_type.substr(kConstrainMarker.size()));
    } else {
      w->text(" " + m.content_type);
    }
  }
  w->token(ht::kMessage);
  w->text(m.content);
  w->token(m.role == "assistant" && !m.recipient.empty() ? ht::kCall : ht::kEnd);
  return {};
}

}  // namespace

Result<std::vector<PromptPiece>> harmony_render_pieces(const Conversation& conv, const RenderOptions& opts) {
  PieceWriter w;
  const bool has_function_tools = conv.has_developer && !conv.tools.empty();
  if (conv.has_system) {
    GPTOSS_ASSIGN_OR_RETURN(std::string body, system_body(conv.system, has_function_tools));
    render_simple(&w, "system", std::move(body));
  }
  if (conv.has_developer) {
    GPTOSS_ASSIGN_OR_RETURN(std::string body, developer_body(conv));
    render_simple(&w, "developer", std::move(body));
  }
  const auto& msgs = conv.messages;
  // Harmony drops analysis messages before the first final one, but only once the last assistant
  // message is itself final (a pending tool call keeps its chain of thought).
  bool last_assistant_final = false;
  for (auto it = msgs.rbegin(); it != msgs.rend(); ++it) {
    if (it->role == "assistant") {
      last_assistant_final = it->channel == "final";
      break;
    }
  }
  size_t first_final = msgs.size();
  for (size_t i = 0; i < msgs.size(); ++i) {
    if (msgs[i].channel == "final") {
      first_final = i;
      break;
    }
  }
  const bool drop = opts.auto_drop_analysis && last_assistant_final;
  for (size_t i = 0; i < msgs.size(); ++i) {
    if (drop && i < first_final && msgs[i].channel == "analysis") continue;
    GPTOSS_RETURN_IF_ERROR(render_message(&w, msgs[i]));
  }
  if (opts.for_training && !msgs.empty() && msgs.back().role == "assistant" && msgs.back().channel == "final") {
    w.pieces().back().token = ht::kReturn;  // the sampled end of a final answer
  }
  if (opts.add_generation_prompt) {
    w.token(ht::kStart);
    w.text("assistant");
  }
  return std::move(w.pieces());
}

std::string harmony_pieces_text(const std::vector<PromptPiece>& pieces) {
  std::string out;
  for (const PromptPiece& p : pieces) {
    if (p.token < 0) {
      out += p.text;
    } else if (const char* name = structural_token_text(p.token)) {
      out += name;
    } else {
      out += fmt::format("<|token_{}|>", p.token);
    }
  }
  return out;
}

Result<std::vector<int32_t>> harmony_render(const Tokenizer& tok, const Conversation& conv, const RenderOptions& opts) {
  GPTOSS_ASSIGN_OR_RETURN(std::vector<PromptPiece> pieces, harmony_render_pieces(conv, opts));
  std::vector<int32_t> ids;
  for (const PromptPiece& p : pieces) {
    if (p.token >= 0) {
      const char* name = structural_token_text(p.token);
      if (!name || tok.token_bytes(p.token) != name) {
        return make_error(ErrorCode::kInvalidArgument, "the tokenizer does not define {} as token {}",
                          name ? name : "a harmony token", p.token);
      }
      ids.push_back(p.token);
    } else {
      const std::vector<int32_t> t = tok.encode(p.text, /*allow_special=*/false);
      ids.insert(ids.end(), t.begin(), t.end());
    }
  }
  return ids;
}

}  // namespace gptoss
