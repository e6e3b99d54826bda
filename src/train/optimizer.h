// AdamW with decoupled weight decay, two parameter groups (decay / no decay), global-norm gradient
// clipping, and state save/load by parameter name. The learning rate is passed to every step so a
// schedule (train/lr-schedule.h) owns it; the optimizer keeps no lr of its own.
#pragma once
#include <torch/types.h>

#include <string>
#include <utility>
#include <vector>

namespace kdae::dist {
class Group;
}

namespace kdae::train {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  // Use at::_fused_adamw_ (one kernel per device/dtype group); false = the plain per-tensor reference
  // path, kept beside it and tied to it by tests/train/optimizer_test.cpp.
  bool fused = true;
};

// The no-decay rule: a parameter is not decayed when it has at most one dimension (biases, norm
// gains, scalars) or its name marks it as a norm or bias ("norm" anywhere in the name, or a name
// ending in "bias"). Matrices (linear weights, embeddings) are decayed. This is the rule HF Trainer
// applies by module type, restated by name so it works on any named parameter list.
bool applies_weight_decay(const std::string& name, const torch::Tensor& param);

class AdamW {
 public:
  // params: the trainable parameters, by unique name. Parameters whose grad is undefined at a step
  // are skipped at that step (their own step count does not advance), like torch.optim.AdamW.
  AdamW(NamedTensors params, AdamWOptions options);

  void step(double lr);
  void zero_grad();  // sets grads to undefined (frees memory), like zero_grad(set_to_none=True)

  const NamedTensors& params() const { return params_; }
  const AdamWOptions& options() const { return options_; }
  bool decays(size_t index) const { return decay_[index]; }

  // "<name>.step" (float32 scalar), "<name>.exp_avg", "<name>.exp_avg_sq" for every parameter that
  // has taken a step. load_state() checks names and shapes and moves state to each parameter's device.
  NamedTensors state() const;
  void load_state(const NamedTensors& state);

 private:
  struct Slot {
    torch::Tensor exp_avg, exp_avg_sq, step;  // step: float32 0-dim on the parameter's device
  };
  void init_slot(size_t i);
  void step_reference(const std::vector<size_t>& live, double lr);
  void step_fused(const std::vector<size_t>& live, double lr);

  NamedTensors params_;
  AdamWOptions options_;
  std::vector<bool> decay_;
  std::vector<Slot> slots_;
};

// Scales all grads in place so their global L2 norm is at most max_norm (torch's clip_grad_norm_
// formula: coef = min(1, max_norm / (norm + 1e-6))). Returns the norm before clipping as a float32
// 0-dim tensor on the first parameter's device, without a host sync; read it only when logging.
// max_norm <= 0 only measures. Parameters without grads are ignored. With `shards`, the gradients
// are split over that group's ranks: the norm is the job's (a collective, and a host sync).
torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm, dist::Group* shards = nullptr);

}  // namespace kdae::train
