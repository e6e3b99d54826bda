#include "io/gguf-format.h"

#include <algorithm>
#include <cstring>

#include "common/error.h"

namespace kdae::io {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as little-endian u32
constexpr uint32_t kMaxDims = 4;         // GGML_MAX_DIMS
constexpr int kMaxArrayDepth = 4;        // nested arrays are legal but nobody writes more than one level
constexpr uint64_t kMaxStringBytes = 1ull << 30;

// Bounds-checked little-endian reader over the file bytes; every read names the file and what it
// was reading when it runs out, so a truncated file says where.
class Cursor {
 public:
  Cursor(const uint8_t* bytes, uint64_t size, const std::string& source) : p_(bytes), size_(size), source_(source) {}

  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }

  void need(uint64_t n, const char* what) const {
    if (n > left())
      fail(source_, ": truncated GGUF file: ", what, " at byte ", pos_, " needs ", n, " bytes, only ", left(),
           " left");
  }
  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));  // the host is little-endian (x86-64 / aarch64)
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string(const char* what) {
    const uint64_t n = read<uint64_t>(what);
    if (n > kMaxStringBytes) fail(source_, ": ", what, " at byte ", pos_ - 8, " claims absurd length ", n);
    need(n, what);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), n);
    pos_ += n;
    return s;
  }

 private:
  const uint8_t* p_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const std::string& source_;
};

// Smallest encoding of one value of a type: bounds array counts before allocating anything.
uint64_t min_encoded_size(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::BOOL: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: case GgufType::STRING: return 8;
    case GgufType::ARRAY: return 12;
  }
  return 1;
}

bool known_value_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::F64); }

GgufValue read_value(Cursor& c, GgufType type, int depth, const std::string& source, const std::string& key) {
  GgufValue v;
  v.type = type;
  switch (type) {
    case GgufType::U8: v.u = c.read<uint8_t>("u8 value"); break;
    case GgufType::I8: v.i = c.read<int8_t>("i8 value"); break;
    case GgufType::U16: v.u = c.read<uint16_t>("u16 value"); break;
    case GgufType::I16: v.i = c.read<int16_t>("i16 value"); break;
    case GgufType::U32: v.u = c.read<uint32_t>("u32 value"); break;
    case GgufType::I32: v.i = c.read<int32_t>("i32 value"); break;
    case GgufType::U64: v.u = c.read<uint64_t>("u64 value"); break;
    case GgufType::I64: v.i = c.read<int64_t>("i64 value"); break;
    case GgufType::F32: v.f = c.read<float>("f32 value"); break;
    case GgufType::F64: v.f = c.read<double>("f64 value"); break;
    case GgufType::BOOL: {
      const uint8_t b = c.read<uint8_t>("bool value");
      if (b > 1) fail(source, ": key ", key, ": bool value ", int(b), " is neither 0 nor 1");
      v.u = b;
      break;
    }
    case GgufType::STRING: v.s = c.read_string("string value"); break;
    case GgufType::ARRAY: {
      if (depth >= kMaxArrayDepth) fail(source, ": key ", key, ": arrays nested deeper than ", kMaxArrayDepth);
      const uint32_t et = c.read<uint32_t>("array element type");
      if (!known_value_type(et)) fail(source, ": key ", key, ": unknown array element type ", et);
      v.elem_type = static_cast<GgufType>(et);
      const uint64_t n = c.read<uint64_t>("array length");
      if (n > c.left() / min_encoded_size(v.elem_type))
        fail(source, ": key ", key, ": array length ", n, " runs past the end of the file (", c.left(),
             " bytes left)");
      v.items.reserve(n);
      for (uint64_t k = 0; k < n; ++k) v.items.push_back(read_value(c, v.elem_type, depth + 1, source, key));
      break;
    }
  }
  return v;
}

uint64_t checked_mul(uint64_t a, uint64_t b, const std::string& source, const std::string& what) {
  if (a != 0 && b > UINT64_MAX / a) fail(source, ": ", what, ": size overflows 64 bits");
  return a * b;
}

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

