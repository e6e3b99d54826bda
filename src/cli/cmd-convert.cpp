// kdae convert: GGUF file -> HF model directory, or HF model directory -> GGUF file. The direction
// follows --in: a file is read as GGUF, a directory as an HF checkpoint.
#include <chrono>
#include <filesystem>
#include <iostream>

#include "cli/commands.h"
#include "common/device.h"
#include "common/error.h"
#include "io/gguf-convert.h"

namespace kdae::cli {

static io::GgmlType parse_gguf_type(const std::string& s) {
  if (s == "f32") return io::GgmlType::F32;
  if (s == "f16") return io::GgmlType::F16;
  if (s == "q8_0") return io::GgmlType::Q8_0;
  usage_fail("--type must be f32, f16 or q8_0, not '", s, "'");
}

Command convert_command() {
  Command c;
  c.name = "convert";
  c.summary = "convert a GGUF file to an HF model directory, or back";
  c.description =
      "With --in X.gguf, writes an HF directory (config.json, model.safetensors, tokenizer.json, ...) to --out.\n"
      "With --in DIR (an HF Llama/Mistral/Qwen2/Mixtral checkpoint), writes a GGUF file to --out.";
  c.options = {
      {"in", "PATH", "GGUF file or HF model directory", "", false, true},
      {"out", "PATH", "output HF directory or .gguf file", "", false, true},
      {"type", "T", "GGUF export: f32, f16 or q8_0 for matrices (1-D tensors stay f32)", "f16"},
      {"dtype", "T", "HF export: float32, bfloat16 or float16 weights", "float32"},
      {"overwrite", "", "replace an existing output", ""},
  };
  for (auto& o : compute_options()) c.options.push_back(o);
  c.run = [](const Args& args) {
    apply_compute_options(args);
    const std::filesystem::path in = args.get("in"), out = args.get("out");
    if (!std::filesystem::exists(in)) usage_fail("--in ", in.string(), " does not exist");
    const auto start = std::chrono::steady_clock::now();
    if (std::filesystem::is_directory(in)) {
      io::HfToGgufOptions options;
      options.type = parse_gguf_type(args.get("type"));
      options.overwrite = args.flag("overwrite");
      io::convert_hf_to_gguf(in, out, options);
    } else {
      io::GgufToHfOptions options;
      options.dtype = parse_dtype(args.get("dtype"));
      options.overwrite = args.flag("overwrite");
      io::convert_gguf_to_hf(in, out, options);
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cerr << "kdae convert: wrote " << out.string() << " in " << seconds << " s\n";
    return 0;
  };
  return c;
}

}  // namespace kdae::cli
