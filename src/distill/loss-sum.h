// A loss kept as (sum, count) so per-layer or per-micro-batch pieces can be added up and divided
// once: a trainer never needs every layer's inputs alive at the same time, and an empty piece
// (count 0) adds nothing instead of dividing by zero.
#pragma once
#include <torch/types.h>

#include <cstdint>

namespace kdae::distill {

struct LossSum {
  torch::Tensor sum;  // () fp32, may carry autograd history; undefined until the first add
  int64_t count = 0;  // how many rows (tokens, tokens x heads, ...) the sum covers

  void add(const torch::Tensor& piece_sum, int64_t piece_count) {
    sum = sum.defined() ? sum + piece_sum : piece_sum;
    count += piece_count;
  }
  void add(const LossSum& other) {
    if (other.sum.defined()) add(other.sum, other.count);
  }
  // sum / count; an empty sum is a zero that still backpropagates (zero gradient, never NaN).
  torch::Tensor mean() const {
    if (!sum.defined()) return torch::zeros({}, torch::kFloat32);
    return count > 0 ? sum / static_cast<double>(count) : sum * 0.0;
  }
};

}  // namespace kdae::distill
