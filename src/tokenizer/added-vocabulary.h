// Added tokens of tokenizer.json ("added_tokens"): matched in the text before the model runs,
// leftmost-longest, with HF's lstrip / rstrip / single_word / normalized rules. Torch-free.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kdae::tok {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false, special = false;
};

struct AddedMatch {
  int32_t id;
  size_t begin, end;  // byte range in the searched text, widened by lstrip/rstrip
};

// Matches one group of added tokens (the normalized ones, or the others).
class AddedTokenMatcher {
 public:
  void add(const AddedToken& token);
  bool empty() const { return tokens_.empty(); }
  // Non-overlapping matches, left to right.
  void find(std::string_view text, std::vector<AddedMatch>& out) const;

 private:
  std::vector<AddedToken> tokens_;
  std::vector<std::vector<size_t>> by_first_byte_ = std::vector<std::vector<size_t>>(256);  // longest first
};

}  // namespace kdae::tok
