// Hugging Face model directories: config.json + safetensors weights (+ generation_config.json and
// tokenizer files, copied through on save). Checkpoint names equal our parameter names.
#pragma once
#include <torch/types.h>

#include <filesystem>

#include "io/safetensors.h"
#include "model/transformer.h"

namespace kdae::io {

struct LoadOptions {
  torch::Device device = torch::kCPU;
  torch::ScalarType dtype = torch::kFloat32;
};

// Errors name the directory and the tensor: missing, unexpected, or misshaped (expected vs got).
model::Transformer load_model(const std::filesystem::path& dir, const LoadOptions& options = {});

struct SaveOptions {
  torch::ScalarType dtype = torch::kFloat32;  // dtype of the written weights
  bool overwrite = false;                     // replace an existing directory (after the new one is complete)
  std::filesystem::path copy_tokenizer_from;  // a directory whose tokenizer/generation files are copied; empty = none
  uint64_t max_shard_bytes = 5ull << 30;
};

// Writes into a staging directory and renames it into place: an earlier output is never half-replaced.
void save_model(model::Transformer& model, const std::filesystem::path& dir, const SaveOptions& options = {});

// The same for a model that exists only as named tensors (upcycling assembles memory-mapped donor
// tensors without building the model): config.json from `config`, tensors converted to options.dtype.
void save_model_files(const model::ModelConfig& config, const NamedTensors& tensors, const std::filesystem::path& dir,
                      const SaveOptions& options = {});

// The tensors save_model writes, in checkpoint order (LoRA adapters merged names excluded).
std::vector<std::pair<std::string, torch::Tensor>> checkpoint_tensors(model::Transformer& model);

}  // namespace kdae::io
