// The owner plan shared by optimizer and gradient sharding: contiguous runs of the parameter list
// (so each gradient bucket has one owner), every rank's share within one tensor of 1/N of the total.
#include <gtest/gtest.h>

#include <algorithm>

#include "train/sharded-optimizer.h"

namespace kdae::train {
namespace {

NamedTensors params_of(const std::vector<int64_t>& numels) {
  NamedTensors out;
  for (size_t i = 0; i < numels.size(); ++i) out.emplace_back("p" + std::to_string(i), torch::zeros({numels[i]}));
  return out;
}

void expect_balanced_runs(const std::vector<int64_t>& numels, int ranks) {
  const auto owner = plan_owners(params_of(numels), ranks);
  ASSERT_EQ(owner.size(), numels.size());
  std::vector<int64_t> load(ranks, 0);
  for (size_t i = 0; i < owner.size(); ++i) {
    ASSERT_GE(owner[i], 0);
    ASSERT_LT(owner[i], ranks);
    if (i > 0) EXPECT_GE(owner[i], owner[i - 1]) << "owners must form contiguous runs";
    load[owner[i]] += numels[i];
  }
  int64_t total = 0;
  for (int64_t n : numels) total += n;
  const int64_t largest = *std::max_element(numels.begin(), numels.end());
  for (int r = 0; r < ranks; ++r)
    EXPECT_LE(std::abs(static_cast<double>(load[r]) - static_cast<double>(total) / ranks), static_cast<double>(largest))
        << "rank " << r;
}

TEST(ShardPlan, ContiguousAndBalancedWithinOneTensor) {
  expect_balanced_runs({4096, 64, 64, 1024, 1024, 64, 1024, 1024, 64, 4096}, 2);
  expect_balanced_runs({4096, 64, 64, 1024, 1024, 64, 1024, 1024, 64, 4096}, 3);
  std::vector<int64_t> layers;
  for (int i = 0; i < 40; ++i) layers.push_back(i % 4 == 0 ? 16 : 1000 + 7 * i);
  for (int ranks : {1, 2, 4, 8}) expect_balanced_runs(layers, ranks);
}

TEST(ShardPlan, OneRankOwnsEverything) {
  for (int o : plan_owners(params_of({3, 5, 7}), 1)) EXPECT_EQ(o, 0);
}

TEST(ShardPlan, SameSizesSplitEvenly) {
  const auto owner = plan_owners(params_of(std::vector<int64_t>(8, 100)), 4);
  EXPECT_EQ(owner, (std::vector<int>{0, 0, 1, 1, 2, 2, 3, 3}));
}

}  // namespace
}  // namespace kdae::train
