// YAML run configs: every key reaches the struct, errors name file/line/key/type, --set overrides,
// the examples parse, docs/config.md is current.
#include "cli/run-config.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "common/error.h"
#include "common/files.h"

using namespace kdae;
using train::DistillOptions;
namespace fs = std::filesystem;

namespace {
const fs::path kRoot = fs::path(KDAE_TEST_ASSETS).parent_path().parent_path();

std::string error_of(const std::string& yaml) {
  DistillOptions o;
  try {
    cli::apply_config_text(o, yaml, "run.yaml");
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}
}  // namespace

TEST(RunConfig, EveryReferenceKeyTakesEffect) {
  DistillOptions o;
  cli::apply_config_text(o, R"(
learning_rate: 3.0e-4
train_batch_size: 4
eval_batch_size: 2
gradient_accumulation_steps: 16
seq_length: 512
num_train_epochs: 1.5
max_steps: 100
weight_decay: 0.1
warmup_ratio: 0.2
random_seed: 7
lambda_param: 0.5
temperature: 2
use_peft: yes
peft_lora_r: 8
peft_lora_alpha: 16
gradient_checkpointing: true
logging_steps: 5
base_model_path: s
target_model_path: t
training_data_path: train.jsonl
eval_data_path: eval.jsonl
output_dir: out
resume_from_checkpoint: true
instruction_key: "<user>"
response_key: "<bot>"
layer_map: [0, 2, 4]
peft_target_modules: [q_proj, v_proj]
divergence: jsd
)", "run.yaml");
  EXPECT_DOUBLE_EQ(o.learning_rate, 3e-4);
  EXPECT_EQ(o.train_batch_size, 4);
  EXPECT_EQ(o.eval_batch_size, 2);
  EXPECT_EQ(o.gradient_accumulation_steps, 16);
  EXPECT_EQ(o.seq_length, 512);
  EXPECT_DOUBLE_EQ(o.num_train_epochs, 1.5);
  EXPECT_EQ(o.max_steps, 100);
  EXPECT_DOUBLE_EQ(o.weight_decay, 0.1);
  EXPECT_DOUBLE_EQ(o.warmup_ratio, 0.2);
  EXPECT_EQ(o.random_seed, 7);
  EXPECT_DOUBLE_EQ(o.lambda_param, 0.5);
  EXPECT_DOUBLE_EQ(o.temperature, 2.0);
  EXPECT_TRUE(o.use_peft);
  EXPECT_EQ(o.peft_lora_r, 8);
  EXPECT_DOUBLE_EQ(o.peft_lora_alpha, 16);
  EXPECT_TRUE(o.gradient_checkpointing);
  EXPECT_EQ(o.logging_steps, 5);
  EXPECT_EQ(o.base_model_path, "s");
  EXPECT_EQ(o.target_model_path, "t");
  EXPECT_EQ(o.training_data_path, "train.jsonl");
  EXPECT_EQ(o.eval_data_path, "eval.jsonl");
  EXPECT_EQ(o.output_dir, "out");
  EXPECT_EQ(o.resume_from_checkpoint, "latest");
  EXPECT_EQ(o.instruction_key, "<user>");
  EXPECT_EQ(o.response_key, "<bot>");
  EXPECT_EQ(o.layer_map, (std::vector<int64_t>{0, 2, 4}));
  EXPECT_EQ(o.peft_target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(o.divergence, "jsd");
  EXPECT_NO_THROW(train::validate_distill_options(o, train::RunKind::distill));
}

TEST(RunConfig, ErrorsNameFileLineKeyAndType) {
  EXPECT_EQ(error_of("learning_rate: 1e-5\nlearnig_rate: 2\n"),
            "run.yaml:2: unknown key 'learnig_rate' (did you mean 'learning_rate'?); docs/config.md lists every key");
  EXPECT_EQ(error_of("\n\ntrain_batch_size: 1.5\n"), "run.yaml:3: key 'train_batch_size': expected an integer, got '1.5'");
  EXPECT_EQ(error_of("use_peft: maybe\n"), "run.yaml:1: key 'use_peft': expected true or false, got 'maybe'");
  EXPECT_EQ(error_of("learning_rate: [1]\n"), "run.yaml:1: key 'learning_rate': expected a number, got a list");
  EXPECT_EQ(error_of("divergence: kl\n"),
            "run.yaml:1: key 'divergence': expected one of forward_kl|reverse_kl|jsd|skew_kl|tvd, got 'kl'");
  EXPECT_EQ(error_of("seed: 1\nseed: 2\n").substr(0, 30), "run.yaml:1: unknown key 'seed'");
  EXPECT_EQ(error_of("logging_steps: 1\nlogging_steps: 2\n"), "run.yaml:2: key 'logging_steps' appears twice");
  EXPECT_NE(error_of("a: [1,\n").find("run.yaml:"), std::string::npos);
  EXPECT_EQ(error_of("- 1\n"), "run.yaml:1: a run config must be a mapping of key: value");
  EXPECT_EQ(error_of("teachers:\n  shop: {path: x, temprature: 2}\n"),
            "run.yaml:2: unknown key 'teachers.shop.temprature' (expected path, cache, temperature, weight)");
}

TEST(RunConfig, SetOverrides) {
  DistillOptions o;
  cli::apply_config_text(o, "learning_rate: 1e-5\n", "run.yaml");
  cli::apply_config_override(o, "learning_rate=3e-4");
  cli::apply_config_override(o, "layer_map=[1, 3]");
  cli::apply_config_override(o, "teachers={general: g, shop: {path: s, weight: 2}}");
  EXPECT_DOUBLE_EQ(o.learning_rate, 3e-4);
  EXPECT_EQ(o.layer_map, (std::vector<int64_t>{1, 3}));
  ASSERT_EQ(o.teachers.size(), 2u);
  EXPECT_EQ(o.teachers["shop"].path, "s");
  EXPECT_DOUBLE_EQ(o.teachers["shop"].weight, 2.0);
  try {
    cli::apply_config_override(o, "max_steps=ten");
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "--set max_steps=ten: key 'max_steps': expected an integer, got 'ten'");
  }
  EXPECT_THROW(cli::apply_config_override(o, "no_equals"), UsageError);
  EXPECT_THROW(cli::apply_config_override(o, "bogus=1"), Error);
}

TEST(RunConfig, ValidationAndAlignTeachers) {
  DistillOptions o;
  o.base_model_path = "s";
  o.training_data_path = "d";
  o.output_dir = "o";
  try {
    train::validate_distill_options(o, train::RunKind::distill);
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "config key 'target_model_path (or teacher_cache)' is required");
  }
  o.target_model_path = "t";
  o.lambda_param = 1.5;
  EXPECT_THROW(train::validate_distill_options(o, train::RunKind::distill), Error);
  o.lambda_param = 1;
  DistillOptions a = o;
  a.domain_model_path = "expert";
  train::validate_distill_options(a, train::RunKind::align);
  ASSERT_EQ(a.teachers.size(), 2u);
  EXPECT_EQ(a.teachers["general"].path, "t");
  EXPECT_EQ(a.teachers["domain"].path, "expert");
  // A teacher without its own temperature takes the run's, wherever the key sits in the file.
  DistillOptions c = o;
  c.target_model_path.clear();
  cli::apply_config_text(c, "teachers: {general: g, shop: {path: s, temperature: 3}}\ntemperature: 2\n", "run.yaml");
  train::validate_distill_options(c, train::RunKind::align);
  EXPECT_DOUBLE_EQ(c.teachers["general"].temperature, 2.0);
  EXPECT_DOUBLE_EQ(c.teachers["shop"].temperature, 3.0);
}

