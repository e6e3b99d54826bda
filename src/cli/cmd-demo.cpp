// kdae demo: the README's main job. From a real teacher it builds a depth-pruned student (the layers
// that matter least removed), distills it (KD, from a teacher cache computed once) and, as the
// baseline, fine-tunes the same student on the same answers with CE only (SFT); then it compares
// teacher, initial, SFT and KD students on held-out data and on their own greedy answers.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/generation.h"
#include "generate/text-generator.h"
#include "cli/pruning.h"
#include "cli/run-config.h"
#include "common/error.h"
#include "common/files.h"
#include "common/threads.h"
#include "data/dataset.h"
#include "eval/answer-stats.h"
#include "eval/answering.h"
#include "eval/judge-backends.h"
#include "eval/prompt-file.h"
#include "io/hf-model.h"
#include "tokenizer/tokenizer.h"
#include "train/teacher-cache-writer.h"
#include "train/trainer.h"

namespace kdae::cli {
namespace {
namespace fs = std::filesystem;

struct DemoRow {
  std::string name;
  fs::path model;
  double ce = 0, perplexity = 0, kl = 0;
  std::vector<std::string> answers;
  eval::AnswerStats stats;
  std::string judge_name;                // its answer file's name when it is judged; "" = not judged
  std::vector<nlohmann::json> mt_answers;
  eval::ScoreCell judged;
};

// Seconds per phase, for the report's last line.
class PhaseClock {
 public:
  void lap(const std::string& phase) {
    const auto now = std::chrono::steady_clock::now();
    laps_.emplace_back(phase, std::chrono::duration<double>(now - last_).count());
    last_ = now;
  }
  double total() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }
  const std::vector<std::pair<std::string, double>>& laps() const { return laps_; }

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now(), last_ = start_;
  std::vector<std::pair<std::string, double>> laps_;
};

fs::path make_student(const Args& args, const fs::path& out, std::vector<int64_t>* kept) {
  const fs::path teacher = args.get("teacher"), dir = out / "student-init";
  auto model = io::load_model(teacher);
  model->eval();
  const auto tokenizer = tok::Tokenizer::load(teacher);
  PruneSpec spec = prune_spec_from(args);
  spec.data = (fs::path(args.get("data")) / "train.jsonl").string();
  spec.chat_template = args.get("template");
  spec.seq_length = args.get_int("seq-length");
  const auto choice = choose_layers(model, *tokenizer, spec);
  *kept = choice.kept;
  save_pruned(model, teacher.string(), spec, choice, dir.string(), true);
  std::cerr << "demo: student (" << kept->size() << " of " << model->config().num_layers << " layers) -> " << dir.string()
            << "\n";
  return dir;
}

train::DistillOptions run_options(const Args& args, const fs::path& student, const fs::path& out_dir, double lambda) {
  const fs::path data = args.get("data");
  train::DistillOptions o;
  o.base_model_path = student.string();
  o.target_model_path = args.get("teacher");
  o.training_data_path = (data / "train.jsonl").string();
  o.output_dir = out_dir.string();
  o.overwrite = true;
  o.chat_template = args.get("template") == "auto" ? "" : args.get("template");
  o.seq_length = args.get_int("seq-length");
  o.learning_rate = args.get_double("learning-rate");
  o.train_batch_size = args.get_int("batch-size");
  o.eval_batch_size = args.get_int("batch-size");
  o.num_train_epochs = args.get_double("epochs");
  o.max_steps = args.get_int("max-steps");
  o.warmup_ratio = 0.1;
  o.weight_decay = 0.0;
  o.lambda_param = lambda;
  o.attn_weight = 0.0;
  o.logging_steps = 5;
  o.save_fraction_of_epoch = 0;
  o.save_total_limit = 1;
  o.device = "cpu";
  o.teacher_device = "cpu";
  o.teacher_dtype = "float32";
  o.threads = args.get_int("threads");
  o.random_seed = args.get_int("seed");
  train::validate_distill_options(o, train::RunKind::distill);
  return o;
}

// The teacher's top-k signal over the training data, computed once; the KD run reads it every epoch.
void write_cache(const train::DistillOptions& kd, const fs::path& dir) {
  remove_tree(dir);  // the demo owns it; a cache of another teacher or data must not be resumed
  const auto tokenizer = tok::Tokenizer::load(kd.target_model_path);
  const auto dopts = train::dataset_options(kd);
  const auto dataset = data::load_dataset(kd.training_data_path, *tokenizer, dopts);
  const auto key = train::cache_key_for(*tokenizer, dataset, dopts.chat_template, dopts.seq_length);
  auto teacher = io::load_model(kd.target_model_path);
  teacher->eval();
  const auto summary = train::write_teacher_cache(dir, dataset, key, teacher, kd.target_model_path, tokenizer->special().padding(),
                                                  torch::kCPU, train::TeacherCaptureOptions{});
  std::cerr << "demo: teacher cache " << dir.string() << ": " << train::describe(summary);
}

void measure(DemoRow& row, const train::DistillOptions& base, const fs::path& heldout) {
  train::DistillOptions o = base;
  o.base_model_path = row.model.string();
  o.eval_data_path = heldout.string();
  o.teacher_cache.clear();  // held-out KL needs the live teacher
  for (const auto& [key, value] : train::evaluate_student(o, train::RunKind::distill)) {
    if (key == "eval/ce_loss") row.ce = value;
    if (key == "eval/perplexity") row.perplexity = value;
    if (key == "eval/kl") row.kl = value;
  }
}

// The first n held-out user prompts, for the answers.
std::vector<std::string> heldout_prompts(const fs::path& heldout, int64_t n) {
  std::ifstream in(heldout);
  if (!in) fail(heldout.string(), ": cannot open");
  std::vector<std::string> prompts;
  std::string line;
  for (int64_t number = 1; static_cast<int64_t>(prompts.size()) < n && std::getline(in, line); ++number) {
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("messages") || !j["messages"].is_array() || j["messages"].empty() ||
        !j["messages"][0].contains("content") || !j["messages"][0]["content"].is_string())
      fail(heldout.string(), ":", number, ": expected a {\"messages\": [{\"role\": \"user\", \"content\": ...}, ...]} line");
    prompts.push_back(j["messages"][0]["content"].get<std::string>());
  }
  if (prompts.empty()) fail(heldout.string(), ": no held-out prompts");
  return prompts;
}

