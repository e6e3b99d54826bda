#include "train/distill-options.h"

#include <set>

#include "common/error.h"

namespace kdae::train {
namespace {

void check(bool ok, const std::string& key, const std::string& rule, double value) {
  if (!ok) fail("config key '", key, "' = ", value, ": must be ", rule);
}

void one_of(const std::string& key, const std::string& value, const std::set<std::string>& allowed) {
  if (allowed.count(value)) return;
  std::string list;
  for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
  fail("config key '", key, "' = '", value, "': must be one of ", list);
}

// What a run whose teacher signal comes from a teacher cache cannot do.
void check_cache_setting(const DistillOptions& o) {
  if (o.attn_weight > 0 || o.hidden_weight > 0)
    fail("config: attention and hidden-state KD need the live teacher; set attn_weight: 0 and hidden_weight: 0 "
         "to train from a teacher cache");
  if (o.label_alignment != "shifted") fail("config: a teacher cache stores the shifted positions; use label_alignment: shifted");
  if (o.on_policy_fraction > 0)
    fail("config: on_policy_fraction > 0 needs the live teacher (a teacher cache cannot score the student's new "
         "tokens); set on_policy_fraction: 0 or train with the teacher model");
  if (!o.eval_data_path.empty())
    fail("config: evaluation during a teacher-cache run is not supported (it needs the live teacher); "
         "leave eval_data_path empty and run kdae eval --teacher DIR afterwards");
}

}  // namespace

void validate_distill_options(DistillOptions& o, RunKind kind, OptionsUse use) {
  auto required = [](const std::string& key, const std::string& value) {
    if (value.empty()) fail("config key '", key, "' is required");
  };
  required("base_model_path", o.base_model_path);
  if (use == OptionsUse::training) {
    required("training_data_path", o.training_data_path);
    required("output_dir", o.output_dir);
  } else {
    required("eval_data_path", o.eval_data_path);
  }
  // The paper's two stages differ here: KD has L_attn, DAE has none (paper-notes), so the reference's
  // run_dae.yml, which sets no weight, must not get one.
  if (o.attn_weight < 0) o.attn_weight = kind == RunKind::distill ? 1.0 : 0.0;

  check(o.learning_rate > 0, "learning_rate", "> 0", o.learning_rate);
  check(o.train_batch_size >= 1, "train_batch_size", ">= 1", double(o.train_batch_size));
  check(o.eval_batch_size >= 1, "eval_batch_size", ">= 1", double(o.eval_batch_size));
  check(o.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", ">= 1",
        double(o.gradient_accumulation_steps));
  check(o.seq_length >= 2, "seq_length", ">= 2", double(o.seq_length));
  check(o.num_train_epochs > 0 || o.max_steps > 0, "num_train_epochs", "> 0 (or set max_steps)", o.num_train_epochs);
  check(o.max_steps == -1 || o.max_steps > 0, "max_steps", "-1 (use epochs) or > 0", double(o.max_steps));
  check(o.weight_decay >= 0, "weight_decay", ">= 0", o.weight_decay);
  check(o.warmup_ratio >= 0 && o.warmup_ratio <= 1, "warmup_ratio", "in [0, 1]", o.warmup_ratio);
  check(o.warmup_steps >= 0, "warmup_steps", ">= 0", double(o.warmup_steps));
  one_of("lr_scheduler", o.lr_scheduler, {"cosine", "linear", "constant"});
  check(o.max_grad_norm >= 0, "max_grad_norm", ">= 0 (0 = no clipping)", o.max_grad_norm);
  check(o.adam_beta1 >= 0 && o.adam_beta1 < 1, "adam_beta1", "in [0, 1)", o.adam_beta1);
  check(o.adam_beta2 >= 0 && o.adam_beta2 < 1, "adam_beta2", "in [0, 1)", o.adam_beta2);
  check(o.adam_epsilon > 0, "adam_epsilon", "> 0", o.adam_epsilon);

  check(o.lambda_param >= 0 && o.lambda_param <= 1, "lambda_param", "in [0, 1]", o.lambda_param);
  check(o.temperature > 0, "temperature", "> 0", o.temperature);
  one_of("label_alignment", o.label_alignment, {"shifted", "kd-dae"});
  one_of("divergence", o.divergence, {"forward_kl", "reverse_kl", "jsd", "skew_kl", "tvd"});
  check(o.jsd_beta > 0 && o.jsd_beta < 1, "jsd_beta", "in (0, 1)", o.jsd_beta);
  check(o.skew_alpha >= 0 && o.skew_alpha < 1, "skew_alpha", "in [0, 1)", o.skew_alpha);
  one_of("loss_normalization", o.loss_normalization, {"token", "sequence"});
  check(o.hidden_weight >= 0, "hidden_weight", ">= 0", o.hidden_weight);
  one_of("hidden_loss", o.hidden_loss, {"mse", "cosine"});
  for (int64_t layer : o.layer_map) check(layer >= 0, "layer_map", "a list of layer indices >= 0", double(layer));
  check(o.kd_chunk_tokens >= 0, "kd_chunk_tokens", ">= 0 (0 = automatic)", double(o.kd_chunk_tokens));
  one_of("truncation", o.truncation, {"truncate", "drop"});
  check(o.on_policy_fraction >= 0 && o.on_policy_fraction <= 1, "on_policy_fraction", "in [0, 1]", o.on_policy_fraction);
  check(o.generation_temperature >= 0, "generation_temperature", ">= 0 (0 = greedy)", o.generation_temperature);
  check(o.generation_top_p > 0 && o.generation_top_p <= 1, "generation_top_p", "in (0, 1]", o.generation_top_p);
  check(o.max_new_tokens >= 1, "max_new_tokens", ">= 1", double(o.max_new_tokens));
  if (o.on_policy_fraction > 0 && o.lambda_param == 0)
    fail("config: on_policy_fraction > 0 needs the KD term (lambda_param > 0): on-policy micro-batches have no "
         "reference answer to take CE on");
  check(o.min_supervised_tokens >= 0, "min_supervised_tokens", ">= 0", double(o.min_supervised_tokens));

  check(o.loss_scale_init > 0, "loss_scale_init", "> 0", o.loss_scale_init);
  check(o.loss_scale_growth_interval >= 1, "loss_scale_growth_interval", ">= 1", double(o.loss_scale_growth_interval));
  check(o.gradient_checkpointing_every >= 1, "gradient_checkpointing_every", ">= 1", double(o.gradient_checkpointing_every));
  check(o.peft_lora_r >= 1, "peft_lora_r", ">= 1", double(o.peft_lora_r));
  check(o.peft_lora_alpha > 0, "peft_lora_alpha", "> 0", o.peft_lora_alpha);
  check(o.peft_lora_dropout >= 0 && o.peft_lora_dropout < 1, "peft_lora_dropout", "in [0, 1)", o.peft_lora_dropout);
  if (!o.use_peft && !o.peft_init_adapters.empty())
    fail("config key 'peft_init_adapters' needs use_peft: true (adapters train only in a LoRA run)");

  check(o.logging_steps >= 1, "logging_steps", ">= 1", double(o.logging_steps));
  check(o.eval_steps >= 0, "eval_steps", ">= 0", double(o.eval_steps));
  check(o.save_steps >= 0, "save_steps", ">= 0", double(o.save_steps));
  check(o.save_fraction_of_epoch >= 0 && o.save_fraction_of_epoch <= 1, "save_fraction_of_epoch", "in [0, 1]",
        o.save_fraction_of_epoch);
  check(o.save_total_limit >= 0, "save_total_limit", ">= 0 (0 = keep all)", double(o.save_total_limit));
  check(o.threads >= 0, "threads", ">= 0 (0 = all cores)", double(o.threads));
  one_of("backend", o.backend, {"auto", "nccl", "gloo"});
  one_of("sharding", o.sharding, {"none", "optimizer", "gradients"});
  one_of("teacher_sharding", o.teacher_sharding, {"replicate", "full"});
  const double attention_weight = o.attn_weight >= 0 ? o.attn_weight : kind == RunKind::distill ? 1.0 : 0.0;
  if (o.teacher_sharding == "full" && o.gradient_checkpointing && attention_weight > 0)
    fail("teacher_sharding: full cannot be combined with gradient_checkpointing and attention KD (attn_weight > 0): "
         "the teacher's maps would be re-derived in backward, which ranks without rows do not run; set one of them off");
  check(o.dist_bucket_mb > 0, "dist_bucket_mb", "> 0", o.dist_bucket_mb);
  check(o.dist_timeout_s >= 1, "dist_timeout_s", ">= 1", double(o.dist_timeout_s));
  check(o.global_batch_size >= 0, "global_batch_size", ">= 0 (0 = train_batch_size x accumulation x ranks)",
        double(o.global_batch_size));
  one_of("on_missing_domain", o.on_missing_domain, {"error", "skip"});
  check(o.domain_fraction >= 0 && o.domain_fraction <= 1, "domain_fraction", "in [0, 1]", o.domain_fraction);

  if (kind == RunKind::distill) {
    if (!o.teacher_cache.empty()) {
      check_cache_setting(o);
    } else {
      required("target_model_path (or teacher_cache)", o.target_model_path);
    }
    if (!o.teachers.empty() || !o.domain_model_path.empty())
      fail("config keys 'teachers' and 'domain_model_path' belong to kdae align, not kdae distill");
    return;
  }
  check(o.domain_fraction > 0 && o.domain_fraction < 1, "domain_fraction", "in (0, 1) for kdae align",
        o.domain_fraction);
  if (!o.teacher_cache.empty()) fail("config key 'teacher_cache' is for kdae distill (one teacher)");
  if (o.teachers.empty()) {
    required("target_model_path (the general reference teacher) or teachers", o.target_model_path);
    required("domain_model_path (the domain expert) or teachers", o.domain_model_path);
    o.teachers["general"] = TeacherSpec{o.target_model_path, o.temperature, 1.0};
    o.teachers["domain"] = TeacherSpec{o.domain_model_path, o.temperature, 1.0};
  } else if (!o.target_model_path.empty() || !o.domain_model_path.empty()) {
    fail("config: give either 'teachers' or target_model_path + domain_model_path, not both");
  }
  bool any_cache = false;
  for (auto& [domain, t] : o.teachers) {
    if (t.temperature == 0) t.temperature = o.temperature;
    if (t.path.empty() == t.cache.empty())
      fail("config key 'teachers.", domain, "' needs exactly one of path (a model) and cache (a kdae teacher-cache directory)");
    any_cache = any_cache || !t.cache.empty();
    if (!(t.temperature > 0)) fail("config key 'teachers.", domain, ".temperature' must be > 0");
    if (!(t.weight >= 0)) fail("config key 'teachers.", domain, ".weight' must be >= 0");
  }
  if (any_cache) check_cache_setting(o);
}

}  // namespace kdae::train
