// kdae answer: a model's answers to a benchmark's questions, in the format its judge reads
// (FastChat llm_judge for MT-Bench, AlpacaEval's outputs list, or our JSONL prompt files), batched and
// resumable. The formats live in eval/benchmarks.h; this file has the flags and the loop.
#include <algorithm>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>

#include "cli/commands.h"
#include "cli/generation.h"
#include "common/device.h"
#include "common/error.h"
#include "common/files.h"
#include "common/progress.h"
#include "eval/answering.h"
#include "eval/prompt-file.h"

namespace kdae::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct AnswerRun {
  gen::TextGenerator& generator;
  gen::GenerateOptions options;
  bool fixed_temperature;  // --temperature given: it overrides MT-Bench's per-category table
  int64_t batch_size;
  std::string model_id, out;
  Progress& progress;
};

void write_lines(const std::string& path, const std::vector<json>& lines) {
  std::string text;
  for (const auto& l : lines) text += l.dump() + "\n";
  write_file_atomic(path, text);
}

// Questions are answered in groups of batch_size: every turn of a group in one batched pass, then the
// whole file is rewritten atomically, so an interrupted run keeps every finished question.
void answer_mt_bench(AnswerRun& run, const std::vector<eval::MtBenchQuestion>& questions) {
  std::vector<json> lines = eval::read_answer_lines(run.out);
  std::set<std::string> answered;
  for (const auto& l : lines) answered.insert(l["question_id"].dump());
  std::vector<const eval::MtBenchQuestion*> todo;
  for (const auto& q : questions)
    if (!answered.count(q.question_id.dump())) todo.push_back(&q);
  if (todo.size() < questions.size())
    std::cerr << "answer: " << questions.size() - todo.size() << " of " << questions.size()
              << " questions already answered in " << run.out << "\n";
  eval::MtBenchAnswerOptions options{run.options, run.fixed_temperature, run.batch_size, run.model_id,
                                     [&](int64_t, int64_t tokens) { run.progress.advance(0, tokens); }};
  for (size_t start = 0; start < todo.size(); start += static_cast<size_t>(run.batch_size)) {
    const size_t end = std::min(todo.size(), start + static_cast<size_t>(run.batch_size));
    const std::vector<const eval::MtBenchQuestion*> group(todo.begin() + static_cast<std::ptrdiff_t>(start),
                                                          todo.begin() + static_cast<std::ptrdiff_t>(end));
    for (auto& line : eval::answer_mt_bench(run.generator, group, options)) lines.push_back(std::move(line));
    std::sort(lines.begin(), lines.end(),
              [](const json& a, const json& b) { return a["question_id"] < b["question_id"]; });
    write_lines(run.out, lines);
    run.progress.advance(static_cast<int64_t>(end - start), 0);
  }
}

void answer_alpaca_eval(AnswerRun& run, const std::vector<eval::AlpacaItem>& items) {
  std::map<std::string, json> done;
  for (auto& o : eval::read_alpaca_outputs(run.out)) done[o["instruction"].get<std::string>()] = o;
  std::vector<const eval::AlpacaItem*> todo;
  for (const auto& item : items)
    if (!done.count(item.instruction)) todo.push_back(&item);
  auto on_tokens = [&](int64_t, int64_t tokens) { run.progress.advance(0, tokens); };
  for (size_t start = 0; start < todo.size(); start += static_cast<size_t>(run.batch_size)) {
    const size_t end = std::min(todo.size(), start + static_cast<size_t>(run.batch_size));
    std::vector<std::vector<data::Message>> batch;
    for (size_t i = start; i < end; ++i) batch.push_back({{"user", todo[i]->instruction}});
    const std::vector<gen::GenerateOptions> options(batch.size(), run.options);
    const auto replies = eval::answer_conversations(run.generator, batch, options, run.batch_size, on_tokens);
    for (size_t i = start; i < end; ++i)
      done[todo[i]->instruction] = {{"instruction", todo[i]->instruction},
                                    {"output", replies[i - start]},
                                    {"generator", run.model_id},
                                    {"dataset", todo[i]->dataset}};
    json list = json::array();  // in the evaluation set's order
    for (const auto& item : items)
      if (done.count(item.instruction)) list.push_back(done[item.instruction]);
    write_file_atomic(run.out, list.dump(2) + "\n");
    run.progress.advance(static_cast<int64_t>(end - start), 0);
  }
}

