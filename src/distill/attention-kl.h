// The paper's attention distillation term: a row-wise KL between teacher and student attention
// probabilities, query rows = supervised tokens, keys = each row's causal prefix (prompt included):
//   L_attn = 1/(|M| H N) sum_l sum_h sum_{(b,i) in M} sum_{j<=i} A_T(i,j) (log A_T(i,j) - log A_S(i,j))
// No temperature and no tau^2. Maps are post-softmax (B, H, T, T), rows = queries.
//
// Dimension legend: B = batch, T = time (queries and keys), Hs/Ht = student/teacher heads,
// N = supervised query rows, L = layers.
//
// Zero guards: A_T(i,j) = 0 contributes exactly 0 (x log x at 0 is 0); the student probability is
// clamped at log_floor before the log, so an underflowed A_S (bf16/fp16 maps) gives a finite penalty
// of A_T (log A_T - log floor) and no gradient through that entry, instead of +inf / NaN.
//
// Call attention_kl_layer (or AttentionKL::add_layer) once per mapped layer right after that layer
// has produced both maps, then let the maps go: only the (sum, count) and one N x H x T fp32 tensor per
// layer (the gradient wrt the student's rows, computed in forward) stay alive, never every layer's
// B x H x T x T map.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "distill/loss-sum.h"

namespace kdae::distill {

struct AttentionKLOptions {
  double log_floor = 1e-12;  // student probabilities below this are treated as this in the log
};

using LayerPairs = std::vector<std::pair<int64_t, int64_t>>;  // (student layer, teacher layer), 0-based

// Student layer l of Ls maps to teacher layer (l+1)*Lt/Ls - 1 (integer division): identity when the
// depths match, and the last student layer always meets the last teacher layer.
LayerPairs uniform_layer_map(int64_t student_layers, int64_t teacher_layers);

// Explicit pairs must name existing layers and use each student layer at most once.
void check_layer_map(const LayerPairs& pairs, int64_t student_layers, int64_t teacher_layers);

// Teacher rows (N, Ht, K) regrouped to Hs heads: Ht = g*Hs averages each run of g consecutive
// teacher heads (the GQA layout: query head h belongs to group h / g); Hs = g*Ht repeats each
// teacher head for its g consecutive student heads. Other ratios are an error naming both counts.
torch::Tensor group_teacher_heads(const torch::Tensor& teacher_rows, int64_t student_heads);

// One layer's contribution: sum over supervised rows x student heads, count = N * Hs.
// student_attn (B, Hs, T, T), teacher_attn (B, Ht, T, T), query_mask (B, T) bool.
LossSum attention_kl_layer(const torch::Tensor& student_attn, const torch::Tensor& teacher_attn,
                           const torch::Tensor& query_mask, const AttentionKLOptions& opts = {});

// Accumulates layers; total.mean() is L_attn.
class AttentionKL {
 public:
  explicit AttentionKL(AttentionKLOptions opts = {}) : opts_(opts) {}
  void add_layer(const torch::Tensor& student_attn, const torch::Tensor& teacher_attn,
                 const torch::Tensor& query_mask) {
    total_.add(attention_kl_layer(student_attn, teacher_attn, query_mask, opts_));
  }
  const LossSum& total() const { return total_; }

 private:
  AttentionKLOptions opts_;
  LossSum total_;
};

}  // namespace kdae::distill
