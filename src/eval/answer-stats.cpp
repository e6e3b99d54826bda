#include "eval/answer-stats.h"

#include <algorithm>
#include <unordered_set>

namespace kdae::eval {

int64_t longest_run(const std::vector<int64_t>& answer) {
  int64_t best = 0, current = 0;
  for (size_t i = 0; i < answer.size(); ++i) {
    current = (i > 0 && answer[i] == answer[i - 1]) ? current + 1 : 1;
    best = std::max(best, current);
  }
  return best;
}

AnswerStats answer_stats(const std::vector<std::vector<int64_t>>& answers, int64_t run) {
  AnswerStats s;
  double ratio_sum = 0;
  for (const auto& answer : answers) {
    ++s.answers;
    if (answer.empty()) {
      ++s.empty;
      continue;
    }
    if (longest_run(answer) >= run) ++s.with_repeat;
    const std::unordered_set<int64_t> distinct(answer.begin(), answer.end());
    ratio_sum += double(distinct.size()) / double(answer.size());
  }
  s.distinct_ratio = s.answers ? ratio_sum / double(s.answers) : 0.0;
  return s;
}

}  // namespace kdae::eval
