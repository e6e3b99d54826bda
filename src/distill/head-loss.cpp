// Dimension legend: M = rows, D = hidden width, W = head rows, n = rows of one chunk.
#include "distill/head-loss.h"

#include <ATen/autocast_mode.h>
#include <torch/autograd.h>

#include <algorithm>

#include "common/error.h"
#include "distill/tensor-text.h"

namespace kdae::distill {
namespace {

// The teacher's divergence for rows [start, start + n) against the student's chunk logits z (n, W).
ChunkGrad teacher_chunk(const TeacherRowsSource& t, const torch::Tensor& z, int64_t start, int64_t n,
                        const torch::Tensor& weights) {
  if (t.sparse) return sparse_divergence_chunk(z, slice_rows(*t.sparse, start, n), {t.divergence, t.vocab}, weights);
  torch::Tensor logits;  // (n, Wt)
  if (t.logits.defined()) {
    logits = t.logits.narrow(0, start, n);
  } else {
    torch::NoGradGuard no_grad;
    logits = at::mm(t.hidden.narrow(0, start, n), t.head.t()).to(z.device());  // teacher's device and dtype
  }
  return divergence_chunk(z, logits, t.vocab, t.divergence, weights);
}

// The matmul dtype: autocast's on this device when it is on, else the hidden states'.
torch::ScalarType matmul_dtype(const torch::Tensor& hidden) {
  const auto type = hidden.device().type();
  return at::autocast::is_autocast_enabled(type) ? at::autocast::get_autocast_dtype(type) : hidden.scalar_type();
}

struct FusedHead : torch::autograd::Function<FusedHead> {
  // Returns {total (), ce rows (M), kd rows (M) or empty}.
  static torch::autograd::tensor_list forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& hidden,
                                              const torch::Tensor& head, const HeadRows* spec, bool want_grad) {
    const int64_t m = hidden.size(0), chunk = std::max<int64_t>(1, spec->chunk_rows);
    const auto dtype = matmul_dtype(hidden);
    auto w = head.to(dtype);  // (W, D)
    auto f32 = hidden.options().dtype(torch::kFloat32);
    const bool has_teacher = spec->teacher != nullptr;
    // Terms whose weights are all 0 (lambda = 0 or 1) need no gradient work at all.
    const bool ce_grad = want_grad && spec->ce_weight.ne(0).any().item<bool>();
    const bool kd_grad = want_grad && has_teacher && spec->kd_weight.ne(0).any().item<bool>();
    const bool grad_hidden = (ce_grad || kd_grad) && hidden.requires_grad();
    const bool grad_head = (ce_grad || kd_grad) && head.requires_grad();
    auto ce_rows = torch::empty({m}, f32);                                // (M)
    auto kd_rows = has_teacher ? torch::empty({m}, f32) : torch::empty({0}, f32);  // (M)
    torch::Tensor d_hidden = grad_hidden ? torch::empty({m, hidden.size(1)}, hidden.options()) : torch::Tensor();  // (M, D)
    torch::Tensor d_head = grad_head ? torch::zeros(head.sizes(), f32) : torch::Tensor();                          // (W, D)
    for (int64_t start = 0; start < m; start += chunk) {
      const int64_t n = std::min(chunk, m - start);
      auto h = hidden.narrow(0, start, n).to(dtype);                  // (n, D)
      auto z = at::mm(h, w.t()).to(torch::kFloat32);                  // (n, W)
      auto ce = cross_entropy_chunk(z, spec->labels.narrow(0, start, n),
                                    ce_grad ? spec->ce_weight.narrow(0, start, n) : torch::Tensor());
      ce_rows.narrow(0, start, n).copy_(ce.value);
      torch::Tensor g = ce.grad;  // (n, W) or undefined
      if (has_teacher) {
        auto kd = teacher_chunk(*spec->teacher, z, start, n, kd_grad ? spec->kd_weight.narrow(0, start, n) : torch::Tensor());
        kd_rows.narrow(0, start, n).copy_(kd.value);
        if (kd.grad.defined()) g = g.defined() ? g + kd.grad : kd.grad;
      }
      if (!g.defined()) continue;
      auto gd = g.to(dtype);  // (n, W)
      if (grad_hidden) d_hidden.narrow(0, start, n).copy_(at::mm(gd, w));  // (n, D)
      if (grad_head) d_head.add_(at::mm(gd.t(), h));                        // (W, D)
    }
    auto total = (ce_rows * spec->ce_weight).sum();  // ()
    if (has_teacher) total = total + (kd_rows * spec->kd_weight).sum();
    ctx->saved_data["d_hidden"] = d_hidden;
    ctx->saved_data["d_head"] = grad_head ? d_head.to(head.scalar_type()) : torch::Tensor();
    ctx->mark_non_differentiable({ce_rows, kd_rows});
    return {total, ce_rows, kd_rows};
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const auto& g = grads[0];  // ()
    auto d_hidden = ctx->saved_data["d_hidden"].toOptional<torch::Tensor>().value_or(torch::Tensor());
    auto d_head = ctx->saved_data["d_head"].toOptional<torch::Tensor>().value_or(torch::Tensor());
    if (d_hidden.defined()) d_hidden = d_hidden * g.to(d_hidden.scalar_type());
    if (d_head.defined()) d_head = d_head * g.to(d_head.scalar_type());
    return {d_hidden, d_head, torch::Tensor(), torch::Tensor()};
  }
};

void check_rows(const HeadRows& r) {
  if (r.hidden.dim() != 2 || r.head.dim() != 2 || r.hidden.size(1) != r.head.size(1))
    fail("fused LM head: hidden rows ", shape_of(r.hidden), " and head ", shape_of(r.head), " do not fit");
  const int64_t m = r.hidden.size(0);
  if (r.labels.numel() != m || r.ce_weight.numel() != m || (r.teacher && r.kd_weight.numel() != m))
    fail("fused LM head: labels, ce_weight and kd_weight must hold one entry per row (", m, ")");
}

}  // namespace

HeadTerms head_loss(const HeadRows& rows) {
  check_rows(rows);
  const bool want_grad =
      torch::GradMode::is_enabled() && (rows.hidden.requires_grad() || rows.head.requires_grad());
  auto out = FusedHead::apply(rows.hidden, rows.head, &rows, want_grad);
  HeadTerms terms;
  terms.total = out[0];
  terms.ce = out[1];
  if (rows.teacher) terms.kd = out[2];
  return terms;
}

}  // namespace kdae::distill
