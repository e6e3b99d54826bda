// FNV-1a 64-bit: the stable, dependency-free fingerprint of tokenizers and datasets and the checksum
// of kdae's binary caches (not a cryptographic hash).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace kdae {

uint64_t fnv1a(std::string_view bytes);
std::string fnv1a_hex(std::string_view bytes);  // 16 lowercase hex digits

}  // namespace kdae
