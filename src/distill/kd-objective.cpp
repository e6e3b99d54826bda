// Dimension legend: B = batch, T = time, V = vocabulary columns, N = supervised rows.
#include "distill/kd-objective.h"

#include <torch/autograd.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>
#include <vector>

#include "common/error.h"
#include "distill/head-loss.h"
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

namespace {

// Every part's CE and divergence through the fused head (head-loss.h); fills the logged terms and
// returns their weighted sum, the only tensor with gradients. Without teachers one part covers every
// row and computes CE alone.
torch::Tensor fused_token_terms(const KdBatch& batch, const torch::Tensor& labels, const torch::Tensor& ce_mask,
                                const torch::Tensor& kd_mask, const KdObjectiveOptions& opts, KdTerms& terms) {
  const auto& hidden = batch.student_hidden;  // (B, T, D)
  const auto dev = hidden.device();
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(dev);
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(dev);
  const int64_t width = batch.student_head.size(0), dim = hidden.size(2);
  const double w_ce = (1.0 - opts.lambda) * opts.ce_share, w_kd = opts.lambda * opts.kd_share;
  const bool by_sequence = opts.divergence.normalization == Normalization::SequenceMean;
  const int64_t n_ce = ce_mask.sum().item<int64_t>();
  if (batch.teacher_logits.defined()) fail("with student_hidden, pass the teacher as a TeacherPart");
  const bool no_teacher = batch.teachers.empty();
  std::vector<TeacherPart> parts = batch.teachers;
  if (no_teacher) {
    TeacherPart every_row;
    every_row.rows = at::arange(labels.size(0), i64);
    parts.push_back(std::move(every_row));
  }
  std::vector<int64_t> pooled_count;  // per part: tokens (token mean) or sequences (sequence mean)
  int64_t pool = 0;
  for (const auto& part : parts) {
    auto m = kd_mask.index_select(0, part.rows.to(dev));  // (b, T)
    pooled_count.push_back(by_sequence ? m.any(1).sum().item<int64_t>() : m.sum().item<int64_t>());
    pool += pooled_count.back();
  }
  torch::Tensor total = torch::zeros({}, f32), ce = torch::zeros({}, f32), pred = torch::zeros({}, f32);
  int64_t kd_tokens = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    const auto& part = parts[i];
    auto rows = part.rows.to(dev);                                                   // (b)
    auto part_ce = ce_mask.index_select(0, rows), part_kd = kd_mask.index_select(0, rows);  // (b, T)
    auto flat = (part_ce | part_kd).reshape({-1}).nonzero().squeeze(1);             // (M) into b*T
    const int64_t m = flat.size(0);
    auto kd_flat = mask_rows(part_kd);                                               // (N_g)
    auto position = torch::full({part_kd.numel()}, -1, i64).index_copy(0, flat, at::arange(m, i64));  // (b*T)
    auto kd_pos = position.index_select(0, kd_flat);                                 // (N_g) into M
    HeadRows h;
    h.hidden = hidden.index_select(0, rows).reshape({-1, dim}).index_select(0, flat);   // (M, D)
    h.head = batch.student_head;
    h.labels = labels.index_select(0, rows).reshape({-1}).index_select(0, flat).clamp_min(0);  // (M)
    auto ce_coef = part_ce.reshape({-1}).index_select(0, flat).to(torch::kFloat32) / static_cast<double>(std::max<int64_t>(1, n_ce));
    h.ce_weight = ce_coef * w_ce;  // (M)
    h.chunk_rows = chunk_rows_for(width, opts.divergence);
    TeacherRowsSource source;
    SparseTeacherRows sparse;
    torch::Tensor kd_coef;  // (M)
    double factor = 0.0;    // the part's pooling weight
    if (!no_teacher) {
      auto weights = batch.sample_weights.defined() ? batch.sample_weights.to(dev).index_select(0, rows) : torch::Tensor();
      auto coef = row_coefficients(part_kd, weights, opts.divergence.normalization);  // (N_g)
      kd_coef = torch::zeros({m}, f32).index_copy(0, kd_pos, coef);
      factor = pool > 0 ? part.weight * static_cast<double>(pooled_count[i]) / static_cast<double>(pool) : 0.0;
      h.kd_weight = kd_coef * (w_kd * factor);
      source.divergence = opts.divergence;
      source.divergence.temperature = part.temperature;
      if (part.is_sparse) {
        sparse = scatter_rows(part.sparse, kd_pos, m);
        source.sparse = &sparse;
        source.vocab = opts.divergence.student_vocab > 0 ? opts.divergence.student_vocab : width;
      } else if (part.hidden.defined()) {
        source.hidden = part.hidden.reshape({-1, part.hidden.size(2)}).index_select(0, flat.to(part.hidden.device()));
        source.head = part.head;
        source.vocab = resolve_vocab(opts.divergence, width, part.head.size(0));
      } else {
        source.logits = part.logits.to(dev).reshape({-1, part.logits.size(2)}).index_select(0, flat);
        source.vocab = resolve_vocab(opts.divergence, width, part.logits.size(2));
      }
      h.teacher = &source;
    }
    auto r = head_loss(h);
    total = total + r.total;
    ce = ce + (r.ce * ce_coef).sum();
    if (no_teacher) continue;
    auto part_pred = (r.kd * kd_coef).sum();  // the part's own normalized mean
    terms.per_teacher.emplace_back(part_pred.item<double>(), kd_flat.size(0));
    pred = pred + part_pred * factor;
    kd_tokens += kd_flat.size(0);
  }
  terms.ce = ce;
  terms.ce_tokens = n_ce;
  terms.pred_layer_loss = pred;
  terms.supervised_tokens = no_teacher ? kd_mask.sum().item<int64_t>() : kd_tokens;
  return total;
}

}  // namespace

