// How much each decoder layer matters to a model's output: the KL divergence between the model's
// next-token distribution and that of the same model with the layer removed, per counted position
// (the measure depth pruning keeps layers by; see model/prune.h). Layers whose removal changes the
// output least are the ones a pruned student can lose most cheaply.
//
// Dimension legend: B batch, T time, R counted positions of a batch, V vocabulary.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "model/transformer.h"

namespace kdae::model {

// Calibration text: token ids (B, T) and the flat indices (R) into B * T of the positions whose
// next-token distribution counts (an answer's tokens; right padding excluded).
struct CalibrationBatch {
  torch::Tensor input_ids;
  torch::Tensor positions;
};

// For each layer l not in `removed`: KL(model || model without `removed` and l) per counted
// position, averaged over the batches (with `removed` empty: the cost of removing l alone). Entries of removed layers are NaN. Layers before l are run once and shared by every
// branch, so one call costs about half of N separate pruned forwards.
// on_branch is called after each (candidate layer, batch) pair, for progress reporting.
std::vector<double> layer_removal_kl(Transformer& model, const std::vector<CalibrationBatch>& batches,
                                     const std::vector<int64_t>& removed = {},
                                     const std::function<void()>& on_branch = {});

// The `keep` layers to keep by greedy removal: rounds of layer_removal_kl, each removing the layer
// whose removal on top of the earlier rounds' keeps the model closest to the unpruned one;
// ascending. on_round receives each round's layer and the KL after removing it.
struct ImportanceCallbacks {
  std::function<void()> on_branch;
  std::function<void(int64_t layer, double kl)> on_round;
};
std::vector<int64_t> keep_by_importance(Transformer& model, const std::vector<CalibrationBatch>& batches, int64_t keep,
                                        const ImportanceCallbacks& callbacks = {});

}  // namespace kdae::model
