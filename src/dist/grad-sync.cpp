#include "dist/grad-sync.h"

namespace kdae::dist {

GradientSync::GradientSync(std::vector<torch::Tensor> params, Group& group, int64_t bucket_bytes)
    : params_(std::move(params)), group_(group) {
  std::vector<size_t> open;
  int64_t open_bytes = 0;
  for (size_t i = params_.size(); i-- > 0;) {
    const auto& p = params_[i];
    const bool same_kind = open.empty() || (params_[open.front()].device() == p.device() &&
                                            params_[open.front()].scalar_type() == p.scalar_type());
    if (!open.empty() && (!same_kind || open_bytes >= bucket_bytes)) {
      buckets_.push_back(std::move(open));
      open.clear();
      open_bytes = 0;
    }
    open.push_back(i);
    open_bytes += p.numel() * static_cast<int64_t>(p.element_size());
  }
  if (!open.empty()) buckets_.push_back(std::move(open));
}

void GradientSync::all_reduce(const std::string& at) {
  if (!group_.distributed()) return;
  torch::NoGradGuard no_grad;
  // Which parameters have a gradient on some rank: those take part, on every rank.
  std::vector<double> present(params_.size(), 0.0);
  for (size_t i = 0; i < params_.size(); ++i) present[i] = params_[i].grad().defined() ? 1.0 : 0.0;
  present = group_.sum(std::move(present), at + ": gradient all-reduce (which parameters have gradients)");
  bytes_last_step_ = 0;
  for (const auto& bucket : buckets_) {
    std::vector<torch::Tensor> grads;
    for (size_t i : bucket) {
      if (present[i] == 0.0) continue;
      auto& p = params_[i];
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      grads.push_back(p.grad());
    }
    if (grads.empty()) continue;
    std::vector<torch::Tensor> flat_parts;
    for (auto& g : grads) flat_parts.push_back(g.reshape({-1}));
    torch::Tensor flat = torch::cat(flat_parts);  // (sum of numels)
    group_.all_reduce_sum(flat, at + ": gradient all-reduce");
    bytes_last_step_ += flat.numel() * static_cast<int64_t>(flat.element_size());
    int64_t offset = 0;
    for (auto& g : grads) {
      g.copy_(flat.narrow(0, offset, g.numel()).view_as(g));
      offset += g.numel();
    }
  }
}

}  // namespace kdae::dist
