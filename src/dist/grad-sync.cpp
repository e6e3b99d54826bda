#include "dist/grad-sync.h"

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

namespace kdae::dist {
namespace {

struct ReadyHook : torch::autograd::PostAccumulateGradHook {
  GradientSync* sync;
  size_t index;
  ReadyHook(GradientSync* s, size_t i) : sync(s), index(i) {}
  void operator()(const torch::autograd::Variable&) override { sync->ready(index); }
};

}  // namespace

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
  bucket_of_.resize(params_.size());
  for (size_t b = 0; b < buckets_.size(); ++b)
    for (size_t i : buckets_[b]) bucket_of_[i] = b;
  if (!group_.distributed()) return;
  for (size_t i = 0; i < params_.size(); ++i)
    torch::autograd::impl::set_post_acc_grad_hooks(params_[i], std::make_unique<ReadyHook>(this, i));
}

GradientSync::~GradientSync() {
  if (!group_.distributed()) return;
  for (auto& p : params_) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
}

void GradientSync::prepare_for_backward(const std::string& at) {
  if (!group_.distributed()) return;
  armed_ = in_backward_ = true;
  done_.assign(params_.size(), false);
  missing_.clear();
  for (const auto& b : buckets_) missing_.push_back(b.size());
  next_ = 0;
  flat_.assign(buckets_.size(), torch::Tensor());
  waits_.clear();
  bytes_last_step_ = started_in_backward_ = 0;
  at_ = at;
}

void GradientSync::ready(size_t param) {
  if (!armed_ || done_[param]) return;
  done_[param] = true;
  --missing_[bucket_of_[param]];
  while (next_ < buckets_.size() && missing_[next_] == 0) start(next_++);
}

void GradientSync::start(size_t bucket) {
  torch::NoGradGuard no_grad;
  const auto& ids = buckets_[bucket];
  std::vector<torch::Tensor> parts;
  for (size_t i : ids) {
    const auto& g = params_[i].grad();
    parts.push_back(g.defined() ? g.reshape({-1}) : torch::zeros({params_[i].numel()}, params_[i].options()));
  }
  torch::Tensor presence = torch::zeros({static_cast<int64_t>(ids.size())}, params_[ids.front()].options());  // (n)
  for (size_t k = 0; k < ids.size(); ++k)
    if (params_[ids[k]].grad().defined()) presence[static_cast<int64_t>(k)] = 1;
  parts.push_back(presence);
  flat_[bucket] = torch::cat(parts);  // (sum of numels + n)
  bytes_last_step_ += flat_[bucket].numel() * static_cast<int64_t>(flat_[bucket].element_size());
  started_in_backward_ += in_backward_ ? 1 : 0;
  const std::string what = at_ + ": gradient all-reduce";
  waits_.push_back(group_.start_all_reduce_sum(flat_[bucket], what));
}

void GradientSync::finish() {
  if (!armed_) return;
  torch::NoGradGuard no_grad;
  in_backward_ = false;
  while (next_ < buckets_.size()) start(next_++);
  for (auto& wait : waits_) wait();
  for (size_t b = 0; b < buckets_.size(); ++b) {
    const auto& ids = buckets_[b];
    const torch::Tensor& flat = flat_[b];
    const int64_t presence_at = flat.numel() - static_cast<int64_t>(ids.size());
    const auto presence = flat.narrow(0, presence_at, static_cast<int64_t>(ids.size())).to(torch::kCPU);
    int64_t offset = 0;
    for (size_t k = 0; k < ids.size(); ++k) {
      auto& p = params_[ids[k]];
      const int64_t n = p.numel();
      if (presence[static_cast<int64_t>(k)].item<double>() == 0) {
        p.mutable_grad() = torch::Tensor();
      } else {
        if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
        p.mutable_grad().copy_(flat.narrow(0, offset, n).view_as(p));
      }
      offset += n;
    }
  }
  armed_ = false;
  flat_.clear();
  waits_.clear();
}

}  // namespace kdae::dist
