#include "train/sharded-optimizer.h"

#include <algorithm>
#include <map>

#include "common/error.h"

namespace kdae::train {

// Contiguous runs in parameter order, cut where a tensor's middle crosses a multiple of 1/N of the
// total size: balanced to within one tensor, the same on every rank, and contiguous so gradient
// buckets (built in reverse parameter order) each have one owner.
std::vector<int> plan_owners(const NamedTensors& params, int ranks) {
  double total = 0;
  for (const auto& [name, p] : params) total += static_cast<double>(p.numel());
  std::vector<int> owner(params.size(), 0);
  double before = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const double n = static_cast<double>(params[i].second.numel());
    const double middle = total > 0 ? (before + n / 2) / total : 0;
    owner[i] = std::min(ranks - 1, static_cast<int>(middle * ranks));
    before += n;
  }
  return owner;
}

namespace {

std::string parameter_of(const std::string& state_name) {
  for (const char* suffix : {".exp_avg_sq", ".exp_avg", ".step"}) {
    const std::string s = suffix;
    if (state_name.size() > s.size() && state_name.compare(state_name.size() - s.size(), s.size(), s) == 0)
      return state_name.substr(0, state_name.size() - s.size());
  }
  return state_name;
}

// Broadcasts `tensors` (on `root`; same shapes elsewhere) as one flat float32 buffer.
void broadcast_flat(dist::Group& group, std::vector<torch::Tensor> tensors, int root, const std::string& what) {
  if (tensors.empty()) return;
  std::vector<torch::Tensor> parts;
  for (const auto& t : tensors) parts.push_back(t.detach().reshape({-1}).to(torch::kFloat32));
  torch::Tensor flat = torch::cat(parts);  // (sum of numels)
  group.broadcast(flat, root, what);
  int64_t offset = 0;
  for (auto& t : tensors) {
    t.detach().copy_(flat.narrow(0, offset, t.numel()).view(t.sizes()));
    offset += t.numel();
  }
}

}  // namespace

Sharding parse_sharding(const std::string& name) {
  if (name == "none") return Sharding::none;
  if (name == "optimizer") return Sharding::optimizer;
  if (name == "gradients") return Sharding::gradients;
  fail("sharding '", name, "': expected none, optimizer or gradients");
}

ShardedOptimizer::ShardedOptimizer(NamedTensors params, AdamWOptions options, dist::Group& group, Sharding sharding)
    : params_(std::move(params)), group_(group), sharding_(sharding) {
  owner_ = sharded() ? plan_owners(params_, group_.size()) : std::vector<int>(params_.size(), group_.rank());
  for (size_t i = 0; i < params_.size(); ++i) owner_of_[params_[i].first] = owner_[i];
  NamedTensors mine;
  for (size_t i = 0; i < params_.size(); ++i)
    if (owner_[i] == group_.rank()) mine.push_back(params_[i]);
  local_ = std::make_unique<AdamW>(std::move(mine), options);
}

void ShardedOptimizer::step(double lr) {
  local_->step(lr);
  if (sharded()) broadcast_from_owners();
}

void ShardedOptimizer::broadcast_from_owners() {
  torch::NoGradGuard no_grad;
  broadcast_bytes_ = 0;
  for (int r = 0; r < group_.size(); ++r) {
    std::vector<torch::Tensor> owned;
    for (size_t i = 0; i < params_.size(); ++i)
      if (owner_[i] == r) {
        owned.push_back(params_[i].second);
        broadcast_bytes_ += params_[i].second.numel() * static_cast<int64_t>(sizeof(float));  // sent as fp32
      }
    broadcast_flat(group_, owned, r, "parameters updated by rank " + std::to_string(r));
  }
}

void ShardedOptimizer::zero_grad() {
  for (auto& [name, p] : params_) p.mutable_grad() = torch::Tensor();
}

NamedTensors ShardedOptimizer::local_state() const { return local_->state(); }

bool ShardedOptimizer::owns_state(const std::string& state_name) const {
  const auto it = owner_of_.find(parameter_of(state_name));
  return it == owner_of_.end() || it->second == group_.rank();  // a stray tensor is read, for load_state to report
}

void ShardedOptimizer::load_state(const NamedTensors& state) {
  NamedTensors mine;
  for (const auto& [name, t] : state) {
    const auto it = owner_of_.find(parameter_of(name));
    if (it == owner_of_.end()) fail("optimizer state: tensor '", name, "' matches no trainable parameter");
    if (it->second == group_.rank()) mine.emplace_back(name, t);
  }
  local_->load_state(mine);
}

std::vector<int> ShardedOptimizer::gradient_owners() const {
  return shards_gradients() ? owner_ : std::vector<int>();
}

dist::Group* ShardedOptimizer::gradient_shards() const { return shards_gradients() ? &group_ : nullptr; }

int64_t ShardedOptimizer::local_state_bytes() const {
  int64_t bytes = 0;
  for (const auto& [name, t] : local_->state()) bytes += t.numel() * static_cast<int64_t>(t.element_size());
  return bytes;
}

}  // namespace kdae::train
