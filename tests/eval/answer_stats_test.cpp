#include "eval/answer-stats.h"

#include <gtest/gtest.h>

using namespace kdae::eval;

TEST(AnswerStats, LongestRunCountsConsecutiveEqualTokensOnly) {
  EXPECT_EQ(longest_run({}), 0);
  EXPECT_EQ(longest_run({7}), 1);
  EXPECT_EQ(longest_run({1, 2, 1, 2, 1, 2}), 1);  // alternation is not a run
  EXPECT_EQ(longest_run({5, 3, 3, 3, 4, 3, 3}), 3);
  EXPECT_EQ(longest_run({9, 9, 9, 9, 9}), 5);
}

TEST(AnswerStats, SharesAndRatiosOverAllAnswers) {
  // A fluent answer, a 4-token run, a 3-token run (below the threshold) and an empty answer.
  const std::vector<std::vector<int64_t>> answers = {{1, 2, 3, 4}, {8, 8, 8, 8, 2}, {5, 5, 5, 6}, {}};
  const auto s = answer_stats(answers, 4);
  EXPECT_EQ(s.answers, 4);
  EXPECT_EQ(s.with_repeat, 1);
  EXPECT_EQ(s.empty, 1);
  EXPECT_DOUBLE_EQ(s.repeat_share(), 0.25);
  // distinct / tokens: 4/4, 2/5, 2/4 and 0 for the empty answer.
  EXPECT_DOUBLE_EQ(s.distinct_ratio, (1.0 + 0.4 + 0.5 + 0.0) / 4.0);
  EXPECT_EQ(answer_stats(answers, 3).with_repeat, 2);
}

TEST(AnswerStats, NoAnswersGiveZeroes) {
  const auto s = answer_stats({}, 4);
  EXPECT_EQ(s.answers, 0);
  EXPECT_EQ(s.repeat_share(), 0.0);
  EXPECT_EQ(s.distinct_ratio, 0.0);
}