// Writers for make_gguf_header.
void put_bytes(std::string& out, const void* p, size_t n) { out.append(static_cast<const char*>(p), n); }
template <typename T>
void put(std::string& out, T v) {
  put_bytes(out, &v, sizeof(T));
}
void put_string(std::string& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out += s;
}
void put_value(std::string& out, const GgufValue& v, const std::string& key) {
  switch (v.type) {
    case GgufType::U8: put<uint8_t>(out, static_cast<uint8_t>(v.u)); break;
    case GgufType::I8: put<int8_t>(out, static_cast<int8_t>(v.i)); break;
    case GgufType::U16: put<uint16_t>(out, static_cast<uint16_t>(v.u)); break;
    case GgufType::I16: put<int16_t>(out, static_cast<int16_t>(v.i)); break;
    case GgufType::U32: put<uint32_t>(out, static_cast<uint32_t>(v.u)); break;
    case GgufType::I32: put<int32_t>(out, static_cast<int32_t>(v.i)); break;
    case GgufType::U64: put<uint64_t>(out, v.u); break;
    case GgufType::I64: put<int64_t>(out, v.i); break;
    case GgufType::F32: put<float>(out, static_cast<float>(v.f)); break;
    case GgufType::F64: put<double>(out, v.f); break;
    case GgufType::BOOL: put<uint8_t>(out, v.u ? 1 : 0); break;
    case GgufType::STRING: put_string(out, v.s); break;
    case GgufType::ARRAY:
      put<uint32_t>(out, static_cast<uint32_t>(v.elem_type));
      put<uint64_t>(out, v.items.size());
      for (const auto& item : v.items) {
        if (item.type != v.elem_type) fail("GGUF writer: key ", key, ": array item of type ", gguf_type_name(item.type),
                                           " in an array of ", gguf_type_name(v.elem_type));
        put_value(out, item, key);
      }
      break;
  }
}

}  // namespace

const char* gguf_type_name(GgufType type) {
  static const char* names[] = {"u8",  "i8",     "u16",   "i16", "u32", "i32", "f32",
                                "bool", "string", "array", "u64", "i64", "f64"};
  const auto t = static_cast<uint32_t>(type);
  return t < 13 ? names[t] : "unknown";
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufType::U8: case GgufType::I8: case GgufType::U16: case GgufType::I16: case GgufType::U32:
    case GgufType::I32: case GgufType::U64: case GgufType::I64: return true;
    default: return false;
  }
}

int64_t GgufValue::as_int(const std::string& what) const {
  if (!is_integer()) fail(what, ": expected an integer, found ", gguf_type_name(type));
  if (type == GgufType::U64 && u > static_cast<uint64_t>(INT64_MAX)) fail(what, ": value ", u, " is out of range");
  const bool is_unsigned = type == GgufType::U8 || type == GgufType::U16 || type == GgufType::U32 || type == GgufType::U64;
  return is_unsigned ? static_cast<int64_t>(u) : i;
}
double GgufValue::as_double(const std::string& what) const {
  if (is_float()) return f;
  return static_cast<double>(as_int(what));
}
bool GgufValue::as_bool(const std::string& what) const {
  if (type != GgufType::BOOL) fail(what, ": expected a bool, found ", gguf_type_name(type));
  return u != 0;
}
const std::string& GgufValue::as_string(const std::string& what) const {
  if (type != GgufType::STRING) fail(what, ": expected a string, found ", gguf_type_name(type));
  return s;
}
const std::vector<GgufValue>& GgufValue::as_array(const std::string& what) const {
  if (type != GgufType::ARRAY) fail(what, ": expected an array, found ", gguf_type_name(type));
  return items;
}

GgufValue GgufValue::of_u32(uint32_t v) { GgufValue x; x.type = GgufType::U32; x.u = v; return x; }
GgufValue GgufValue::of_i32(int32_t v) { GgufValue x; x.type = GgufType::I32; x.i = v; return x; }
GgufValue GgufValue::of_u64(uint64_t v) { GgufValue x; x.type = GgufType::U64; x.u = v; return x; }
GgufValue GgufValue::of_f32(float v) { GgufValue x; x.type = GgufType::F32; x.f = v; return x; }
GgufValue GgufValue::of_bool(bool v) { GgufValue x; x.type = GgufType::BOOL; x.u = v; return x; }
GgufValue GgufValue::of_string(std::string v) { GgufValue x; x.type = GgufType::STRING; x.s = std::move(v); return x; }
GgufValue GgufValue::of_array(GgufType elem_type, std::vector<GgufValue> items) {
  GgufValue x;
  x.type = GgufType::ARRAY;
  x.elem_type = elem_type;
  x.items = std::move(items);
  return x;
}

