// HF tokenizer.json "normalizer" stages. Supported: Sequence, NFC/NFD/NFKC/NFKD, Lowercase,
// Prepend, Replace (String pattern).
#pragma once
#include <functional>
#include <nlohmann/json_fwd.hpp>
#include <string>

#include "tokenizer/normalized-text.h"

namespace kdae::tok {

using Normalizer = std::function<void(NormalizedText&)>;

// Empty function for a null normalizer.
Normalizer make_normalizer(const nlohmann::json& config, const std::string& where);

}  // namespace kdae::tok
