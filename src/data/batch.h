// The training batch and the collator that builds it from tokenized samples, packed or not.
// B = rows, T = time (tokens per row).
#pragma once
#include <torch/types.h>

#include <vector>

#include "data/tokenized-sample.h"

namespace kdae::data {

struct Batch {
  torch::Tensor input_ids;     // (B, T) int64; padding = pad id, never a new token
  torch::Tensor labels;        // (B, T) int64: ids[t+1] when token t+1 is supervised and in the same
                               //   sample, else -100; aligned with the logits at t
  torch::Tensor token_mask;    // (B, T) bool: token t itself is supervised (unshifted, reference mode)
  torch::Tensor position_ids;  // (B, T) int64: 0.. restarting at each packed sample; 0 on padding
  torch::Tensor segment_ids;   // (B, T) int32: 1..k for the k samples of a row, 0 on padding
  torch::Tensor domain;        // (B) int64
  torch::Tensor weight;        // (B) float32
};

// rows[b] lists the samples packed into row b (one sample per row = unpacked). All samples of a
// row must share domain and weight (the packer guarantees it; an error otherwise). T = the longest
// row, or `length` when larger (fixed shapes). pad_id: tokenizer pad, else eos, else 0.
Batch collate(const std::vector<std::vector<const TokenizedSample*>>& rows, int32_t pad_id, int64_t length = 0);

// Greedy packing in the given order: consecutive samples go into one row while they fit in
// seq_length tokens and share domain and weight. Returns indices into `samples` per row.
std::vector<std::vector<size_t>> pack_rows(const std::vector<const TokenizedSample*>& samples, int64_t seq_length);

}  // namespace kdae::data
