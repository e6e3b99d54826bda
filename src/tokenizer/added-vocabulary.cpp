#include "tokenizer/added-vocabulary.h"

#include <utf8proc.h>

#include <algorithm>

#include "tokenizer/utf8.h"

namespace kdae::tok {

void AddedTokenMatcher::add(const AddedToken& token) {
  if (token.content.empty()) return;
  tokens_.push_back(token);
  auto& bucket = by_first_byte_[static_cast<unsigned char>(token.content[0])];
  bucket.push_back(tokens_.size() - 1);
  std::stable_sort(bucket.begin(), bucket.end(),
                   [&](size_t a, size_t b) { return tokens_[a].content.size() > tokens_[b].content.size(); });
}

static bool is_whitespace(uint32_t cp) {
  switch (cp) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0x85: case 0xA0:
    case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

static bool is_word_char(uint32_t cp) {
  if (cp == '_') return true;
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO) ||
         cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_MC;
}

// Start of the character that ends at `end` (text valid UTF-8).
static size_t prev_char(std::string_view text, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(text[i]) & 0xC0) == 0x80) --i;
  return i;
}

void AddedTokenMatcher::find(std::string_view text, std::vector<AddedMatch>& out) const {
  out.clear();
  size_t consumed = 0;  // end of the previous match: lstrip never reaches before it
  size_t len;
  for (size_t pos = 0; pos < text.size(); ++pos) {
    const auto& bucket = by_first_byte_[static_cast<unsigned char>(text[pos])];
    const AddedToken* hit = nullptr;
    for (size_t k : bucket) {
      const auto& t = tokens_[k];
      if (text.compare(pos, t.content.size(), t.content) == 0) {
        hit = &t;
        break;
      }
    }
    if (!hit) continue;
    size_t begin = pos, end = pos + hit->content.size();
    if (hit->single_word) {
      const bool left_ok = begin == 0 || !is_word_char(utf8_decode(text, prev_char(text, begin), &len));
      const bool right_ok = end == text.size() || !is_word_char(utf8_decode(text, end, &len));
      if (!left_ok || !right_ok) continue;
    }
    if (hit->lstrip) {
      while (begin > consumed) {
        const size_t p = prev_char(text, begin);
        if (!is_whitespace(utf8_decode(text, p, &len))) break;
        begin = p;
      }
    }
    if (hit->rstrip) {
      while (end < text.size() && is_whitespace(utf8_decode(text, end, &len))) end += len;
    }
    out.push_back({hit->id, begin, end});
    consumed = end;
    pos = end - 1;
  }
}

}  // namespace kdae::tok
