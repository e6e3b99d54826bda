// UTF-8 helpers and the GPT-2 byte-level alphabet. Torch-free.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kdae::tok {

// Byte length of the UTF-8 sequence starting with `lead` (1 for a stray continuation byte).
inline size_t utf8_seq_len(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  if ((lead & 0xF8) == 0xF0) return 4;
  return 1;
}

// Decodes the code point at text[pos] (text must be valid UTF-8); sets *len to its byte length.
uint32_t utf8_decode(std::string_view text, size_t pos, size_t* len);
void utf8_append(std::string& out, uint32_t cp);

// Length of the longest valid prefix; == text.size() when all of text is valid UTF-8.
size_t utf8_valid_prefix(std::string_view text);

// Replaces each maximal invalid subsequence with U+FFFD the way Python's bytes.decode(errors="replace")
// and Rust's String::from_utf8_lossy do (Unicode "maximal subpart" practice). origin[i] is the input
// byte range each output byte came from, so offsets can be mapped back to the raw input.
std::string utf8_sanitize(std::string_view text, std::vector<std::pair<uint32_t, uint32_t>>* origin);

// GPT-2's reversible byte <-> printable code point table: every byte gets a visible character so
// byte-level BPE vocabularies are plain strings ("Ġ" is the space byte).
const std::array<std::string, 256>& byte_to_unicode();
// Inverse of byte_to_unicode for the code point; -1 when cp is not one of the 256.
int unicode_to_byte(uint32_t cp);

}  // namespace kdae::tok
