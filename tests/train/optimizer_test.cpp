// The fused AdamW path against the plain reference path, state save/load, the no-decay rule and
// clipping. (tests/python/test_optimizer.py ties both paths to torch.optim.AdamW.)
#include <gtest/gtest.h>

#include <algorithm>
#include <torch/cuda.h>
#include <torch/types.h>

#include "common/error.h"
#include "train/lr-schedule.h"
#include "numeric.h"
#include "train/optimizer.h"

using namespace kdae::train;

namespace {
NamedTensors make_params(uint64_t seed) {
  torch::manual_seed(seed);
  return {{"embed.weight", torch::randn({13, 8})},
          {"layers.0.attn.q.weight", torch::randn({8, 8})},
          {"layers.0.attn.q.bias", torch::randn({8})},
          {"layers.0.norm.weight", torch::randn({8})},
          {"head.weight", torch::randn({13, 8})}};
}

// Deterministic fake gradients: a function of (step, parameter index).
void set_grads(AdamW& opt, int step) {
  for (size_t i = 0; i < opt.params().size(); ++i) {
    auto p = opt.params()[i].second;
    auto g = torch::sin(torch::arange(p.numel(), torch::kFloat32) * (0.37 + 0.11 * i) + step).reshape(p.sizes());
    p.mutable_grad() = g * (step == 2 ? 5.0 : 0.5);  // step 2 exercises clipping
  }
}

NamedTensors trainable_copy(const NamedTensors& params) {
  NamedTensors out;
  for (const auto& [n, p] : params) out.emplace_back(n, p.clone().requires_grad_(true));
  return out;
}

double max_diff(const NamedTensors& a, const NamedTensors& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, (a[i].second - b[i].second).abs().max().item<double>());
  return worst;
}
}  // namespace

TEST(Optimizer, NoDecayRule) {
  EXPECT_TRUE(applies_weight_decay("model.layers.0.mlp.up_proj.weight", torch::zeros({4, 4})));
  EXPECT_TRUE(applies_weight_decay("model.embed_tokens.weight", torch::zeros({4, 4})));
  EXPECT_FALSE(applies_weight_decay("model.layers.0.input_layernorm.weight", torch::zeros({4})));
  EXPECT_FALSE(applies_weight_decay("model.norm.weight", torch::zeros({4, 4})));  // by name even if 2-d
  EXPECT_FALSE(applies_weight_decay("q_proj.bias", torch::zeros({4, 4})));
  EXPECT_FALSE(applies_weight_decay("router.scale", torch::zeros({})));
}

TEST(Optimizer, FusedMatchesReference) {
  const auto init = make_params(1);
  AdamWOptions o;
  o.weight_decay = 0.1;
  o.beta2 = 0.95;
  o.fused = true;
  AdamW fused(trainable_copy(init), o);
  o.fused = false;
  AdamW ref(trainable_copy(init), o);
  LrSchedule schedule(LrScheduleKind::cosine, 1e-2, 10, 2);
  for (int step = 0; step < 10; ++step) {
    for (AdamW* opt : {&fused, &ref}) {
      set_grads(*opt, step);
      std::vector<torch::Tensor> ps;
      for (auto& [n, p] : opt->params()) ps.push_back(p);
      clip_grad_norm(ps, 1.0);
      opt->step(schedule.lr_at(step + 1));
    }
  }
  // Both paths apply the same elementwise update in another order of float32 operations. Per step and
  // element that is about two roundings of |p| (< 4.5 for these randn parameters) and, through the clip
  // scale (a 288-element sum of squares), a relative 288 eps of an update below lr = 1e-2; the moments
  // (|m|, |v| < 2.5) carry the same clip-scale error. Ten steps.
  double largest = 0;
  for (const auto& [n, p] : init) largest = std::max(largest, p.abs().max().item<double>());
  ASSERT_LT(largest, 4.5);
  using kdae::test::fp32_reduction_tolerance;
  const double param_tol = fp32_reduction_tolerance(10 * 2, 4.5) + fp32_reduction_tolerance(10 * 288, 1e-2);
  EXPECT_LT(max_diff(fused.params(), ref.params()), param_tol);
  EXPECT_GT(max_diff(fused.params(), init), 1e-2);  // the comparison is not vacuous
  EXPECT_LT(max_diff(fused.state(), ref.state()), fp32_reduction_tolerance(10 * (288 + 2), 2.5));
}

TEST(Optimizer, StateRoundTripContinuesIdentically) {
  const auto init = make_params(2);
  AdamWOptions o;
  o.weight_decay = 0.05;
  AdamW straight(trainable_copy(init), o);
  AdamW first(trainable_copy(init), o);
  for (int step = 0; step < 6; ++step) {
    set_grads(straight, step);
    straight.step(1e-2);
    if (step < 3) {
      set_grads(first, step);
      first.step(1e-2);
    }
  }
  // A fresh optimizer over the same weights, resumed from the saved state.
  NamedTensors saved_params;
  for (const auto& [n, p] : first.params()) saved_params.emplace_back(n, p.detach().clone());
  NamedTensors saved_state;
  for (const auto& [n, t] : first.state()) saved_state.emplace_back(n, t.clone());
  AdamW resumed(trainable_copy(saved_params), o);
  resumed.load_state(saved_state);
  for (int step = 3; step < 6; ++step) {
    set_grads(resumed, step);
    resumed.step(1e-2);
  }
  EXPECT_EQ(max_diff(straight.params(), resumed.params()), 0.0);
  EXPECT_EQ(resumed.state()[0].second.item<float>(), 6.0f);  // "<first>.step"
}