void answer_jsonl(AnswerRun& run, const std::vector<eval::PromptItem>& items) {
  const auto answers = eval::answer_items(
      run.generator, items,
      {run.options, run.batch_size, [&](int64_t done, int64_t tokens) { run.progress.advance(done, tokens); }});
  std::vector<json> lines;
  for (size_t i = 0; i < items.size(); ++i) {
    lines.push_back(eval::answered_line(items[i], answers[i]));
  }
  write_lines(run.out, lines);
}

int run_answer(const Args& args) {
  apply_compute_options(args);
  const std::string bench = args.get("bench");
  if (bench != "mt-bench" && bench != "alpaca-eval" && bench != "jsonl")
    usage_fail("--bench must be mt-bench, alpaca-eval or jsonl, got '", bench, "'");
  if (args.get_int("batch-size") < 1) usage_fail("--batch-size must be >= 1");
  const std::string questions = args.get("questions"), out = args.get("out");
  // Read the questions before loading the model: a bad file fails in a moment.
  std::vector<eval::MtBenchQuestion> mt;
  std::vector<eval::AlpacaItem> alpaca;
  std::vector<eval::PromptItem> prompts;
  if (bench == "mt-bench") mt = eval::read_mt_bench_questions(questions);
  else if (bench == "alpaca-eval") alpaca = eval::read_alpaca_eval(questions);
  else prompts = eval::read_prompt_file(questions, /*chat=*/true);
  const size_t total = mt.size() + alpaca.size() + prompts.size();

  gen::TextGenerator generator(args.get("model"), args.get("template"), parse_device(args.get("device")),
                               parse_dtype(args.get("dtype")));
  if (fs::path(out).has_parent_path()) fs::create_directories(fs::path(out).parent_path());
  Progress progress({.label = "answer", .total = static_cast<int64_t>(total), .rate_unit = "tok"});
  AnswerRun run{generator,
                generate_options_from(args),
                args.has("temperature"),
                args.get_int("batch-size"),
                args.maybe("model-id").value_or(fs::path(args.get("model")).filename().string()),
                out,
                progress};
  if (bench == "mt-bench") answer_mt_bench(run, mt);
  else if (bench == "alpaca-eval") answer_alpaca_eval(run, alpaca);
  else answer_jsonl(run, prompts);
  progress.finish();
  std::cerr << "answer: " << out << "\n";
  return 0;
}

}  // namespace

Command answer_command() {
  std::vector<Option> options = {
      {"model", "DIR", "HF model directory with tokenizer files", "", false, true},
      {"bench", "NAME", "mt-bench (FastChat question.jsonl), alpaca-eval (eval.json) or jsonl (prompt/messages lines)",
       "", false, true},
      {"questions", "FILE", "the questions, in the bench's format", "", false, true},
      {"out", "FILE", "answers: model_answer/NAME.jsonl (mt-bench), outputs.json (alpaca-eval) or JSONL (jsonl)", "",
       false, true},
      {"model-id", "NAME", "model_id / generator written into the answers (default: the model directory's name)"},
      {"batch-size", "N", "questions decoded together (continuous batching)", "8"},
  };
  for (auto o : generation_options()) {
    if (o.name == "max-new-tokens") o.default_value = "1024";  // FastChat's answer budget
    if (o.name == "temperature")
      o.help = "sampling temperature (mt-bench: default per category as FastChat, this overrides it)";
    options.push_back(o);
  }
  for (auto& o : device_options()) options.push_back(o);
  for (auto& o : compute_options()) options.push_back(o);
  return {"answer", "answer benchmark questions (MT-Bench, AlpacaEval, JSONL) in the judges' formats",
          "Resumable: mt-bench and alpaca-eval skip questions already answered in --out, which is rewritten\n"
          "atomically after every batch. MT-Bench questions are answered turn by turn in one conversation.\n"
          "See docs/evaluation.md.",
          options, run_answer};
}

}  // namespace kdae::cli
