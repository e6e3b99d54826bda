// Every setting of a distill (kdae distill) or DAE (kdae align) run, as a plain struct with the
// defaults users get. Filled from YAML + --set overrides by cli/run-config.h (the only place that
// knows YAML); recipes read it and nothing else. Names and meanings follow the reference
// run_kd.yml; docs/config.md (generated from cli/run-config.cpp's key table) documents each field.
// Torch-free.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace kdae::train {

// One teacher of a DAE run: the frozen model that supplies the soft labels for its domain.
struct TeacherSpec {
  std::string path;
  double temperature = 0.0;  // 0 = the run's temperature (filled in by validate_distill_options)
  double weight = 1.0;       // multiplies this teacher's KD term
  std::string cache;         // a `kdae teacher-cache` directory instead of the model at path
};

struct DistillOptions {
  // Models and data.
  std::string base_model_path;    // the student's starting weights
  std::string target_model_path;  // the teacher (KD) / the general reference teacher (DAE)
  std::string teacher_cache;      // kdae teacher-cache output replacing the live teacher (distill)
  std::string training_data_path;
  std::string eval_data_path;     // "" = no evaluation
  std::string output_dir;
  std::string resume_from_checkpoint;  // "" = fresh run, "latest" = newest checkpoint in output_dir, or a path
  bool overwrite = false;
  std::string instruction_key = "[INST]";   // text that opens a user turn (masked)
  std::string response_key = "[/INST]";     // text that ends a user turn; the answer after it is supervised
  std::string chat_template;                // template name for messages-style samples; "" = detect from the tokenizer
  int64_t seq_length = 2048;
  bool packing = false;
  std::string truncation = "truncate";      // truncate | drop
  int64_t min_supervised_tokens = 1;
  bool dedup = false;                       // drop samples whose token sequence repeats an earlier one
  std::string data_cache_dir;               // tokenized-dataset cache; "" = $KDAE_HOME/datasets, "none" = off

  // Optimisation.
  double learning_rate = 2e-5;
  int64_t train_batch_size = 8;
  int64_t eval_batch_size = 8;
  int64_t gradient_accumulation_steps = 1;
  double num_train_epochs = 1.0;
  int64_t max_steps = -1;  // > 0 overrides num_train_epochs
  double weight_decay = 0.0;
  double warmup_ratio = 0.0;
  int64_t warmup_steps = 0;  // > 0 overrides warmup_ratio
  std::string lr_scheduler = "cosine";  // cosine | linear | constant
  double max_grad_norm = 1.0;           // 0 = no clipping
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_epsilon = 1e-8;
  int64_t random_seed = 42;
  bool gradient_checkpointing = false;
  int64_t gradient_checkpointing_every = 1;  // recompute layers l % k == 0 (1 = every layer)

  // Loss.
  double lambda_param = 1.0;  // L = (1 - lambda) * CE + lambda * KD
  double temperature = 1.0;
  std::string label_alignment = "shifted";  // shifted | kd-dae (the reference's off-by-one, parity only)
  std::string divergence = "forward_kl";    // forward_kl | reverse_kl | jsd | skew_kl | tvd
  double jsd_beta = 0.5;
  double skew_alpha = 0.1;
  std::string loss_normalization = "token";  // token | sequence
  double attn_weight = -1;  // < 0 = the command's default: 1 for distill (the paper's L_attn), 0 for align (DAE has none)
  double hidden_weight = 0.0;
  std::string hidden_loss = "mse";  // mse | cosine
  std::vector<int64_t> layer_map;   // teacher layer for each student layer; empty = 1:1 or uniform spread
  int64_t kd_chunk_tokens = 0;      // 0 = automatic
  bool fused_lm_head = true;        // LM heads inside the chunked loss (distill/head-loss.h)

  // On-policy distillation (GKD; train/on-policy.h).
  double on_policy_fraction = 0.0;     // share of micro-batches answered by the student itself
  double generation_temperature = 1.0; // its sampling temperature (0 = greedy)
  double generation_top_p = 1.0;
  int64_t max_new_tokens = 128;        // per on-policy answer (also capped by seq_length)

  // MoE students.
  double router_aux_loss_coef = -1;  // load-balancing loss weight; < 0 = the student config's router_aux_loss_coef
  double router_z_loss_coef = 0.0;
  bool freeze_routers = false;
  bool freeze_experts = false;

  // LoRA.
  bool use_peft = false;
  int64_t peft_lora_r = 256;
  double peft_lora_alpha = 128;
  double peft_lora_dropout = 0.15;
  std::vector<std::string> peft_target_modules;  // empty = per architecture (model::default_lora_targets)
  bool save_adapters = true;       // PEFT adapter directories beside checkpoints and the final model
  std::string peft_init_adapters;  // a PEFT adapter directory the adapters start from

  // Logging, evaluation, checkpoints.
  int64_t logging_steps = 10;
  int64_t eval_steps = 0;             // 0 = once per epoch when eval data is given
  int64_t save_steps = 0;             // > 0 overrides save_fraction_of_epoch
  double save_fraction_of_epoch = 0.25;
  int64_t save_total_limit = 0;       // 0 = keep all

  // Devices.
  std::string device = "auto";
  std::string dtype = "float32";
  double loss_scale_init = 65536.0;          // float16: dynamic loss scaling's first scale
  int64_t loss_scale_growth_interval = 2000; // float16: clean steps before the scale doubles
  std::string teacher_device = "auto";
  std::string teacher_dtype = "bfloat16";
  int64_t threads = 0;  // 0 = all cores

  // Multi-process training (docs/distributed.md); a single process ignores them.
  std::string backend = "auto";     // auto | nccl | gloo (auto: NCCL on CUDA, Gloo on CPU)
  int64_t dist_timeout_s = 600;     // a collective or rendezvous that waits longer stops the job
  double dist_bucket_mb = 25;       // gradient all-reduce bucket size (DDP's bucket_cap_mb)
  std::string sharding = "none";    // none | optimizer | gradients (ZeRO-1 / ZeRO-2, docs/distributed.md)
  std::string teacher_sharding = "replicate";  // replicate | full (each rank keeps 1/N of every teacher layer)
  int64_t global_batch_size = 0;    // > 0: sequences per optimizer step over all ranks; sets gradient_accumulation_steps

  // DAE (kdae align).
  std::string domain_model_path;               // the domain expert teacher
  std::map<std::string, TeacherSpec> teachers;  // {domain: teacher}; "general" / "domain" when built from the paths
  double domain_fraction = 0.1;                 // share of domain samples in each epoch's order
  std::string on_missing_domain = "error";      // error | skip: a sample whose domain has no teacher
};

enum class RunKind { distill, align };
// What the options are for: evaluation (kdae eval) needs no training data and no output directory.
enum class OptionsUse { training, evaluation };

// Range and consistency checks shared by every way of filling the struct; throws kdae::Error
// naming the key. align also fills `teachers` from target_model_path/domain_model_path when empty.
void validate_distill_options(DistillOptions& options, RunKind kind, OptionsUse use = OptionsUse::training);

}  // namespace kdae::train
