// HF tokenizer.json "pre_tokenizer" stages: split normalized text into the pieces BPE sees.
// Supported: Sequence, Split (String/Regex, every behavior, invert), ByteLevel, Metaspace, Digits.
#pragma once
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "tokenizer/normalized-text.h"

namespace kdae::tok {

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces pieces by their splits, in order. Empty pieces are dropped.
  virtual void apply(std::vector<NormalizedText>& pieces) const = 0;
};

// `where` names the file and key for error messages ("dir/tokenizer.json: pre_tokenizer").
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& config, const std::string& where);

// The GPT-2 split regex ByteLevel uses when use_regex is set.
extern const char* const kGpt2SplitRegex;

}  // namespace kdae::tok
