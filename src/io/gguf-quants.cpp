#include "io/gguf-quants.h"

#include <cmath>
#include <cstring>

#include "common/error.h"

// Every decoder computes in the same float32 operation order as ggml's reference (scale * q, then
// + min or - dmin * m) so results match the gguf Python package bit for bit.
namespace kdae::io {
namespace {

uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
float load_half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return half_to_float(h);
}

// 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes of a Q4_K / Q5_K block:
// bytes 0-3 hold scales 0-3 (low 6 bits), bytes 4-7 mins 0-3, bytes 8-11 the low nibbles of
// scales/mins 4-7 whose top 2 bits sit in the spare top bits of bytes 0-7.
void k_scale_min(const uint8_t* s, int j, uint8_t& sc, uint8_t& mn) {
  if (j < 4) {
    sc = s[j] & 63;
    mn = s[j + 4] & 63;
  } else {
    sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

void dq_q4_0(const uint8_t* b, float* y) {
  const float d = load_half(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * float(int(qs[j] & 0xF) - 8);
    y[j + 16] = d * float(int(qs[j] >> 4) - 8);
  }
}
void dq_q4_1(const uint8_t* b, float* y) {
  const float d = load_half(b), m = load_half(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * float(qs[j] & 0xF) + m;
    y[j + 16] = d * float(qs[j] >> 4) + m;
  }
}
void dq_q5_0(const uint8_t* b, float* y) {
  const float d = load_half(b);
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0xF) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    y[j] = d * float(lo - 16);
    y[j + 16] = d * float(hi - 16);
  }
}
void dq_q5_1(const uint8_t* b, float* y) {
  const float d = load_half(b), m = load_half(b + 2);
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0xF) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    y[j] = d * float(lo) + m;
    y[j + 16] = d * float(hi) + m;
  }
}
void dq_q8_0(const uint8_t* b, float* y) {
  const float d = load_half(b);
  const auto* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = float(qs[j]) * d;
}
// Q4_K and Q5_K share the layout of scales and nibbles; Q5_K adds one high bit per element, bit s of
// qh[l] for sub-block s.
void dq_q45_k(const uint8_t* b, float* y, bool five) {
  const float d = load_half(b), dmin = load_half(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* qs = five ? b + 48 : b + 16;
  for (int s = 0; s < 8; ++s) {
    uint8_t sc, mn;
    k_scale_min(scales, s, sc, mn);
    const float ds = d * float(sc), dm = dmin * float(mn);
    const uint8_t* q = qs + 32 * (s / 2);
    const int shift = 4 * (s % 2);
    for (int l = 0; l < 32; ++l) {
      int v = (q[l] >> shift) & 0xF;
      if (five) v |= ((qh[l] >> s) & 1) << 4;
      y[32 * s + l] = ds * float(v) - dm;
    }
  }
}
void dq_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const auto* scales = reinterpret_cast<const int8_t*>(b + 192);
  const float d = load_half(b + 208);
  for (int i = 0; i < 256; ++i) {
    const int h = i / 128, l = i % 128;
    const int lo = (ql[64 * h + l % 64] >> (4 * (l / 64))) & 0xF;
    const int hi = (qh[32 * h + l % 32] >> (2 * (l / 32))) & 3;
    y[i] = (d * float(scales[i / 16])) * float((lo | (hi << 4)) - 32);
  }
}

}  // namespace

float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h >> 15) << 31;
  const uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  if (exp == 0) {
    const float v = float(mant) * 5.9604644775390625e-8f;  // mant * 2^-24: subnormal (or zero), exact
    return sign ? -v : v;
  }
  if (exp == 31) return bits_float(sign | 0x7F800000u | (mant << 13));
  return bits_float(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t float_to_half(float f) {
  const uint32_t x = float_bits(f);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000);
  const uint32_t a = x & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return sign | 0x7E00 | uint16_t((a >> 13) & 0x3FF);  // NaN stays NaN (quiet)
  if (a >= 0x477FF000u) return sign | 0x7C00;                                // >= 65520 rounds to inf
  if (a < 0x38800000u) {                                                     // below 2^-14: subnormal half
    const float scaled = bits_float(a) * 16777216.0f;                        // exact: times 2^24
    return sign | uint16_t(std::nearbyint(scaled));                          // ties to even; 1024 = min normal
  }
  uint32_t h = ((((a >> 23) - 112) << 10) | ((a >> 13) & 0x3FF));
  const uint32_t rem = a & 0x1FFF;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;  // a carry into the exponent is still correct
  return sign | uint16_t(h);
}

