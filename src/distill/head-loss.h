// The LM head and the objective's token terms (CE and the divergence) in one pass over chunks of
// rows: the student's logits, and a live teacher's, exist for one chunk of rows at a time and never as
// (B, T, V) tensors. Each chunk computes its logits (hidden @ W^T), the per-row values, and at once the
// gradients of the weighted total wrt the rows' hidden states and the head, which backward only
// scales; so the head costs the same three matmuls as an unfused one and memory holds one chunk's
// (n, V) fp32 working set plus the (M, D) and (W, D) gradients.
//
// Dimension legend: M = rows (supervised by CE or the divergence), D = hidden width, W = head rows
// (vocabulary, maybe padded), V = true vocabulary, n = rows of one chunk.
#pragma once
#include <torch/types.h>

#include <cstdint>

#include "distill/divergence.h"
#include "distill/sparse-divergence.h"

namespace kdae::distill {

// The teacher signal for the same M rows, one of three sources.
struct TeacherRowsSource {
  torch::Tensor logits;                // (M, Wt) logits of the rows
  torch::Tensor hidden, head;          // (M, Dt) final hidden states and the head (Wt, Dt), teacher's device
  const SparseTeacherRows* sparse = nullptr;  // M rows of a teacher cache
  DivergenceOptions divergence;        // kind, temperature, beta, alpha
  int64_t vocab = 0;                   // the shared true vocabulary V
};

struct HeadRows {
  torch::Tensor hidden;     // (M, D) the student's final (normed) hidden states of the rows
  torch::Tensor head;       // (W, D) the student's LM head
  torch::Tensor labels;     // (M) int64 CE targets (any id in [0, W) where ce_weight is 0)
  torch::Tensor ce_weight;  // (M) fp32 d total / d ce_row
  torch::Tensor kd_weight;  // (M) fp32 d total / d kd_row; ignored without a teacher
  const TeacherRowsSource* teacher = nullptr;
  int64_t chunk_rows = 0;   // rows per chunk (>= 1)
};

struct HeadTerms {
  torch::Tensor total;  // () fp32 sum(ce_weight * ce + kd_weight * kd); gradients to hidden and head
  torch::Tensor ce;     // (M) fp32 per-row cross-entropy, detached
  torch::Tensor kd;     // (M) fp32 per-row divergence (tau^2 scaled), detached; undefined without teacher
};

// Gradients are computed only when grad mode is on and hidden or head requires grad.
HeadTerms head_loss(const HeadRows& rows);

}  // namespace kdae::distill
