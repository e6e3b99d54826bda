// One JSONL data line -> a conversation (or a reference-format text) with its domain and weight,
// before any template or tokenizer is involved. The accepted forms are listed in data/dataset.h.
// Structural problems (bad JSON, missing fields, wrong types, unknown roles, bad domain/weight) throw
// "FILE:LINE: ..." (so does a line whose "domain" and "is_domain" disagree); per-sample content
// problems (invalid UTF-8, empty answer, conversation ending with a user turn) come back as a skip
// reason so the caller can count them. Fields no form reads are listed per record. Torch-free.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "data/chat-template.h"

namespace kdae::data {

enum class SampleForm { messages, alpaca, prompt_response, text };
const char* form_name(SampleForm form);

struct JsonlRecord {
  int64_t line = 0;                // 1-based line in the file
  SampleForm form = SampleForm::messages;
  std::vector<Message> messages;   // messages / alpaca / prompt_response (alpaca and prompt-response
                                   // become one user turn and one assistant turn)
  std::string text;                // text (reference format)
  std::string domain = "general";  // "domain" or the reference's "is_domain": 0/false = "general", 1/true = "domain",
                                   // or the given name ("domain" only)
  float weight = 1.0f;
  std::string skip_reason;         // non-empty: the line is well-formed but unusable as a sample
  std::vector<std::string> ignored_fields;  // fields of the line that its form does not read
};

// Parses one non-blank line; `where` ("FILE:LINE") prefixes every error.
JsonlRecord parse_jsonl_line(std::string_view line, int64_t line_no, const std::string& where);

// Visits every non-blank line of a JSONL file's bytes; file_name names it in errors.
void read_jsonl(std::string_view bytes, const std::string& file_name,
                const std::function<void(JsonlRecord&&)>& visit);

}  // namespace kdae::data
