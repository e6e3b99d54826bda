// Training data files -> tokenized, masked samples. One JSONL line = one sample in any of these forms:
//   {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}   rendered by a chat template
//   {"instruction": "...", "input": "...", "output": "..."}                          Alpaca (input optional)
//   {"prompt": "...", "response": "..."}                                            one user/assistant turn
//   {"text": "<s>[INST] p [/INST] a</s>..."}                                         the paper's reference format
// plus optional "domain" (string, or 0/1 / true/false = "general"/"domain"), the reference's "is_domain"
// (0/1 / true/false) and "weight" (number > 0). Other fields are counted per field and named in a warning.
// Errors name the file and 1-based line. Torch-free.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "data/chat-template.h"
#include "data/tokenized-sample.h"
#include "tokenizer/tokenizer.h"

namespace kdae::data {

enum class Truncation { truncate, drop };  // over-long sample: cut to seq_length, or leave it out
Truncation parse_truncation(const std::string& name);

struct DatasetOptions {
  std::string chat_template;                // template name; "" = detect from the tokenizer's chat_template
  std::string instruction_key = "[INST]";   // reference-format markers ({"text"} lines)
  std::string response_key = "[/INST]";
  int64_t seq_length = 2048;
  Truncation truncation = Truncation::truncate;
  int64_t min_supervised_tokens = 1;        // fewer supervised tokens (after truncation) = skipped
  bool dedup = false;                       // drop exact duplicate token sequences (first kept)
  std::filesystem::path cache_dir;          // tokenized-dataset cache; empty = none
  // Per-sample content problems (invalid UTF-8, empty answer, conversation ending with a user turn,
  // missing reference markers, roles the template cannot express): counted in stats.skipped when
  // true, a "FILE:LINE: ..." error when false. Structural problems (bad JSON, types) are always errors.
  bool skip_invalid = true;
};

struct DatasetStats {
  int64_t lines = 0;                        // non-blank lines read
  int64_t samples = 0;                      // kept
  int64_t tokens = 0;                       // over kept samples
  int64_t supervised_tokens = 0;
  int64_t truncated = 0;                    // kept but cut to seq_length
  std::map<std::string, int64_t> skipped;   // reason -> count ("too long", "no supervised tokens", "duplicate", ...)
  std::map<std::string, int64_t> ignored_fields;  // field no form reads -> lines carrying it (reported as a warning)
  std::vector<int64_t> lengths;             // token count per kept sample (histograms)
};

struct Dataset {
  std::filesystem::path path;
  std::vector<TokenizedSample> samples;
  // Domain names by index (TokenizedSample::domain). [0] is always "general"; 0/1 flags map to
  // "general"/"domain"; other strings get the next index in order of first appearance.
  std::vector<std::string> domain_names;
  DatasetStats stats;
  std::string fingerprint;  // hex hash of file bytes + tokenizer + template + options (the cache key)
  bool from_cache = false;
  std::vector<int64_t> sample_lines;  // 1-based source line of each kept sample
  std::string chat_template;          // template name used for conversations; "" = none was needed/found
  std::vector<std::string> warnings;  // e.g. an invalid cache file that was rebuilt (also printed to stderr)
};

// The chat template for conversation-style lines, the one resolution every command uses: by name
// ("" or "auto" = detected from the tokenizer's chat_template). nullopt when detection fails; for
// the loader that is only an error once a line needs a template.
std::optional<ChatTemplate> chat_template_for(const tok::Tokenizer& tokenizer, const std::string& name);

// Reads, renders, tokenizes and filters. Uses and fills the cache when options.cache_dir is set.
Dataset load_dataset(const std::filesystem::path& jsonl, const tok::Tokenizer& tokenizer,
                     const DatasetOptions& options);

}  // namespace kdae::data
