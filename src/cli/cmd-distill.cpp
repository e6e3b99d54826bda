// kdae distill / kdae align / kdae eval: the training recipes and their evaluation, all driven by a
// YAML run config (docs/config.md) with --set overrides.
#include <iostream>

#include "cli/commands.h"
#include "cli/run-config.h"
#include "common/error.h"
#include "dist/process-group.h"
#include "train/trainer.h"

namespace kdae::cli {
namespace {

std::vector<Option> run_options() {
  return {
      {"config", "FILE", "YAML run config (docs/config.md lists every key)", "", false, true},
      {"set", "KEY=VALUE", "override one config key (repeatable), e.g. --set max_steps=100", "", true},
      {"resume", "", "continue from the newest checkpoint in output_dir (= --set resume_from_checkpoint=latest)", ""},
  };
}

int run_recipe(const Args& args, train::RunKind kind) {
  auto overrides = args.all("set");
  if (args.flag("resume")) overrides.push_back("resume_from_checkpoint=latest");
  const auto options = load_run_config(args.get("config"), overrides, kind);
  const auto summary = train::run_training(options, kind, config_hash(options));
  if (!dist::world().is_main()) return 0;  // rank 0 reports the job's figures
  for (const auto& [name, value] : summary.last_eval) std::cout << name << " " << value << "\n";
  return 0;
}

Command recipe_command(const std::string& name, train::RunKind kind, const std::string& summary,
                       const std::string& description) {
  Command c;
  c.name = name;
  c.summary = summary;
  c.description = description;
  c.options = run_options();
  c.run = [kind](const Args& args) { return run_recipe(args, kind); };
  return c;
}

}  // namespace

Command distill_command() {
  return recipe_command(
      "distill", train::RunKind::distill, "stage 1: distill a student from a teacher (KD)",
      "Trains base_model_path from target_model_path with (1 - lambda) CE + lambda (KD + attn_weight attention KL\n"
      "[+ hidden_weight hidden loss]) on training_data_path. Writes output_dir/checkpoint-<step>/, metrics.jsonl,\n"
      "runs/ (TensorBoard) and the final HF model in output_dir/model. See docs/training.md.");
}

Command align_command() {
  return recipe_command(
      "align", train::RunKind::align, "stage 2: domain alignment from expert teachers (DAE)",
      "Like distill, but each sample's domain picks its teacher: domain_model_path (the expert) for domain\n"
      "samples and target_model_path (the general reference) for the rest, or any {domain: teacher} map under\n"
      "'teachers'. domain_fraction sets the domain share of supervised tokens. See docs/training.md.");
}

Command eval_command() {
  Command c;
  c.name = "eval";
  c.summary = "evaluate a student against its teacher(s): CE, perplexity, KL";
  c.description =
      "Reports eval/ce_loss, eval/perplexity, eval/kl (forward KL to the teacher at temperature 1) and, with\n"
      "attention KD on, eval/attn_kl; with --align per domain, including the KL to the general reference\n"
      "teacher. Teachers and data settings come from --config, or --teacher for a one-teacher evaluation.";
  c.options = {
      {"model", "DIR", "the student (HF directory)", "", false, true},
      {"data", "FILE", "evaluation JSONL (default: the config's eval_data_path)", ""},
      {"teacher", "DIR", "the teacher, when no --config is given", ""},
      {"config", "FILE", "a distill/align run config supplying teachers and data settings", ""},
      {"align", "", "read --config as an align config (teachers per domain)", ""},
      {"set", "KEY=VALUE", "override one config key (repeatable)", "", true},
  };
  c.run = [](const Args& args) {
    const auto kind = args.flag("align") ? train::RunKind::align : train::RunKind::distill;
    std::vector<std::string> overrides = args.all("set");
    overrides.push_back("base_model_path=" + args.get("model"));
    if (args.has("data")) overrides.push_back("eval_data_path=" + args.get("data"));
    train::DistillOptions options;
    if (args.has("config")) {
      options = load_run_config(args.get("config"), overrides, kind, train::OptionsUse::evaluation);
    } else {
      if (!args.has("teacher") || !args.has("data")) usage_fail("give --config, or --teacher and --data");
      for (const auto& kv : overrides) apply_config_override(options, kv);
      options.target_model_path = args.get("teacher");
      options.teacher_dtype = "float32";
      train::validate_distill_options(options, kind, train::OptionsUse::evaluation);
    }
    const auto figures = train::evaluate_student(options, kind);
    if (!dist::world().is_main()) return 0;
    for (const auto& [name, value] : figures) std::cout << name << " " << value << "\n";
    return 0;
  };
  return c;
}

}  // namespace kdae::cli
