// Test driver for tests/python/test_gguf.py: exposes kdae's GGUF reader and quantizers so the
// gguf Python package can check them.
//   gguf_dump meta FILE             metadata and tensor infos as JSON on stdout
//   gguf_dump tensors FILE OUTDIR   each tensor dequantized to raw fp32 at OUTDIR/<name>.f32
//   gguf_dump q8_0 IN.f32 OUT       raw fp32 -> Q8_0 blocks
#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>

#include "common/error.h"
#include "common/files.h"
#include "io/gguf-convert.h"
#include "io/gguf-quants.h"

using nlohmann::json;
using namespace kdae::io;

static json value_json(const GgufValue& v) {
  json out = {{"type", gguf_type_name(v.type)}};
  switch (v.type) {
    case GgufType::STRING: {
      json bytes = json::array();  // raw bytes: token strings need not be valid UTF-8
      for (unsigned char c : v.s) bytes.push_back(int(c));
      out["bytes"] = bytes;
      break;
    }
    case GgufType::ARRAY: {
      out["elem_type"] = gguf_type_name(v.elem_type);
      json items = json::array();
      for (const auto& item : v.items) items.push_back(value_json(item));
      out["items"] = items;
      break;
    }
    case GgufType::F32: case GgufType::F64: out["value"] = v.f; break;
    case GgufType::BOOL: out["value"] = v.u != 0; break;
    default: out["value"] = v.is_integer() ? (v.type == GgufType::U64 || v.type == GgufType::U32 || v.type == GgufType::U16 || v.type == GgufType::U8 ? json(v.u) : json(v.i)) : json(nullptr);
  }
  return out;
}

int main(int argc, char** argv) try {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "meta" && argc == 3) {
    GgufModelFile f(argv[2]);
    json out = {{"version", f.file().version}, {"alignment", f.file().alignment}, {"data_offset", f.file().data_offset}};
    json md = json::array(), tensors = json::array();
    for (const auto& [k, v] : f.file().metadata) md.push_back({{"key", k}, {"value", value_json(v)}});
    for (const auto& t : f.file().tensors)
      tensors.push_back({{"name", t.name}, {"dims", t.dims}, {"type", ggml_type_info(uint32_t(t.type))->name},
                         {"offset", t.offset}, {"n_bytes", t.n_bytes}});
    out["metadata"] = md;
    out["tensors"] = tensors;
    std::cout << out.dump() << "\n";
    return 0;
  }
  if (mode == "tensors" && argc == 4) {
    GgufModelFile f(argv[2]);
    for (const auto& t : f.file().tensors) {
      const torch::Tensor x = f.tensor_f32(t);
      kdae::write_file_atomic(std::string(argv[3]) + "/" + t.name + ".f32",
                              std::string_view(static_cast<const char*>(x.data_ptr()), x.numel() * 4));
    }
    return 0;
  }
  if (mode == "q8_0" && argc == 4) {
    const std::string in = kdae::read_file(argv[2]);
    const auto q = quantize_q8_0(reinterpret_cast<const float*>(in.data()), in.size() / 4);
    kdae::write_file_atomic(argv[3], std::string_view(reinterpret_cast<const char*>(q.data()), q.size()));
    return 0;
  }
  std::cerr << "usage: gguf_dump meta FILE | tensors FILE OUTDIR | q8_0 IN.f32 OUT\n";
  return 2;
} catch (const std::exception& e) {
  std::cerr << "gguf_dump: " << e.what() << "\n";
  return 1;
}
