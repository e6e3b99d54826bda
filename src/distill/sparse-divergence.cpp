// Dimension legend: N = supervised rows, V = true vocabulary, k = stored ids, K = k + 1 buckets.
#include "distill/sparse-divergence.h"

#include <torch/autograd.h>

#include <cmath>
#include <limits>

#include "common/error.h"
#include "distill/tensor-text.h"

namespace kdae::distill {

namespace {

// Stands for log 0 in the bucket tensors: exp underflows to exactly 0 in fp32, while 0 * (floor - x)
// stays 0 where a true -inf would give NaN.
constexpr double kLogZero = -1e4;

void check_rows(const SparseTeacherRows& t, int64_t n_rows) {
  if (t.ids.dim() != 2 || t.logprobs.sizes() != t.ids.sizes() || t.tail.dim() != 1 || t.tail.size(0) != t.ids.size(0))
    fail("sparse teacher rows need ids (N, k), logprobs (N, k) and tail (N), got ids ", shape_of(t.ids),
         ", logprobs ", shape_of(t.logprobs), ", tail ", shape_of(t.tail));
  if (t.ids.scalar_type() != torch::kInt64) fail("sparse teacher ids must be int64");
  if (n_rows >= 0 && t.ids.size(0) != n_rows)
    fail("the teacher cache gives ", t.ids.size(0), " rows but the batch has ", n_rows, " supervised positions");
  if (!(t.temperature > 0.0)) fail("sparse teacher rows: capture temperature must be positive, got ", t.temperature);
}

}  // namespace

bool temperature_rescale_is_exact(const SparseTeacherRows& rows, double tau, int64_t vocab) {
  return tau == rows.temperature || rows.ids.size(1) == vocab;
}

SparseTeacherRows rescale_temperature(const SparseTeacherRows& rows, double tau, int64_t vocab) {
  check_rows(rows, -1);
  if (!(tau > 0.0)) fail("distillation temperature must be positive, got ", tau);
  if (tau == rows.temperature) return rows;
  const double a = rows.temperature / tau;
  // fp64 here: the rescale would otherwise add rounding that tau^2 later magnifies.
  auto lp = rows.logprobs.to(torch::kFloat64);                                    // (N, k)
  auto present = lp > -std::numeric_limits<double>::infinity();                   // (N, k)
  auto scaled = lp * a;                                                           // (N, k), -inf stays
  // The tail as n equal tokens of mass t / n each: n (t / n)^a.
  auto n_tail = (vocab - present.sum(1)).to(torch::kFloat64);                     // (N)
  auto tail = rows.tail.to(torch::kFloat64);                                      // (N)
  auto log_tail = at::where((n_tail > 0) & (tail > 0), n_tail.log() + a * (tail.log() - n_tail.log()),
                            at::full_like(tail, -std::numeric_limits<double>::infinity()));  // (N)
  auto log_z = at::logsumexp(at::cat({scaled, log_tail.unsqueeze(1)}, 1), 1);     // (N)
  SparseTeacherRows out = rows;
  out.logprobs = (scaled - log_z.unsqueeze(1)).to(torch::kFloat32);  // (N, k)
  out.tail = (log_tail - log_z).exp().to(torch::kFloat32);            // (N)
  out.temperature = tau;
  return out;
}

torch::Tensor sparse_row_divergence(const torch::Tensor& student_rows, const SparseTeacherRows& teacher,
                                    const SparseDivergenceOptions& opts) {
  if (student_rows.dim() != 2) fail("sparse divergence needs (N, V) student rows, got ", shape_of(student_rows));
  check_rows(teacher, student_rows.size(0));
  const int64_t vocab = opts.vocab > 0 ? opts.vocab : student_rows.size(1);
  const int64_t student_vocab = opts.divergence.student_vocab > 0 ? opts.divergence.student_vocab : student_rows.size(1);
  if (student_vocab != vocab || vocab > student_rows.size(1))
    fail("sparse divergence: the student's vocabulary (", student_vocab, " of ", student_rows.size(1),
         " columns) differs from the teacher cache's ", vocab);
  const double tau = opts.divergence.temperature;
  const auto t = rescale_temperature(teacher, tau, vocab);
  const auto device = student_rows.device();
  auto ids = t.ids.to(device);                                                     // (N, k)
  auto lp_t = t.logprobs.to(device, torch::kFloat32);                              // (N, k)
  auto present = lp_t > -std::numeric_limits<float>::infinity();                   // (N, k)
  auto safe_ids = at::where(present, ids, at::zeros_like(ids));                    // (N, k)
  if (safe_ids.numel() > 0 && (safe_ids.max().item<int64_t>() >= vocab || safe_ids.min().item<int64_t>() < 0))
    fail("sparse teacher rows hold a token id outside [0, ", vocab, ")");
  auto z = student_rows.narrow(1, 0, vocab).to(torch::kFloat32);                   // (N, V)
  if (tau != 1.0) z = z / tau;
  auto lse = at::logsumexp(z, 1, true);                                            // (N, 1)
  auto s_top = at::where(present, z.gather(1, safe_ids) - lse, at::full_like(lp_t, kLogZero));  // (N, k)
  // The student's tail: every column but the present ids (absent slots repeat the top-1 id, which is
  // masked anyway, so the scatter writes one value per column).
  auto mask_ids = at::where(present, ids, ids.narrow(1, 0, 1));                     // (N, k)
  auto s_tail = at::logsumexp(z.scatter(1, mask_ids, kLogZero), 1, true) - lse;     // (N, 1)
  auto log_s = at::cat({s_top, s_tail.clamp_min(kLogZero)}, 1);                    // (N, K)
  auto t_top = at::where(present, lp_t, at::full_like(lp_t, kLogZero));            // (N, k)
  auto t_tail = t.tail.to(device, torch::kFloat32).unsqueeze(1).log().clamp_min(kLogZero);  // (N, 1)
  auto log_t = at::cat({t_top, t_tail}, 1);                                        // (N, K)
  // The buckets are normalized log-probabilities, so the dense formulas apply as they are (their
  // log-softmax is the identity here) at temperature 1; tau is already in z and in the teacher.
  DivergenceOptions bucket = opts.divergence;
  bucket.temperature = 1.0;
  bucket.student_vocab = bucket.teacher_vocab = 0;
  auto rows = at::arange(log_s.size(0), torch::TensorOptions().dtype(torch::kInt64).device(device));  // (N)
  return row_divergence_plain(log_s, log_t, rows, bucket) * (tau * tau);           // (N)
}

SparseTeacherRows slice_rows(const SparseTeacherRows& rows, int64_t start, int64_t n) {
  SparseTeacherRows out = rows;
  out.ids = rows.ids.narrow(0, start, n);
  out.logprobs = rows.logprobs.narrow(0, start, n);
  out.tail = rows.tail.narrow(0, start, n);
  return out;
}

SparseTeacherRows scatter_rows(const SparseTeacherRows& rows, const torch::Tensor& positions, int64_t total) {
  check_rows(rows, positions.size(0));
  const int64_t k = rows.ids.size(1);
  SparseTeacherRows out = rows;
  auto pos = positions.to(rows.ids.device());
  out.ids = torch::zeros({total, k}, rows.ids.options()).index_copy(0, pos, rows.ids);  // (total, k)
  auto placeholder = torch::full({total, k}, -std::numeric_limits<float>::infinity(), rows.logprobs.options());
  placeholder.select(1, 0).zero_();  // log 1 at id 0
  out.logprobs = placeholder.index_copy(0, pos.to(rows.logprobs.device()), rows.logprobs);  // (total, k)
  out.tail = torch::zeros({total}, rows.tail.options()).index_copy(0, pos.to(rows.tail.device()), rows.tail);
  return out;
}

ChunkGrad sparse_divergence_chunk(const torch::Tensor& z, const SparseTeacherRows& teacher,
                                  const SparseDivergenceOptions& opts, const torch::Tensor& weights) {
  const bool want_grad = weights.defined();
  torch::AutoGradMode mode(want_grad);
  auto u = z.detach().to(torch::kFloat32).requires_grad_(want_grad);  // (n, W)
  auto values = sparse_row_divergence(u, teacher, opts);            // (n)
  ChunkGrad out;
  out.value = values.detach();
  if (want_grad) out.grad = torch::autograd::grad({values}, {u}, {weights.to(values.options())})[0];  // (n, W)
  return out;
}

DistillTerm sparse_distillation_loss(const torch::Tensor& student_logits, const torch::Tensor& mask,
                                     const SparseTeacherRows& teacher, const SparseDivergenceOptions& opts,
                                     const torch::Tensor& sample_weights) {
  if (student_logits.dim() != 3) fail("sparse distillation needs (B, T, V) student logits, got ", shape_of(student_logits));
  if (mask.dim() != 2 || mask.scalar_type() != torch::kBool || mask.size(0) != student_logits.size(0) ||
      mask.size(1) != student_logits.size(1))
    fail("supervision mask must be (B, T) bool matching the logits ", shape_of(student_logits), ", got ", shape_of(mask));
  auto m = mask.to(student_logits.device());                                           // (B, T)
  auto rows = mask_rows(m);                                                            // (N)
  auto s = student_logits.reshape({-1, student_logits.size(2)}).index_select(0, rows);  // (N, Vs)
  auto values = sparse_row_divergence(s, teacher, opts);                               // (N)
  return {normalize_rows(values, m, sample_weights, opts.divergence.normalization), rows.size(0)};
}

}  // namespace kdae::distill
