// Degeneracy figures of a model's generated answers, as token ids: the collapse a broken or
// under-trained student shows (one token over and over, a tiny vocabulary, nothing at all) in
// numbers a report can compare across models.
#pragma once
#include <cstdint>
#include <vector>

namespace kdae::eval {

struct AnswerStats {
  int64_t answers = 0;
  int64_t with_repeat = 0;      // answers holding one token `run` or more times in a row
  int64_t empty = 0;            // answers with no token (the model ended its turn at once)
  double distinct_ratio = 0;    // mean over answers of distinct tokens / tokens (an empty answer counts 0)
  double repeat_share() const { return answers ? double(with_repeat) / double(answers) : 0.0; }
};

// The longest run of one token in `answer`.
int64_t longest_run(const std::vector<int64_t>& answer);

AnswerStats answer_stats(const std::vector<std::vector<int64_t>>& answers, int64_t run = 4);

}  // namespace kdae::eval
