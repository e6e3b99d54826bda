// A model's answers to MT-Bench-format questions: every turn in one conversation, all questions of a
// call batched turn by turn. Shared by `kdae answer` and `kdae demo`.
#pragma once
#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

#include "eval/benchmarks.h"
#include "generate/text-generator.h"

namespace kdae::eval {

struct MtBenchAnswerOptions {
  gen::GenerateOptions generate;
  bool fixed_temperature = false;  // true: generate.temperature for all; false: FastChat's per-category table
  int64_t batch_size = 8;
  std::string model_id;
  std::function<void(int64_t done, int64_t tokens)> on_progress;
};

// One model_answer line per question, in order.
std::vector<nlohmann::json> answer_mt_bench(gen::TextGenerator& generator,
                                            const std::vector<const MtBenchQuestion*>& questions,
                                            const MtBenchAnswerOptions& options);

}  // namespace kdae::eval
