// Streaming harmony output parser (openai/harmony StreamableParser semantics, spec §7.6) and the
// mapping of parsed assistant messages to reasoning / content / tool calls.
#include <algorithm>

#include "tokenizer/harmony.h"
#include "tokenizer/utf8.h"

namespace gptoss {

namespace {

namespace ht = harmony_tokens;

constexpr std::string_view kChannelMarker = "<|channel|>";
constexpr std::string_view kConstrainMarker = "<|constrain|>";

bool is_stop_token(int32_t t) {
  return t == ht::kEnd || t == ht::kReturn || t == ht::kCall;
}

bool is_known_role(std::string_view r) {
  return r == "user" || r == "assistant" || r == "system" || r == "developer" || r == "tool";
}

// Unicode White_Space, as Rust's char::is_whitespace (used by upstream's trim and channel scan).
bool is_unicode_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

std::string trim_unicode(std::string_view s) {
  size_t begin = 0, pos = 0;
  // Skip leading spaces, then remember the end of the last non-space codepoint.
  while (pos < s.size()) {
    size_t next = pos;
    if (!is_unicode_space(utf8::next_codepoint(s, &next))) break;
    begin = pos = next;
  }
  size_t end = begin;
  while (pos < s.size()) {
    size_t next = pos;
    const bool space = is_unicode_space(utf8::next_codepoint(s, &next));
    pos = next;
    if (!space) end = pos;
  }
  return std::string(s.substr(begin, end - begin));
}

// Rust's split_ascii_whitespace: separators are space, \t, \n, \f, \r (not \v).
std::vector<std::string> split_ascii_whitespace(std::string_view s) {
  std::vector<std::string> parts;
  size_t i = 0;
  auto is_sep = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\f' || c == '\r'; };
  while (i < s.size()) {
    while (i < s.size() && is_sep(s[i])) ++i;
    const size_t start = i;
    while (i < s.size() && !is_sep(s[i])) ++i;
    if (i > start) parts.emplace_back(s.substr(start, i - start));
  }
  return parts;
}

std::string decode_lossy(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  std::string bytes;
  for (int32_t id : ids) {
    if (tok.is_valid_id(id)) {
      bytes.append(tok.token_bytes(id));
    } else {
      bytes.append(utf8::kReplacement);
    }
  }
  return utf8::to_valid_lossy(bytes);
}

// Takes "<|channel|>NAME" out of the header text; NAME ends at whitespace or '<'. Returns false
// when the marker is present without a name.
bool extract_channel(std::string* header, std::string* channel) {
  const size_t idx = header->find(kChannelMarker);
  if (idx == std::string::npos) return true;
  const size_t start = idx + kChannelMarker.size();
  size_t end = start;
  while (end < header->size()) {
    size_t next = end;
    const uint32_t c = utf8::next_codepoint(*header, &next);
    if (is_unicode_space(c) || c == '<') break;
    end = next;
  }
  *channel = header->substr(start, end - start);
  header->erase(idx, end - idx);
  return !channel->empty();
}

std::string join_words(const std::vector<std::string>& words) {
  std::string out;
  for (size_t i = 0; i < words.size(); ++i) out += (i ? " " : "") + words[i];
  return out;
}

}  // namespace

HarmonyParser::HarmonyParser(const Tokenizer& tok, Options options)
    : tok_(tok),
      options_(std::move(options)),
      state_(options_.initial_role ? State::kHeader : State::kExpectStart),
      next_role_(options_.initial_role),
      decoder_(tok) {}

Status HarmonyParser::parse_header() {
  std::string header = decode_lossy(tok_, header_tokens_);
  header_tokens_.clear();
  std::string channel;
  if (!extract_channel(&header, &channel)) {
    return make_error(ErrorCode::kInvalidArgument, "channel marker present but no channel value found in header");
  }
  header = trim_unicode(header);
  // "to=x<|constrain|>json": a glued marker still starts its own word.
  if (header.find(kConstrainMarker) != std::string::npos) {
    std::string spaced;
    for (size_t pos = 0;;) {
      const size_t at = header.find(kConstrainMarker, pos);
      spaced += header.substr(pos, at == std::string::npos ? std::string::npos : at - pos);
      if (at == std::string::npos) break;
      spaced += " ";
      spaced += kConstrainMarker;
      pos = at + kConstrainMarker.size();
    }
    header = trim_unicode(spaced);
  }
  std::vector<std::string> parts = split_ascii_whitespace(header);
  std::string role, tool_name;
  if (next_role_) {
    role = *next_role_;
  } else {
    if (parts.empty()) return make_error(ErrorCode::kInvalidArgument, "message header did not contain a role");
    role = parts.front();
    if (!is_known_role(role)) {
      // An unknown author followed by more words (or a bare to=) is a tool speaking.
      if (parts.size() > 1 || role.starts_with("to=")) {
        tool_name = role;
        parts.erase(parts.begin());
        role = "tool";
      } else {
        return make_error(ErrorCode::kInvalidArgument, "unknown role: {}", role);
      }
    }
  }
  if (!parts.empty() && parts.front() == role) parts.erase(parts.begin());
  std::string recipient, content_type;
  if (!parts.empty()) {
    const size_t n = parts.size();
    std::string last = std::move(parts.back());
    parts.pop_back();
    if (last.starts_with("to=")) {
      recipient = last.substr(3);
    } else if (n == 1) {
      recipient = last;
    } else {
      content_type = last;
      std::string r = std::move(parts.back());
      parts.pop_back();
      recipient = r.starts_with("to=") ? r.substr(3) : r;
    }
  }
  if (!parts.empty()) {
    return make_error(ErrorCode::kInvalidArgument, "unexpected tokens remaining in message header: [{}]",
                      join_words(parts));
  }
  current_ = HarmonyMessage{role, tool_name, recipient, channel, content_type, {}};
  next_role_.reset();
  state_ = State::kContent;
  return {};
}

void HarmonyParser::recover_header_as_message() {
  std::string header = decode_lossy(tok_, header_tokens_);
  header_tokens_.clear();
  state_ = State::kExpectStart;
  std::string channel;
  extract_channel(&header, &channel);
  std::vector<std::string> words = split_ascii_whitespace(header);
  HarmonyMessage m;
  m.channel = channel;
  if (next_role_) {
    m.role = *next_role_;
  } else if (!words.empty() && is_known_role(words.front())) {
    m.role = words.front();
    words.erase(words.begin());
  } else {
    m.role = "assistant";
  }
  next_role_.reset();
  if (!words.empty() && words.front().starts_with("to=")) {
    m.recipient = words.front().substr(3);
    words.erase(words.begin());
  }
  if (words.empty() && m.channel.empty() && m.recipient.empty()) return;  // nothing was said
  m.content = join_words(words);
  last_delta_ = m.content;
  messages_.push_back(std::move(m));
}

void HarmonyParser::end_message() {
  std::string tail = decoder_.flush();
  current_.content += tail;
  last_delta_ = std::move(tail);
  messages_.push_back(std::move(current_));
  current_ = HarmonyMessage{};
  state_ = State::kExpectStart;
  next_role_.reset();
}

Status HarmonyParser::push(int32_t token) {
  last_delta_.clear();
  switch (state_) {
    case State::kExpectStart:
      if (token == ht::kStart) {
        state_ = State::kHeader;
        header_tokens_.clear();
        return {};
      }
      if (options_.strict) {
        return make_error(ErrorCode::kInvalidArgument, "unexpected token {} while expecting <|start|> ({})", token,
                          ht::kStart);
      }
      // Non-strict: text after a finished message starts an implicit assistant message; a stray
      // stop token says nothing and is dropped.
      if (is_stop_token(token)) return {};
      state_ = State::kHeader;
      header_tokens_.clear();
      next_role_ = "assistant";
      return push(token);
    case State::kHeader:
      if (token == ht::kMessage) return parse_header();
      if (is_stop_token(token) && !options_.strict) {
        recover_header_as_message();
        return {};
      }
      header_tokens_.push_back(token);  // strict: even a stop token is header text here
      return {};
    case State::kContent:
      if (is_stop_token(token)) {
        end_message();
        return {};
      }
      if (token == ht::kStart && !options_.strict) {
        // A model that forgot <|end|>: the new message's start also ends this one.
        end_message();
        state_ = State::kHeader;
        header_tokens_.clear();
        return {};
      }
      last_delta_ = decoder_.push(token);
      current_.content += last_delta_;
      return {};
  }
  return {};
}

Status HarmonyParser::finish() {
  last_delta_.clear();
  switch (state_) {
    case State::kExpectStart: return {};
    case State::kHeader:
      if (options_.strict) {
        return make_error(ErrorCode::kInvalidArgument,
                          "unexpected end of stream while waiting for the message "
                          "header to complete");
      }
      recover_header_as_message();  // an empty header (stream ended after <|start|>) yields nothing
      return {};
    case State::kContent: end_message(); return {};
  }
  return {};
}

AssistantOutput assistant_output_from_messages(const std::vector<HarmonyMessage>& messages) {
  AssistantOutput out;
  auto append = [](std::string* dst, const std::string& text) {
    if (!dst->empty()) *dst += "\n";
    *dst += text;
  };
  constexpr std::string_view kFunctions = "functions.";
  for (const HarmonyMessage& m : messages) {
    if (m.role != "assistant") continue;
    if (!m.recipient.empty()) {
      std::string name = m.recipient.starts_with(kFunctions) ? m.recipient.substr(kFunctions.size()) : m.recipient;
      out.tool_calls.push_back({std::move(name), m.content});
    } else if (m.channel == "analysis") {
      append(&out.reasoning, m.content);
    } else {
      append(&out.content, m.content);
    }
  }
  return out;
}

}  // namespace gptoss
