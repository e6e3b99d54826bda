// PEFT's LoRA adapter directory, so adapters trained by kdae load with
// peft.PeftModel.from_pretrained and adapters trained with PEFT load into kdae:
//   adapter_config.json        {"peft_type": "LORA", "r", "lora_alpha", "lora_dropout", "target_modules", ...}
//   adapter_model.safetensors  base_model.model.<module>.lora_A.weight (r, in), ....lora_B.weight (out, r)
// kdae names the same tensors <module>.lora_A / <module>.lora_B (model/layers.h).
#pragma once
#include <torch/types.h>

#include <filesystem>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace kdae::io {

struct LoraSettings {
  int64_t rank = 8;
  double alpha = 16;
  double dropout = 0.0;
  std::vector<std::string> target_modules;  // linear-layer name suffixes (q_proj, w1, ...)
  std::string base_model;                   // base_model_name_or_path, informational
};

struct PeftAdapters {
  LoraSettings settings;
  NamedTensors tensors;  // kdae names
};

std::string peft_tensor_name(const std::string& kdae_name);  // model.layers.0.self_attn.q_proj.lora_A -> PEFT's
std::string kdae_tensor_name(const std::string& peft_name);  // the inverse; an error for a non-LoRA tensor

// Writes dir atomically (staging + rename); replaces an existing adapter directory.
void write_peft_adapters(const std::filesystem::path& dir, const PeftAdapters& adapters);

// Errors name the file: missing files, a non-LoRA peft_type, options kdae does not implement
// (DoRA, rsLoRA, rank/alpha patterns, bias training, fan_in_fan_out), foreign tensor names.
PeftAdapters read_peft_adapters(const std::filesystem::path& dir);

}  // namespace kdae::io
