// Choosing which teacher layers a depth-pruned student keeps, shared by `kdae prune` and `kdae demo`:
// every k-th layer, or by measured importance on calibration conversations (model/layer-importance.h).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "cli/options.h"
#include "model/transformer.h"
#include "tokenizer/tokenizer.h"

namespace kdae::cli {

struct PruneSpec {
  std::string method = "importance";  // importance (greedy removal by KL) | every (every k-th layer)
  int64_t keep_layers = 20;            // importance: layers kept
  int64_t keep_every = 3;              // every: layers 0, k, 2k, ... and the last
  std::string data;                    // importance: JSONL conversations whose answers are the calibration text
  std::string chat_template = "auto";
  int64_t calibration_samples = 8;     // the first N samples of data
  int64_t seq_length = 256;
};

// --prune, --keep-layers, --keep-every, --calibration-samples (data and template come from the command).
// calibration_samples: the command's default for --calibration-samples.
std::vector<Option> prune_options(int64_t calibration_samples);
PruneSpec prune_spec_from(const Args& args);

struct PruneChoice {
  std::vector<int64_t> kept;                        // ascending
  std::vector<std::pair<int64_t, double>> removed;  // importance: each round's layer and its KL (nats/token)
};

// Logs the choice to stderr ("prune: ...").
PruneChoice choose_layers(model::Transformer& model, const tok::Tokenizer& tokenizer, const PruneSpec& spec);

// Writes out: the kept layers of `model` (loaded from source) as an HF directory with source's tokenizer,
// and out/prune.json (source, method, kept layers, each removal round's layer and KL). Returns the JSON.
std::string save_pruned(model::Transformer& model, const std::string& source, const PruneSpec& spec,
                        const PruneChoice& choice, const std::string& out, bool overwrite);

}  // namespace kdae::cli