float bf16_to_float(uint16_t h) { return bits_float(uint32_t(h) << 16); }

bool can_dequantize(GgmlType type) {
  switch (type) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16: case GgmlType::Q4_0: case GgmlType::Q4_1:
    case GgmlType::Q5_0: case GgmlType::Q5_1: case GgmlType::Q8_0: case GgmlType::Q4_K: case GgmlType::Q5_K:
    case GgmlType::Q6_K: return true;
    default: return false;
  }
}

void dequantize(GgmlType type, const uint8_t* src, float* dst, uint64_t n, const std::string& what) {
  const GgmlTypeInfo* info = ggml_type_info(static_cast<uint32_t>(type));
  if (!info || !can_dequantize(type))
    fail(what, ": cannot dequantize ggml type ", info ? info->name : "unknown", " (supported: F32, F16, BF16, Q4_0, ",
         "Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)");
  if (n % info->block_size != 0) fail(what, ": ", n, " elements is not a whole number of ", info->name, " blocks");
  const uint64_t blocks = n / info->block_size;
  const uint64_t bs = info->type_size, be = info->block_size;
  switch (type) {
    case GgmlType::F32: std::memcpy(dst, src, n * 4); return;
    case GgmlType::F16:
      for (uint64_t k = 0; k < n; ++k) dst[k] = load_half(src + 2 * k);
      return;
    case GgmlType::BF16:
      for (uint64_t k = 0; k < n; ++k) {
        uint16_t h;
        std::memcpy(&h, src + 2 * k, 2);
        dst[k] = bf16_to_float(h);
      }
      return;
    default: break;
  }
  for (uint64_t k = 0; k < blocks; ++k) {
    const uint8_t* b = src + k * bs;
    float* y = dst + k * be;
    switch (type) {
      case GgmlType::Q4_0: dq_q4_0(b, y); break;
      case GgmlType::Q4_1: dq_q4_1(b, y); break;
      case GgmlType::Q5_0: dq_q5_0(b, y); break;
      case GgmlType::Q5_1: dq_q5_1(b, y); break;
      case GgmlType::Q8_0: dq_q8_0(b, y); break;
      case GgmlType::Q4_K: dq_q45_k(b, y, false); break;
      case GgmlType::Q5_K: dq_q45_k(b, y, true); break;
      case GgmlType::Q6_K: dq_q6_k(b, y); break;
      default: break;
    }
  }
}

std::vector<uint8_t> quantize_q8_0(const float* src, uint64_t n) {
  if (n % 32 != 0) fail("Q8_0 quantization: ", n, " elements is not a multiple of 32");
  std::vector<uint8_t> out(n / 32 * 34);
  for (uint64_t k = 0; k < n / 32; ++k) {
    const float* x = src + 32 * k;
    uint8_t* b = out.data() + 34 * k;
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    const uint16_t dh = float_to_half(d);
    std::memcpy(b, &dh, 2);
    for (int j = 0; j < 32; ++j) b[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::round(x[j] * id)));
  }
  return out;
}

std::vector<uint8_t> quantize_f16(const float* src, uint64_t n) {
  std::vector<uint8_t> out(2 * n);
  for (uint64_t k = 0; k < n; ++k) {
    const uint16_t h = float_to_half(src[k]);
    std::memcpy(out.data() + 2 * k, &h, 2);
  }
  return out;
}

}  // namespace kdae::io