TEST(RunConfig, ExamplesParseAndDocsAreCurrent) {
  auto kd = cli::load_run_config(kRoot / "examples/run_kd.yaml", {}, train::RunKind::distill);
  EXPECT_DOUBLE_EQ(kd.warmup_ratio, 0.1);
  EXPECT_EQ(kd.gradient_accumulation_steps, 64);
  auto dae = cli::load_run_config(kRoot / "examples/run_dae.yaml", {"max_steps=5"}, train::RunKind::align);
  EXPECT_EQ(dae.teachers.size(), 2u);
  EXPECT_EQ(dae.max_steps, 5);
  EXPECT_EQ(read_file(kRoot / "docs/config.md"), cli::config_reference_markdown())
      << "docs/config.md is stale: run build-*/tests/gen_config_doc docs/config.md";
}

TEST(RunConfig, HashCoversTrainingButNotCadence) {
  DistillOptions a, b;
  b.logging_steps = 99;
  b.output_dir = "elsewhere";
  EXPECT_EQ(cli::config_hash(a), cli::config_hash(b));
  b.learning_rate = 3e-5;
  EXPECT_NE(cli::config_hash(a), cli::config_hash(b));
  EXPECT_EQ(cli::config_hash(a).size(), 16u);
}

TEST(RunConfig, ReferenceKeysAreAcceptedWithOneWarningAndTheirBooleansMeanWhatTheyMeanThere) {
  train::DistillOptions o;
  testing::internal::CaptureStderr();
  cli::apply_config_text(o, "experiment_name: run_kd\nresume_from_checkpoint: False\nlocal_rank: -1\nload_in_8bit: False\n"
                       "deepspeed: \"\"\ndescription: \"\"\n", "run_kd.yml");
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(err, "kdae: warning: run_kd.yml: kd-dae keys without effect in kdae, ignored: experiment_name, local_rank, "
                 "load_in_8bit, deepspeed, description (docs/migrating.md)\n");
  EXPECT_EQ(o.resume_from_checkpoint, "");
  const std::string hash = cli::config_hash(o);
  cli::apply_config_text(o, "resume_from_checkpoint: True\n", "run_kd.yml");
  EXPECT_EQ(o.resume_from_checkpoint, "latest");
  EXPECT_EQ(cli::config_hash(train::DistillOptions{}), hash);  // keys without effect stay out of the resume hash
  EXPECT_EQ(error_of("load_in_4bit: True\n").rfind("run.yaml:1: key 'load_in_4bit': kdae cannot load models in 4-bit", 0), 0u);
  EXPECT_EQ(error_of("local_rank: zero\n"), "run.yaml:1: key 'local_rank': expected an integer, got 'zero'");
}

TEST(RunConfig, AttentionWeightDefaultsToEachStagesLoss) {
  train::DistillOptions kd, dae;
  kd.base_model_path = dae.base_model_path = "s";
  kd.training_data_path = dae.training_data_path = "d";
  kd.output_dir = dae.output_dir = "o";
  kd.target_model_path = dae.target_model_path = "t";
  dae.domain_model_path = "e";
  dae.domain_fraction = 0.1;
  train::validate_distill_options(kd, train::RunKind::distill);
  train::validate_distill_options(dae, train::RunKind::align);
  EXPECT_EQ(kd.attn_weight, 1.0);   // L_attn of the paper's KD loss
  EXPECT_EQ(dae.attn_weight, 0.0);  // the DAE loss has none
}
