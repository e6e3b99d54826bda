// Autoregressive decoding of one sequence with the KV cache: greedy (equal to transformers' greedy
// generate) or temperature / nucleus sampling with a seeded generator. Token level; many sequences
// at once are generate/batch-decoder.h, the text side (chat templates, streamed text) is
// generate/text-generator.h.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "model/transformer.h"

namespace kdae::gen {

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  double temperature = 0;          // 0 = greedy; > 0 samples from softmax(logits / temperature)
  double top_p = 1.0;              // nucleus mass when sampling
  uint64_t seed = 0;               // sampling generator seed (a fresh generator per call)
  std::vector<int64_t> stop_ids;   // generation ends before any of these (EOS, end-of-turn); not returned
};

// What the cache holds between calls: a conversation re-fed each turn only runs the tokens after
// the common prefix with the previous call.
struct DecodeState {
  model::KVCache cache;
  std::vector<int64_t> tokens;  // the tokens whose keys and values are in `cache`, in order
};

// Generates up to max_new_tokens after `prompt` (non-empty) and returns them. on_token sees each
// token as it is chosen (streaming). state == nullptr: a fresh cache for this call only.
std::vector<int64_t> generate(model::Transformer& model, const std::vector<int64_t>& prompt, const GenerateOptions& options,
                              const std::function<void(int64_t)>& on_token = {}, DecodeState* state = nullptr);

// Next token from one position's logits (V).
int64_t pick_token(const torch::Tensor& logits, double temperature, double top_p, torch::Generator& gen);

// A sampling generator seeded like generate()'s, so a batch row draws what a lone call would.
torch::Generator sampling_generator(uint64_t seed);

}  // namespace kdae::gen
