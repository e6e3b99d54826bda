// One micro-batch of the objective: teachers and student forward, the KD terms. Shared by training
// and evaluation. Teachers run without autograd on their own rows, device and dtype. With attention
// KD the student's forward drives each teacher layer by layer (model::ForwardState): when student
// layer l has produced its attention probabilities, the teacher advances to its mapped layer, the
// row-wise KL of that pair is added, and both maps are dropped, so no more than one layer's maps of
// each model exist at a time.
#pragma once
#include <torch/types.h>

#include <optional>
#include <vector>

#include "distill/attention-kl.h"
#include "distill/hidden-loss.h"
#include "distill/kd-objective.h"
#include "model/transformer.h"
#include "train/data-stream.h"
#include "train/teacher-set.h"

namespace kdae::train {

struct StepSetup {
  model::Transformer student{nullptr};
  TeacherSet* teachers = nullptr;
  std::vector<int> teacher_of_domain;  // dataset domain index -> teacher index (train::TeacherSet::assign)
  distill::KdObjectiveOptions objective;
  std::vector<distill::LayerPairs> layer_pairs;  // per teacher: (student layer, teacher layer)
  distill::HiddenLoss hidden{nullptr};           // when objective.hidden_weight > 0
  torch::Device device = torch::kCPU;
  torch::ScalarType compute_dtype = torch::kFloat32;  // autocast dtype when not float32
  bool packing = false;
  // The LM heads run inside the chunked loss (distill/head-loss.h): no (B, T, V) logits of the student
  // or of live teachers. false materialises them (the reference path, for comparisons).
  bool fused_head = true;
  double router_aux_coef = 0.0, router_z_coef = 0.0;
  // false when lambda = 0 (CE-only training): the teachers are not run at all. Evaluation sets it.
  bool run_teachers = true;
  // Evaluation measures KL between the true distributions: every teacher at this temperature.
  std::optional<double> temperature_override;
};

struct StepResult {
  distill::KdTerms terms;
  torch::Tensor router_loss;  // () aux + z terms, already weighted; undefined for dense students
  std::vector<torch::Tensor> router_logits;  // per MoE layer, detached (for load statistics)
  torch::Tensor router_token_mask;           // (B*T) bool: rows of router_logits that are real tokens
  std::vector<int> part_teacher;             // teacher index of each terms.per_teacher entry
};

// Builds per-teacher layer pairs from options.layer_map (or the uniform map) and checks them.
std::vector<distill::LayerPairs> build_layer_pairs(const std::vector<int64_t>& layer_map,
                                                   const model::ModelConfig& student, TeacherSet& teachers);

// Computes every term for mb. Gradients flow when grad mode is on (training); call under NoGrad for
// evaluation.
StepResult compute_step(StepSetup& setup, const MicroBatch& mb);
// For a rank whose slice of the job's micro-batch is empty: runs the sharded teachers some other rank
// needs (on a stand-in token, with the student driving them under attention KD), so every rank
// gathers their layers together (train/teacher-sharding.h). Nothing is computed or kept.
void run_sharded_teachers_only(StepSetup& setup);

// Autocast to setup.compute_dtype on the student's device for its lifetime (nothing for float32).
class ComputeDtypeGuard {
 public:
  ComputeDtypeGuard(torch::Device device, torch::ScalarType dtype);
  ~ComputeDtypeGuard();

 private:
  bool active_ = false;
  torch::DeviceType type_;
  bool previous_enabled_ = false;
  torch::ScalarType previous_dtype_ = torch::kFloat32;
};

}  // namespace kdae::train
