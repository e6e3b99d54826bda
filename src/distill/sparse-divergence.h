// The distillation term against a sparse teacher: per supervised row, the teacher's top-k token ids,
// their log-probabilities and the remaining tail mass (what `kdae teacher-cache` stores), instead of
// full teacher logits.
//
// Dimension legend: B = batch, T = time, V = vocabulary columns, N = supervised rows, k = kept ids.
//
// Both distributions are compared on k + 1 buckets: the teacher's k ids, and one tail bucket holding
// everything else. The student's bucket probabilities are softmax(z_S / tau) at the k ids and
// s_tail = 1 - sum of those (computed as a log-sum-exp over the other columns, so it is exact and
// stable). Every divergence of divergence.h is well defined on these bucket distributions and uses
// the same formulas (forward_kl, reverse_kl, jsd, skew_kl, tvd), times tau^2. At k = V the tail
// buckets are empty and the values equal the dense ones (tested to 1e-6); for k < V the bucketed
// value is a lower bound of the dense one (grouping outcomes never increases an f-divergence).
//
// Teacher entries with log-prob -inf are absent (dropped by top-p or the codec): their ids count
// toward the tail on both sides.
//
// Temperature: the store holds log softmax(z_T / tau_c) at the capture temperature tau_c. For another
// training temperature tau, p_tau(i) = p_c(i)^(tau_c / tau) / Z with Z summed over all V tokens; the
// top-k terms are exact but the tail's share of Z is unknown. We assume the tail mass spread evenly
// over the V - k tokens outside the top-k (exact at k = V, an approximation otherwise; the caller
// should warn, see temperature_rescale_is_exact).
#pragma once
#include <torch/types.h>

#include <cstdint>

#include "distill/divergence.h"

namespace kdae::distill {

// The teacher signal of N supervised rows, in the row-major order of a batch's labels != -100.
struct SparseTeacherRows {
  torch::Tensor ids;       // (N, k) int64 token ids (any value where logprobs is -inf)
  torch::Tensor logprobs;  // (N, k) fp32 log p_T(id) at the capture temperature; -inf = absent
                           // (never entry 0, the top-1)
  torch::Tensor tail;      // (N) fp32 1 - sum of exp(logprobs), >= 0
  double temperature = 1.0;  // the capture temperature tau_c
};

struct SparseDivergenceOptions {
  // kind, temperature (training tau), beta, alpha, normalization, student_vocab as in divergence.h;
  // teacher_vocab, chunked and chunk sizes are ignored (the bucketed tensors are (N, k + 1)).
  DivergenceOptions divergence;
  int64_t vocab = 0;  // true vocabulary size V (for the temperature rescale and id checks); required
};

// True when the rows at capture temperature rows.temperature can be moved to tau exactly:
// tau == tau_c, or k = V (no token outside the stored ids).
bool temperature_rescale_is_exact(const SparseTeacherRows& rows, double tau, int64_t vocab);

// The rows moved to temperature tau (see the header comment); the same rows when tau == tau_c.
SparseTeacherRows rescale_temperature(const SparseTeacherRows& rows, double tau, int64_t vocab);

// Per-row divergence (N) fp32 times tau^2 between student logits (N, Vs) of any float dtype (the
// supervised rows only; columns past opts.vocab are cut off) and the sparse teacher rows.
// Differentiable wrt the student logits.
torch::Tensor sparse_row_divergence(const torch::Tensor& student_rows, const SparseTeacherRows& teacher,
                                    const SparseDivergenceOptions& opts);

// Rows [start, start + n) of a sparse teacher.
SparseTeacherRows slice_rows(const SparseTeacherRows& rows, int64_t start, int64_t n);

// The same rows placed at `positions` (N) int64 of `total` rows; the other rows hold a placeholder
// (all mass on id 0) for callers that compute them but give them zero weight.
SparseTeacherRows scatter_rows(const SparseTeacherRows& rows, const torch::Tensor& positions, int64_t total);

// The chunk form for loops that own the chunking (head-loss.h): z (n, W) fp32 raw student logits;
// the gradient comes from autograd over this chunk only (the bucketed tensors are small next to z).
ChunkGrad sparse_divergence_chunk(const torch::Tensor& z, const SparseTeacherRows& teacher,
                                  const SparseDivergenceOptions& opts, const torch::Tensor& weights);

// The pred term like distillation_loss: student logits (B, T, Vs), mask (B, T) bool with exactly N
// true entries whose row-major order matches the teacher rows, optional sample weights (B).
DistillTerm sparse_distillation_loss(const torch::Tensor& student_logits, const torch::Tensor& mask,
                                     const SparseTeacherRows& teacher, const SparseDivergenceOptions& opts,
                                     const torch::Tensor& sample_weights = {});

}  // namespace kdae::distill
