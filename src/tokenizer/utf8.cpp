#include "tokenizer/utf8.h"

namespace kdae::tok {

uint32_t utf8_decode(std::string_view s, size_t pos, size_t* len) {
  const auto b = [&](size_t i) { return static_cast<unsigned char>(s[pos + i]); };
  const unsigned char c = b(0);
  size_t n = utf8_seq_len(c);
  if (pos + n > s.size()) n = 1;
  *len = n;
  switch (n) {
    case 1: return c;
    case 2: return ((c & 0x1Fu) << 6) | (b(1) & 0x3Fu);
    case 3: return ((c & 0x0Fu) << 12) | ((b(1) & 0x3Fu) << 6) | (b(2) & 0x3Fu);
    default: return ((c & 0x07u) << 18) | ((b(1) & 0x3Fu) << 12) | ((b(2) & 0x3Fu) << 6) | (b(3) & 0x3Fu);
  }
}

void utf8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Length of the valid sequence at s[i], or 0 if invalid; *bad is then the length of the maximal
// subpart (the bytes one U+FFFD replaces).
static size_t valid_seq(std::string_view s, size_t i, size_t* bad) {
  const auto at = [&](size_t k) -> int { return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : -1; };
  const int c = at(0);
  *bad = 1;
  if (c < 0x80) return 1;
  size_t need;
  int lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) need = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    need = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;  // no UTF-16 surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  for (size_t k = 1; k < need; ++k) {
    const int b = at(k);
    const bool ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) {
      *bad = k;
      return 0;
    }
  }
  return need;
}

size_t utf8_valid_prefix(std::string_view s) {
  size_t i = 0, bad;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    const size_t n = valid_seq(s, i, &bad);
    if (!n) return i;
    i += n;
  }
  return i;
}

std::string utf8_sanitize(std::string_view s, std::vector<std::pair<uint32_t, uint32_t>>* origin) {
  std::string out;
  out.reserve(s.size() + 8);
  origin->clear();
  origin->reserve(s.size() + 8);
  size_t i = 0, bad;
  while (i < s.size()) {
    size_t n = valid_seq(s, i, &bad);
    if (n) {
      out.append(s.substr(i, n));
      for (size_t k = 0; k < n; ++k) origin->emplace_back(i, i + n);
      i += n;
    } else {
      out.append("\xEF\xBF\xBD");
      for (int k = 0; k < 3; ++k) origin->emplace_back(i, i + bad);
      i += bad;
    }
  }
  return out;
}

static std::array<int, 256> byte_codepoints() {
  std::array<int, 256> cp{};
  std::array<bool, 256> printable{};
  for (int b = '!'; b <= '~'; ++b) printable[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
  int next = 256;
  for (int b = 0; b < 256; ++b) cp[b] = printable[b] ? b : next++;
  return cp;
}

const std::array<std::string, 256>& byte_to_unicode() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    const auto cp = byte_codepoints();
    for (int b = 0; b < 256; ++b) utf8_append(t[b], static_cast<uint32_t>(cp[b]));
    return t;
  }();
  return table;
}

int unicode_to_byte(uint32_t cp) {
  static const std::array<int, 512> inverse = [] {
    std::array<int, 512> inv;
    inv.fill(-1);
    const auto cp = byte_codepoints();
    for (int b = 0; b < 256; ++b) inv[cp[b]] = b;
    return inv;
  }();
  return cp < 512 ? inverse[cp] : -1;
}

}  // namespace kdae::tok
