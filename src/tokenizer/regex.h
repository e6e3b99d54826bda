// A compiled Unicode regex (PCRE2, UTF + UCP so \p{L}, \s and (?i) follow Unicode like the Oniguruma
// engine HF tokenizers uses). Torch-free.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kdae::tok {

class Regex {
 public:
  // Throws kdae::Error naming `where` (file and key) if the pattern does not compile.
  Regex(const std::string& pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Non-overlapping matches [begin, end) in text, left to right (empty matches skipped).
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kdae::tok
