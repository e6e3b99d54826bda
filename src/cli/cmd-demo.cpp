// kdae demo: the README's main job. From a real teacher it builds a depth-pruned student, distills it
// (KD) and, as the baseline, fine-tunes the same student on the same answers with CE only (SFT), then
// compares the initial, SFT and KD students on held-out data and shows a sample answer from each.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/generation.h"
#include "cli/run-config.h"
#include "common/error.h"
#include "common/files.h"
#include "common/threads.h"
#include "io/hf-model.h"
#include "model/prune.h"
#include "train/trainer.h"

namespace kdae::cli {
namespace {
namespace fs = std::filesystem;

struct DemoRow {
  std::string name;
  double ce = 0, perplexity = 0, kl = 0;
  std::string answer;
};

fs::path make_student(const fs::path& teacher, const fs::path& out, int64_t keep_every) {
  const fs::path dir = out / "student-init";
  auto model = io::load_model(teacher);
  const auto layers = model::every_kth_layer(model->config().num_layers, keep_every);
  auto student = model::keep_layers(model, layers);
  io::SaveOptions save;
  save.overwrite = true;
  save.copy_tokenizer_from = teacher;
  io::save_model(student, dir, save);
  std::cerr << "demo: student = teacher layers";
  for (auto l : layers) std::cerr << " " << l;
  std::cerr << " (" << layers.size() << " of " << model->config().num_layers << ") -> " << dir.string() << "\n";
  return dir;
}

train::DistillOptions run_options(const Args& args, const fs::path& student, const fs::path& out_dir, double lambda) {
  const fs::path data = args.get("data");
  train::DistillOptions o;
  o.base_model_path = student.string();
  o.target_model_path = args.get("teacher");
  o.training_data_path = (data / "train.jsonl").string();
  o.eval_data_path = (data / "heldout.jsonl").string();
  o.output_dir = out_dir.string();
  o.overwrite = true;
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

DemoRow measure(const std::string& name, const train::DistillOptions& base, const fs::path& model_dir) {
  train::DistillOptions o = base;
  o.base_model_path = model_dir.string();
  DemoRow row{name};
  for (const auto& [key, value] : train::evaluate_student(o, train::RunKind::distill)) {
    if (key == "eval/ce_loss") row.ce = value;
    if (key == "eval/perplexity") row.perplexity = value;
    if (key == "eval/kl") row.kl = value;
  }
  return row;
}

// The first held-out user prompt, for the sample answers.
std::string first_prompt(const fs::path& heldout) {
  std::ifstream in(heldout);
  std::string line;
  std::getline(in, line);
  const auto j = nlohmann::json::parse(line, nullptr, false);
  if (j.is_discarded() || !j.contains("messages")) fail(heldout.string(), ":1: expected a {\"messages\": [...]} line");
  return j["messages"][0]["content"].get<std::string>();
}

std::string sample_answer(const fs::path& model_dir, const std::string& prompt) {
  Generator generator(model_dir.string(), "auto", torch::kCPU, torch::kFloat32);
  model::GenerateOptions options;
  options.max_new_tokens = 48;
  return generator.reply({{"user", prompt}}, options, nullptr);
}

std::string report(const std::vector<DemoRow>& rows, const std::string& prompt, const std::string& setup,
                   double seconds) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(3);
  s << "# kdae demo report\n\n" << setup << "\n\n";
  s << "| student | held-out CE | perplexity | KL to teacher |\n|---|---|---|---|\n";
  for (const auto& r : rows)
    if (r.name != "teacher") s << "| " << r.name << " | " << r.ce << " | " << r.perplexity << " | " << r.kl << " |\n";
  s << "\nSample answers (greedy, 48 tokens) to: " << prompt << "\n";
  for (const auto& r : rows) s << "\n**" << r.name << "**: " << r.answer << "\n";
  s << "\nTotal time: " << std::setprecision(0) << seconds << " s\n";
  return s.str();
}

int run_demo(const Args& args) {
  const auto start = std::chrono::steady_clock::now();
  set_threads(static_cast<int>(args.get_int("threads")));
  const fs::path teacher = args.get("teacher"), out = args.get("out");
  fs::create_directories(out);
  const fs::path student = make_student(teacher, out, args.get_int("keep-every"));
  const auto kd = run_options(args, student, out / "kd", 1.0);
  const auto sft = run_options(args, student, out / "sft", 0.0);
  std::cerr << "demo: knowledge distillation (lambda = 1, forward KL to the teacher)\n";
  train::run_training(kd, train::RunKind::distill, config_hash(kd));
  std::cerr << "demo: baseline SFT (lambda = 0, cross-entropy on the same answers)\n";
  train::run_training(sft, train::RunKind::distill, config_hash(sft));
  std::cerr << "demo: held-out evaluation\n";
  std::vector<DemoRow> rows = {measure("initial (pruned)", kd, student), measure("SFT", kd, out / "sft" / "model"),
                               measure("KD", kd, out / "kd" / "model")};
  const std::string prompt = first_prompt(fs::path(args.get("data")) / "heldout.jsonl");
  for (auto& row : rows)
    row.answer = sample_answer(row.name == "KD" ? out / "kd" / "model" : row.name == "SFT" ? out / "sft" / "model" : student,
                               prompt);
  rows.insert(rows.begin(), DemoRow{"teacher", 0, 0, 0, sample_answer(teacher, prompt)});
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::ostringstream setup;
  setup << "Teacher " << teacher.string() << "; student = teacher layers 0, K, 2K, ... and the last, K = " << args.get("keep-every")
        << "; data " << args.get("data") << "; " << (args.get_int("max-steps") > 0 ? args.get("max-steps") + " steps" : args.get("epochs") + " epoch(s)") << ", lr "
        << args.get("learning-rate") << ", batch " << args.get("batch-size") << ", seq " << args.get("seq-length")
        << ". KL = forward KL(teacher || student) per supervised token on the held-out answers.";
  const std::string text = report(rows, prompt, setup.str(), seconds);
  write_file_atomic(out / "report.md", text);
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
      "Builds a student from --teacher by keeping every --keep-every-th layer, trains it once by knowledge\n"
      "distillation and once by plain SFT on --data/train.jsonl, and prints held-out CE, perplexity and KL to the\n"
      "teacher (--data/heldout.jsonl) for the initial, SFT and KD students, plus a sample answer from each; the\n"
      "same goes to --out/report.md. scripts/demo.sh runs it on SmolLM2-135M-Instruct and data/demo.";
  c.options = {
      {"teacher", "DIR", "teacher HF directory", "", false, true},
      {"data", "DIR", "directory with train.jsonl and heldout.jsonl (chat messages)", "", false, true},
      {"out", "DIR", "where the students, runs and report.md go", "", false, true},
      {"keep-every", "K", "student = teacher layers 0, K, 2K, ... and the last", "3"},
      {"epochs", "N", "training epochs of each student (when --max-steps is -1)", "1"},
      {"max-steps", "N", "optimizer steps of each student; -1 = --epochs (the default keeps the demo near 10 minutes)", "20"},
      {"learning-rate", "LR", "peak learning rate (cosine, 10% warmup)", "6e-4"},
      {"batch-size", "N", "sequences per step", "8"},
      {"seq-length", "N", "tokens per sequence", "256"},
      {"seed", "N", "random seed", "42"},
      {"threads", "N", "CPU threads (0 = all cores)", "0"},
  };
  c.run = run_demo;
  return c;
}

}  // namespace kdae::cli
