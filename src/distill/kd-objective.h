// The training objective of both stages, one micro-batch at a time:
//   total = (1 - lambda) * CE + lambda * (pred + attention_weight * attn + hidden_weight * hidden)
// CE = mean next-token cross-entropy over labels != -100 (the student's ntp_loss, all logit columns,
// token mean); pred = the divergence term (divergence.h); attn and hidden arrive as (sum, count)
// accumulated per layer by the caller (attention-kl.h, hidden-loss.h) over the same mask M.
// Stage 1 (KD): defaults lambda = 1, attention_weight = 1 (the paper's L_pred + L_attn).
// Stage 2 (DAE): the same call with attention_weight = 0 and teacher logits assembled per sample by
// route_teacher_logits (expert for is_domain = 1, reference for 0).
//
// Dimension legend: B = batch, T = time, V = vocabulary columns, Be/Br = expert/reference samples.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "distill/divergence.h"
#include "distill/loss-sum.h"
#include "distill/sparse-divergence.h"

namespace kdae::distill {

// Which positions the divergence (and attention rows) cover.
//   shifted: labels != -100; logits at t predict labels[t] (the default, targets aligned).
//   kd-dae:  token_mask, the reference code's unshifted answer mask applied at the same position
//            (its off-by-one, reproduced for parity tests only).
enum class LabelAlignment { Shifted, KdDae };
LabelAlignment parse_label_alignment(const std::string& name);  // "shifted", "kd-dae"

struct KdObjectiveOptions {
  double lambda = 1.0;            // weight of the distillation side; 1 - lambda weighs CE
  double attention_weight = 1.0;  // 0 for DAE or when no attention maps are available
  double hidden_weight = 0.0;
  LabelAlignment alignment = LabelAlignment::Shifted;
  DivergenceOptions divergence;
  // This micro-batch's share of its optimizer step's CE and KD tokens under gradient accumulation:
  // total = (1 - lambda) ce_share CE + lambda kd_share (pred + ...). 1 = the plain objective.
  double ce_share = 1.0, kd_share = 1.0;
};

// One teacher's share of a micro-batch (several teachers: DAE routes samples by domain). Its
// divergence uses its own temperature; its token-mean is weighted by `weight` and pooled with the
// other parts by token count, so one part covering every row with weight 1 equals teacher_logits.
struct TeacherPart {
  torch::Tensor rows;            // (b) int64 batch rows this teacher serves
  torch::Tensor logits;          // (b, T, Vt) constant
  double temperature = 1.0;
  double weight = 1.0;
  // A teacher cache instead of logits: the stored top-k + tail of the rows' supervised positions.
  bool is_sparse = false;
  SparseTeacherRows sparse;
  // Or, with the fused head (KdBatch::student_hidden): final hidden states (b, T, Dt) and the head
  // (Vt, Dt), both on the teacher's device; logits are then made per chunk of rows.
  torch::Tensor hidden, head;
};

struct KdBatch {
  torch::Tensor student_logits;  // (B, T, Vs) any float dtype
  // Or the fused head (head-loss.h): the student's final hidden states (B, T, D) and its head (Vs, D);
  // no (B, T, V) logits are made. Then only `total` carries gradients (ce and pred_layer_loss are
  // detached values for logging) and teachers come as `teachers` parts.
  torch::Tensor student_hidden;
  torch::Tensor student_head;
  torch::Tensor teacher_logits;  // (B, T, Vt), constant; or use `teachers`
  std::vector<TeacherPart> teachers;  // when non-empty, replaces teacher_logits
  torch::Tensor labels;          // (B, T) int64 next-token targets, -100 = not supervised
  torch::Tensor token_mask;      // (B, T) bool answer tokens (unshifted); needed for kd-dae only
  torch::Tensor sample_weights;  // (B) optional, used by the divergence normalization
  LossSum attention;             // sum over rows x heads x layers from AttentionKL; empty = none
  LossSum hidden;                // sum over tokens x pairs from HiddenLoss; empty = none
};

// Every term as a () fp32 tensor; terms whose weight is 0 are computed without autograd (for
// logging). A micro-batch without supervised tokens gives 0 everywhere with a zero gradient:
// weight micro-batches by the counts when accumulating.
struct KdTerms {
  torch::Tensor total;
  torch::Tensor ce;               // logged as ntp_loss
  torch::Tensor pred_layer_loss;  // the divergence term
  torch::Tensor attention_loss;
  torch::Tensor hidden_loss;
  int64_t supervised_tokens = 0;  // |M| of the divergence term
  int64_t ce_tokens = 0;          // labels != -100
  // Per TeacherPart (same order): its divergence (token mean, unweighted) and token count, for
  // per-domain logs. Empty when teacher_logits was used.
  std::vector<std::pair<double, int64_t>> per_teacher;
};

// M for the divergence and the attention query rows under the chosen alignment: (B, T) bool.
torch::Tensor supervised_mask(const torch::Tensor& labels, const torch::Tensor& token_mask, LabelAlignment alignment);

KdTerms kd_objective(const KdBatch& batch, const KdObjectiveOptions& opts);

// Throws, naming the step and the term, when any term is NaN or infinite. Costs one device sync.
void check_finite(const KdTerms& terms, int64_t step);

// DAE routing. is_domain (B) bool or integer; any value other than 0/1 is an error naming the
// sample (the reference silently put such samples in both groups).
torch::Tensor check_domain_flags(const torch::Tensor& is_domain);  // -> (B) bool

// Assembles (B, T, V) teacher logits: expert_logits (Be, T, V) are the is_domain = 1 samples and
// reference_logits (Br, T, V) the others, each in batch order, so each teacher only runs on its own
// samples. A group with no sample may pass an undefined tensor.
torch::Tensor route_teacher_logits(const torch::Tensor& is_domain, const torch::Tensor& expert_logits,
                                   const torch::Tensor& reference_logits);

}  // namespace kdae::distill