// Greedy answers to the held-out prompts, and (judged rows) to the bundled questions, both batched.
void answer(DemoRow& row, const std::vector<std::string>& prompts, const std::vector<eval::MtBenchQuestion>& questions,
            const Args& args) {
  gen::TextGenerator generator(row.model.string(), args.get("template"), torch::kCPU, torch::kFloat32);
  gen::GenerateOptions greedy;
  greedy.max_new_tokens = args.get_int("answer-tokens");
  std::vector<std::vector<data::Message>> conversations;
  for (const auto& prompt : prompts) conversations.push_back({{"user", prompt}});
  const auto completions = eval::complete_conversations(
      generator, conversations, std::vector<gen::GenerateOptions>(prompts.size(), greedy), 8);
  std::vector<std::vector<int64_t>> ids;
  for (const auto& c : completions) {
    row.answers.push_back(gen::decode_text(generator.tokenizer(), c.tokens));
    ids.push_back(c.tokens);
  }
  row.stats = eval::answer_stats(ids, 4);
  if (row.judge_name.empty() || questions.empty()) return;
  std::vector<const eval::MtBenchQuestion*> asked;
  for (const auto& q : questions) asked.push_back(&q);
  row.mt_answers = eval::answer_mt_bench(generator, asked, {greedy, /*fixed_temperature=*/true, 8, row.judge_name, {}});
}

