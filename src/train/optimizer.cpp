#include "train/optimizer.h"

#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_fused_adamw.h>

#include <cmath>
#include <map>
#include <set>
#include <tuple>

#include "common/error.h"
#include "dist/process-group.h"

namespace kdae::train {
namespace {
// c10::ArrayRef streamed into kdae::fail would make ADL also find c10::str; print it ourselves.
std::string shape_text(const torch::Tensor& t) {
  std::string out = "[";
  for (int64_t d = 0; d < t.dim(); ++d) out += (d ? ", " : "") + std::to_string(t.size(d));
  return out + "]";
}
}  // namespace

bool applies_weight_decay(const std::string& name, const torch::Tensor& param) {
  if (param.dim() <= 1) return false;
  if (name.find("norm") != std::string::npos) return false;
  const std::string bias = "bias";
  return !(name.size() >= bias.size() && name.compare(name.size() - bias.size(), bias.size(), bias) == 0);
}

AdamW::AdamW(NamedTensors params, AdamWOptions options)
    : params_(std::move(params)), options_(options), slots_(params_.size()) {
  std::set<std::string> seen;
  for (const auto& [name, p] : params_) {
    if (!p.defined()) fail("AdamW: parameter '", name, "' is undefined");
    if (!seen.insert(name).second) fail("AdamW: parameter name '", name, "' appears twice");
    if (!at::isFloatingType(p.scalar_type())) fail("AdamW: parameter '", name, "' is not floating point");
    decay_.push_back(applies_weight_decay(name, p));
  }
}

void AdamW::init_slot(size_t i) {
  Slot& s = slots_[i];
  if (s.step.defined()) return;
  const torch::Tensor& p = params_[i].second;
  s.exp_avg = torch::zeros_like(p, at::MemoryFormat::Preserve);
  s.exp_avg_sq = torch::zeros_like(p, at::MemoryFormat::Preserve);
  s.step = torch::zeros({}, p.options().dtype(torch::kFloat32));  // ()
}

void AdamW::zero_grad() {
  for (auto& [name, p] : params_) p.mutable_grad() = torch::Tensor();
}

void AdamW::step(double lr) {
  torch::NoGradGuard no_grad;
  std::vector<size_t> live;
  for (size_t i = 0; i < params_.size(); ++i) {
    const torch::Tensor& g = params_[i].second.grad();
    if (!g.defined()) continue;
    if (g.is_sparse()) fail("AdamW: parameter '", params_[i].first, "' has a sparse gradient");
    init_slot(i);
    live.push_back(i);
  }
  if (live.empty()) return;
  if (options_.fused)
    step_fused(live, lr);
  else
    step_reference(live, lr);
}

// The textbook update, one tensor at a time (torch.optim.AdamW's single-tensor path):
//   p *= 1 - lr*wd;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
void AdamW::step_reference(const std::vector<size_t>& live, double lr) {
  const double b1 = options_.beta1, b2 = options_.beta2;
  for (size_t i : live) {
    torch::Tensor& p = params_[i].second;
    const torch::Tensor& g = p.grad();
    Slot& s = slots_[i];
    s.step.add_(1);
    // The step count lives on the device for the fused kernel; reading it here costs a sync, which
    // is acceptable on the reference path only.
    const double t = s.step.item<double>();
    if (decay_[i] && options_.weight_decay != 0) p.mul_(1 - lr * options_.weight_decay);
    s.exp_avg.lerp_(g, 1 - b1);
    s.exp_avg_sq.mul_(b2).addcmul_(g, g, 1 - b2);
    const double bias1 = 1 - std::pow(b1, t);
    const double bias2_sqrt = std::sqrt(1 - std::pow(b2, t));
    torch::Tensor denom = (s.exp_avg_sq.sqrt() / bias2_sqrt).add_(options_.eps);  // same shape as p
    p.addcdiv_(s.exp_avg, denom, -lr / bias1);
  }
}

// One _fused_adamw_ call per (device, dtype, decay) group: the kernel takes a single weight decay and
// needs every tensor of a call on one device with one dtype.
void AdamW::step_fused(const std::vector<size_t>& live, double lr) {
  using Key = std::tuple<std::string, int, bool>;
  std::map<Key, std::vector<size_t>> groups;
  for (size_t i : live) {
    const torch::Tensor& p = params_[i].second;
    groups[{p.device().str(), static_cast<int>(p.scalar_type()), decay_[i]}].push_back(i);
  }
  for (const auto& [key, members] : groups) {
    std::vector<torch::Tensor> ps, gs, ms, vs, steps;
    for (size_t i : members) {
      ps.push_back(params_[i].second);
      gs.push_back(params_[i].second.grad());
      ms.push_back(slots_[i].exp_avg);
      vs.push_back(slots_[i].exp_avg_sq);
      steps.push_back(slots_[i].step);
    }
    // The kernel reads the step count but does not advance it (torch.optim does the same add first).
    for (auto& s : steps) s.add_(1);
    const double wd = std::get<2>(key) ? options_.weight_decay : 0.0;
    at::_fused_adamw_(ps, gs, ms, vs, /*max_exp_avg_sqs=*/{}, steps, lr, options_.beta1, options_.beta2, wd,
                      options_.eps, /*amsgrad=*/false, /*maximize=*/false);
  }
}

NamedTensors AdamW::state() const {
  NamedTensors out;
  for (size_t i = 0; i < params_.size(); ++i) {
    const Slot& s = slots_[i];
    if (!s.step.defined()) continue;
    const std::string& name = params_[i].first;
    out.emplace_back(name + ".step", s.step);
    out.emplace_back(name + ".exp_avg", s.exp_avg);
    out.emplace_back(name + ".exp_avg_sq", s.exp_avg_sq);
  }
  return out;
}

void AdamW::load_state(const NamedTensors& state) {
  std::map<std::string, torch::Tensor> by_name(state.begin(), state.end());
  std::set<std::string> used;
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& [name, p] = params_[i];
    auto step = by_name.find(name + ".step");
    if (step == by_name.end()) {
      slots_[i] = Slot{};  // parameter had not taken a step when the state was saved
      continue;
    }
    auto find = [&](const std::string& suffix) {
      auto it = by_name.find(name + suffix);
      if (it == by_name.end()) fail("optimizer state: tensor '", name, suffix, "' is missing");
      if (!it->second.sizes().equals(p.sizes()))
        fail("optimizer state: tensor '", name, suffix, "' has shape ", shape_text(it->second), " but parameter has ",
             shape_text(p));
      used.insert(name + suffix);
      return it->second.to(p.device(), p.scalar_type()).clone();
    };
    Slot s;
    s.exp_avg = find(".exp_avg");
    s.exp_avg_sq = find(".exp_avg_sq");
    if (step->second.numel() != 1) fail("optimizer state: tensor '", name, ".step' is not a scalar");
    s.step = step->second.reshape({}).to(p.device(), torch::kFloat32).clone();  // ()
    used.insert(name + ".step");
    slots_[i] = std::move(s);
  }
  for (const auto& [name, t] : state)
    if (!used.count(name)) fail("optimizer state: tensor '", name, "' matches no trainable parameter");
}

torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm, dist::Group* shards) {
  torch::NoGradGuard no_grad;
  // Group grads by device (and dtype, which _foreach_norm needs); per-group norms are combined on the
  // first device so nothing waits on the host.
  std::map<std::pair<std::string, int>, std::vector<torch::Tensor>> groups;
  std::optional<c10::Device> home;
  for (const auto& p : params) {
    const torch::Tensor& g = p.grad();
    if (!g.defined()) continue;
    if (!home) home = g.device();
    groups[{g.device().str(), static_cast<int>(g.scalar_type())}].push_back(g);
  }
  torch::Tensor total = torch::zeros({}, torch::kFloat32);  // ()
  if (home) {
    std::vector<torch::Tensor> norms;  // each ()
    for (auto& [key, grads] : groups)
      for (auto& n : at::_foreach_norm(grads, 2, torch::kFloat32)) norms.push_back(n.to(*home));
    total = torch::stack(norms).norm();
  }
  if (shards) {  // every rank takes part, with or without gradients of its own
    const double local = total.item<double>();
    const double job = std::sqrt(shards->sum({local * local}, "the gradient norm")[0]);
    total = torch::tensor(static_cast<float>(job), torch::TensorOptions().device(home.value_or(c10::Device(c10::kCPU))));
  }
  if (!home) return total;
  if (max_norm > 0) {
    torch::Tensor coef = (max_norm / (total + 1e-6)).clamp_max(1.0);  // ()
    for (auto& [key, grads] : groups) {
      at::_foreach_mul_(grads, coef.to(grads.front().device(), grads.front().scalar_type()));
    }
  }
  return total;
}

}  // namespace kdae::train