const GgmlTypeInfo* ggml_type_info(uint32_t type) {
  static const std::map<uint32_t, GgmlTypeInfo> table = {
      {0, {"F32", 1, 4}},      {1, {"F16", 1, 2}},      {2, {"Q4_0", 32, 18}},   {3, {"Q4_1", 32, 20}},
      {6, {"Q5_0", 32, 22}},   {7, {"Q5_1", 32, 24}},   {8, {"Q8_0", 32, 34}},   {9, {"Q8_1", 32, 36}},
      {10, {"Q2_K", 256, 84}}, {11, {"Q3_K", 256, 110}}, {12, {"Q4_K", 256, 144}}, {13, {"Q5_K", 256, 176}},
      {14, {"Q6_K", 256, 210}}, {15, {"Q8_K", 256, 292}}, {24, {"I8", 1, 1}},     {25, {"I16", 1, 2}},
      {26, {"I32", 1, 4}},     {27, {"I64", 1, 8}},     {28, {"F64", 1, 8}},     {30, {"BF16", 1, 2}},
  };
  auto it = table.find(type);
  return it == table.end() ? nullptr : &it->second;
}

std::vector<int64_t> GgufTensorInfo::torch_shape() const {
  std::vector<int64_t> shape(dims.rbegin(), dims.rend());
  return shape;
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = key_index_.find(key);
  if (it != key_index_.end()) return &metadata[it->second].second;
  // Files built by hand (make_gguf_header users, tests) have no index; fall back to a scan.
  if (key_index_.empty())
    for (const auto& [k, v] : metadata)
      if (k == key) return &v;
  return nullptr;
}

const GgufValue& GgufFile::get(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail(source, ": metadata key '", key, "' is missing");
  return *v;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  if (it != tensor_index_.end()) return &tensors[it->second];
  if (tensor_index_.empty())
    for (const auto& t : tensors)
      if (t.name == name) return &t;
  return nullptr;
}

GgufFile parse_gguf(const uint8_t* bytes, uint64_t size, const std::string& source) {
  GgufFile file;
  file.source = source;
  Cursor c(bytes, size, source);
  if (size < 4) fail(source, ": not a GGUF file (", size, " bytes, too short for the magic)");
  const uint32_t magic = c.read<uint32_t>("magic");
  if (magic != kMagic) fail(source, ": not a GGUF file (bad magic; expected the bytes \"GGUF\")");
  file.version = c.read<uint32_t>("version");
  if (file.version == 1) fail(source, ": GGUF version 1 is not supported (re-convert the model with a current llama.cpp)");
  if (file.version != 2 && file.version != 3) {
    if ((file.version & 0xFFFF) == 0) fail(source, ": big-endian GGUF files are not supported");
    fail(source, ": unsupported GGUF version ", file.version, " (supported: 2, 3)");
  }
  const uint64_t n_tensors = c.read<uint64_t>("tensor count");
  const uint64_t n_kv = c.read<uint64_t>("metadata key/value count");
  // A key/value needs >= 8 (key length) + 4 (type) + 1 bytes; a tensor info >= 8 + 4 + 4 + 8.
  if (n_kv > c.left() / 13) fail(source, ": metadata count ", n_kv, " is larger than the file can hold");
  if (n_tensors > c.left() / 24) fail(source, ": tensor count ", n_tensors, " is larger than the file can hold");

  file.metadata.reserve(n_kv);
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = c.read_string("metadata key");
    const uint32_t type = c.read<uint32_t>("metadata value type");
    if (!known_value_type(type)) fail(source, ": key ", key, ": unknown value type ", type);
    GgufValue value = read_value(c, static_cast<GgufType>(type), 0, source, key);
    if (!file.key_index_.emplace(key, file.metadata.size()).second) fail(source, ": duplicate metadata key ", key);
    file.metadata.emplace_back(std::move(key), std::move(value));
  }
  if (const GgufValue* a = file.find("general.alignment")) {
    const int64_t alignment = a->as_int(source + ": key general.alignment");
    if (alignment <= 0 || (alignment & (alignment - 1)) != 0 || alignment > (1 << 20))
      fail(source, ": general.alignment ", alignment, " is not a power of two up to 1 MiB");
    file.alignment = static_cast<uint64_t>(alignment);
  }

  file.tensors.reserve(n_tensors);
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensorInfo t;
    t.name = c.read_string("tensor name");
    const std::string where = "tensor '" + t.name + "'";
    const uint32_t n_dims = c.read<uint32_t>("tensor dimension count");
    if (n_dims == 0 || n_dims > kMaxDims) fail(source, ": ", where, " has ", n_dims, " dimensions (1 to 4 allowed)");
    t.n_elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t dim = c.read<uint64_t>("tensor dimension");
      if (dim > static_cast<uint64_t>(INT64_MAX)) fail(source, ": ", where, " dimension ", dim, " is out of range");
      t.dims.push_back(dim);
      t.n_elements = checked_mul(t.n_elements, dim, source, where + " element count");
    }
    const uint32_t type = c.read<uint32_t>("tensor type");
    const GgmlTypeInfo* info = ggml_type_info(type);
    if (!info) fail(source, ": ", where, " has unknown or unsupported ggml type ", type);
    t.type = static_cast<GgmlType>(type);
    if (t.dims[0] % info->block_size != 0)
      fail(source, ": ", where, " row length ", t.dims[0], " is not a multiple of the ", info->name, " block size ",
           info->block_size);
    t.n_bytes = checked_mul(t.n_elements / info->block_size, info->type_size, source, where + " byte size");
    t.offset = c.read<uint64_t>("tensor offset");
    if (t.offset % file.alignment != 0)
      fail(source, ": ", where, " offset ", t.offset, " is not a multiple of the alignment ", file.alignment);
    if (!file.tensor_index_.emplace(t.name, file.tensors.size()).second)
      fail(source, ": duplicate tensor name ", t.name);
    file.tensors.push_back(std::move(t));
  }

  file.data_offset = align_up(c.pos(), file.alignment);
  // A file with no tensors may stop right after the header, without padding.
  if (file.data_offset > size && !file.tensors.empty())
    fail(source, ": truncated GGUF file: data section would start at byte ", file.data_offset, " past the end (",
         size, " bytes)");
  const uint64_t data_size = file.data_offset <= size ? size - file.data_offset : 0;
  std::vector<const GgufTensorInfo*> by_offset;
  for (const auto& t : file.tensors) {
    if (t.offset > data_size || t.n_bytes > data_size - t.offset)
      fail(source, ": tensor '", t.name, "' data [", t.offset, ", +", t.n_bytes, ") runs past the end of the file (",
           "data section holds ", data_size, " bytes; truncated download?)");
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t k = 1; k < by_offset.size(); ++k)
    if (by_offset[k - 1]->offset + by_offset[k - 1]->n_bytes > by_offset[k]->offset)
      fail(source, ": tensors '", by_offset[k - 1]->name, "' and '", by_offset[k]->name, "' overlap in the data section");
  return file;
}

