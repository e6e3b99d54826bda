// Text being tokenized, with the original byte range behind every byte, so token offsets survive
// normalization (NFC, "▁" replacement, prefixes) and byte-level mapping. Mirrors the alignment rules
// of HF tokenizers' NormalizedString: each byte maps to the whole original character it came from.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kdae::tok {

using Range = std::pair<uint32_t, uint32_t>;

struct NormalizedText {
  std::string text;
  std::vector<Range> align;  // align.size() == text.size()

  // Identity normalization of original[begin, end): every byte maps to its character's range.
  static NormalizedText from_original(std::string_view original, size_t begin, size_t end);

  NormalizedText slice(size_t begin, size_t end) const;
  // Original range covered by text bytes [begin, end) (begin < end).
  Range original_range(size_t begin, size_t end) const {
    return {align[begin].first, align[end - 1].second};
  }
  // Inserts s before the first character; the inserted bytes take the first character's range.
  void prepend(std::string_view s);
  // Replaces every occurrence of pattern (non-empty) by content; content bytes take the matched range.
  void replace(std::string_view pattern, std::string_view content);
  // Unicode normalization via utf8proc: "NFC", "NFD", "NFKC", "NFKD". Each output character takes the
  // range of the run of input characters it was composed from (runs start at combining class 0).
  void unicode_normalize(std::string_view form);
  void lowercase();
};

}  // namespace kdae::tok
