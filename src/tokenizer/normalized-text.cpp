#include "tokenizer/normalized-text.h"

#include <utf8proc.h>

#include <cstdlib>

#include "common/error.h"
#include "tokenizer/utf8.h"

namespace kdae::tok {

NormalizedText NormalizedText::from_original(std::string_view original, size_t begin, size_t end) {
  NormalizedText n;
  n.text.assign(original.substr(begin, end - begin));
  n.align.resize(n.text.size());
  size_t i = 0;
  while (i < n.text.size()) {
    const size_t len = std::min(utf8_seq_len(static_cast<unsigned char>(n.text[i])), n.text.size() - i);
    const Range r{static_cast<uint32_t>(begin + i), static_cast<uint32_t>(begin + i + len)};
    for (size_t k = 0; k < len; ++k) n.align[i + k] = r;
    i += len;
  }
  return n;
}

NormalizedText NormalizedText::slice(size_t begin, size_t end) const {
  NormalizedText n;
  n.text.assign(text, begin, end - begin);
  n.align.assign(align.begin() + begin, align.begin() + end);
  return n;
}

void NormalizedText::prepend(std::string_view s) {
  if (text.empty() || s.empty()) return;
  const Range first = align[0];
  text.insert(0, s);
  align.insert(align.begin(), s.size(), first);
}

void NormalizedText::replace(std::string_view pattern, std::string_view content) {
  if (pattern.empty() || text.find(pattern) == std::string::npos) return;
  std::string out;
  std::vector<Range> out_align;
  out.reserve(text.size() + 16);
  out_align.reserve(text.size() + 16);
  size_t i = 0;
  while (i < text.size()) {
    const size_t hit = text.find(pattern, i);
    const size_t stop = hit == std::string::npos ? text.size() : hit;
    out.append(text, i, stop - i);
    out_align.insert(out_align.end(), align.begin() + i, align.begin() + stop);
    if (hit == std::string::npos) break;
    const Range r = original_range(hit, hit + pattern.size());
    out.append(content);
    out_align.insert(out_align.end(), content.size(), r);
    i = hit + pattern.size();
  }
  text = std::move(out);
  align = std::move(out_align);
}

static std::string utf8proc_apply(std::string_view s, std::string_view form) {
  int options = UTF8PROC_STABLE;
  if (form == "NFC") options |= UTF8PROC_COMPOSE;
  else if (form == "NFD") options |= UTF8PROC_DECOMPOSE;
  else if (form == "NFKC") options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
  else if (form == "NFKD") options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
  else fail("unsupported unicode normalization ", form);
  utf8proc_uint8_t* out = nullptr;
  const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                              static_cast<utf8proc_ssize_t>(s.size()), &out,
                              static_cast<utf8proc_option_t>(options));
  if (n < 0) fail("unicode normalization ", form, " failed: ", utf8proc_errmsg(n));
  std::string result(reinterpret_cast<char*>(out), static_cast<size_t>(n));
  std::free(out);
  return result;
}

void NormalizedText::unicode_normalize(std::string_view form) {
  // Fast path: ASCII text is invariant under every normalization form.
  bool ascii = true;
  for (char c : text) ascii &= static_cast<unsigned char>(c) < 0x80;
  if (ascii) return;
  const std::string whole = utf8proc_apply(text, form);
  if (whole == text) return;
  // Normalize run by run (a run = a starter and the non-starters after it) so each output
  // character can be aligned to the run it came from.
  std::string out;
  std::vector<Range> out_align;
  size_t i = 0;
  while (i < text.size()) {
    size_t len;
    size_t j = i;
    utf8_decode(text, j, &len);
    j += len;
    while (j < text.size()) {
      const uint32_t cp = utf8_decode(text, j, &len);
      // Hangul vowel/trailing jamo compose with what precedes them although they are starters.
      const bool jamo = (cp >= 0x1160 && cp <= 0x11FF) || (cp >= 0xD7B0 && cp <= 0xD7FF);
      if (!jamo && utf8proc_get_property(static_cast<utf8proc_int32_t>(cp))->combining_class == 0) break;
      j += len;
    }
    const std::string run = utf8proc_apply(std::string_view(text).substr(i, j - i), form);
    // When the run normalizes character by character (only decompositions, as with Bengali U+09DF),
    // each output keeps its own character's range, like HF; a composition gets the whole run.
    std::string per_char;
    std::vector<Range> per_align;
    for (size_t k = i; k < j; k += len) {
      utf8_decode(text, k, &len);
      const std::string one = utf8proc_apply(std::string_view(text).substr(k, len), form);
      per_char += one;
      per_align.insert(per_align.end(), one.size(), original_range(k, k + len));
    }
    out += run;
    if (per_char == run) out_align.insert(out_align.end(), per_align.begin(), per_align.end());
    else {
      // Composition: the k-th output character takes the k-th input character's range (so a
      // composed "é" maps to its base "e" alone, as in HF).
      size_t in = i, olen;
      for (size_t o = 0; o < run.size(); o += olen) {
        utf8_decode(run, o, &olen);
        utf8_decode(text, in, &len);
        out_align.insert(out_align.end(), olen, original_range(in, in + len));
        if (in + len < j) in += len;
      }
    }
    i = j;
  }
  // Runs are normalized independently; composition across runs (e.g. Hangul jamo) falls back to
  // the whole-text result with coarse alignment.
  if (out != whole) {
    out = whole;
    out_align.assign(whole.size(), Range{align.front().first, align.back().second});
  }
  text = std::move(out);
  align = std::move(out_align);
}

void NormalizedText::lowercase() {
  std::string out;
  std::vector<Range> out_align;
  size_t i = 0, len;
  while (i < text.size()) {
    const uint32_t cp = utf8_decode(text, i, &len);
    const auto lower = static_cast<uint32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp)));
    const size_t before = out.size();
    utf8_append(out, lower);
    out_align.insert(out_align.end(), out.size() - before, original_range(i, i + len));
    i += len;
  }
  text = std::move(out);
  align = std::move(out_align);
}

}  // namespace kdae::tok
