// Rotary position embeddings (rotate-half layout, as HF Llama), with llama3 frequency scaling.
#pragma once
#include <torch/types.h>

#include "model/model-config.h"

namespace kdae::model {

// (head_dim / 2) inverse frequencies, fp32.
torch::Tensor rope_inverse_frequencies(const ModelConfig& config);

struct RopeTables {
  torch::Tensor cos, sin;  // (B, T, hd), in the activations' dtype
};
RopeTables rope_tables(const torch::Tensor& inv_freq, const torch::Tensor& position_ids, torch::ScalarType dtype);

// x (B, H, T, hd) rotated by the tables (broadcast over heads).
torch::Tensor apply_rope(const torch::Tensor& x, const RopeTables& tables);

}  // namespace kdae::model
