#include "io/safetensors-format.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>

#include "common/error.h"

namespace kdae::io {
namespace {

// Larger than any sane header (the format's own reference caps it at 100 MB); guards absurd lengths.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::vector<int64_t> parse_shape(const nlohmann::json& j, const std::string& where) {
  if (!j.is_array()) fail(where, ": \"shape\" is not an array");
  std::vector<int64_t> shape;
  for (const auto& d : j) {
    if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<int64_t>() >= 0))
      fail(where, ": shape entry ", d.dump(), " is not a non-negative integer");
    shape.push_back(d.get<int64_t>());
  }
  return shape;
}

// Element count x element size, refusing overflow so a hostile shape cannot wrap around.
uint64_t byte_size(const std::vector<int64_t>& shape, size_t element_size, const std::string& where) {
  uint64_t n = element_size;
  for (int64_t d : shape) {
    if (d != 0 && n > UINT64_MAX / static_cast<uint64_t>(d)) fail(where, ": shape overflows 64-bit size");
    n *= static_cast<uint64_t>(d);
  }
  return n;
}

}  // namespace

size_t dtype_size(const std::string& dtype, const std::string& context) {
  static const std::pair<const char*, size_t> sizes[] = {
      {"F64", 8}, {"I64", 8}, {"U64", 8}, {"F32", 4}, {"I32", 4}, {"U32", 4}, {"F16", 2}, {"BF16", 2},
      {"I16", 2}, {"U16", 2}, {"I8", 1},  {"U8", 1},  {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
  };
  for (const auto& [name, size] : sizes)
    if (dtype == name) return size;
  fail(context, ": unknown dtype '", dtype, "'");
}

SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, uint64_t file_size, const std::string& source) {
  if (file_size < 8) fail(source, ": truncated safetensors file (", file_size, " bytes, need at least 8)");
  const uint64_t header_len = read_u64_le(bytes);
  if (header_len > kMaxHeaderBytes) fail(source, ": header length ", header_len, " is implausibly large (corrupt file?)");
  if (header_len > file_size - 8)
    fail(source, ": header length ", header_len, " runs past the end of the file (", file_size, " bytes)");
  SafetensorsHeader header;
  header.data_offset = 8 + header_len;
  const uint64_t data_size = file_size - header.data_offset;

  nlohmann::json j;
  try {
    j = nlohmann::json::parse(reinterpret_cast<const char*>(bytes + 8), reinterpret_cast<const char*>(bytes + 8 + header_len));
  } catch (const std::exception& e) {
    fail(source, ": header is not valid JSON: ", e.what());
  }
  if (!j.is_object()) fail(source, ": header is not a JSON object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) fail(source, ": __metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) fail(source, ": __metadata__ value for '", m.key(), "' is not a string");
        header.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    const std::string where = source + ": tensor '" + it.key() + "'";
    const auto& t = *it;
    if (!t.is_object() || !t.contains("dtype") || !t.contains("shape") || !t.contains("data_offsets"))
      fail(where, ": entry needs dtype, shape and data_offsets");
    if (!t["dtype"].is_string()) fail(where, ": dtype is not a string");
    TensorEntry entry;
    entry.name = it.key();
    entry.dtype = t["dtype"].get<std::string>();
    entry.shape = parse_shape(t["shape"], where);
    const auto& off = t["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail(where, ": data_offsets must be two non-negative integers");
    entry.begin = off[0].get<uint64_t>();
    entry.end = off[1].get<uint64_t>();
    if (entry.begin > entry.end) fail(where, ": data_offsets [", entry.begin, ", ", entry.end, "] are reversed");
    if (entry.end > data_size)
      fail(where, ": data_offsets [", entry.begin, ", ", entry.end, "] run past the data buffer (", data_size, " bytes)");
    const uint64_t expected = byte_size(entry.shape, dtype_size(entry.dtype, where), where);
    if (entry.end - entry.begin != expected)
      fail(where, ": holds ", entry.end - entry.begin, " bytes but ", entry.dtype, " shape needs ", expected);
    header.tensors.push_back(std::move(entry));
  }
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const TensorEntry& a, const TensorEntry& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < header.tensors.size(); ++i) {
    const auto& prev = header.tensors[i - 1];
    const auto& cur = header.tensors[i];
    if (cur.begin < prev.end && cur.end > cur.begin)
      fail(source, ": tensors '", prev.name, "' and '", cur.name, "' overlap in the data buffer");
  }
  return header;
}

std::string make_safetensors_header(std::vector<TensorEntry>& tensors, const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json j;
  if (!metadata.empty()) j["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (auto& t : tensors) {
    const uint64_t size = byte_size(t.shape, dtype_size(t.dtype, t.name), t.name);
    t.begin = offset;
    t.end = offset + size;
    offset = t.end;
    j[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {t.begin, t.end}}};
  }
  std::string text = j.dump();
  // Pad with spaces so the data buffer starts 8-byte aligned: zero-copy mmap reads of any dtype.
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');
  std::string out(8, '\0');
  uint64_t len = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  return out + text;
}

}  // namespace kdae::io
