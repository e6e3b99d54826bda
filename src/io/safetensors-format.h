// The safetensors container, torch-free: header parsing and validation, and header writing.
// Layout: u64 little-endian header length N, N bytes of JSON, then the data buffer. Each JSON
// entry gives dtype, shape and [begin, end) offsets into the data buffer; "__metadata__" holds strings.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace kdae::io {

struct TensorEntry {
  std::string name;
  std::string dtype;           // safetensors spelling: F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL, F8_E4M3, F8_E5M2, ...
  std::vector<int64_t> shape;
  uint64_t begin = 0;          // offsets relative to the data buffer
  uint64_t end = 0;
};

struct SafetensorsHeader {
  std::vector<TensorEntry> tensors;  // in file order of their offsets
  std::map<std::string, std::string> metadata;
  uint64_t data_offset = 0;          // 8 + header length: where the data buffer starts in the file
};

size_t dtype_size(const std::string& dtype, const std::string& context);  // bytes per element; throws on unknown

// Validates everything before any tensor is touched: header length within the file, JSON well formed,
// known dtypes, offsets inside the data buffer and consistent with shape x dtype size, no overlaps.
// `source` names the file in errors.
SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, uint64_t file_size, const std::string& source);

// Header bytes (length prefix + JSON padded with spaces to 8-byte alignment) for tensors laid out in
// the given order back to back; fills each entry's begin/end.
std::string make_safetensors_header(std::vector<TensorEntry>& tensors, const std::map<std::string, std::string>& metadata);

}  // namespace kdae::io