// The teacher grades the judged rows' answers to the bundled questions (MT-Bench protocol). Answers and
// judgments are written in FastChat's layout, so a stronger judge can grade them again.
void judge(std::vector<DemoRow>& rows, const std::vector<eval::MtBenchQuestion>& questions, const Args& args,
           const fs::path& out) {
  eval::ModelAnswers answers;
  for (const auto& row : rows) {
    if (row.judge_name.empty()) continue;
    std::string lines;
    for (const auto& a : row.mt_answers) {
      answers[row.judge_name][a["question_id"].dump()] = a;
      lines += a.dump() + "\n";
    }
    fs::create_directories(out / "model_answer");
    write_file_atomic(out / "model_answer" / (row.judge_name + ".jsonl"), lines);
  }
  auto teacher = eval::local_judge({args.get("teacher"), args.get("template"), torch::kCPU, torch::kFloat32,
                                    args.get_int("judge-tokens"), 8});
  const auto judgments = eval::grade_mt_bench(*teacher, eval::builtin_judge_prompts(), questions, answers);
  std::string lines;
  for (const auto& j : judgments) lines += eval::judgment_line(j, "teacher").dump() + "\n";
  write_file_atomic(out / "judgment.jsonl", lines);
  const auto summary = eval::summarize(judgments);
  for (auto& row : rows)
    if (auto it = summary.cells.find(row.judge_name); it != summary.cells.end()) row.judged = it->second.at("overall");
}

// An answer as markdown quote lines (answers hold newlines).
std::string quoted(const std::string& text) {
  if (text.empty()) return "> (empty: the model ended its turn at once)\n";
  std::string out = "> ";
  for (char c : text) out += c == '\n' ? std::string("\n> ") : std::string(1, c);
  return out + "\n";
}

std::string report(const std::vector<DemoRow>& rows, const std::vector<std::string>& prompts, const std::string& setup,
                   const PhaseClock& clock, int64_t shown, int64_t answer_tokens) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(3);
  s << "# kdae demo report\n\n" << setup << "\n\n";
  s << "| model | held-out CE | perplexity | KL to teacher | answers with a 4+ token run | distinct-token ratio |\n"
    << "|---|---|---|---|---|---|\n";
  for (const auto& r : rows)
    s << "| " << r.name << " | " << r.ce << " | " << r.perplexity << " | " << r.kl << " | " << r.stats.with_repeat
      << " / " << r.stats.answers << " | " << r.stats.distinct_ratio << " |\n";
  if (std::any_of(rows.begin(), rows.end(), [](const DemoRow& r) { return !r.judge_name.empty(); })) {
    s << "\nJudged by the teacher on the bundled questions (data/eval/questions.jsonl, MT-Bench format, not MT-Bench;"
         " single-answer grading, 1-10). The teacher is a weak judge: a judgment without a parsable rating is counted"
         " as unparsable, never scored.\n\n| model | judged score | scored | unparsable |\n|---|---|---|---|\n";
    for (const auto& r : rows) {
      if (r.judge_name.empty()) continue;
      s << "| " << r.name << " | ";
      if (r.judged.mean()) s << std::setprecision(2) << *r.judged.mean() << std::setprecision(3);
      else s << "-";
      s << " | " << r.judged.scored << " | " << r.judged.unparsable << " |\n";
    }
  }
  s << "\nAnswers: greedy, at most " << answer_tokens << " tokens, to the first " << prompts.size()
    << " held-out prompts (the last two columns count them all; an empty answer counts as distinct-token ratio 0).\n";
  for (int64_t p = 0; p < std::min<int64_t>(shown, static_cast<int64_t>(prompts.size())); ++p) {
    s << "\n### Prompt " << p + 1 << ": " << prompts[p] << "\n";
    for (const auto& r : rows) s << "\n**" << r.name << "**:\n" << quoted(r.answers[p]);
  }
  s << "\nTotal time: " << std::setprecision(0) << clock.total() << " s (";
  for (size_t i = 0; i < clock.laps().size(); ++i)
    s << (i ? ", " : "") << clock.laps()[i].first << " " << clock.laps()[i].second << " s";
  s << ")\n";
  return s.str();
}

