// The hidden-state loss against its formula written out in float64: value and gradients, for MSE and
// cosine, with and without the projection a width mismatch brings.
#include "distill/hidden-loss.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "numeric.h"

using namespace kdae;
using kdae::test::all_close;
using kdae::test::fp32_reduction_tolerance;
using kdae::test::near;

namespace {

struct World {
  torch::Tensor student, teacher, mask;  // (B, T, Ds), (B, T, Dt), (B, T)
};

World make_world(int64_t ds, int64_t dt) {
  torch::manual_seed(3);
  World w;
  w.student = torch::randn({2, 5, ds});
  w.teacher = torch::randn({2, 5, dt});
  w.mask = torch::rand({2, 5}) > 0.3;
  return w;
}

// sum over supervised tokens of the per-token loss, in float64, from the formula in hidden-loss.h.
torch::Tensor formula(distill::HiddenLossKind kind, const torch::Tensor& projected, const torch::Tensor& teacher,
                      const torch::Tensor& mask) {
  auto m = mask.to(torch::kFloat64);
  torch::Tensor per_token;  // (B, T)
  if (kind == distill::HiddenLossKind::MSE) {
    per_token = (projected - teacher).pow(2).mean(-1);
  } else {
    auto dot = (projected * teacher).sum(-1);
    per_token = 1 - dot / (projected.norm(2, -1) * teacher.norm(2, -1));
  }
  return (per_token * m).sum();
}

void check(distill::HiddenLossKind kind, int64_t ds, int64_t dt) {
  const auto w = make_world(ds, dt);
  distill::HiddenLoss loss(distill::HiddenLossOptions{kind, ds, dt, 1});
  auto student = w.student.clone().requires_grad_(true);
  const auto got = loss->layer(0, student, w.teacher, w.mask);
  ASSERT_EQ(got.count, w.mask.sum().item<int64_t>());
  got.sum.backward();

  auto student64 = w.student.to(torch::kFloat64).requires_grad_(true);
  torch::Tensor projection64;
  auto projected = student64;
  if (ds != dt) {
    ASSERT_TRUE(loss->projects());
    projection64 = loss->projection(0).detach().to(torch::kFloat64).requires_grad_(true);  // (Dt, Ds)
    projected = torch::matmul(student64, projection64.t());
  }
  const auto want = formula(kind, projected, w.teacher.to(torch::kFloat64), w.mask);
  want.backward();

  // Each token's term is a D-long float32 sum (plus a D-long projection per entry); the terms add up
  // over N tokens. Magnitude: the sum of |terms| (all terms are >= 0 here, so the value itself).
  const int64_t n = got.count * std::max(ds, dt) * (ds != dt ? ds : 1);
  EXPECT_TRUE(near(got.sum.item<double>(), want.item<double>(), fp32_reduction_tolerance(n, want.item<double>() + 1)));
  const double grad_bound = fp32_reduction_tolerance(n, 1 + student64.grad().abs().max().item<double>());
  EXPECT_TRUE(all_close(student.grad().to(torch::kFloat64), student64.grad(), grad_bound));
  // Unsupervised tokens get no gradient at all.
  EXPECT_EQ(student.grad().index({w.mask.logical_not()}).abs().max().item<float>(), 0.0f);
  if (ds != dt) {
    const auto& p = loss->projection(0);
    ASSERT_TRUE(p.grad().defined());
    EXPECT_TRUE(all_close(p.grad().to(torch::kFloat64), projection64.grad(),
                          fp32_reduction_tolerance(n, 1 + projection64.grad().abs().max().item<double>())));
  }
}

}  // namespace

TEST(HiddenLoss, MseEqualsTheFormula) { check(distill::HiddenLossKind::MSE, 8, 8); }
TEST(HiddenLoss, CosineEqualsTheFormula) { check(distill::HiddenLossKind::Cosine, 8, 8); }
TEST(HiddenLoss, MseThroughTheProjectionEqualsTheFormula) { check(distill::HiddenLossKind::MSE, 6, 8); }
TEST(HiddenLoss, CosineThroughTheProjectionEqualsTheFormula) { check(distill::HiddenLossKind::Cosine, 6, 8); }

TEST(HiddenLoss, NoSupervisedTokenAddsNothing) {
  const auto w = make_world(8, 8);
  distill::HiddenLoss loss(distill::HiddenLossOptions{distill::HiddenLossKind::MSE, 8, 8, 1});
  const auto got = loss->layer(0, w.student, w.teacher, torch::zeros({2, 5}, torch::kBool));
  EXPECT_EQ(got.count, 0);
  if (got.sum.defined()) EXPECT_EQ(got.sum.item<double>(), 0.0);
}
