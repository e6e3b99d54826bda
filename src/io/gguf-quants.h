// ggml's block quantization formats to fp32 and back (Q8_0 only), torch-free.
// Block layouts (little-endian, "d"/"m" are fp16 scales/minimums):
//   Q4_0 (32 elems, 18 B): d, 16 B of nibbles        x = (q - 8) * d
//   Q4_1 (32, 20 B):       d, m, 16 B of nibbles     x = q * d + m
//   Q5_0 (32, 22 B):       d, u32 high bits, nibbles x = (q | hi << 4) - 16) * d
//   Q5_1 (32, 24 B):       d, m, u32 high bits, nibbles
//   Q8_0 (32, 34 B):       d, 32 x int8              x = q * d
//   Q4_K / Q5_K (256, 144 / 176 B): d, dmin, 12 B of packed 6-bit scales and mins for 8 sub-blocks of 32,
//                          (Q5_K: 32 B of high bits), 128 B of nibbles; x = d*sc*q - dmin*m
//   Q6_K (256, 210 B):     128 B low nibbles, 64 B 2-bit highs, 16 x int8 scales, d; x = d*sc*(q - 32)
// In a block of 32 nibbles, element j < 16 is the low nibble of byte j and element j + 16 its high nibble.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/gguf-format.h"

namespace kdae::io {

float half_to_float(uint16_t h);
uint16_t float_to_half(float f);  // round to nearest even, like numpy's astype(float16)
float bf16_to_float(uint16_t h);

bool can_dequantize(GgmlType type);

// Decodes n elements (a multiple of the type's block size) from src into dst. `what` names the
// tensor in errors (unsupported type, bad count).
void dequantize(GgmlType type, const uint8_t* src, float* dst, uint64_t n, const std::string& what);

// fp32 -> Q8_0 blocks (n a multiple of 32), bit-identical to ggml's reference quantize_row_q8_0.
std::vector<uint8_t> quantize_q8_0(const float* src, uint64_t n);
// fp32 -> fp16 bytes.
std::vector<uint8_t> quantize_f16(const float* src, uint64_t n);

}  // namespace kdae::io
