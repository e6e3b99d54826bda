// The OpenAI API's wire format, as kdae serve speaks it: request bodies parsed and checked into
// plain structs, responses and errors built as JSON. No HTTP and no model here.
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/chat-template.h"

namespace kdae::serve {

// A request the server answers with an OpenAI-style error body and this HTTP status.
struct ApiError : std::runtime_error {
  ApiError(int status, std::string message, std::string param = "", std::string code = "",
           std::string type = "invalid_request_error");
  int status;
  std::string param, code, type;
};
nlohmann::json error_body(const ApiError& e);

// What chat and text completions share.
struct Sampling {
  std::string model;                 // empty = the served one
  std::optional<int64_t> max_tokens; // absent: the endpoint's default
  double temperature = 1.0;          // OpenAI's default; 0 = greedy
  double top_p = 1.0;
  std::vector<std::string> stop;     // up to 4 strings; the output ends before the first one found
  std::optional<uint64_t> seed;      // absent: a fresh seed per request
  int64_t n = 1;                     // choices, each sampled with seed + index
  bool stream = false;
  bool logprobs = false;
  int64_t top_logprobs = 0;
};

struct ChatRequest {
  Sampling sampling;
  std::vector<data::Message> messages;
};

struct CompletionRequest {
  Sampling sampling;
  std::string prompt;
  bool echo = false;  // the prompt (and with logprobs its token log-probabilities) before the completion
};

// Throw ApiError (400) naming the field at fault.
ChatRequest parse_chat_request(const std::string& body);
CompletionRequest parse_completion_request(const std::string& body);

// One token as the API reports it: its text, log-probability and the most likely alternatives.
struct ReportedToken {
  std::string text;
  std::optional<float> logprob;  // absent for the first prompt token (nothing predicts it)
  std::vector<std::pair<std::string, float>> top;
  int64_t text_offset = 0;       // byte offset in prompt + completion (completions only)
};

// "logprobs" of a text completion choice (the legacy shape: tokens, token_logprobs, top_logprobs,
// text_offset) and of a chat choice ({"content": [{token, logprob, bytes, top_logprobs}]}).
nlohmann::json completion_logprobs(const std::vector<ReportedToken>& tokens);
nlohmann::json chat_logprobs(const std::vector<ReportedToken>& tokens);

// Longest prefix of `text` that cannot be the start of a stop string: what streaming may send now.
size_t sendable_length(const std::string& text, const std::vector<std::string>& stop);
// Where the first stop string begins in `text` (npos: none).
size_t find_stop(const std::string& text, const std::vector<std::string>& stop);

}  // namespace kdae::serve
