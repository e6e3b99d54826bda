// Dimension legend: B = batch, T = time, V = true vocabulary, R = B*T rows, N = supervised rows,
// n = rows of one chunk.
#include "distill/divergence.h"

#include <torch/autograd.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "common/error.h"
#include "distill/tensor-text.h"

namespace kdae::distill {

namespace {

// Internal kind for the chunked kernel: the five divergences plus cross-entropy against labels.
enum class RowKind : int64_t { ForwardKL, ReverseKL, JSD, SkewKL, TVD, CrossEntropy };

RowKind row_kind(const DivergenceOptions& opts) {
  switch (opts.kind) {
    case Divergence::ForwardKL: return RowKind::ForwardKL;
    case Divergence::ReverseKL: return RowKind::ReverseKL;
    case Divergence::JSD:
      // The endpoints are defined as the two KLs (the limits of the rescaled JSD), see divergence.h.
      if (opts.beta == 0.0) return RowKind::ForwardKL;
      if (opts.beta == 1.0) return RowKind::ReverseKL;
      return RowKind::JSD;
    case Divergence::SkewKL: return opts.alpha == 0.0 ? RowKind::ForwardKL : RowKind::SkewKL;
    case Divergence::TVD: return RowKind::TVD;
  }
  fail("unknown divergence kind");
}

void check_options(const DivergenceOptions& opts) {
  if (!(opts.temperature > 0.0) || !std::isfinite(opts.temperature))
    fail("distillation temperature must be a positive number, got ", opts.temperature);
  if (!(opts.beta >= 0.0 && opts.beta <= 1.0)) fail("jsd beta must lie in [0, 1], got ", opts.beta);
  if (!(opts.alpha >= 0.0 && opts.alpha <= 1.0)) fail("skew_kl alpha must lie in [0, 1], got ", opts.alpha);
  if (opts.chunk_rows < 0) fail("chunk_rows must be >= 0 (0 = automatic), got ", opts.chunk_rows);
}

// Log of the mixture a*p_T + (1-a)*p_S from log-probabilities: finite even where a probability
// underflows to 0, which keeps 0 * log terms at 0 instead of NaN.
torch::Tensor log_mixture(const torch::Tensor& log_t, const torch::Tensor& log_s, double a) {
  const double log_a = a > 0.0 ? std::log(a) : -std::numeric_limits<double>::infinity();
  const double log_b = a < 1.0 ? std::log1p(-a) : -std::numeric_limits<double>::infinity();
  return at::logaddexp(log_t + log_a, log_s + log_b);  // (n, V)
}

struct ChunkResult {
  torch::Tensor value;  // (n) fp32, unscaled (no tau^2)
  torch::Tensor grad;   // (n, V) fp32 d value / d (z_S / tau); only when asked
};

// One chunk of the analytic path. s and t are fp32 logits already divided by tau; labels (n) for CE.
// Gradients use d/du f(softmax(u)) = p_S * (g - <p_S, g>) with g = df/dp_S.
ChunkResult chunk_rows_value(RowKind kind, const torch::Tensor& s, const torch::Tensor& t,
                             const torch::Tensor& labels, double beta, double alpha, bool want_grad) {
  ChunkResult out;
  auto log_s = at::log_softmax(s, 1);  // (n, V)
  auto p_s = log_s.exp();              // (n, V)
  auto through_softmax = [&](const torch::Tensor& g) {  // g (n, V) -> (n, V)
    return p_s * (g - (p_s * g).sum(1, true));
  };
  if (kind == RowKind::CrossEntropy) {
    out.value = -log_s.gather(1, labels.unsqueeze(1)).squeeze(1);  // (n)
    if (want_grad) out.grad = p_s.scatter_add(1, labels.unsqueeze(1), -at::ones_like(labels, s.options()).unsqueeze(1));
    return out;
  }
  auto log_t = at::log_softmax(t, 1);  // (n, V)
  auto p_t = log_t.exp();              // (n, V)
  switch (kind) {
    case RowKind::ForwardKL:
      out.value = (p_t * (log_t - log_s)).sum(1);  // (n)
      if (want_grad) out.grad = p_s - p_t;          // (n, V)
      break;
    case RowKind::ReverseKL: {
      auto diff = log_s - log_t;                    // (n, V)
      out.value = (p_s * diff).sum(1);              // (n)
      if (want_grad) out.grad = p_s * (diff - out.value.unsqueeze(1));  // (n, V)
      break;
    }
    case RowKind::JSD: {
      auto log_m = log_mixture(log_t, log_s, beta);  // (n, V)
      auto ds = log_s - log_m;                      // (n, V)
      out.value = beta * (p_t * (log_t - log_m)).sum(1) + (1.0 - beta) * (p_s * ds).sum(1);  // (n)
      if (want_grad) out.grad = through_softmax((1.0 - beta) * ds);  // (n, V)
      break;
    }
    case RowKind::SkewKL: {
      auto log_m = log_mixture(log_t, log_s, alpha);  // (n, V)
      out.value = (p_t * (log_t - log_m)).sum(1);    // (n)
      if (want_grad) out.grad = through_softmax(-(1.0 - alpha) * (log_t - log_m).exp());  // (n, V)
      break;
    }
    case RowKind::TVD: {
      auto diff = p_s - p_t;                 // (n, V)
      out.value = 0.5 * diff.abs().sum(1);   // (n)
      if (want_grad) out.grad = through_softmax(0.5 * diff.sign());  // (n, V)
      break;
    }
    case RowKind::CrossEntropy: break;
  }
  return out;
}

// One chunk of either kind: cross-entropy when `kind` says so (teacher then holds the labels).
ChunkGrad kind_chunk(RowKind kind, const torch::Tensor& z, const torch::Tensor& teacher, int64_t vocab, double tau,
                     double beta, double alpha, const torch::Tensor& weights) {
  const bool want_grad = weights.defined();
  ChunkGrad out;
  if (kind == RowKind::CrossEntropy) {
    auto r = chunk_rows_value(kind, z.to(torch::kFloat32), {}, teacher, beta, alpha, want_grad);
    out.value = r.value;
    if (want_grad) out.grad = r.grad * weights.unsqueeze(1);  // (n, W)
    return out;
  }
  auto s = z.narrow(1, 0, vocab).to(torch::kFloat32);        // (n, V)
  auto t = teacher.narrow(1, 0, vocab).to(torch::kFloat32);  // (n, V)
  if (tau != 1.0) s = s / tau, t = t / tau;
  auto r = chunk_rows_value(kind, s, t, {}, beta, alpha, want_grad);
  out.value = r.value * (tau * tau);
  if (!want_grad) return out;
  // d (tau^2 f(z / tau)) / dz = tau * df/du.
  auto g = r.grad * (weights.unsqueeze(1) * tau);  // (n, V)
  if (vocab == z.size(1)) {
    out.grad = g;
  } else {
    out.grad = torch::zeros({z.size(0), z.size(1)}, g.options());  // (n, W) padded columns get 0
    out.grad.narrow(1, 0, vocab).copy_(g);
  }
  return out;
}

// Student logits in, per-row values out; saves only the inputs and recomputes each chunk's
// probabilities in backward, so no chunk's (n, V) fp32 tensors outlive that chunk.
struct ChunkedRows : torch::autograd::Function<ChunkedRows> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& student,
                               const torch::Tensor& teacher, const torch::Tensor& rows, int64_t kind,
                               double tau, double beta, double alpha, int64_t vocab, int64_t chunk) {
    // teacher holds the labels (R) for cross-entropy.
    ctx->save_for_backward({student, teacher, rows});
    ctx->saved_data["kind"] = kind;
    ctx->saved_data["tau"] = tau;
    ctx->saved_data["beta"] = beta;
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["vocab"] = vocab;
    ctx->saved_data["chunk"] = chunk;
    const int64_t n_rows = rows.size(0);
    auto values = torch::empty({n_rows}, student.options().dtype(torch::kFloat32));  // (N)
    for (int64_t start = 0; start < n_rows; start += chunk) {
      const int64_t n = std::min(chunk, n_rows - start);
      auto idx = rows.narrow(0, start, n);  // (n)
      auto r = kind_chunk(static_cast<RowKind>(kind), student.index_select(0, idx), teacher.index_select(0, idx),
                          vocab, tau, beta, alpha, {});
      values.narrow(0, start, n).copy_(r.value);
    }
    return values;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& student = saved[0];
    const auto& teacher = saved[1];
    const auto& rows = saved[2];
    const auto kind = static_cast<RowKind>(ctx->saved_data["kind"].toInt());
    const double tau = ctx->saved_data["tau"].toDouble();
    const double beta = ctx->saved_data["beta"].toDouble();
    const double alpha = ctx->saved_data["alpha"].toDouble();
    const int64_t vocab = ctx->saved_data["vocab"].toInt();
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    const auto& grad_out = grads[0];  // (N) fp32
    auto grad_student = torch::zeros_like(student);  // (R, W)
    const int64_t n_rows = rows.size(0);
    for (int64_t start = 0; start < n_rows; start += chunk) {
      const int64_t n = std::min(chunk, n_rows - start);
      auto idx = rows.narrow(0, start, n);  // (n)
      auto r = kind_chunk(kind, student.index_select(0, idx), teacher.index_select(0, idx), vocab, tau, beta, alpha,
                          grad_out.narrow(0, start, n));
      grad_student.index_copy_(0, idx, r.grad.to(grad_student.scalar_type()));
    }
    return {grad_student, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(),
            torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

void check_rows_inputs(const torch::Tensor& student, const torch::Tensor& teacher, const torch::Tensor& rows) {
  if (student.dim() != 2 || teacher.dim() != 2 || student.size(0) != teacher.size(0))
    fail("row divergence needs (rows, vocab) student and teacher logits with equal rows, got student ",
         shape_of(student), " and teacher ", shape_of(teacher));
  if (rows.scalar_type() != torch::kInt64 || rows.dim() != 1) fail("row indices must be a 1-D int64 tensor");
}

}  // namespace

Divergence parse_divergence(const std::string& name) {
  if (name == "forward_kl") return Divergence::ForwardKL;
  if (name == "reverse_kl") return Divergence::ReverseKL;
  if (name == "jsd") return Divergence::JSD;
  if (name == "skew_kl") return Divergence::SkewKL;
  if (name == "tvd") return Divergence::TVD;
  fail("unknown divergence '", name, "' (expected forward_kl, reverse_kl, jsd, skew_kl or tvd)");
}

std::string divergence_name(Divergence kind) {
  switch (kind) {
    case Divergence::ForwardKL: return "forward_kl";
    case Divergence::ReverseKL: return "reverse_kl";
    case Divergence::JSD: return "jsd";
    case Divergence::SkewKL: return "skew_kl";
    case Divergence::TVD: return "tvd";
  }
  return "?";
}

Normalization parse_normalization(const std::string& name) {
  if (name == "token") return Normalization::TokenMean;
  if (name == "sequence") return Normalization::SequenceMean;
  fail("unknown loss normalization '", name, "' (expected token or sequence)");
}

int64_t resolve_vocab(const DivergenceOptions& opts, int64_t student_width, int64_t teacher_width) {
  const int64_t sv = opts.student_vocab > 0 ? opts.student_vocab : student_width;
  const int64_t tv = opts.teacher_vocab > 0 ? opts.teacher_vocab : teacher_width;
  if (sv > student_width)
    fail("student logits have ", student_width, " columns, fewer than the student vocabulary size ", sv);
  if (tv > teacher_width)
    fail("teacher logits have ", teacher_width, " columns, fewer than the teacher vocabulary size ", tv);
  if (sv != tv)
    fail("teacher and student vocabularies differ: teacher vocab ", tv, " (logits width ", teacher_width,
         "), student vocab ", sv, " (logits width ", student_width,
         "); distillation needs one shared tokenizer (set the true vocab sizes if a head is padded)");
  return sv;
}

int64_t chunk_rows_for(int64_t vocab, const DivergenceOptions& opts) {
  if (opts.chunk_rows > 0) return opts.chunk_rows;
  // About ten live (n, V) fp32 tensors per chunk in backward (inputs, log-probs, probs, mixture, grad).
  const int64_t per_row = std::max<int64_t>(1, vocab) * 4 * 10;
  return std::max<int64_t>(1, opts.memory_budget_bytes / per_row);
}

ChunkGrad divergence_chunk(const torch::Tensor& z, const torch::Tensor& teacher, int64_t vocab,
                           const DivergenceOptions& opts, const torch::Tensor& weights) {
  return kind_chunk(row_kind(opts), z, teacher, vocab, opts.temperature, opts.beta, opts.alpha, weights);
}

ChunkGrad cross_entropy_chunk(const torch::Tensor& z, const torch::Tensor& labels, const torch::Tensor& weights) {
  return kind_chunk(RowKind::CrossEntropy, z, labels, z.size(1), 1.0, 0.0, 0.0, weights);
}

torch::Tensor row_divergence(const torch::Tensor& student, const torch::Tensor& teacher,
                             const torch::Tensor& rows, const DivergenceOptions& opts) {
  check_options(opts);
  if (!opts.chunked) return row_divergence_plain(student, teacher, rows, opts);
  check_rows_inputs(student, teacher, rows);
  const int64_t vocab = resolve_vocab(opts, student.size(1), teacher.size(1));
  return ChunkedRows::apply(student, teacher.detach(), rows, static_cast<int64_t>(row_kind(opts)),
                            opts.temperature, opts.beta, opts.alpha, vocab, chunk_rows_for(vocab, opts));
}

torch::Tensor row_divergence_plain(const torch::Tensor& student, const torch::Tensor& teacher,
                                   const torch::Tensor& rows, const DivergenceOptions& opts) {
  check_options(opts);
  check_rows_inputs(student, teacher, rows);
  const int64_t vocab = resolve_vocab(opts, student.size(1), teacher.size(1));
  const double tau = opts.temperature;
  auto s = student.index_select(0, rows).narrow(1, 0, vocab).to(torch::kFloat32) / tau;           // (N, V)
  auto t = teacher.detach().index_select(0, rows).narrow(1, 0, vocab).to(torch::kFloat32) / tau;  // (N, V)
  auto log_s = at::log_softmax(s, 1);  // (N, V)
  auto log_t = at::log_softmax(t, 1);  // (N, V)
  auto p_s = log_s.exp();              // (N, V)
  auto p_t = log_t.exp();              // (N, V)
  torch::Tensor value;                 // (N)
  switch (row_kind(opts)) {
    case RowKind::ForwardKL: value = (p_t * (log_t - log_s)).sum(1); break;
    case RowKind::ReverseKL: value = (p_s * (log_s - log_t)).sum(1); break;
    case RowKind::JSD: {
      auto log_m = log_mixture(log_t, log_s, opts.beta);  // (N, V)
      value = opts.beta * (p_t * (log_t - log_m)).sum(1) + (1.0 - opts.beta) * (p_s * (log_s - log_m)).sum(1);
      break;
    }
    case RowKind::SkewKL: value = (p_t * (log_t - log_mixture(log_t, log_s, opts.alpha))).sum(1); break;
    case RowKind::TVD: value = 0.5 * (p_s - p_t).abs().sum(1); break;
    case RowKind::CrossEntropy: break;
  }
  return value * (tau * tau);
}

torch::Tensor row_cross_entropy(const torch::Tensor& student, const torch::Tensor& labels,
                                const torch::Tensor& rows, const DivergenceOptions& opts) {
  if (!opts.chunked) return row_cross_entropy_plain(student, labels, rows);
  const int64_t width = student.size(1);
  return ChunkedRows::apply(student, labels.reshape({-1}), rows, static_cast<int64_t>(RowKind::CrossEntropy),
                            1.0, 0.0, 0.0, width, chunk_rows_for(width, opts));
}

torch::Tensor row_cross_entropy_plain(const torch::Tensor& student, const torch::Tensor& labels,
                                      const torch::Tensor& rows) {
  auto s = student.index_select(0, rows).to(torch::kFloat32);  // (N, W)
  auto y = labels.reshape({-1}).index_select(0, rows);         // (N)
  return -at::log_softmax(s, 1).gather(1, y.unsqueeze(1)).squeeze(1);  // (N)
}

torch::Tensor mask_rows(const torch::Tensor& mask) {
  return mask.reshape({-1}).nonzero().squeeze(1);  // (N) int64
}

torch::Tensor row_coefficients(const torch::Tensor& mask, const torch::Tensor& weights, Normalization normalization) {
  const int64_t batch = mask.size(0), time = mask.size(1);
  auto rows = mask_rows(mask);                  // (N)
  auto seq = at::div(rows, time, "floor");      // (N) sequence of each row
  auto fopts = torch::TensorOptions().dtype(torch::kFloat32).device(mask.device());
  auto w = weights.defined() ? weights.to(fopts).reshape({batch}) : torch::ones({batch}, fopts);  // (B)
  // A zero denominator (no row at all) gives zero coefficients, never NaN.
  auto safe = [](const torch::Tensor& den) { return at::where(den > 0, den, at::ones_like(den)); };
  if (normalization == Normalization::TokenMean) {
    auto w_rows = w.index_select(0, seq);  // (N)
    return w_rows / safe(w_rows.sum());
  }
  auto counts = torch::zeros({batch}, fopts).index_add(0, seq, torch::ones({rows.size(0)}, fopts));  // (B)
  auto w_eff = w * (counts > 0).to(torch::kFloat32);  // (B) sequences without rows drop out
  auto per_sequence = w_eff / (safe(counts) * safe(w_eff.sum()));  // (B)
  return per_sequence.index_select(0, seq);  // (N)
}

torch::Tensor normalize_rows(const torch::Tensor& values, const torch::Tensor& mask,
                             const torch::Tensor& weights, Normalization normalization) {
  return (values * row_coefficients(mask, weights, normalization).to(values.device())).sum();
}

DistillTerm distillation_loss(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                              const torch::Tensor& mask, const DivergenceOptions& opts,
                              const torch::Tensor& sample_weights) {
  if (student_logits.dim() != 3 || teacher_logits.dim() != 3 ||
      student_logits.size(0) != teacher_logits.size(0) || student_logits.size(1) != teacher_logits.size(1))
    fail("distillation needs (B, T, V) student and teacher logits of equal B and T, got student_logits ",
         shape_of(student_logits), " and teacher_logits ", shape_of(teacher_logits));
  if (mask.dim() != 2 || mask.size(0) != student_logits.size(0) || mask.size(1) != student_logits.size(1) ||
      mask.scalar_type() != torch::kBool)
    fail("supervision mask must be (B, T) bool matching the logits ", shape_of(student_logits), ", got ",
         shape_of(mask), " ", c10::toString(mask.scalar_type()));
  if (sample_weights.defined() && sample_weights.numel() != student_logits.size(0))
    fail("sample_weights must hold one weight per sequence (", student_logits.size(0), "), got ",
         shape_of(sample_weights));
  auto s = student_logits.reshape({-1, student_logits.size(2)});  // (R, Vs)
  auto t = teacher_logits.reshape({-1, teacher_logits.size(2)});  // (R, Vt)
  auto m = mask.to(student_logits.device());                      // (B, T)
  auto rows = mask_rows(m);                                        // (N)
  auto values = row_divergence(s, t, rows, opts);                  // (N)
  return {normalize_rows(values, m, sample_weights, opts.normalization), rows.size(0)};
}

}  // namespace kdae::distill
