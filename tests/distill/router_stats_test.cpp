// Router statistics and losses on hand-made logits whose loads, entropies and loss values are known
// in closed form (the transformers parity of the losses is in tests/python/test_upcycle.py).
#include <gtest/gtest.h>
#include <torch/types.h>

#include <cmath>

#include "common/error.h"
#include "distill/router-loss.h"

using namespace kdae::distill;

namespace {

torch::Tensor rows(std::vector<std::vector<float>> values) {
  std::vector<torch::Tensor> out;
  for (auto& r : values) out.push_back(torch::tensor(r));
  return torch::stack(out);  // (N, E)
}

// Entropy of softmax([a, 0]).
double two_way_entropy(double a) {
  const double p = std::exp(a) / (std::exp(a) + 1.0), q = 1.0 - p;
  return -(p * std::log(p) + q * std::log(q));
}

}  // namespace

TEST(RouterStats, LoadEntropyAndCollapseTop1) {
  const auto logits = rows({{2, 0}, {2, 0}, {2, 0}, {0, 2}});  // three tokens pick expert 0, one expert 1
  RouterStats s = router_stats({logits}, 1);
  ASSERT_EQ(s.load.size(), 1u);
  EXPECT_NEAR(s.load[0][0], 0.75, 1e-7);
  EXPECT_NEAR(s.load[0][1], 0.25, 1e-7);
  EXPECT_NEAR(s.min_load[0], 0.25, 1e-7);
  EXPECT_NEAR(s.entropy[0], two_way_entropy(2.0), 1e-6);
  EXPECT_EQ(s.dropped_fraction, 0.0);

  // Masking the only token of expert 1 leaves it collapsed: load 0.
  RouterStats masked = router_stats({logits}, 1, torch::tensor({1, 1, 1, 0}));
  EXPECT_NEAR(masked.load[0][0], 1.0, 1e-7);
  EXPECT_EQ(masked.min_load[0], 0.0);
}

TEST(RouterStats, Top2LoadsArePerLayerShares) {
  const auto a = rows({{3, 2, 0}, {3, 0, 2}});  // picks {0,1} and {0,2}
  const auto b = rows({{0, 0, 5}, {0, 0, 5}});  // expert 2 always, plus one of the tied others
  RouterStats s = router_stats({a, b}, 2);
  ASSERT_EQ(s.load.size(), 2u);
  EXPECT_NEAR(s.load[0][0], 0.5, 1e-7);
  EXPECT_NEAR(s.load[0][1], 0.25, 1e-7);
  EXPECT_NEAR(s.load[0][2], 0.25, 1e-7);
  EXPECT_NEAR(s.load[1][2], 0.5, 1e-7);
  EXPECT_NEAR(s.load[1][0] + s.load[1][1], 0.5, 1e-7);
}

TEST(RouterLoss, BalancedRoutingGivesTopKAndZLossIsLogSumExpSquared) {
  const auto uniform = torch::zeros({6, 4});  // P_e = 1/E, so E * sum_e f_e P_e = sum_e f_e = K
  EXPECT_NEAR(load_balancing_loss({uniform, uniform}, 4, 2).item<double>(), 2.0, 1e-6);
  EXPECT_NEAR(router_z_loss({uniform}).item<double>(), std::pow(std::log(4.0), 2), 1e-6);
  // Collapse onto one expert: f = (1, 0), P ~ (1, 0) -> loss ~ E.
  const auto collapsed = rows({{20, 0}, {20, 0}});
  EXPECT_NEAR(load_balancing_loss({collapsed}, 2, 1).item<double>(), 2.0, 1e-6);
}

TEST(RouterLoss, BadShapesNameTheProblem) {
  EXPECT_THROW(load_balancing_loss({}, 2, 1), kdae::Error);
  EXPECT_THROW(router_stats({torch::zeros({3, 2})}, 1, torch::ones({4})), kdae::Error);
  EXPECT_THROW(load_balancing_loss({torch::zeros({3, 2})}, 4, 1), kdae::Error);
}