TEST(Optimizer, LoadStateRejectsMismatch) {
  AdamW opt(trainable_copy(make_params(3)), {});
  NamedTensors bad = {{"embed.weight.step", torch::ones({})},
                      {"embed.weight.exp_avg", torch::zeros({2, 2})},
                      {"embed.weight.exp_avg_sq", torch::zeros({13, 8})}};
  try {
    opt.load_state(bad);
    FAIL() << "expected an error";
  } catch (const kdae::Error& e) {
    EXPECT_NE(std::string(e.what()).find("embed.weight.exp_avg' has shape [2, 2]"), std::string::npos) << e.what();
  }
  NamedTensors stray = {{"nope.step", torch::ones({})}};
  EXPECT_THROW(opt.load_state(stray), kdae::Error);
}

TEST(Optimizer, ClipGradNorm) {
  auto a = torch::zeros({3}, torch::requires_grad());
  auto b = torch::zeros({2, 2}, torch::requires_grad());
  auto c = torch::zeros({2}, torch::requires_grad());  // no grad: ignored
  a.mutable_grad() = torch::tensor({3.0f, 0.0f, 0.0f});
  b.mutable_grad() = torch::tensor({{0.0f, 4.0f}, {0.0f, 0.0f}});
  auto norm = clip_grad_norm({a, b, c}, 1.0);
  EXPECT_EQ(norm.dim(), 0);
  EXPECT_NEAR(norm.item<double>(), 5.0, 1e-6);
  EXPECT_NEAR(a.grad()[0].item<double>(), 3.0 / (5.0 + 1e-6), 1e-7);
  EXPECT_NEAR(b.grad()[0][1].item<double>(), 4.0 / (5.0 + 1e-6), 1e-7);
  // Below the threshold grads are untouched.
  auto norm2 = clip_grad_norm({a, b}, 10.0);
  EXPECT_NEAR(norm2.item<double>(), 1.0, 1e-5);
  EXPECT_NEAR(a.grad()[0].item<double>(), 3.0 / (5.0 + 1e-6), 1e-7);
}

TEST(LrSchedule, HandValues) {
  LrSchedule cos(LrScheduleKind::cosine, 1.0, 10, 2);
  EXPECT_DOUBLE_EQ(cos.lr_at(0), 0.0);
  EXPECT_DOUBLE_EQ(cos.lr_at(1), 0.5);
  EXPECT_DOUBLE_EQ(cos.lr_at(2), 1.0);
  EXPECT_NEAR(cos.lr_at(6), 0.5, 1e-15);  // halfway through the decay
  EXPECT_DOUBLE_EQ(cos.lr_at(10), 0.0);
  LrSchedule lin(LrScheduleKind::linear, 2.0, 10, 0);
  EXPECT_DOUBLE_EQ(lin.lr_at(0), 2.0);
  EXPECT_DOUBLE_EQ(lin.lr_at(5), 1.0);
  EXPECT_DOUBLE_EQ(lin.lr_at(12), 0.0);
  EXPECT_EQ(resolve_warmup_steps(0, 0.1, 37), 4);
  EXPECT_EQ(resolve_warmup_steps(5, 0.1, 37), 5);
  EXPECT_THROW(parse_lr_schedule("cosine_with_restarts"), kdae::Error);
}

// CUDA: the fused kernel and the device-side clipping on the GPU against the CPU reference path,
// and the CUDA generator state round trip. Skipped without a GPU.
TEST(Optimizer, CudaFusedMatchesCpuReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const auto init = make_params(4);
  AdamWOptions o;
  o.weight_decay = 0.1;
  o.fused = false;
  AdamW ref(trainable_copy(init), o);
  NamedTensors on_gpu;
  for (const auto& [n, p] : init) on_gpu.emplace_back(n, p.to(torch::kCUDA).requires_grad_(true));
  o.fused = true;
  AdamW gpu(on_gpu, o);
  for (int step = 0; step < 5; ++step) {
    set_grads(ref, step);
    for (size_t i = 0; i < init.size(); ++i)
      gpu.params()[i].second.mutable_grad() = ref.params()[i].second.grad().to(torch::kCUDA);
    std::vector<torch::Tensor> pr, pg;
    for (auto& [n, p] : ref.params()) pr.push_back(p);
    for (auto& [n, p] : gpu.params()) pg.push_back(p);
    const auto nr = clip_grad_norm(pr, 1.0);
    const auto ng = clip_grad_norm(pg, 1.0);
    EXPECT_TRUE(ng.is_cuda());
    EXPECT_NEAR(nr.item<double>(), ng.item<double>(), 1e-4 * nr.item<double>());
    ref.step(1e-2);
    gpu.step(1e-2);
  }
  NamedTensors back;
  for (const auto& [n, p] : gpu.params()) back.emplace_back(n, p.cpu());
  EXPECT_LT(max_diff(back, ref.params()), 1e-5);
  EXPECT_GT(max_diff(back, init), 1e-2);
}