std::string make_gguf_header(const std::vector<std::pair<std::string, GgufValue>>& metadata,
                             std::vector<GgufTensorInfo>& tensors, uint64_t alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) fail("GGUF writer: alignment ", alignment, " is not a power of two");
  std::string out;
  put<uint32_t>(out, kMagic);
  put<uint32_t>(out, 3);
  put<uint64_t>(out, tensors.size());
  put<uint64_t>(out, metadata.size());
  for (const auto& [key, value] : metadata) {
    put_string(out, key);
    put<uint32_t>(out, static_cast<uint32_t>(value.type));
    put_value(out, value, key);
  }
  uint64_t offset = 0;
  for (auto& t : tensors) {
    const GgmlTypeInfo* info = ggml_type_info(static_cast<uint32_t>(t.type));
    if (!info) fail("GGUF writer: tensor ", t.name, " has an unknown type");
    if (t.dims.empty() || t.dims.size() > kMaxDims) fail("GGUF writer: tensor ", t.name, " must have 1 to 4 dims");
    t.n_elements = 1;
    for (uint64_t d : t.dims) t.n_elements = checked_mul(t.n_elements, d, "GGUF writer", t.name);
    if (t.dims[0] % info->block_size != 0)
      fail("GGUF writer: tensor ", t.name, " row length ", t.dims[0], " is not a multiple of ", info->block_size);
    t.n_bytes = t.n_elements / info->block_size * info->type_size;
    t.offset = offset;
    offset = align_up(offset + t.n_bytes, alignment);
    put_string(out, t.name);
    put<uint32_t>(out, static_cast<uint32_t>(t.dims.size()));
    for (uint64_t d : t.dims) put<uint64_t>(out, d);
    put<uint32_t>(out, static_cast<uint32_t>(t.type));
    put<uint64_t>(out, t.offset);
  }
  out.resize(align_up(out.size(), alignment), '\0');
  return out;
}

}  // namespace kdae::io
