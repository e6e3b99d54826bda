// GGUF <-> Hugging Face model directory conversion for the Llama family (Llama, Mistral, Qwen2,
// Mixtral). Names and hyper-parameter keys come from io/tensor-names.h, block formats from
// io/gguf-quants.h, tokenizer files from io/gguf-tokenizer.h.
#pragma once
#include <torch/types.h>

#include <filesystem>
#include <memory>
#include <string>

#include "io/gguf-format.h"

namespace kdae::io {

// A GGUF file memory-mapped and parsed; tensors come out dequantized to fp32 in torch layout
// (GGUF dims reversed), exactly as stored (no rope un-permutation; see gguf_tensor_as_hf).
class GgufModelFile {
 public:
  explicit GgufModelFile(const std::filesystem::path& path);
  ~GgufModelFile();
  GgufModelFile(const GgufModelFile&) = delete;
  GgufModelFile& operator=(const GgufModelFile&) = delete;
  const GgufFile& file() const { return file_; }
  torch::Tensor tensor_f32(const GgufTensorInfo& info) const;  // (reversed dims) float32, owns its memory
  torch::Tensor tensor_f32(const std::string& name) const;

 private:
  std::filesystem::path path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  GgufFile file_;
};

// Undoes llama.cpp's rope row permutation of q/k (llama-arch): within each head, GGUF interleaves
// the two rotary halves (rows 2i, 2i+1), HF stores them as halves (rows i, i + head_dim/2).
torch::Tensor unpermute_rope_rows(const torch::Tensor& w, int64_t n_heads);  // (n_heads*hd, ...) -> same
torch::Tensor permute_rope_rows(const torch::Tensor& w, int64_t n_heads);    // HF -> GGUF

struct GgufToHfOptions {
  torch::ScalarType dtype = torch::kFloat32;  // weights in the output checkpoint
  bool overwrite = false;
};
// Writes config.json, generation_config.json, model.safetensors, tokenizer.json,
// tokenizer_config.json (with the chat template) into out_dir, via a staging directory.
void convert_gguf_to_hf(const std::filesystem::path& gguf_path, const std::filesystem::path& out_dir,
                        const GgufToHfOptions& options);

struct HfToGgufOptions {
  GgmlType type = GgmlType::F16;  // matrices; 1-D tensors (norms, biases) stay F32 as llama.cpp keeps them
  bool overwrite = false;
};
void convert_hf_to_gguf(const std::filesystem::path& hf_dir, const std::filesystem::path& out_path,
                        const HfToGgufOptions& options);

}  // namespace kdae::io
