// Depth pruning (as Minitron-style students start): a smaller model made of a subset of a model's
// decoder layers, everything else (embeddings, final norm, head) kept. The usual starting point for
// a distilled student that shares its teacher's tokenizer and width.
#pragma once
#include <cstdint>
#include <vector>

#include "model/transformer.h"

namespace kdae::model {

// Layers 0, k, 2k, ... and always the last layer (it feeds the final norm and head).
std::vector<int64_t> every_kth_layer(int64_t num_layers, int64_t k);

// A new model holding copies of `layers` (ascending, distinct, in range) of `source`.
Transformer keep_layers(Transformer& source, const std::vector<int64_t>& layers);

}  // namespace kdae::model
