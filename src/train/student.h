// The model being trained: loading it for training, LoRA adapters, frozen parts, and the final
// Hugging Face directory it becomes.
#pragma once
#include <torch/types.h>

#include <filesystem>

#include "io/peft-adapters.h"
#include "model/transformer.h"
#include "train/checkpoint.h"
#include "train/distill-options.h"

namespace kdae::train {

// Loads base_model_path in float32 (master weights) on device, adds LoRA adapters to the
// peft_target_modules when use_peft (base weights frozen), and applies freeze_routers/experts.
model::Transformer load_student(const DistillOptions& options, torch::Device device);

// The parameters the optimizer updates, by name (LoRA: only the adapters).
NamedTensors trainable_parameters(model::Transformer& student);

// The LoRA settings of a run: its keys, the architecture's default targets when none are named.
io::LoraSettings lora_settings(const DistillOptions& options, const model::ModelConfig& config);

// The adapters as a PEFT adapter directory (dir replaced atomically).
void save_adapters(model::Transformer& student, const DistillOptions& options, const std::filesystem::path& dir);

// Merges any LoRA adapters into the weights and writes an HF directory (tokenizer files copied from
// base_model_path) atomically; refuses to replace an existing directory unless options.overwrite.
void save_final_model(model::Transformer& student, const DistillOptions& options, const std::filesystem::path& dir);

}  // namespace kdae::train