nlohmann::json report_json(const std::vector<DemoRow>& rows, const std::vector<int64_t>& kept, double seconds) {
  nlohmann::json j = {{"student_layers", kept}, {"seconds", seconds}};
  for (const auto& r : rows)
    j["rows"].push_back({{"name", r.name}, {"ce", r.ce}, {"perplexity", r.perplexity}, {"kl", r.kl},
                         {"answers", r.stats.answers}, {"with_repeat", r.stats.with_repeat}, {"empty", r.stats.empty},
                         {"distinct_ratio", r.stats.distinct_ratio}, {"sample_answers", r.answers},
                         {"judged", r.judge_name.empty() ? nlohmann::json(nullptr)
                                                         : nlohmann::json{{"mean", r.judged.mean() ? nlohmann::json(*r.judged.mean())
                                                                                                   : nlohmann::json(nullptr)},
                                                                          {"scored", r.judged.scored},
                                                                          {"unparsable", r.judged.unparsable}}}});
  return j;
}

std::string setup_line(const Args& args, const std::vector<int64_t>& kept, bool cached) {
  std::ostringstream s;
  s << "Teacher " << args.get("teacher") << "; student = teacher layers";
  for (auto l : kept) s << " " << l;
  s << " (" << kept.size() << " layers, --prune " << args.get("prune") << "); data " << args.get("data") << "; "
    << (args.get_int("max-steps") > 0 ? args.get("max-steps") + " steps" : args.get("epochs") + " epoch(s)")
    << " of " << args.get("batch-size") << " sequences, lr " << args.get("learning-rate") << ", seq "
    << args.get("seq-length") << "; KD teacher signal " << (cached ? "from a top-64 teacher cache" : "live")
    << ". KL = forward KL(teacher || model) per supervised token on the held-out answers.";
  return s.str();
}

int run_demo(const Args& args) {
  PhaseClock clock;
  set_threads(static_cast<int>(args.get_int("threads")));
  const fs::path teacher = args.get("teacher"), out = args.get("out");
  const std::string cache_mode = args.get("teacher-cache");
  if (cache_mode != "on" && cache_mode != "off") usage_fail("--teacher-cache must be on or off, got ", cache_mode);
  const double on_policy = args.get_double("on-policy");
  if (!(on_policy >= 0 && on_policy <= 1)) usage_fail("--on-policy must be in [0, 1], got ", on_policy);
  if (on_policy > 0 && cache_mode == "on")
    usage_fail("--on-policy needs the live teacher (a teacher cache cannot score the student's answers): use --teacher-cache off");
  if (args.get_int("answers") < 1 || args.get_int("answer-tokens") < 1) usage_fail("--answers and --answer-tokens must be >= 1");
  fs::create_directories(out);
  // A re-run replaces the earlier run's outputs; judgments of other students must not linger.
  remove_tree(out / "model_answer");
  remove_tree(out / "judgment.jsonl");
  std::vector<int64_t> kept;
  const fs::path student = make_student(args, out, &kept);
  clock.lap("pruning");
  auto kd = run_options(args, student, out / "kd", 1.0);
  kd.on_policy_fraction = args.get_double("on-policy");
  kd.max_new_tokens = args.get_int("answer-tokens");
  const auto sft = run_options(args, student, out / "sft", 0.0);
  if (cache_mode == "on") {
    write_cache(kd, out / "teacher-cache");
    kd.teacher_cache = (out / "teacher-cache").string();
    clock.lap("teacher cache");
  }
  std::cerr << "demo: knowledge distillation (lambda = 1, forward KL to the teacher"
            << (on_policy > 0 ? ", " + std::to_string(on_policy).substr(0, 4) + " of micro-batches on-policy" : std::string()) << ")\n";
  train::run_training(kd, train::RunKind::distill, config_hash(kd));
  clock.lap("KD");
  std::cerr << "demo: baseline SFT (lambda = 0, cross-entropy on the same answers)\n";
  train::run_training(sft, train::RunKind::distill, config_hash(sft));
  clock.lap("SFT");
  std::cerr << "demo: held-out evaluation\n";
  std::vector<DemoRow> rows = {{"teacher", teacher}, {"initial (pruned)", student}, {"SFT", out / "sft" / "model"},
                               {"KD", out / "kd" / "model"}};
  rows[0].judge_name = "teacher", rows[2].judge_name = "sft", rows[3].judge_name = "kd";
  const fs::path heldout = fs::path(args.get("data")) / "heldout.jsonl";
  for (auto& row : rows) measure(row, kd, heldout);
  clock.lap("evaluation");
  std::cerr << "demo: answers to held-out prompts\n";
  const auto prompts = heldout_prompts(heldout, args.get_int("answers"));
  std::vector<eval::MtBenchQuestion> questions;
  if (args.has("questions")) questions = eval::read_mt_bench_questions(args.get("questions"));
  for (auto& row : rows) answer(row, prompts, questions, args);
  clock.lap("answers");
  if (!questions.empty()) {
    std::cerr << "demo: the teacher judges teacher, SFT and KD answers to " << args.get("questions") << "\n";
    judge(rows, questions, args, out);
    clock.lap("judging");
  } else {
    for (auto& row : rows) row.judge_name.clear();
  }
  const std::string text = report(rows, prompts, setup_line(args, kept, cache_mode == "on"), clock,
                                  args.get_int("show"), args.get_int("answer-tokens"));
  write_file_atomic(out / "report.md", text);
  write_file_atomic(out / "report.json", report_json(rows, kept, clock.total()).dump(2) + "\n");
  std::cout << text;
  if (rows[3].kl >= rows[2].kl) std::cerr << "demo: warning: the KD student did not beat SFT on held-out KL\n";
  return 0;
}

}  // namespace

