// LLM-as-a-judge, as FastChat's llm_judge and AlpacaEval do it: MT-Bench single-answer grading (the
// "[[rating]]" protocol, with reference answers for math, reasoning and coding) and pairwise preference
// against reference outputs (win rate with its standard error). The judge itself is a JudgeBackend
// (eval/judge-backends.h): a kdae model or any OpenAI-compatible endpoint.
#pragma once
#include <nlohmann/json.hpp>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "data/chat-template.h"
#include "eval/benchmarks.h"

namespace kdae::eval {

// One entry of FastChat's judge_prompts.jsonl.
struct JudgePrompt {
  std::string name, type;  // type: "single" or "pairwise"
  std::string system_prompt, prompt_template;
  std::string output_format;  // "[[rating]]" or "[[A]]"
};
using JudgePrompts = std::map<std::string, JudgePrompt>;

// kdae's own prompts under FastChat's names (single-v1, single-math-v1, their -multi-turn forms,
// pair-v2) and placeholders, so a user's judge_prompts.jsonl replaces them one for one.
JudgePrompts builtin_judge_prompts();
JudgePrompts read_judge_prompts(const std::string& path);

// Python str.format for named fields ({question}, {{ and }} for braces); an unknown field is an error.
std::string fill_template(const std::string& text, const std::map<std::string, std::string>& values);

// "[[8]]" (else "[8]") -> 8; nullopt when the judgment holds no rating.
std::optional<double> parse_rating(const std::string& judgment);
// "[[A]]", "[[B]]", "[[C]]" (tie).
enum class Verdict { a, b, tie, error };
Verdict parse_verdict(const std::string& judgment);

class JudgeBackend {
 public:
  virtual ~JudgeBackend() = default;
  virtual std::string name() const = 0;
  // Greedy replies to every conversation, in order.
  virtual std::vector<std::string> complete(const std::vector<std::vector<data::Message>>& conversations) = 0;
};

// ---- MT-Bench single-answer grading ----
struct SingleJudgment {
  nlohmann::json question_id;
  std::string model, category, prompt_name, user_prompt, judgment;
  int turn = 1;
  std::optional<double> score;  // nullopt: the judge gave no parsable rating (never counted as a score)
};
// answers: model name -> question_id (dumped) -> answer line.
using ModelAnswers = std::map<std::string, std::map<std::string, nlohmann::json>>;
std::vector<SingleJudgment> grade_mt_bench(JudgeBackend& judge, const JudgePrompts& prompts,
                                           const std::vector<MtBenchQuestion>& questions, const ModelAnswers& answers);
// FastChat's judgment line: {question_id, model, judge: [judge, prompt], user_prompt, judgment, score (-1 when
// unparsable, which FastChat's show_result skips), turn, tstamp}.
nlohmann::json judgment_line(const SingleJudgment& j, const std::string& judge_name);

struct ScoreCell {
  double sum = 0;
  int64_t scored = 0, unparsable = 0;
  std::optional<double> mean() const { return scored ? std::optional<double>(sum / scored) : std::nullopt; }
};
struct MtBenchSummary {
  std::map<std::string, std::map<std::string, ScoreCell>> cells;  // model -> "turn 1" / "turn 2" / "overall" / category
  std::string table() const;
  nlohmann::json to_json() const;
};
MtBenchSummary summarize(const std::vector<SingleJudgment>& judgments);

// ---- Pairwise preference (AlpacaEval style) ----
struct PairJudgment {
  std::string instruction, model, reference;
  bool swapped = false;  // the reference was shown as answer A (order drawn per item against position bias)
  std::string winner;    // "model", "reference", "tie" or "error"
  std::string user_prompt, judgment;
};
std::vector<PairJudgment> grade_pairwise(JudgeBackend& judge, const JudgePrompt& prompt,
                                         const std::vector<nlohmann::json>& outputs,
                                         const std::vector<nlohmann::json>& reference, uint64_t seed);

struct WinRate {
  double win_rate = 0, standard_error = 0;  // percent; a tie counts half
  int64_t wins = 0, losses = 0, ties = 0, errors = 0;
  double model_length = 0, reference_length = 0;  // mean characters of the judged outputs
  std::string table(const std::string& model) const;
  nlohmann::json to_json() const;
};
WinRate win_rate(const std::vector<PairJudgment>& judgments, const std::vector<nlohmann::json>& outputs,
                 const std::vector<nlohmann::json>& reference);

}  // namespace kdae::eval
