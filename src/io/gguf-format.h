// The GGUF container (llama.cpp's model file), torch-free: parse a whole file from a byte pointer
// (typically an mmap) and build header bytes for writing one.
// Layout (little-endian): "GGUF", u32 version (2 or 3), u64 tensor count, u64 key/value count,
// the key/values, one info per tensor (name, n_dims, dims with ne[0] = innermost first, ggml type,
// offset), padding to general.alignment (default 32), then the data section the offsets point into.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace kdae::io {

enum class GgufType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};
const char* gguf_type_name(GgufType type);

// One metadata value. Scalars keep their declared type so a value written back is bit-identical;
// arrays hold their elements (each of elem_type) in `items`.
struct GgufValue {
  GgufType type = GgufType::U32;
  GgufType elem_type = GgufType::U8;  // arrays only
  uint64_t u = 0;                     // unsigned integers and BOOL
  int64_t i = 0;                      // signed integers
  double f = 0;                       // F32 / F64
  std::string s;                      // STRING
  std::vector<GgufValue> items;       // ARRAY

  bool is_integer() const;
  bool is_float() const { return type == GgufType::F32 || type == GgufType::F64; }
  // Conversions that throw (naming `what`, e.g. "file.gguf: key llama.block_count") on a type mismatch.
  int64_t as_int(const std::string& what) const;
  double as_double(const std::string& what) const;  // any integer or float
  bool as_bool(const std::string& what) const;
  const std::string& as_string(const std::string& what) const;
  const std::vector<GgufValue>& as_array(const std::string& what) const;

  static GgufValue of_u32(uint32_t v);
  static GgufValue of_i32(int32_t v);
  static GgufValue of_u64(uint64_t v);
  static GgufValue of_f32(float v);
  static GgufValue of_bool(bool v);
  static GgufValue of_string(std::string v);
  static GgufValue of_array(GgufType elem_type, std::vector<GgufValue> items);
};

// ggml tensor types; numbers are the on-disk ids.
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, BF16 = 30,
};

struct GgmlTypeInfo {
  const char* name;
  uint32_t block_size;  // elements per block (1 for plain types)
  uint32_t type_size;   // bytes per block
};
// nullptr for ids this reader does not know (including the IQ* families).
const GgmlTypeInfo* ggml_type_info(uint32_t type);

struct GgufTensorInfo {
  std::string name;
  std::vector<uint64_t> dims;  // ggml order: dims[0] is the innermost (row length); torch shape is reversed
  GgmlType type = GgmlType::F32;
  uint64_t offset = 0;         // relative to the data section
  uint64_t n_elements = 0;
  uint64_t n_bytes = 0;
  std::vector<int64_t> torch_shape() const;  // dims reversed
};

struct GgufFile {
  uint32_t version = 3;
  std::vector<std::pair<std::string, GgufValue>> metadata;  // file order
  std::vector<GgufTensorInfo> tensors;                      // file order
  uint64_t alignment = 32;
  uint64_t data_offset = 0;  // absolute offset of the data section
  std::string source;        // file name used in errors

  const GgufValue* find(const std::string& key) const;
  const GgufValue& get(const std::string& key) const;  // throws naming source and key when absent
  const GgufTensorInfo* find_tensor(const std::string& name) const;

 private:
  friend GgufFile parse_gguf(const uint8_t*, uint64_t, const std::string&);
  std::map<std::string, size_t> key_index_, tensor_index_;
};

// Validates everything up front: magic, version, every length and count against the bytes left,
// value types, tensor types, element-count overflow, alignment, and that each tensor's bytes lie
// inside the file. `source` names the file in every error.
GgufFile parse_gguf(const uint8_t* bytes, uint64_t size, const std::string& source);

// Header bytes for a new file: magic, version 3, metadata, tensor infos, padding to `alignment`.
// Fills each tensor's offset/n_elements/n_bytes, laying tensors back to back, each aligned.
// The caller then writes each tensor's bytes at data_start + offset (padding with zeros between).
std::string make_gguf_header(const std::vector<std::pair<std::string, GgufValue>>& metadata,
                             std::vector<GgufTensorInfo>& tensors, uint64_t alignment = 32);

}  // namespace kdae::io
