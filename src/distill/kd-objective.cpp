// Dimension legend: B = batch, T = time, V = vocabulary columns, N = supervised rows.
#include "distill/kd-objective.h"

#include <torch/autograd.h>

#include <cmath>
#include <optional>
#include <utility>
#include <vector>

#include "common/error.h"
#include "distill/tensor-text.h"

namespace kdae::distill {

LabelAlignment parse_label_alignment(const std::string& name) {
  if (name == "shifted") return LabelAlignment::Shifted;
  if (name == "kd-dae") return LabelAlignment::KdDae;
  fail("unknown label_alignment '", name, "' (expected shifted or kd-dae)");
}

torch::Tensor supervised_mask(const torch::Tensor& labels, const torch::Tensor& token_mask, LabelAlignment alignment) {
  if (alignment == LabelAlignment::Shifted) return labels.ne(-100);  // (B, T)
  if (!token_mask.defined() || token_mask.sizes() != labels.sizes())
    fail("label_alignment kd-dae needs token_mask (B, T) like labels ", shape_of(labels), ", got ",
         token_mask.defined() ? shape_of(token_mask) : std::string("none"));
  return token_mask.to(torch::kBool);  // (B, T)
}

namespace {

// The divergence term pooled over teacher parts: sum_g w_g * loss_g * n_g / sum_g n_g, with n_g the
// part's supervised tokens (token mean) or supervised sequences (sequence mean).
DistillTerm pooled_distillation(const KdBatch& batch, const torch::Tensor& mask, const KdObjectiveOptions& opts,
                                KdTerms& terms) {
  torch::Tensor weighted_sum;
  int64_t tokens = 0, pool = 0;
  for (const auto& part : batch.teachers) {
    auto rows = part.rows.to(batch.student_logits.device());                         // (b)
    auto part_mask = mask.index_select(0, rows);                                     // (b, T)
    auto weights = batch.sample_weights.defined() ? batch.sample_weights.index_select(0, rows.to(batch.sample_weights.device()))
                                                  : torch::Tensor();
    DivergenceOptions div = opts.divergence;
    div.temperature = part.temperature;
    DistillTerm term;
    if (part.is_sparse) {
      SparseDivergenceOptions sparse{div, div.student_vocab > 0 ? div.student_vocab : batch.student_logits.size(2)};
      term = sparse_distillation_loss(batch.student_logits.index_select(0, rows), part_mask, part.sparse, sparse, weights);
    } else {
      term = distillation_loss(batch.student_logits.index_select(0, rows), part.logits, part_mask, div, weights);
    }
    const int64_t n = opts.divergence.normalization == Normalization::TokenMean
                          ? term.count
                          : part_mask.any(1).sum().item<int64_t>();
    terms.per_teacher.emplace_back(term.loss.detach().item<double>(), term.count);
    auto piece = term.loss * (part.weight * static_cast<double>(n));
    weighted_sum = weighted_sum.defined() ? weighted_sum + piece : piece;
    tokens += term.count;
    pool += n;
  }
  DistillTerm out;
  out.count = tokens;
  out.loss = !weighted_sum.defined() ? torch::zeros({}, batch.student_logits.options().dtype(torch::kFloat32))
             : pool > 0 ? weighted_sum / static_cast<double>(pool)
                        : weighted_sum * 0.0;
  return out;
}

}  // namespace

KdTerms kd_objective(const KdBatch& batch, const KdObjectiveOptions& opts) {
  if (!(opts.lambda >= 0.0 && opts.lambda <= 1.0)) fail("kd lambda must lie in [0, 1], got ", opts.lambda);
  const auto& logits = batch.student_logits;
  if (!batch.labels.defined() || batch.labels.dim() != 2 || logits.dim() != 3 ||
      batch.labels.size(0) != logits.size(0) || batch.labels.size(1) != logits.size(1))
    fail("labels must be (B, T) matching student_logits ", shape_of(logits), ", got ",
         batch.labels.defined() ? shape_of(batch.labels) : std::string("none"));
  if (batch.labels.scalar_type() != torch::kInt64) fail("labels must be int64");
  auto labels = batch.labels.to(logits.device());  // (B, T)
  auto ce_mask = labels.ne(-100);                  // (B, T)
  auto ce_rows = mask_rows(ce_mask);                // (N_ce)
  {
    // A target outside the head would be an out-of-bounds gather; name the offending value.
    auto targets = labels.reshape({-1}).index_select(0, ce_rows);  // (N_ce)
    if (targets.numel() > 0) {
      const int64_t lo = targets.min().item<int64_t>(), hi = targets.max().item<int64_t>();
      if (lo < 0 || hi >= logits.size(2))
        fail("labels hold token ids outside [0, ", logits.size(2), ") of student_logits: min ", lo, ", max ", hi);
    }
  }
  const double w_ce = 1.0 - opts.lambda, w_kd = opts.lambda;
  KdTerms terms;
  auto flat = logits.reshape({-1, logits.size(2)});  // (R, V)
  {
    std::optional<torch::NoGradGuard> no_grad;
    if (w_ce == 0.0) no_grad.emplace();
    auto ce_values = row_cross_entropy(flat, labels, ce_rows, opts.divergence);  // (N_ce)
    terms.ce = normalize_rows(ce_values, ce_mask, {}, Normalization::TokenMean);
    terms.ce_tokens = ce_rows.size(0);
  }
  {
    std::optional<torch::NoGradGuard> no_grad;
    if (w_kd == 0.0) no_grad.emplace();
    auto mask = supervised_mask(labels, batch.token_mask, opts.alignment).to(logits.device());  // (B, T)
    const bool no_teacher = batch.teachers.empty() && !batch.teacher_logits.defined();
    if (no_teacher && w_kd != 0.0) fail("the KD term (lambda > 0) needs teacher logits");
    auto pred = no_teacher ? DistillTerm{torch::zeros({}, logits.options().dtype(torch::kFloat32)), mask.sum().item<int64_t>()}
                : batch.teachers.empty()
                    ? distillation_loss(logits, batch.teacher_logits, mask, opts.divergence, batch.sample_weights)
                    : pooled_distillation(batch, mask, opts, terms);
    terms.pred_layer_loss = pred.loss;
    terms.supervised_tokens = pred.count;
  }
  auto zero = torch::zeros({}, logits.options().dtype(torch::kFloat32));
  terms.attention_loss = batch.attention.sum.defined() ? batch.attention.mean() : zero;
  terms.hidden_loss = batch.hidden.sum.defined() ? batch.hidden.mean() : zero;

  // Zero-weight terms stay out of the sum so backward never walks their graphs.
  std::vector<std::pair<double, torch::Tensor>> parts = {
      {w_ce, terms.ce},
      {w_kd, terms.pred_layer_loss},
      {w_kd * opts.attention_weight, terms.attention_loss},
      {w_kd * opts.hidden_weight, terms.hidden_loss}};
  torch::Tensor total;
  for (const auto& [w, t] : parts) {
    if (w == 0.0) continue;
    auto piece = t * w;
    total = total.defined() ? total + piece : piece;
  }
  terms.total = total.defined() ? total : zero;
  return terms;
}

void check_finite(const KdTerms& terms, int64_t step) {
  const std::pair<const char*, const torch::Tensor*> named[] = {
      {"total", &terms.total}, {"ntp_loss (CE)", &terms.ce}, {"pred_layer_loss", &terms.pred_layer_loss},
      {"attention_loss", &terms.attention_loss}, {"hidden_loss", &terms.hidden_loss}};
  for (const auto& [name, t] : named) {
    if (!t->defined()) continue;
    const double v = t->detach().to(torch::kCPU, torch::kFloat64).item<double>();
    if (!std::isfinite(v))
      fail("step ", step, ": loss term ", name, " is ", v, " (", terms.supervised_tokens,
           " supervised tokens); check the learning rate, the data and the logits for inf/NaN");
  }
}

torch::Tensor check_domain_flags(const torch::Tensor& is_domain) {
  if (!is_domain.defined() || is_domain.dim() != 1) fail("is_domain must be a (B) tensor of 0/1 flags");
  if (is_domain.is_floating_point()) fail("is_domain must hold integers or booleans, got floating point");
  if (is_domain.scalar_type() == torch::kBool) return is_domain;
  auto flags = is_domain.to(torch::kCPU, torch::kInt64).contiguous();
  const auto* v = flags.data_ptr<int64_t>();
  for (int64_t b = 0; b < flags.numel(); ++b)
    if (v[b] != 0 && v[b] != 1) fail("is_domain of sample ", b, " is ", v[b], "; it must be 0 or 1");
  return is_domain.ne(0);  // (B)
}

torch::Tensor route_teacher_logits(const torch::Tensor& is_domain, const torch::Tensor& expert_logits,
                                   const torch::Tensor& reference_logits) {
  auto flags = check_domain_flags(is_domain).to(torch::kCPU);  // (B)
  const int64_t n_expert = flags.sum().item<int64_t>(), batch = flags.size(0);
  const int64_t n_reference = batch - n_expert;
  auto rows_of = [](const torch::Tensor& t) { return t.defined() ? t.size(0) : 0; };
  if (rows_of(expert_logits) != n_expert || rows_of(reference_logits) != n_reference)
    fail("DAE routing: ", n_expert, " domain and ", n_reference, " general samples, but got expert logits for ",
         rows_of(expert_logits), " and reference logits for ", rows_of(reference_logits));
  const auto& like = expert_logits.defined() ? expert_logits : reference_logits;
  if (expert_logits.defined() && reference_logits.defined() &&
      expert_logits.sizes().slice(1) != reference_logits.sizes().slice(1))
    fail("DAE routing: expert logits ", shape_of(expert_logits), " and reference logits ",
         shape_of(reference_logits), " differ in (T, V); pad or cut both heads to the shared vocabulary");
  auto out = torch::empty({batch, like.size(1), like.size(2)}, like.options());  // (B, T, V)
  auto expert_idx = flags.nonzero().squeeze(1).to(like.device());              // (Be)
  auto reference_idx = flags.logical_not().nonzero().squeeze(1).to(like.device());  // (Br)
  if (n_expert > 0) out.index_copy_(0, expert_idx, expert_logits.detach().to(like.scalar_type()));
  if (n_reference > 0) out.index_copy_(0, reference_idx, reference_logits.detach().to(like.scalar_type()));
  return out;
}

}  // namespace kdae::distill
