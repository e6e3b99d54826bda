#include "eval/answering.h"

#include "eval/prompt-file.h"

namespace kdae::eval {

std::vector<nlohmann::json> answer_mt_bench(gen::TextGenerator& generator,
                                            const std::vector<const MtBenchQuestion*>& questions,
                                            const MtBenchAnswerOptions& options) {
  std::vector<std::vector<data::Message>> conversations(questions.size());
  std::vector<std::vector<std::string>> turns(questions.size());
  for (size_t turn = 0;; ++turn) {
    std::vector<size_t> asking;
    std::vector<std::vector<data::Message>> batch;
    std::vector<gen::GenerateOptions> sampling;
    for (size_t i = 0; i < questions.size(); ++i) {
      const MtBenchQuestion& q = *questions[i];
      if (turn >= q.turns.size()) continue;
      conversations[i].push_back({"user", q.turns[turn]});
      asking.push_back(i);
      batch.push_back(conversations[i]);
      gen::GenerateOptions o = options.generate;
      if (!options.fixed_temperature) o.temperature = mt_bench_temperature(q.category);
      sampling.push_back(o);
    }
    if (asking.empty()) break;
    const auto replies = answer_conversations(generator, batch, sampling, options.batch_size, options.on_progress);
    for (size_t k = 0; k < asking.size(); ++k) {
      conversations[asking[k]].push_back({"assistant", replies[k]});
      turns[asking[k]].push_back(replies[k]);
    }
  }
  std::vector<nlohmann::json> lines;
  for (size_t i = 0; i < questions.size(); ++i)
    lines.push_back(mt_bench_answer(questions[i]->question_id, options.model_id, turns[i]));
  return lines;
}

}  // namespace kdae::eval
