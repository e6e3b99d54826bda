// Token-level divergences between the teacher's and the student's next-token distributions at
// temperature tau, scaled by tau^2 (Hinton et al.: keeps gradient size independent of tau).
//
// Dimension legend: B = batch, T = time, V = vocabulary columns, R = B*T rows, N = supervised rows.
//
// p_T = softmax(z_T / tau), p_S = softmax(z_S / tau), both over the true vocabulary only.
//   forward_kl  KL(p_T || p_S)                                          (the paper's L_pred)
//   reverse_kl  KL(p_S || p_T)
//   jsd(beta)   beta KL(p_T || m) + (1-beta) KL(p_S || m), m = beta p_T + (1-beta) p_S;
//               endpoints: beta = 0 IS forward_kl and beta = 1 IS reverse_kl (the limits of
//               JSD/beta and JSD/(1-beta), the convention of GKD/TRL), so the value jumps at them.
//   skew_kl(a)  KL(p_T || a p_T + (1-a) p_S); a = 0 is forward_kl.
//   tvd         0.5 sum |p_T - p_S|
//
// The teacher is a constant: no gradient flows to the teacher logits.
// Two paths compute the same numbers: the plain one (full-vocabulary fp32 autograd, the reference)
// and the chunked one (the default) that never holds more than a chunk of rows' fp32 vocabulary
// tensors and computes the student gradient analytically in backward, chunk by chunk.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <string>

namespace kdae::distill {

enum class Divergence { ForwardKL, ReverseKL, JSD, SkewKL, TVD };
enum class Normalization { TokenMean, SequenceMean };

Divergence parse_divergence(const std::string& name);  // forward_kl, reverse_kl, jsd, skew_kl, tvd
std::string divergence_name(Divergence kind);
Normalization parse_normalization(const std::string& name);  // token, sequence (the config key loss_normalization)

struct DivergenceOptions {
  Divergence kind = Divergence::ForwardKL;
  double temperature = 1.0;
  double beta = 0.5;   // jsd only, in [0, 1]
  double alpha = 0.1;  // skew_kl only, in [0, 1]
  Normalization normalization = Normalization::TokenMean;
  // True vocabulary sizes; 0 = the logits' width. Columns past them (padded heads) are cut off
  // before the softmax. After resolution the two must agree.
  int64_t student_vocab = 0;
  int64_t teacher_vocab = 0;
  bool chunked = true;
  int64_t chunk_rows = 0;                      // 0 = choose from memory_budget_bytes and V
  int64_t memory_budget_bytes = 256ll << 20;   // fp32 working set of one chunk
};

// Checks options and the logits' widths; returns the common true vocabulary size.
int64_t resolve_vocab(const DivergenceOptions& opts, int64_t student_width, int64_t teacher_width);

// Rows per chunk for a V-column vocabulary (>= 1): the chunk's fp32 temporaries fit the budget.
int64_t chunk_rows_for(int64_t vocab, const DivergenceOptions& opts);

// Per-row divergence (N,) fp32 times tau^2 for the rows `rows` (N,) int64 of student (R, Vs) and
// teacher (R, Vt) logits of any float dtype. Differentiable wrt the student logits.
torch::Tensor row_divergence(const torch::Tensor& student, const torch::Tensor& teacher,
                             const torch::Tensor& rows, const DivergenceOptions& opts);

// One chunk of rows with its gradient, for callers that own the loop over chunks (the chunked
// autograd function below, the fused LM head in head-loss.h). z (n, W) raw student logits in fp32.
struct ChunkGrad {
  torch::Tensor value;  // (n) fp32, tau^2-scaled for divergences
  torch::Tensor grad;   // (n, W) fp32 d sum(weights * value) / dz; padded columns 0; only with weights
};
// teacher (n, Wt) raw logits of any float dtype; vocab = the shared true vocabulary.
ChunkGrad divergence_chunk(const torch::Tensor& z, const torch::Tensor& teacher, int64_t vocab,
                           const DivergenceOptions& opts, const torch::Tensor& weights);
// Cross-entropy over all W columns against labels (n) int64.
ChunkGrad cross_entropy_chunk(const torch::Tensor& z, const torch::Tensor& labels, const torch::Tensor& weights);

// The plain reference form of row_divergence (materializes (N, V) fp32 tensors, autograd).
torch::Tensor row_divergence_plain(const torch::Tensor& student, const torch::Tensor& teacher,
                                   const torch::Tensor& rows, const DivergenceOptions& opts);

// Per-row next-token cross-entropy (N,) fp32 over all student columns, -log softmax(z_S)[label];
// chunked like row_divergence (same options decide chunking), no temperature.
torch::Tensor row_cross_entropy(const torch::Tensor& student, const torch::Tensor& labels,
                                const torch::Tensor& rows, const DivergenceOptions& opts);
torch::Tensor row_cross_entropy_plain(const torch::Tensor& student, const torch::Tensor& labels,
                                      const torch::Tensor& rows);

// The linear map of normalize_rows as per-row coefficients (N) fp32: normalize_rows(v) = sum(c * v).
torch::Tensor row_coefficients(const torch::Tensor& mask, const torch::Tensor& weights, Normalization normalization);

// Reduces per-row values (N,) of the rows selected by mask (B, T) bool to a scalar:
// token-mean = sum_w / sum of weights over the rows, sequence-mean = weighted mean over sequences
// with >= 1 row of each sequence's row mean. weights (B) optional (undefined = all 1).
// No row at all gives 0 with a zero gradient.
torch::Tensor normalize_rows(const torch::Tensor& values, const torch::Tensor& mask,
                             const torch::Tensor& weights, Normalization normalization);

// The supervised rows of a (B, T) bool mask as flat indices (N,) int64 into B*T.
torch::Tensor mask_rows(const torch::Tensor& mask);

struct DistillTerm {
  torch::Tensor loss;  // () fp32
  int64_t count = 0;   // supervised tokens used
};

// The distillation term: student/teacher logits (B, T, V*), mask (B, T) bool, optional weights (B).
DistillTerm distillation_loss(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                              const torch::Tensor& mask, const DivergenceOptions& opts,
                              const torch::Tensor& sample_weights = {});

}  // namespace kdae::distill
