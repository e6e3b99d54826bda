#include "serve/openai-api.h"

#include <nlohmann/json.hpp>

#include <algorithm>

namespace kdae::serve {
namespace {

using nlohmann::json;

ApiError bad(const std::string& param, const std::string& message) { return ApiError(400, message, param); }

json parse_object(const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw ApiError(400, "the request body is not valid JSON");
  if (!j.is_object()) throw ApiError(400, "the request body must be a JSON object");
  return j;
}

template <typename T>
std::optional<T> optional_number(const json& j, const char* key) {
  if (!j.contains(key) || j[key].is_null()) return std::nullopt;
  if (!j[key].is_number()) throw bad(key, std::string("'") + key + "' must be a number");
  return j[key].get<T>();
}

bool optional_bool(const json& j, const char* key) {
  if (!j.contains(key) || j[key].is_null()) return false;
  if (!j[key].is_boolean()) throw bad(key, std::string("'") + key + "' must be a boolean");
  return j[key].get<bool>();
}

Sampling parse_sampling(const json& j) {
  Sampling s;
  if (j.contains("model")) {
    if (!j["model"].is_string()) throw bad("model", "'model' must be a string");
    s.model = j["model"].get<std::string>();
  }
  // max_completion_tokens is the chat API's newer name for the same limit.
  s.max_tokens = optional_number<int64_t>(j, "max_tokens");
  if (!s.max_tokens) s.max_tokens = optional_number<int64_t>(j, "max_completion_tokens");
  if (s.max_tokens && *s.max_tokens < 1) throw bad("max_tokens", "'max_tokens' must be at least 1");
  s.temperature = optional_number<double>(j, "temperature").value_or(1.0);
  if (s.temperature < 0 || s.temperature > 2) throw bad("temperature", "'temperature' must be in [0, 2]");
  s.top_p = optional_number<double>(j, "top_p").value_or(1.0);
  if (s.top_p <= 0 || s.top_p > 1) throw bad("top_p", "'top_p' must be in (0, 1]");
  if (auto seed = optional_number<int64_t>(j, "seed")) s.seed = static_cast<uint64_t>(*seed);
  s.n = optional_number<int64_t>(j, "n").value_or(1);
  if (s.n < 1 || s.n > 16) throw bad("n", "'n' must be in [1, 16]");
  s.stream = optional_bool(j, "stream");
  if (j.contains("stop") && !j["stop"].is_null()) {
    const json& stop = j["stop"];
    if (stop.is_string()) s.stop = {stop.get<std::string>()};
    else if (stop.is_array() && std::all_of(stop.begin(), stop.end(), [](const json& x) { return x.is_string(); }))
      s.stop = stop.get<std::vector<std::string>>();
    else throw bad("stop", "'stop' must be a string or an array of strings");
    if (s.stop.size() > 4) throw bad("stop", "'stop' takes at most 4 strings");
    if (std::any_of(s.stop.begin(), s.stop.end(), [](const std::string& x) { return x.empty(); }))
      throw bad("stop", "'stop' strings must not be empty");
  }
  return s;
}

}  // namespace

ApiError::ApiError(int status_, std::string message, std::string param_, std::string code_, std::string type_)
    : std::runtime_error(std::move(message)), status(status_), param(std::move(param_)), code(std::move(code_)),
      type(std::move(type_)) {}

json error_body(const ApiError& e) {
  return {{"error",
           {{"message", e.what()},
            {"type", e.type},
            {"param", e.param.empty() ? json(nullptr) : json(e.param)},
            {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}};
}

ChatRequest parse_chat_request(const std::string& body) {
  const json j = parse_object(body);
  ChatRequest r;
  r.sampling = parse_sampling(j);
  if (!j.contains("messages") || !j["messages"].is_array() || j["messages"].empty())
    throw bad("messages", "'messages' must be a non-empty array");
  for (size_t i = 0; i < j["messages"].size(); ++i) {
    const json& m = j["messages"][i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      throw bad(where, where + " needs a string 'role'");
    std::string content;
    if (m.contains("content") && m["content"].is_string()) {
      content = m["content"].get<std::string>();
    } else if (m.contains("content") && m["content"].is_array()) {  // [{"type": "text", "text": ...}, ...]
      for (const json& part : m["content"]) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
          throw bad(where, where + ": only text content parts are supported");
        content += part["text"].get<std::string>();
      }
    } else {
      throw bad(where, where + " needs 'content' (a string or text parts)");
    }
    r.messages.push_back({m["role"].get<std::string>(), content});
  }
  r.sampling.logprobs = optional_bool(j, "logprobs");
  r.sampling.top_logprobs = optional_number<int64_t>(j, "top_logprobs").value_or(0);
  if (r.sampling.top_logprobs < 0 || r.sampling.top_logprobs > 20)
    throw bad("top_logprobs", "'top_logprobs' must be in [0, 20]");
  if (r.sampling.top_logprobs > 0 && !r.sampling.logprobs)
    throw bad("top_logprobs", "'top_logprobs' needs 'logprobs': true");
  return r;
}

CompletionRequest parse_completion_request(const std::string& body) {
  const json j = parse_object(body);
  CompletionRequest r;
  r.sampling = parse_sampling(j);
  const json prompt = j.value("prompt", json());
  if (prompt.is_string()) r.prompt = prompt.get<std::string>();
  else if (prompt.is_array() && prompt.size() == 1 && prompt[0].is_string()) r.prompt = prompt[0].get<std::string>();
  else throw bad("prompt", "'prompt' must be a string (or a list of one string)");
  if (r.prompt.empty()) throw bad("prompt", "'prompt' must not be empty");
  // The legacy API: logprobs is the number of alternatives (0 = the chosen token's only).
  if (auto top = optional_number<int64_t>(j, "logprobs")) {
    if (*top < 0 || *top > 20) throw bad("logprobs", "'logprobs' must be in [0, 20]");
    r.sampling.logprobs = true;
    r.sampling.top_logprobs = *top;
  }
  r.echo = optional_bool(j, "echo");
  return r;
}

json completion_logprobs(const std::vector<ReportedToken>& tokens) {
  json text = json::array(), logprobs = json::array(), top = json::array(), offsets = json::array();
  for (const auto& t : tokens) {
    text.push_back(t.text);
    logprobs.push_back(t.logprob ? json(*t.logprob) : json(nullptr));
    if (!t.logprob) {
      top.push_back(nullptr);
    } else {
      json alternatives = json::object();
      for (const auto& [s, lp] : t.top) alternatives[s] = lp;
      top.push_back(alternatives);
    }
    offsets.push_back(t.text_offset);
  }
  return {{"tokens", text}, {"token_logprobs", logprobs}, {"top_logprobs", top}, {"text_offset", offsets}};
}

json chat_logprobs(const std::vector<ReportedToken>& tokens) {
  auto bytes = [](const std::string& s) {
    json b = json::array();
    for (unsigned char c : s) b.push_back(static_cast<int>(c));
    return b;
  };
  json content = json::array();
  for (const auto& t : tokens) {
    json top = json::array();
    for (const auto& [s, lp] : t.top) top.push_back({{"token", s}, {"logprob", lp}, {"bytes", bytes(s)}});
    content.push_back({{"token", t.text}, {"logprob", t.logprob.value_or(0.f)}, {"bytes", bytes(t.text)},
                       {"top_logprobs", top}});
  }
  return {{"content", content}, {"refusal", nullptr}};
}

size_t find_stop(const std::string& text, const std::vector<std::string>& stop) {
  size_t first = std::string::npos;
  for (const auto& s : stop) first = std::min(first, text.find(s));
  return first;
}

size_t sendable_length(const std::string& text, const std::vector<std::string>& stop) {
  size_t held = 0;
  for (const auto& s : stop)
    for (size_t k = std::min(s.size() - 1, text.size()); k > held; --k)
      if (text.compare(text.size() - k, k, s, 0, k) == 0) {
        held = k;
        break;
      }
  return text.size() - held;
}

}  // namespace kdae::serve
