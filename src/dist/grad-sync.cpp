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

GradientSync::GradientSync(std::vector<torch::Tensor> params, Group& group, int64_t bucket_bytes,
                           std::vector<int> owners)
    : params_(std::move(params)), group_(group), owners_(std::move(owners)) {
  std::vector<size_t> open;
  int64_t open_bytes = 0;
  for (size_t i = params_.size(); i-- > 0;) {
    const auto& p = params_[i];
    const bool same_kind = open.empty() || (params_[open.front()].device() == p.device() &&
                                            params_[open.front()].scalar_type() == p.scalar_type() &&
                                            (owners_.empty() || owners_[open.front()] == owners_[i]));
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
  if (!owners_.empty())
    for (const auto& b : buckets_) bucket_owner_.push_back(owners_[b.front()]);
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
  next_ = retired_ = 0;
  flat_.assign(buckets_.size(), torch::Tensor());
  pending_.assign(buckets_.size(), Pending());
  bytes_last_step_ = started_in_backward_ = 0;
  at_ = at;
}

void GradientSync::ready(size_t param) {
  if (!armed_ || done_[param]) return;
  done_[param] = true;
  --missing_[bucket_of_[param]];
  while (next_ < buckets_.size() && missing_[next_] == 0) start(next_++);
}

bool GradientSync::keeps(size_t bucket) const {
  return owners_.empty() || bucket_owner_[bucket] == group_.rank();
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
  // Another rank's gradients: the bucket now carries them, so the rank's own copies can go at once.
  if (!keeps(bucket))
    for (size_t i : ids) params_[i].mutable_grad() = torch::Tensor();
  bytes_last_step_ += flat_[bucket].numel() * static_cast<int64_t>(flat_[bucket].element_size());
  started_in_backward_ += in_backward_ ? 1 : 0;
  if (owners_.empty()) {
    pending_[bucket] = group_.start_all_reduce_sum(flat_[bucket], at_ + ": gradient all-reduce");
  } else {
    const int owner = bucket_owner_[bucket];
    pending_[bucket] = group_.start_reduce_sum(flat_[bucket], owner,
                                               at_ + ": gradient reduce to rank " + std::to_string(owner));
  }
  // Buckets already reduced give their buffers back now rather than at the end of backward.
  while (retired_ < next_ && pending_[retired_].done()) retire(retired_++);
}

void GradientSync::retire(size_t bucket) {
  torch::NoGradGuard no_grad;
  pending_[bucket].wait();
  torch::Tensor flat = std::move(flat_[bucket]);
  pending_[bucket] = Pending();
  if (!keeps(bucket)) return;
  const auto& ids = buckets_[bucket];
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

void GradientSync::finish() {
  if (!armed_) return;
  in_backward_ = false;
  while (next_ < buckets_.size()) start(next_++);
  while (retired_ < buckets_.size()) retire(retired_++);
  held_bytes_ = 0;
  for (const auto& p : params_)
    if (p.grad().defined()) held_bytes_ += p.grad().numel() * static_cast<int64_t>(p.grad().element_size());
  armed_ = false;
  flat_.clear();
  pending_.clear();
}

}  // namespace kdae::dist
