// kdae judge: LLM-as-a-judge over answer files (eval/judge.h), flags only.
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "cli/commands.h"
#include "common/device.h"
#include "common/error.h"
#include "common/files.h"
#include "eval/judge-backends.h"

namespace kdae::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::unique_ptr<eval::JudgeBackend> make_judge(const Args& args) {
  const int64_t max_tokens = args.get_int("judge-max-tokens");
  if (max_tokens < 1) usage_fail("--judge-max-tokens must be >= 1");
  if (!args.has("judge-url")) {
    return eval::local_judge({args.get("judge-model"), args.get("template"), parse_device(args.get("device")),
                              parse_dtype(args.get("dtype")), max_tokens, args.get_int("batch-size")});
  }
  const char* key = std::getenv(args.get("judge-api-key-env").c_str());
  return eval::endpoint_judge(
      {args.get("judge-url"), args.get("judge-model"), key ? key : "", max_tokens, args.get_int("parallel")});
}

eval::JudgePrompts judge_prompts(const Args& args) {
  return args.has("judge-prompts") ? eval::read_judge_prompts(args.get("judge-prompts")) : eval::builtin_judge_prompts();
}

void write_lines(const std::string& path, const std::vector<json>& lines) {
  std::string text;
  for (const auto& l : lines) text += l.dump() + "\n";
  if (fs::path(path).has_parent_path()) fs::create_directories(fs::path(path).parent_path());
  write_file_atomic(path, text);
}

// FastChat names a model by its answer file's name (model_answer/NAME.jsonl).
int judge_mt_bench(const Args& args) {
  const auto questions = eval::read_mt_bench_questions(args.get("questions"));
  eval::ModelAnswers answers;
  for (const auto& path : args.all("answers")) {
    auto& by_question = answers[fs::path(path).stem().string()];
    for (auto& line : eval::read_answer_lines(path)) {
      if (!line.contains("choices") || !line["choices"].is_array() || line["choices"].empty() ||
          !line["choices"][0].contains("turns") || !line["choices"][0]["turns"].is_array())
        fail(path, ": question ", line["question_id"].dump(), " has no choices[0].turns");
      by_question[line["question_id"].dump()] = line;
    }
    if (by_question.empty()) fail(path, ": no answers");
  }
  const auto prompts = judge_prompts(args);
  auto judge = make_judge(args);
  const auto judgments = eval::grade_mt_bench(*judge, prompts, questions, answers);
  std::vector<json> lines;
  for (const auto& j : judgments) lines.push_back(eval::judgment_line(j, judge->name()));
  write_lines(args.get("out"), lines);
  const eval::MtBenchSummary summary = eval::summarize(judgments);
  std::cout << "MT-Bench-style single-answer grading by " << judge->name() << " (" << judgments.size()
            << " judgments; unparsable ones are counted, never scored)\n"
            << summary.table();
  if (args.has("summary")) write_file_atomic(args.get("summary"), summary.to_json().dump(2) + "\n");
  return 0;
}

int judge_alpaca_eval(const Args& args) {
  const auto files = args.all("answers");
  if (files.size() != 1) usage_fail("--bench alpaca-eval takes one --answers file");
  const auto outputs = eval::read_alpaca_outputs(files[0]);
  const auto reference = eval::read_alpaca_outputs(args.get("reference"));
  if (outputs.empty()) fail(files[0], ": no outputs");
  if (reference.empty()) fail(args.get("reference"), ": no outputs");
  const auto prompts = judge_prompts(args);
  auto prompt = prompts.find("pair-v2");
  if (prompt == prompts.end()) fail("the judge prompts have no 'pair-v2'");
  auto judge = make_judge(args);
  const auto judgments =
      eval::grade_pairwise(*judge, prompt->second, outputs, reference, static_cast<uint64_t>(args.get_int("seed")));
  std::vector<json> lines;
  for (const auto& j : judgments)
    lines.push_back({{"instruction", j.instruction}, {"model", j.model}, {"reference", j.reference},
                     {"swapped", j.swapped}, {"winner", j.winner}, {"judge", judge->name()},
                     {"user_prompt", j.user_prompt}, {"judgment", j.judgment}});
  write_lines(args.get("out"), lines);
  const eval::WinRate w = eval::win_rate(judgments, outputs, reference);
  std::cout << "pairwise preference against " << args.get("reference") << " by " << judge->name()
            << " (a tie counts half; unparsable verdicts are counted, never scored)\n"
            << w.table(judgments.front().model);
  if (args.has("summary")) write_file_atomic(args.get("summary"), w.to_json().dump(2) + "\n");
  return 0;
}

int run_judge(const Args& args) {
  apply_compute_options(args);
  const std::string bench = args.get("bench");
  if (args.all("answers").empty()) usage_fail("--answers is required");
  if (bench == "mt-bench") return judge_mt_bench(args);
  if (bench == "alpaca-eval") return judge_alpaca_eval(args);
  usage_fail("--bench must be mt-bench or alpaca-eval, got '", bench, "'");
}

}  // namespace

Command judge_command() {
  std::vector<Option> options = {
      {"bench", "NAME", "mt-bench (single-answer grading) or alpaca-eval (pairwise against --reference)", "", false,
       true},
      {"questions", "FILE", "mt-bench: FastChat question.jsonl (with reference answers where given)"},
      {"answers", "FILE", "mt-bench: model_answer/NAME.jsonl files (NAME = the model); alpaca-eval: outputs.json",
       "", true, false, true},
      {"reference", "FILE", "alpaca-eval: the reference outputs.json to compare against"},
      {"out", "FILE", "judgments, JSONL (FastChat's model_judgment format for mt-bench)", "", false, true},
      {"summary", "FILE", "also write the table's figures as JSON"},
      {"judge-model", "DIR|NAME", "a kdae model directory, or with --judge-url the endpoint's model name", "", false,
       true},
      {"judge-url", "URL", "an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (kdae serve, vLLM)"},
      {"judge-api-key-env", "VAR", "environment variable holding the endpoint's API key", "OPENAI_API_KEY"},
      {"judge-prompts", "FILE", "FastChat judge_prompts.jsonl (default: kdae's own prompts under FastChat's names)"},
      {"judge-max-tokens", "N", "tokens per judgment", "512"},
      {"template", "NAME", "local judge: chat template (auto = detect)", "auto"},
      {"batch-size", "N", "local judge: judgments decoded together", "8"},
      {"parallel", "N", "endpoint judge: requests in flight", "8"},
      {"seed", "N", "alpaca-eval: seed of the per-item answer order (A/B) drawn against position bias", "0"},
  };
  for (auto& o : device_options()) options.push_back(o);
  for (auto& o : compute_options()) options.push_back(o);
  return {"judge", "grade answers with a judge model (MT-Bench single grading, AlpacaEval-style win rate)",
          "The judge answers with temperature 0. A judgment without a parsable rating or verdict is written with\n"
          "score -1 (as FastChat does), counted in the table's 'unparsable' column and never averaged. See\n"
          "docs/evaluation.md.",
          options, run_judge};
}

}  // namespace kdae::cli
