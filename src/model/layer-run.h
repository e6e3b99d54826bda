// One decoder layer's forward and what it yields beyond its output, run plainly or recomputed in
// backward (gradient checkpointing). The checkpointed form keeps only the layer's input; backward
// replays the forward under the autocast state and RNG state of the original call, so LoRA dropout
// draws the same masks and a bf16 forward is recomputed in bf16.
#pragma once
#include <torch/types.h>

#include <functional>

#include "model/transformer.h"

namespace kdae::model {

struct LayerRequest {
  bool probs = false;      // the attention probabilities (not with checkpointing: they would need a graph)
  bool router = false;     // router logits (MoE layers)
  bool mlp_input = false;  // the MLP/MoE input
  std::function<torch::Tensor(int64_t layer, const torch::Tensor& probs)> attention_term;  // empty = none
};

struct LayerResult {
  torch::Tensor y;               // (B, T, D)
  torch::Tensor probs;           // (B, H, T, S)
  torch::Tensor router;          // (B*T, E)
  torch::Tensor mlp_input;       // (B, T, D)
  torch::Tensor attention_term;  // ()
};

LayerResult run_layer(DecoderLayerImpl& layer, int64_t index, const torch::Tensor& x, const LayerContext& ctx,
                      const LayerRequest& request);

// As run_layer, but nothing inside the layer is kept for backward: the outputs' gradients come from a
// recompute. The layer module must outlive the graph (it does: models outlive their steps).
LayerResult run_layer_checkpointed(DecoderLayerImpl& layer, int64_t index, const torch::Tensor& x,
                                   const LayerContext& ctx, const LayerRequest& request);

}  // namespace kdae::model
