// Dimension legend: B = batch, T = time, Hs/Ht = student/teacher heads, N = supervised query rows.
#include "distill/attention-kl.h"

#include <torch/autograd.h>

#include <set>

#include "common/error.h"
#include "distill/tensor-text.h"

namespace kdae::distill {

namespace {

// sum over rows, heads and causal keys of A_T (log A_T - log max(A_S, floor)). Autograd through the
// plain expression would keep about four (N, H, T) fp32 tensors per layer until backward (the
// selected rows, the clamp, the log, the teacher rows); this keeps one, the gradient
// -A_T / A_S (0 where A_S < floor or beyond the causal prefix), computed in forward.
struct AttentionRowsKL : torch::autograd::Function<AttentionRowsKL> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& student_attn,
                               const torch::Tensor& teacher_rows, const torch::Tensor& b, const torch::Tensor& i,
                               double log_floor) {
    using torch::indexing::Slice;
    const int64_t time = student_attn.size(3);
    auto a_s = student_attn.index({b, Slice(), i}).to(torch::kFloat32);  // (N, Hs, T)
    auto keys = torch::arange(time, i.options());                          // (T)
    auto causal = (keys.unsqueeze(0) <= i.unsqueeze(1)).unsqueeze(1);      // (N, 1, T)
    auto kept = a_s >= log_floor;                                          // (N, Hs, T) clamp passes the gradient
    auto term = at::xlogy(teacher_rows, teacher_rows) - teacher_rows * a_s.clamp_min(log_floor).log();  // (N, Hs, T)
    auto sum = at::where(causal, term, at::zeros_like(term)).sum();        // ()
    if (student_attn.requires_grad()) {
      auto grad = at::where(causal & kept, -teacher_rows / a_s.clamp_min(log_floor), at::zeros_like(a_s));  // (N, Hs, T)
      ctx->saved_data["grad"] = grad;
      ctx->saved_data["shape"] = student_attn.sizes().vec();
      ctx->saved_data["dtype"] = static_cast<int64_t>(student_attn.scalar_type());
      ctx->save_for_backward({b, i});
    }
    return sum;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    using torch::indexing::Slice;
    auto saved = ctx->get_saved_variables();
    auto rows_grad = ctx->saved_data["grad"].toTensor() * grads[0];  // (N, Hs, T)
    const auto dtype = static_cast<torch::ScalarType>(ctx->saved_data["dtype"].toInt());
    auto full = torch::zeros(ctx->saved_data["shape"].toIntVector(), rows_grad.options().dtype(dtype));  // (B, Hs, T, T)
    full.index_put_({saved[0], Slice(), saved[1]}, rows_grad.to(dtype));
    return {full, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

LayerPairs uniform_layer_map(int64_t student_layers, int64_t teacher_layers) {
  if (student_layers <= 0 || teacher_layers <= 0)
    fail("layer map needs positive depths, got student ", student_layers, " and teacher ", teacher_layers);
  if (student_layers > teacher_layers)
    fail("uniform layer map needs a teacher at least as deep as the student (student ", student_layers,
         " layers, teacher ", teacher_layers, "); give explicit layer pairs instead");
  LayerPairs pairs;
  for (int64_t l = 0; l < student_layers; ++l) pairs.emplace_back(l, (l + 1) * teacher_layers / student_layers - 1);
  return pairs;
}

void check_layer_map(const LayerPairs& pairs, int64_t student_layers, int64_t teacher_layers) {
  std::set<int64_t> seen;
  for (const auto& [s, t] : pairs) {
    if (s < 0 || s >= student_layers)
      fail("layer pair (", s, ", ", t, "): student layer out of range [0, ", student_layers, ")");
    if (t < 0 || t >= teacher_layers)
      fail("layer pair (", s, ", ", t, "): teacher layer out of range [0, ", teacher_layers, ")");
    if (!seen.insert(s).second) fail("layer pair (", s, ", ", t, "): student layer ", s, " is mapped twice");
  }
}

torch::Tensor group_teacher_heads(const torch::Tensor& teacher_rows, int64_t student_heads) {
  const int64_t n = teacher_rows.size(0), ht = teacher_rows.size(1), k = teacher_rows.size(2);
  if (ht == student_heads) return teacher_rows;
  if (ht % student_heads == 0)
    return teacher_rows.reshape({n, student_heads, ht / student_heads, k}).mean(2);  // (N, Hs, K)
  if (student_heads % ht == 0) return teacher_rows.repeat_interleave(student_heads / ht, 1);  // (N, Hs, K)
  fail("attention KD cannot pair ", ht, " teacher heads with ", student_heads,
       " student heads: one count must divide the other");
}

LossSum attention_kl_layer(const torch::Tensor& student_attn, const torch::Tensor& teacher_attn,
                           const torch::Tensor& query_mask, const AttentionKLOptions& opts) {
  if (student_attn.dim() != 4 || teacher_attn.dim() != 4 || student_attn.size(2) != student_attn.size(3))
    fail("attention maps must be (B, H, T, T), got student ", shape_of(student_attn), " and teacher ",
         shape_of(teacher_attn));
  const int64_t batch = student_attn.size(0), heads = student_attn.size(1), time = student_attn.size(2);
  if (teacher_attn.size(0) != batch || teacher_attn.size(2) != time || teacher_attn.size(3) != time)
    fail("teacher attention ", shape_of(teacher_attn), " does not match student attention ", shape_of(student_attn));
  if (query_mask.dim() != 2 || query_mask.size(0) != batch || query_mask.size(1) != time)
    fail("attention query mask must be (B, T) = (", batch, ", ", time, "), got ", shape_of(query_mask));
  if (!(opts.log_floor > 0.0)) fail("attention KL log_floor must be positive, got ", opts.log_floor);

  auto rows = query_mask.to(student_attn.device()).reshape({-1}).nonzero().squeeze(1);  // (N)
  auto b = at::div(rows, time, "floor");                                                 // (N)
  auto i = rows - b * time;                                                              // (N)
  using torch::indexing::Slice;
  // Advanced indices on dims 0 and 2 with a slice between put N first: only the rows are copied.
  auto a_t = teacher_attn.detach().index({b, Slice(), i}).to(torch::kFloat32);           // (N, Ht, T)
  a_t = group_teacher_heads(a_t, heads);                                                 // (N, Hs, T)
  return {AttentionRowsKL::apply(student_attn, a_t, b, i, opts.log_floor), rows.size(0) * heads};
}

}  // namespace kdae::distill
