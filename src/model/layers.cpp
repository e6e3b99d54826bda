#include "model/layers.h"

#include <torch/nn/functional.h>
#include <torch/nn/init.h>

#include <cmath>

namespace kdae::model {
namespace F = torch::nn::functional;

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features, bool with_bias) {
  weight = register_parameter("weight", torch::empty({out_features, in_features}));  // (out, in)
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (with_bias) bias = register_parameter("bias", torch::zeros({out_features}));  // (out)
}

torch::Tensor LinearImpl::forward(const torch::Tensor& x) {
  torch::Tensor y = F::linear(x, weight, bias);  // (..., out)
  if (!lora_a_.defined() || merged_) return y;
  torch::Tensor h = lora_dropout_ > 0 && is_training() ? F::dropout(x, F::DropoutFuncOptions().p(lora_dropout_).training(true)) : x;
  return y + F::linear(F::linear(h, lora_a_), lora_b_) * lora_scale_;  // (..., out)
}

void LinearImpl::enable_lora(int64_t rank, double alpha, double dropout) {
  const auto opts = weight.options();
  lora_a_ = register_parameter("lora_A", torch::empty({rank, weight.size(1)}, opts));  // (r, in)
  torch::nn::init::kaiming_uniform_(lora_a_, std::sqrt(5.0));
  lora_b_ = register_parameter("lora_B", torch::zeros({weight.size(0), rank}, opts));  // (out, r)
  lora_scale_ = alpha / static_cast<double>(rank);
  lora_dropout_ = dropout;
  weight.set_requires_grad(false);
  if (bias.defined()) bias.set_requires_grad(false);
}

void LinearImpl::merge_lora() {
  if (!lora_a_.defined() || merged_) return;
  torch::NoGradGuard no_grad;
  weight.add_(torch::matmul(lora_b_, lora_a_).to(weight.dtype()) * lora_scale_);  // (out, in)
  // LibTorch modules cannot unregister parameters: the merged adapter stays registered but inert
  // (zeroed, frozen), and the HF writer skips lora_* names.
  lora_b_.zero_();
  lora_a_.set_requires_grad(false);
  lora_b_.set_requires_grad(false);
  lora_scale_ = 0.0;
  merged_ = true;
}

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));  // (D)
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  const auto input_dtype = x.scalar_type();
  torch::Tensor h = x.to(torch::kFloat32);                                 // (..., D)
  torch::Tensor variance = h.pow(2).mean(-1, /*keepdim=*/true);             // (..., 1)
  h = h * torch::rsqrt(variance + eps_);                                    // (..., D)
  return weight * h.to(input_dtype);                                       // (..., D)
}

}  // namespace kdae::model
