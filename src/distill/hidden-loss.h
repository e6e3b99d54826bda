// Optional hidden-state distillation between mapped layers (not in the paper; TinyBERT-style):
// per supervised token, mse = mean_d (W h_S - h_T)^2 or cosine = 1 - cos(W h_S, h_T), where W is a
// learned (Dt, Ds) projection per layer pair when the widths differ and the identity otherwise.
// L_hidden = sum over pairs and supervised tokens / (pairs * |M|).
//
// Dimension legend: B = batch, T = time, Ds/Dt = student/teacher hidden width, N = supervised tokens.
//
// Like attention KL, call layer() per pair as soon as both hidden states exist and add the returned
// (sum, count); the projections are parameters of this module: give them to the optimizer and save
// them with the student's training state.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "distill/loss-sum.h"

namespace kdae::distill {

enum class HiddenLossKind { MSE, Cosine };
HiddenLossKind parse_hidden_loss(const std::string& name);  // "mse", "cosine"

struct HiddenLossOptions {
  HiddenLossKind kind = HiddenLossKind::MSE;
  int64_t student_dim = 0;
  int64_t teacher_dim = 0;
  int64_t pairs = 1;  // number of mapped layer pairs (one projection each when widths differ)
};

class HiddenLossImpl : public torch::nn::Module {
 public:
  explicit HiddenLossImpl(HiddenLossOptions opts);
  // pair in [0, pairs); student_hidden (B, T, Ds), teacher_hidden (B, T, Dt), mask (B, T) bool.
  // Returns the sum over supervised tokens and their count.
  LossSum layer(int64_t pair, const torch::Tensor& student_hidden, const torch::Tensor& teacher_hidden,
                const torch::Tensor& mask);
  bool projects() const { return !projections_.empty(); }
  const torch::Tensor& projection(int64_t pair) const { return projections_.at(pair); }  // (Dt, Ds)

 private:
  HiddenLossOptions opts_;
  std::vector<torch::Tensor> projections_;  // (Dt, Ds) each, empty when Ds == Dt
};
TORCH_MODULE(HiddenLoss);

}  // namespace kdae::distill
