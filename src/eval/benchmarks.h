// The answer-benchmark file formats the field's tools read: FastChat llm_judge (MT-Bench question.jsonl,
// model_answer/NAME.jsonl) and AlpacaEval (a JSON list of {instruction, output, generator, dataset}).
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace kdae::eval {

struct MtBenchQuestion {
  nlohmann::json question_id;           // FastChat uses integers; kept as given
  std::string category;
  std::vector<std::string> turns;       // one or more user turns, answered in one conversation
  std::vector<std::string> reference;   // reference answers per turn (math, reasoning, coding), may be empty
};

// Errors name the file and line.
std::vector<MtBenchQuestion> read_mt_bench_questions(const std::string& path);
// FastChat's sampling temperature per category (0.7 for a category it does not list).
double mt_bench_temperature(const std::string& category);
// Categories whose judging uses the reference answer (FastChat's NEED_REF_CATS).
bool mt_bench_needs_reference(const std::string& category);

// One model_answer line: question_id, answer_id, model_id, choices [{index, turns}], tstamp.
nlohmann::json mt_bench_answer(const nlohmann::json& question_id, const std::string& model_id,
                               const std::vector<std::string>& turns);
// The lines of an answer file (JSON objects with a question_id); empty when it does not exist.
std::vector<nlohmann::json> read_answer_lines(const std::string& path);

struct AlpacaItem {
  std::string instruction, dataset;
};
std::vector<AlpacaItem> read_alpaca_eval(const std::string& path);
// The outputs of a model or reference: JSON list of {instruction, output, generator, dataset};
// empty when the file does not exist.
std::vector<nlohmann::json> read_alpaca_outputs(const std::string& path);

// A JSON array file (AlpacaEval's eval.json and outputs), error naming the file.
nlohmann::json read_json_file(const std::string& path);

}  // namespace kdae::eval