KdTerms kd_objective(const KdBatch& batch, const KdObjectiveOptions& opts) {
  if (!(opts.lambda >= 0.0 && opts.lambda <= 1.0)) fail("kd lambda must lie in [0, 1], got ", opts.lambda);
  const bool fused = batch.student_hidden.defined();
  if (fused && (!batch.student_head.defined() || batch.student_head.dim() != 2 || batch.student_hidden.dim() != 3 ||
                batch.student_head.size(1) != batch.student_hidden.size(2)))
    fail("the fused head needs student_hidden (B, T, D) and student_head (V, D), got ", shape_of(batch.student_hidden),
         " and ", batch.student_head.defined() ? shape_of(batch.student_head) : std::string("none"));
  const auto& source = fused ? batch.student_hidden : batch.student_logits;
  const int64_t width = fused ? batch.student_head.size(0) : (source.dim() == 3 ? source.size(2) : 0);
  if (!batch.labels.defined() || batch.labels.dim() != 2 || source.dim() != 3 ||
      batch.labels.size(0) != source.size(0) || batch.labels.size(1) != source.size(1))
    fail("labels must be (B, T) matching the student's ", fused ? "hidden states " : "logits ", shape_of(source),
         ", got ", batch.labels.defined() ? shape_of(batch.labels) : std::string("none"));
  if (batch.labels.scalar_type() != torch::kInt64) fail("labels must be int64");
  auto labels = batch.labels.to(source.device());  // (B, T)
  auto ce_mask = labels.ne(-100);                  // (B, T)
  auto ce_rows = mask_rows(ce_mask);                // (N_ce)
  {
    // A target outside the head would be an out-of-bounds gather; name the offending value.
    auto targets = labels.reshape({-1}).index_select(0, ce_rows);  // (N_ce)
    if (targets.numel() > 0) {
      const int64_t lo = targets.min().item<int64_t>(), hi = targets.max().item<int64_t>();
      if (lo < 0 || hi >= width)
        fail("labels hold token ids outside [0, ", width, ") of the student's head: min ", lo, ", max ", hi);
    }
  }
  const double w_ce = (1.0 - opts.lambda) * opts.ce_share, w_kd = opts.lambda * opts.kd_share;
  const bool no_teacher = batch.teachers.empty() && !batch.teacher_logits.defined();
  if (no_teacher && opts.lambda != 0.0) fail("the KD term (lambda > 0) needs teacher logits");
  auto mask = supervised_mask(labels, batch.token_mask, opts.alignment).to(source.device());  // (B, T)
  KdTerms terms;
  torch::Tensor token_total;  // the CE and divergence part of total (fused head)
  if (fused) {
    token_total = fused_token_terms(batch, labels, ce_mask, mask, opts, terms);
  } else {
    auto flat = source.reshape({-1, width});  // (R, V)
    {
      std::optional<torch::NoGradGuard> no_grad;
      if (w_ce == 0.0) no_grad.emplace();
      auto ce_values = row_cross_entropy(flat, labels, ce_rows, opts.divergence);  // (N_ce)
      terms.ce = normalize_rows(ce_values, ce_mask, {}, Normalization::TokenMean);
      terms.ce_tokens = ce_rows.size(0);
    }
    std::optional<torch::NoGradGuard> no_grad;
    if (w_kd == 0.0) no_grad.emplace();
    auto pred = no_teacher ? DistillTerm{torch::zeros({}, source.options().dtype(torch::kFloat32)), mask.sum().item<int64_t>()}
                : batch.teachers.empty()
                    ? distillation_loss(source, batch.teacher_logits, mask, opts.divergence, batch.sample_weights)
                    : pooled_distillation(batch, mask, opts, terms);
    terms.pred_layer_loss = pred.loss;
    terms.supervised_tokens = pred.count;
  }
  auto zero = torch::zeros({}, source.options().dtype(torch::kFloat32));
  terms.attention_loss = batch.attention.sum.defined() ? batch.attention.mean() : zero;
  terms.hidden_loss = batch.hidden.sum.defined() ? batch.hidden.mean() : zero;

  // Zero-weight terms stay out of the sum so backward never walks their graphs.
  std::vector<std::pair<double, torch::Tensor>> parts;
  if (fused) {
    parts.emplace_back(1.0, token_total);
  } else {
    parts.emplace_back(w_ce, terms.ce);
    parts.emplace_back(w_kd, terms.pred_layer_loss);
  }
  parts.emplace_back(w_kd * opts.attention_weight, terms.attention_loss);
  parts.emplace_back(w_kd * opts.hidden_weight, terms.hidden_loss);
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
