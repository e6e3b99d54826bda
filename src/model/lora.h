// LoRA on a whole model: which linear layers get adapters (per architecture by default), reading and
// writing the adapters as named tensors, and merging them into the weights. The arithmetic of one
// adapted layer is model::LinearImpl (layers.h).
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "io/peft-adapters.h"
#include "model/transformer.h"

namespace kdae::model {

// The projections PEFT users adapt: attention and MLP of Llama/Mistral/Qwen2; attention and the
// experts' w1/w2/w3 of Mixtral (never the router, block_sparse_moe.gate).
std::vector<std::string> default_lora_targets(const ModelConfig& config);

// Adds adapters to every linear whose last name component is in settings.target_modules and freezes
// every other parameter. A target that names no linear layer is an error listing what exists.
void add_lora(Transformer& model, const io::LoraSettings& settings, const std::string& model_name);

// The adapters' tensors under kdae names (<module>.lora_A / .lora_B).
io::NamedTensors lora_tensors(Transformer& model);

// Copies adapters (same settings as add_lora was given) into the model; errors name any tensor the
// model lacks, has in another shape, or that the file lacks.
void load_lora_tensors(Transformer& model, const io::NamedTensors& tensors, const std::string& source);

// Folds every adapter into its weight (saving then writes plain weights).
void merge_lora(Transformer& model);

}  // namespace kdae::model
