#include "data/jsonl-reader.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <optional>

#include "common/error.h"
#include "tokenizer/utf8.h"

namespace kdae::data {

using nlohmann::json;

const char* form_name(SampleForm form) {
  switch (form) {
    case SampleForm::messages: return "messages";
    case SampleForm::alpaca: return "instruction/input/output";
    case SampleForm::prompt_response: return "prompt/response";
    case SampleForm::text: return "text";
  }
  return "?";
}

namespace {

std::string type_name(const json& v) { return v.type_name(); }

const json& required(const json& obj, const char* key, const std::string& where) {
  const auto it = obj.find(key);
  if (it == obj.end()) fail(where, ": missing field '", key, "'");
  return *it;
}

std::string string_field(const json& obj, const char* key, const std::string& where, bool optional = false) {
  const auto it = obj.find(key);
  if (it == obj.end()) {
    if (optional) return {};
    fail(where, ": missing field '", key, "'");
  }
  if (!it->is_string()) fail(where, ": field '", key, "' must be a string, got ", type_name(*it));
  return it->get<std::string>();
}

bool blank(const std::string& s) {
  for (unsigned char c : s)
    if (!std::isspace(c)) return false;
  return true;
}

// DAE's is_domain flag: the reference put a sample with a flag other than 0/1 in both groups
// (paper-notes defect 4), so anything but 0/1/true/false/a name is rejected.
std::string parse_domain(const json& v, const std::string& where) {
  if (v.is_boolean()) return v.get<bool>() ? "domain" : "general";
  if (v.is_number_integer() || v.is_number_unsigned()) {
    const auto n = v.get<int64_t>();
    if (n == 0) return "general";
    if (n == 1) return "domain";
    fail(where, ": domain must be 0/1 or a name, got ", n);
  }
  if (v.is_string() && !v.get<std::string>().empty()) return v.get<std::string>();
  fail(where, ": domain must be 0/1 or a name, got ", v.dump());
}

// The reference's own flag: only 0/1/true/false, so a domain name here is an error too.
std::string parse_is_domain(const json& v, const std::string& where) {
  const bool flag = v.is_boolean() || ((v.is_number_integer() || v.is_number_unsigned()) &&
                                       (v.get<int64_t>() == 0 || v.get<int64_t>() == 1));
  if (!flag) fail(where, ": is_domain must be 0/1 or true/false, got ", v.dump());
  return parse_domain(v, where);
}

// The sample's domain from "domain" and/or the reference's "is_domain"; both present must agree.
std::optional<std::string> read_domain(const json& obj, const std::string& where) {
  std::optional<std::string> domain, is_domain;
  if (const auto it = obj.find("domain"); it != obj.end() && !it->is_null()) domain = parse_domain(*it, where);
  if (const auto it = obj.find("is_domain"); it != obj.end() && !it->is_null()) is_domain = parse_is_domain(*it, where);
  if (domain && is_domain && *domain != *is_domain)
    fail(where, ": domain (", obj.at("domain").dump(), ") and is_domain (", obj.at("is_domain").dump(),
         ") disagree; keep one of them");
  return domain ? domain : is_domain;
}

// Fields this line's form does not read (a typo such as "is_domian", or another form's field): reported
// per file by the caller, since silently dropping them hides mistakes.
std::vector<std::string> unread_fields(const json& obj, SampleForm form) {
  static const std::vector<std::string> common = {"domain", "is_domain", "weight"};
  static const std::vector<std::string> messages = {"messages"}, alpaca = {"instruction", "input", "output"},
                                        prompt_response = {"prompt", "response"}, text = {"text"};
  const auto& read = form == SampleForm::messages ? messages
                     : form == SampleForm::alpaca ? alpaca
                     : form == SampleForm::prompt_response ? prompt_response
                                                           : text;
  auto known = [](const std::vector<std::string>& names, const std::string& key) {
    return std::find(names.begin(), names.end(), key) != names.end();
  };
  std::vector<std::string> out;
  for (const auto& item : obj.items())
    if (!known(read, item.key()) && !known(common, item.key())) out.push_back(item.key());
  return out;
}

float parse_weight(const json& v, const std::string& where) {
  if (!v.is_number()) fail(where, ": weight must be a number > 0, got ", type_name(v));
  const double w = v.get<double>();
  if (!(w > 0) || !std::isfinite(w)) fail(where, ": weight must be a number > 0, got ", v.dump());
  return static_cast<float>(w);
}

void read_messages(const json& obj, const std::string& where, JsonlRecord& r) {
  const json& list = required(obj, "messages", where);
  if (!list.is_array()) fail(where, ": field 'messages' must be an array, got ", type_name(list));
  for (size_t i = 0; i < list.size(); ++i) {
    const json& m = list[i];
    const std::string at = str(where, ": messages[", i, "]");
    if (!m.is_object()) fail(at, " must be an object with role and content, got ", type_name(m));
    Message msg{string_field(m, "role", at), string_field(m, "content", at)};
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant")
      fail(at, ": unknown role '", msg.role, "' (expected system, user or assistant)");
    r.messages.push_back(std::move(msg));
  }
}

// Content problems the issue asks to skip and count rather than abort on.
std::string conversation_problem(const std::vector<Message>& messages) {
  bool any_answer = false;
  for (const auto& m : messages) {
    if (m.role != "assistant") continue;
    any_answer = true;
    if (blank(m.content)) return "empty assistant turn";
  }
  if (!any_answer) return "no assistant turn";
  if (messages.back().role != "assistant") return "ends with a user turn";
  return {};
}

}  // namespace

JsonlRecord parse_jsonl_line(std::string_view line, int64_t line_no, const std::string& where) {
  JsonlRecord r;
  r.line = line_no;
  // nlohmann rejects invalid UTF-8 as a parse error; it is a content problem, not a syntax one.
  if (tok::utf8_valid_prefix(line) != line.size()) {
    r.skip_reason = "invalid UTF-8";
    return r;
  }
  json obj;
  try {
    obj = json::parse(line);
  } catch (const json::parse_error& e) {
    fail(where, ": malformed JSON: ", e.what());
  }
  if (!obj.is_object()) fail(where, ": expected a JSON object, got ", type_name(obj));

  if (obj.contains("messages")) {
    r.form = SampleForm::messages;
    read_messages(obj, where, r);
  } else if (obj.contains("instruction")) {
    r.form = SampleForm::alpaca;
    std::string user = string_field(obj, "instruction", where);
    const std::string input = string_field(obj, "input", where, /*optional=*/true);
    if (!input.empty()) user += "\n\n" + input;
    r.messages = {{"user", std::move(user)}, {"assistant", string_field(obj, "output", where)}};
  } else if (obj.contains("prompt")) {
    r.form = SampleForm::prompt_response;
    r.messages = {{"user", string_field(obj, "prompt", where)}, {"assistant", string_field(obj, "response", where)}};
  } else if (obj.contains("text")) {
    r.form = SampleForm::text;
    r.text = string_field(obj, "text", where);
  } else {
    fail(where, ": no sample found: expected 'messages', 'instruction' + 'output', 'prompt' + 'response' or 'text'");
  }
  if (auto domain = read_domain(obj, where)) r.domain = std::move(*domain);
  r.ignored_fields = unread_fields(obj, r.form);
  if (const auto it = obj.find("weight"); it != obj.end() && !it->is_null()) r.weight = parse_weight(*it, where);
  if (r.form != SampleForm::text) r.skip_reason = conversation_problem(r.messages);
  return r;
}

void read_jsonl(std::string_view bytes, const std::string& file_name,
                const std::function<void(JsonlRecord&&)>& visit) {
  size_t pos = 0;
  int64_t line_no = 0;
  while (pos < bytes.size()) {
    size_t end = bytes.find('\n', pos);
    if (end == std::string_view::npos) end = bytes.size();
    std::string_view line = bytes.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.find_first_not_of(" \t\r\f\v") == std::string_view::npos) continue;
    visit(parse_jsonl_line(line, line_no, str(file_name, ":", line_no)));
  }
}

}  // namespace kdae::data
