// Building blocks of the transformer: a linear layer (the one place LoRA attaches) and RMSNorm.
// Parameter names match Hugging Face's so state dicts map 1:1 to checkpoint tensors.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

namespace kdae::model {

class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in_features, int64_t out_features, bool bias);
  torch::Tensor forward(const torch::Tensor& x);  // (..., in) -> (..., out)

  // LoRA: y = x W^T + b + (alpha / r) * dropout(x) A^T B^T, with A (r, in), B (out, r) and B = 0 at start.
  void enable_lora(int64_t rank, double alpha, double dropout);
  bool has_lora() const { return lora_a_.defined() && !merged_; }
  // Folds the adapter into weight and removes it (saving writes plain weights).
  void merge_lora();

  torch::Tensor weight;  // (out, in)
  torch::Tensor bias;    // (out) or undefined

 private:
  torch::Tensor lora_a_, lora_b_;
  double lora_scale_ = 0.0;
  double lora_dropout_ = 0.0;
  bool merged_ = false;
};
TORCH_MODULE(Linear);

// A bare weight matrix under its own module name, so names read "model.embed_tokens.weight" and
// "lm_head.weight" as in HF checkpoints (LibTorch forbids dots in parameter names).
class WeightImpl : public torch::nn::Module {
 public:
  explicit WeightImpl(torch::Tensor init) { weight = register_parameter("weight", std::move(init)); }
  torch::Tensor weight;
};
TORCH_MODULE(Weight);

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);  // (..., D) -> (..., D), statistics in fp32 as HF does
  torch::Tensor weight;                           // (D)

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

}  // namespace kdae::model