Command demo_command() {
  Command c;
  c.name = "demo";
  c.summary = "prune a real teacher into a student, distill it, compare with SFT";
  c.description =
      "Builds a student from --teacher by depth pruning (--prune), trains it once by knowledge distillation and\n"
      "once by plain SFT on --data/train.jsonl, and reports held-out CE, perplexity and KL to the teacher\n"
      "(--data/heldout.jsonl) for the teacher, the initial, SFT and KD students, with degeneracy figures of their\n"
      "greedy answers to held-out prompts and a few of those answers; the same goes to --out/report.md and\n"
      "--out/report.json. scripts/demo.sh runs it on SmolLM2-135M-Instruct and data/demo (docs/demo.md).";
  c.options = {
      {"teacher", "DIR", "teacher HF directory", "", false, true},
      {"data", "DIR", "directory with train.jsonl and heldout.jsonl (chat messages)", "", false, true},
      {"out", "DIR", "where the students, runs and report.md go", "", false, true},
      {"template", "NAME", "chat template of the data (auto = from the teacher's tokenizer)", "auto"},
      {"teacher-cache", "on|off", "KD reads the teacher's top-64 signal computed once (on; pays off from about one "
                                  "epoch) or runs the teacher live (off)", "off"},
      {"epochs", "N", "training epochs of each student (when --max-steps is -1)", "1"},
      {"max-steps", "N", "optimizer steps of each student; -1 = --epochs", "18"},
      {"learning-rate", "LR", "peak learning rate (cosine, 10% warmup)", "2e-4"},
      {"batch-size", "N", "sequences per step", "8"},
      {"seq-length", "N", "tokens per sequence", "256"},
      {"answers", "N", "held-out prompts every model answers (degeneracy figures)", "6"},
      {"answer-tokens", "N", "tokens per answer at most (greedy)", "48"},
      {"show", "N", "answers per model printed in the report", "3"},
      {"questions", "FILE", "MT-Bench-format questions the teacher judges teacher, SFT and KD on (none: no judging)"},
      {"judge-tokens", "N", "tokens per judgment", "48"},
      {"on-policy", "FRACTION", "share of KD micro-batches the student answers itself, scored by the teacher (GKD, docs/on-policy.md; needs --teacher-cache off)", "0"},
      {"seed", "N", "random seed", "42"},
      {"threads", "N", "CPU threads (0 = all cores)", "0"},
  };
  for (auto& o : prune_options(2)) c.options.push_back(o);  // 2: the 10-minute budget (docs/demo.md)
  c.run = run_demo;
  return c;
}

}  // namespace kdae::cli
