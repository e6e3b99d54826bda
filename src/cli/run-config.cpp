#include "cli/run-config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iostream>
#include <optional>
#include <set>
#include <sstream>

#include "common/error.h"
#include "common/files.h"
#include "common/hash.h"

namespace kdae::cli {
namespace {

using train::DistillOptions;
using train::TeacherSpec;

// Where a value came from, for error messages: "run.yaml:12" or "--set learning_rate=x".
struct Origin {
  std::string source;
  bool from_override = false;
  std::string at(const YAML::Node& node) const {
    if (from_override) return source;
    return source + ":" + std::to_string(node.Mark().line + 1);
  }
};

[[noreturn]] void type_error(const Origin& o, const YAML::Node& node, const std::string& key,
                             const std::string& expected) {
  std::string got;
  if (node.IsScalar())
    got = "'" + node.Scalar() + "'";
  else if (node.IsSequence())
    got = "a list";
  else if (node.IsMap())
    got = "a mapping";
  else
    got = "nothing";
  fail(o.at(node), ": key '", key, "': expected ", expected, ", got ", got);
}

int64_t as_int(const YAML::Node& n, const std::string& key, const Origin& o) {
  if (!n.IsScalar()) type_error(o, n, key, "an integer");
  const std::string& s = n.Scalar();
  int64_t v = 0;
  const char* begin = s.data() + (!s.empty() && s[0] == '+');
  const auto [end, ec] = std::from_chars(begin, s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || begin == end) type_error(o, n, key, "an integer");
  return v;
}

double as_float(const YAML::Node& n, const std::string& key, const Origin& o) {
  if (!n.IsScalar()) type_error(o, n, key, "a number");
  const std::string& s = n.Scalar();
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size() || !std::isfinite(v)) type_error(o, n, key, "a number");
  return v;
}

// YAML 1.1 spellings (the reference's configs write True/False, as Python's yaml reads them).
std::optional<bool> bool_spelling(const YAML::Node& n) {
  if (!n.IsScalar()) return std::nullopt;
  const std::string& s = n.Scalar();
  if (s == "true" || s == "True" || s == "TRUE" || s == "yes" || s == "on") return true;
  if (s == "false" || s == "False" || s == "FALSE" || s == "no" || s == "off") return false;
  return std::nullopt;
}

bool as_bool(const YAML::Node& n, const std::string& key, const Origin& o) {
  if (const auto b = bool_spelling(n)) return *b;
  type_error(o, n, key, "true or false");
}

std::string as_string(const YAML::Node& n, const std::string& key, const Origin& o) {
  if (n.IsNull()) return "";
  if (!n.IsScalar()) type_error(o, n, key, "a string");
  return n.Scalar();
}

std::string fmt_float(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.10g", v);
  return buf;
}

std::string quote(const std::string& s) { return s.empty() ? "\"\"" : s; }

struct Key {
  std::string name;
  std::string type;  // as shown in docs and errors
  std::string section;
  std::string help;
  std::function<void(DistillOptions&, const YAML::Node&, const Origin&)> set;
  std::function<std::string(const DistillOptions&)> show;
  bool resume_relevant = true;
  bool without_effect = false;  // a reference (kd-dae) key kdae accepts and ignores, with a warning
};

Key int_key(std::string section, std::string name, int64_t DistillOptions::*m, std::string help) {
  const std::string key = name;
  return {name, "int", section, help,
          [key, m](DistillOptions& d, const YAML::Node& n, const Origin& o) { d.*m = as_int(n, key, o); },
          [m](const DistillOptions& d) { return std::to_string(d.*m); }};
}
Key float_key(std::string section, std::string name, double DistillOptions::*m, std::string help) {
  const std::string key = name;
  return {name, "float", section, help,
          [key, m](DistillOptions& d, const YAML::Node& n, const Origin& o) { d.*m = as_float(n, key, o); },
          [m](const DistillOptions& d) { return fmt_float(d.*m); }};
}
Key bool_key(std::string section, std::string name, bool DistillOptions::*m, std::string help) {
  const std::string key = name;
  return {name, "bool", section, help,
          [key, m](DistillOptions& d, const YAML::Node& n, const Origin& o) { d.*m = as_bool(n, key, o); },
          [m](const DistillOptions& d) { return std::string(d.*m ? "true" : "false"); }};
}
Key string_key(std::string section, std::string name, std::string DistillOptions::*m, std::string help) {
  const std::string key = name;
  return {name, "string", section, help,
          [key, m](DistillOptions& d, const YAML::Node& n, const Origin& o) { d.*m = as_string(n, key, o); },
          [m](const DistillOptions& d) { return quote(d.*m); }};
}
Key enum_key(std::string section, std::string name, std::string DistillOptions::*m, std::vector<std::string> choices,
             std::string help) {
  std::string expected;
  for (const auto& c : choices) expected += (expected.empty() ? "" : "|") + c;
  const std::string key = name;
  return {name, expected, section, help,
          [key, m, choices, expected](DistillOptions& d, const YAML::Node& n, const Origin& o) {
            const std::string v = as_string(n, key, o);
            if (std::find(choices.begin(), choices.end(), v) == choices.end()) type_error(o, n, key, "one of " + expected);
            d.*m = v;
          },
          [m](const DistillOptions& d) { return d.*m; }};
}
Key strings_key(std::string section, std::string name, std::vector<std::string> DistillOptions::*m,
                std::string help) {
  const std::string key = name;
  return {name, "list of strings", section, help,
          [key, m](DistillOptions& d, const YAML::Node& n, const Origin& o) {
            if (!n.IsSequence()) type_error(o, n, key, "a list of strings");
            std::vector<std::string> out;
            for (const auto& item : n) {
              if (!item.IsScalar()) type_error(o, item, key, "a list of strings");
              out.push_back(item.Scalar());
            }
            d.*m = out;
          },
          [m](const DistillOptions& d) {
            std::string s = "[";
            for (const auto& v : d.*m) s += (s.size() > 1 ? ", " : "") + v;
            return s + "]";
          }};
}

void set_teachers(DistillOptions& d, const YAML::Node& n, const Origin& o) {
  const std::string key = "teachers";
  if (n.IsNull()) {
    d.teachers.clear();
    return;
  }
  if (!n.IsMap()) type_error(o, n, key, "a mapping {domain: path or {path | cache, temperature, weight}}");
  std::map<std::string, TeacherSpec> out;
  for (const auto& entry : n) {
    const std::string domain = entry.first.as<std::string>();
    const std::string sub = key + "." + domain;
    const YAML::Node& v = entry.second;
    if (out.count(domain)) fail(o.at(entry.first), ": key '", sub, "' appears twice");
    TeacherSpec t;  // temperature 0 = the run's, resolved after every key is read
    if (v.IsScalar()) {
      t.path = v.Scalar();
    } else if (v.IsMap()) {
      for (const auto& field : v) {
        const std::string f = field.first.as<std::string>();
        if (f == "path")
          t.path = as_string(field.second, sub + ".path", o);
        else if (f == "cache")
          t.cache = as_string(field.second, sub + ".cache", o);
        else if (f == "temperature")
          t.temperature = as_float(field.second, sub + ".temperature", o);
        else if (f == "weight")
          t.weight = as_float(field.second, sub + ".weight", o);
        else
          fail(o.at(field.first), ": unknown key '", sub, ".", f, "' (expected path, cache, temperature, weight)");
      }
    } else {
      type_error(o, v, sub, "a path or {path | cache, temperature, weight}");
    }
    out[domain] = t;
  }
  d.teachers = out;
}

std::string show_teachers(const DistillOptions& d) {
  if (d.teachers.empty()) return "{}";
  std::string s = "{";
  for (const auto& [domain, t] : d.teachers)
    s += (s.size() > 1 ? ", " : "") + domain + (t.cache.empty() ? ": {path: " + t.path : ": {cache: " + t.cache) + ", temperature: " + fmt_float(t.temperature) +
         ", weight: " + fmt_float(t.weight) + "}";
  return s + "}";
}

Key not_for_resume(Key k) {
  k.resume_relevant = false;
  return k;
}

// A key of the reference's run_kd.yml / run_dae.yml that has no meaning in kdae: accepted and type-checked
// so those files run unchanged, outside the config hash, and named in one warning (docs/migrating.md).
Key without_effect(std::string name, std::string type, std::string shown_default, std::string help,
                   std::function<void(const YAML::Node&, const Origin&)> check) {
  Key k{name, type, "Accepted from kd-dae configs, without effect", help,
        [check](DistillOptions&, const YAML::Node& n, const Origin& o) { check(n, o); },
        [shown_default](const DistillOptions&) { return shown_default; }};
  k.resume_relevant = false;
  k.without_effect = true;
  return k;
}

// load_in_8bit / load_in_4bit: false is the reference's default and means what kdae does anyway; true asks
// for quantized loading, which kdae does not have, so it is refused rather than silently run in full size.
Key quantized_loading_key(const std::string& name, const std::string& bits) {
  return without_effect(
      name, "bool", "false",
      "The reference's bitsandbytes " + bits + "-bit loading. `false` is accepted; `true` is an error: kdae has no " +
          bits + "-bit loading (use `teacher_dtype: bfloat16` to halve the teacher's memory, or `use_peft: true` for "
          "a LoRA student).",
      [name, bits](const YAML::Node& n, const Origin& o) {
        if (as_bool(n, name, o))
          fail(o.at(n), ": key '", name, "': kdae cannot load models in ", bits, "-bit (no quantized loading); set ",
               name, ": false, and use teacher_dtype: bfloat16 (half the teacher's memory) or use_peft: true instead");
      });
}

void reference_keys(std::vector<Key>& t) {
  auto any_string = [](std::string name) {
    return [name](const YAML::Node& n, const Origin& o) { as_string(n, name, o); };
  };
  t.push_back(without_effect("experiment_name", "string", "\"\"",
                             "The reference's run name; kdae names a run by its output_dir.", any_string("experiment_name")));
  t.push_back(without_effect("description", "string", "\"\"", "Free text of the reference's configs.", any_string("description")));
  t.push_back(without_effect("local_rank", "int", "-1",
                             "Set by the reference's DeepSpeed launcher; kdae trains in one process and takes its device from `device`.",
                             [](const YAML::Node& n, const Origin& o) { as_int(n, "local_rank", o); }));
  t.push_back(without_effect("deepspeed", "string", "\"\"",
                             "A DeepSpeed JSON of the reference; kdae does not use DeepSpeed (memory: gradient_checkpointing, "
                             "use_peft, dtype, teacher_dtype, teacher_cache).",
                             any_string("deepspeed")));
  t.push_back(quantized_loading_key("load_in_8bit", "8"));
  t.push_back(quantized_loading_key("load_in_4bit", "4"));
}

const std::vector<Key>& key_table() {
  using D = DistillOptions;
  static const std::vector<Key> table = [] {
    std::vector<Key> t;
    const std::string m = "Models and data", op = "Optimisation", lo = "Loss", pe = "LoRA (PEFT)",
                      lg = "Logging, evaluation, checkpoints", dv = "Devices", da = "DAE (kdae align)";
    t.push_back(string_key(m, "base_model_path", &D::base_model_path, "Student: HF model directory whose weights training starts from."));
    t.push_back(string_key(m, "target_model_path", &D::target_model_path, "Teacher (distill), or the general reference teacher (align)."));
    t.push_back(string_key(m, "teacher_cache", &D::teacher_cache, "A `kdae teacher-cache` directory used instead of running the teacher (distill; forward KL on the stored top-k + tail; attention/hidden KD off; no eval during training)."));
    t.push_back(string_key(m, "training_data_path", &D::training_data_path, "Training samples (JSON lines)."));
    t.push_back(not_for_resume(string_key(m, "eval_data_path", &D::eval_data_path, "Evaluation samples; empty = no evaluation.")));
    t.push_back(not_for_resume(string_key(m, "output_dir", &D::output_dir, "Where checkpoints, metrics.jsonl, runs/ and the final model go.")));
    {
      Key k = string_key(m, "resume_from_checkpoint", &D::resume_from_checkpoint,
                         "A checkpoint directory, `latest` (or `true`) for the newest checkpoint in output_dir; empty or `false` = fresh run.");
      k.type = "string|bool";
      k.set = [](D& d, const YAML::Node& n, const Origin& o) {
        if (const auto b = bool_spelling(n)) {  // the reference's resume_from_checkpoint: False / True
          d.resume_from_checkpoint = *b ? "latest" : "";
          return;
        }
        d.resume_from_checkpoint = as_string(n, "resume_from_checkpoint", o);
      };
      t.push_back(not_for_resume(k));
    }
    t.push_back(not_for_resume(bool_key(m, "overwrite", &D::overwrite, "Replace an existing final model in output_dir.")));
    t.push_back(string_key(m, "instruction_key", &D::instruction_key, "Text that opens a user turn; user turns are not supervised."));
    t.push_back(string_key(m, "response_key", &D::response_key, "Text that ends a user turn; the answer after it is supervised."));
    t.push_back(string_key(m, "chat_template", &D::chat_template, "Chat template name (mistral, llama3, chatml, smollm2, ...) for messages/alpaca/prompt-response samples; empty = detect from the student tokenizer's chat_template."));
    t.push_back(int_key(m, "seq_length", &D::seq_length, "Tokens per sequence (BOS included)."));
    t.push_back(bool_key(m, "packing", &D::packing, "Pack several samples into one sequence (attention kept within each sample)."));
    t.push_back(enum_key(m, "truncation", &D::truncation, {"truncate", "drop"}, "What to do with a sample longer than seq_length."));
    t.push_back(int_key(m, "min_supervised_tokens", &D::min_supervised_tokens, "Samples with fewer supervised tokens after truncation are skipped."));
    t.push_back(bool_key(m, "dedup", &D::dedup, "Drop samples whose token sequence repeats an earlier sample's."));
    t.push_back(not_for_resume(string_key(m, "data_cache_dir", &D::data_cache_dir, "Tokenized-dataset cache directory; empty = $KDAE_HOME/datasets (~/.cache/kdae/datasets), `none` = no cache.")));

    t.push_back(float_key(op, "learning_rate", &D::learning_rate, "Peak learning rate (AdamW)."));
    t.push_back(int_key(op, "train_batch_size", &D::train_batch_size, "Sequences per micro-batch."));
    t.push_back(not_for_resume(int_key(op, "eval_batch_size", &D::eval_batch_size, "Sequences per evaluation batch.")));
    t.push_back(int_key(op, "gradient_accumulation_steps", &D::gradient_accumulation_steps, "Micro-batches per optimizer step."));
    t.push_back(float_key(op, "num_train_epochs", &D::num_train_epochs, "Epochs (may be fractional); ignored when max_steps > 0."));
    t.push_back(int_key(op, "max_steps", &D::max_steps, "Optimizer steps in total; -1 = from num_train_epochs."));
    t.push_back(float_key(op, "weight_decay", &D::weight_decay, "Decoupled AdamW weight decay; never applied to norms, biases or 1-d parameters."));
    t.push_back(float_key(op, "warmup_ratio", &D::warmup_ratio, "Linear warmup over ceil(warmup_ratio * total steps) steps."));
    t.push_back(int_key(op, "warmup_steps", &D::warmup_steps, "Warmup steps; > 0 overrides warmup_ratio."));
    t.push_back(enum_key(op, "lr_scheduler", &D::lr_scheduler, {"cosine", "linear", "constant"}, "Decay after warmup (transformers' schedules)."));
    t.push_back(float_key(op, "max_grad_norm", &D::max_grad_norm, "Clip the global gradient L2 norm to this; 0 = no clipping."));
    t.push_back(float_key(op, "adam_beta1", &D::adam_beta1, "AdamW beta1."));
    t.push_back(float_key(op, "adam_beta2", &D::adam_beta2, "AdamW beta2."));
    t.push_back(float_key(op, "adam_epsilon", &D::adam_epsilon, "AdamW epsilon."));
    t.push_back(int_key(op, "random_seed", &D::random_seed, "Seeds data order, LoRA init and dropout."));
    t.push_back(not_for_resume(bool_key(op, "gradient_checkpointing", &D::gradient_checkpointing,
                                        "Recompute student layers in backward instead of keeping their activations "
                                        "(composes with attention/hidden KD, MoE, LoRA dropout, autocast).")));
    t.push_back(not_for_resume(int_key(op, "gradient_checkpointing_every", &D::gradient_checkpointing_every,
                                       "With gradient_checkpointing: recompute layers 0, k, 2k, ... only (1 = all): "
                                       "less recompute, more memory.")));

    t.push_back(float_key(lo, "lambda_param", &D::lambda_param, "Loss = (1 - lambda) * CE + lambda * KD terms."));
    t.push_back(float_key(lo, "temperature", &D::temperature, "Softmax temperature of the KD term (scaled by temperature^2)."));
    t.push_back(enum_key(lo, "label_alignment", &D::label_alignment, {"shifted", "kd-dae"}, "`shifted` distills exactly the supervised predictions; `kd-dae` reproduces the reference's off-by-one mask (parity tests only)."));
    t.push_back(enum_key(lo, "divergence", &D::divergence, {"forward_kl", "reverse_kl", "jsd", "skew_kl", "tvd"}, "Divergence between teacher and student token distributions."));
    t.push_back(float_key(lo, "jsd_beta", &D::jsd_beta, "Mixture weight of the generalized JSD."));
    t.push_back(float_key(lo, "skew_alpha", &D::skew_alpha, "Skew of skew_kl."));
    t.push_back(enum_key(lo, "loss_normalization", &D::loss_normalization, {"token", "sequence"}, "Average the KD loss over supervised tokens, or per sequence then over sequences."));
    t.push_back(float_key(lo, "attn_weight", &D::attn_weight, "Weight of the attention-map KL term; < 0 = the command's default: 1 for distill (the paper's L_attn), 0 for align (the DAE loss has none)."));
    t.push_back(float_key(lo, "hidden_weight", &D::hidden_weight, "Weight of the hidden-state term; 0 = off."));
    t.push_back(enum_key(lo, "hidden_loss", &D::hidden_loss, {"mse", "cosine"}, "Hidden-state distance."));
    {
      Key k{"layer_map", "list of ints", lo, "Teacher layer for each student layer; empty = 1:1 when depths match, else spread uniformly.",
            [](D& d, const YAML::Node& n, const Origin& o) {
              if (n.IsNull()) {
                d.layer_map.clear();
                return;
              }
              if (!n.IsSequence()) type_error(o, n, "layer_map", "a list of integers");
              std::vector<int64_t> out;
              for (const auto& item : n) out.push_back(as_int(item, "layer_map", o));
              d.layer_map = out;
            },
            [](const D& d) {
              std::string s = "[";
              for (auto v : d.layer_map) s += (s.size() > 1 ? ", " : "") + std::to_string(v);
              return s + "]";
            }};
      t.push_back(k);
    }
    t.push_back(not_for_resume(int_key(lo, "kd_chunk_tokens", &D::kd_chunk_tokens, "Tokens per chunk of the vocabulary-sized KD computation; 0 = automatic.")));
    t.push_back(not_for_resume(bool_key(lo, "fused_lm_head", &D::fused_lm_head, "Run the student's and teachers' LM heads inside the chunked loss, so no (batch, seq, vocab) logits exist; false = materialise them.")));
    const std::string on = "On-policy distillation (GKD)";
    t.push_back(float_key(on, "on_policy_fraction", &D::on_policy_fraction, "Share of micro-batches whose answers the student generates itself (GKD's lambda); the teachers score those tokens and the divergence is taken on them (no CE). 0 = off-policy KD only. Needs the live teacher."));
    t.push_back(float_key(on, "generation_temperature", &D::generation_temperature, "Sampling temperature of on-policy answers; 0 = greedy."));
    t.push_back(float_key(on, "generation_top_p", &D::generation_top_p, "Nucleus mass of on-policy sampling."));
    t.push_back(int_key(on, "max_new_tokens", &D::max_new_tokens, "Most tokens per on-policy answer (also capped by seq_length)."));

    const std::string moe = "MoE students";
    t.push_back(float_key(moe, "router_aux_loss_coef", &D::router_aux_loss_coef, "Weight of Mixtral's load-balancing loss; < 0 = the student config's router_aux_loss_coef (0 for dense students)."));
    t.push_back(float_key(moe, "router_z_loss_coef", &D::router_z_loss_coef, "Weight of the router z-loss (ST-MoE); 0 = off."));
    t.push_back(bool_key(moe, "freeze_routers", &D::freeze_routers, "Keep the routers' weights fixed."));
    t.push_back(bool_key(moe, "freeze_experts", &D::freeze_experts, "Keep the experts' weights fixed (train attention, norms, routers)."));

    t.push_back(bool_key(pe, "use_peft", &D::use_peft, "Train LoRA adapters instead of all weights."));
    t.push_back(int_key(pe, "peft_lora_r", &D::peft_lora_r, "LoRA rank."));
    t.push_back(float_key(pe, "peft_lora_alpha", &D::peft_lora_alpha, "LoRA alpha (scale = alpha / r)."));
    t.push_back(float_key(pe, "peft_lora_dropout", &D::peft_lora_dropout, "Dropout on the LoRA input."));
    t.push_back(strings_key(pe, "peft_target_modules", &D::peft_target_modules,
                            "Linear layers (by HF name suffix) that get adapters; empty = per architecture: "
                            "q/k/v/o_proj + gate/up/down_proj (Llama, Mistral, Qwen2), q/k/v/o_proj + w1/w2/w3 (Mixtral)."));
    t.push_back(not_for_resume(bool_key(pe, "save_adapters", &D::save_adapters,
                                        "With use_peft: also write PEFT adapter directories (adapter_config.json + "
                                        "adapter_model.safetensors): checkpoint-<step>/adapters and output_dir/adapters.")));
    t.push_back(string_key(pe, "peft_init_adapters", &D::peft_init_adapters,
                           "A PEFT adapter directory (kdae's or PEFT's) the adapters start from; its r, lora_alpha and "
                           "target_modules must match this run's."));

    t.push_back(not_for_resume(int_key(lg, "logging_steps", &D::logging_steps, "Log metrics every this many optimizer steps.")));
    t.push_back(not_for_resume(int_key(lg, "eval_steps", &D::eval_steps, "Evaluate every this many steps; 0 = once per epoch (with eval data).")));
    t.push_back(not_for_resume(int_key(lg, "save_steps", &D::save_steps, "Checkpoint every this many steps; > 0 overrides save_fraction_of_epoch.")));
    t.push_back(not_for_resume(float_key(lg, "save_fraction_of_epoch", &D::save_fraction_of_epoch, "Checkpoint every this fraction of an epoch; 0 = only at the end.")));
    t.push_back(not_for_resume(int_key(lg, "save_total_limit", &D::save_total_limit, "Keep only the newest this many checkpoints; 0 = keep all.")));

    t.push_back(not_for_resume(string_key(dv, "device", &D::device, "Student device: auto, cpu, cuda, cuda:N.")));
    t.push_back(enum_key(dv, "dtype", &D::dtype, {"float32", "bfloat16", "float16"}, "Student compute dtype (master weights stay float32; float16 uses dynamic loss scaling)."));
    t.push_back(float_key(dv, "loss_scale_init", &D::loss_scale_init,
                          "dtype float16: first loss scale; it halves on a step with inf/NaN gradients (the step is "
                          "skipped, counted in train/skipped_steps) and doubles after loss_scale_growth_interval clean steps."));
    t.push_back(int_key(dv, "loss_scale_growth_interval", &D::loss_scale_growth_interval,
                        "dtype float16: clean steps in a row before the loss scale doubles."));
    t.push_back(not_for_resume(string_key(dv, "teacher_device", &D::teacher_device, "Teacher device: auto, cpu, cuda, cuda:N.")));
    t.push_back(enum_key(dv, "teacher_dtype", &D::teacher_dtype, {"float32", "bfloat16", "float16"}, "Teacher weight dtype."));
    t.push_back(not_for_resume(int_key(dv, "threads", &D::threads, "CPU threads; 0 = all cores.")));
    const std::string di = "Multi-process training (docs/distributed.md)";
    t.push_back(not_for_resume(enum_key(di, "backend", &D::backend, {"auto", "nccl", "gloo"},
                                        "c10d backend under torchrun / srun / mpirun: auto = NCCL on CUDA, Gloo on CPU.")));
    t.push_back(not_for_resume(int_key(di, "dist_timeout_s", &D::dist_timeout_s,
                                       "Seconds a rank waits for the others (rendezvous, each collective) before the job stops with an error naming the step.")));
    t.push_back(not_for_resume(float_key(di, "dist_bucket_mb", &D::dist_bucket_mb,
                                         "MiB of gradients per all-reduce bucket; a bucket starts as soon as backward has "
                                         "produced all its gradients (DDP's bucket_cap_mb).")));
    t.push_back(not_for_resume(enum_key(di, "sharding", &D::sharding, {"none", "optimizer", "gradients"},
                                        "Student state across ranks: none = replicated; optimizer = ZeRO-1, each rank keeps and "
                                        "updates the AdamW state of its share of the parameters (~1/N of it), then broadcasts them; "
                                        "gradients = ZeRO-2, also each gradient is reduced to its owner alone and the others drop it "
                                        "as its bucket is sent. Checkpoints hold each rank's part by tensor name, so resume may "
                                        "change the mode and the number of ranks.")));
    t.push_back(not_for_resume(enum_key(di, "teacher_sharding", &D::teacher_sharding, {"replicate", "full"},
                                        "Frozen teachers across ranks: replicate = every rank holds each whole teacher; full = each "
                                        "rank keeps 1/N of every teacher layer and gathers the layer just before it runs (FSDP-style), "
                                        "so a teacher needs ~1/N of its layers' memory per rank. Same losses as replicate.")));
    t.push_back(int_key(di, "global_batch_size", &D::global_batch_size,
                        "> 0: sequences per optimizer step over all ranks (the paper's 4096); gradient_accumulation_steps "
                        "becomes global_batch_size / (train_batch_size x ranks), which must divide exactly. 0 = "
                        "train_batch_size x gradient_accumulation_steps x ranks."));

    t.push_back(string_key(da, "domain_model_path", &D::domain_model_path, "The domain expert teacher (with target_model_path as the general one)."));
    t.push_back(Key{"teachers", "mapping", da, "{domain: path} or {domain: {path | cache, temperature, weight}}; `cache` is a `kdae teacher-cache` directory of that teacher (no attention/hidden KD, no eval during training); a teacher without a temperature uses `temperature`. Replaces target_model_path + domain_model_path.", set_teachers, show_teachers});
    t.push_back(float_key(da, "domain_fraction", &D::domain_fraction, "Share of domain samples in each epoch's order."));
    t.push_back(enum_key(da, "on_missing_domain", &D::on_missing_domain, {"error", "skip"}, "A sample whose domain has no teacher: stop with an error, or skip it."));
    reference_keys(t);
    return t;
  }();
  return table;
}

const Key* find_key(const std::string& name) {
  for (const auto& k : key_table())
    if (k.name == name) return &k;
  return nullptr;
}

[[noreturn]] void unknown_key(const std::string& where, const std::string& name) {
  // A near miss (same letters bar one or two) is named to make typos quick to fix.
  std::string hint;
  for (const auto& k : key_table()) {
    const std::string& c = k.name;
    size_t common = 0;
    while (common < c.size() && common < name.size() && c[common] == name[common]) ++common;
    if (common >= 4 && std::abs(static_cast<long>(c.size()) - static_cast<long>(name.size())) <= 2) {
      hint = " (did you mean '" + c + "'?)";
      break;
    }
  }
  fail(where, ": unknown key '", name, "'", hint, "; docs/config.md lists every key");
}

void warn_without_effect(const std::string& source, const std::vector<std::string>& names) {
  if (names.empty()) return;
  std::string list;
  for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
  std::cerr << "kdae: warning: " << source << ": kd-dae keys without effect in kdae, ignored: " << list
            << " (docs/migrating.md)\n";
}

}  // namespace

void apply_config_text(DistillOptions& options, const std::string& yaml_text, const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    fail(source, ":", e.mark.line + 1, ": invalid YAML: ", e.msg);
  }
  if (root.IsNull()) return;  // an empty file sets nothing
  const Origin origin{source};
  if (!root.IsMap()) fail(source, ":", root.Mark().line + 1, ": a run config must be a mapping of key: value");
  std::set<std::string> seen;
  std::vector<std::string> ignored;
  for (const auto& entry : root) {
    if (!entry.first.IsScalar()) fail(origin.at(entry.first), ": keys must be plain names");
    const std::string name = entry.first.Scalar();
    const Key* key = find_key(name);
    if (!key) unknown_key(origin.at(entry.first), name);
    if (!seen.insert(name).second) fail(origin.at(entry.first), ": key '", name, "' appears twice");
    key->set(options, entry.second, origin);
    if (key->without_effect) ignored.push_back(name);
  }
  warn_without_effect(source, ignored);
}

void apply_config_override(DistillOptions& options, const std::string& kv) {
  const size_t eq = kv.find('=');
  if (eq == std::string::npos || eq == 0) usage_fail("--set ", kv, ": expected key=value");
  const std::string name = kv.substr(0, eq);
  const Origin origin{"--set " + kv, true};
  const Key* key = find_key(name);
  if (!key) unknown_key(origin.source, name);
  YAML::Node value;
  try {
    value = YAML::Load(kv.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    fail(origin.source, ": invalid YAML value: ", e.msg);
  }
  key->set(options, value, origin);
  if (key->without_effect) warn_without_effect(origin.source, {name});
}

DistillOptions load_run_config(const std::filesystem::path& path, const std::vector<std::string>& overrides,
                               train::RunKind kind, train::OptionsUse use) {
  DistillOptions options;
  apply_config_text(options, read_file(path), path.string());
  for (const auto& kv : overrides) apply_config_override(options, kv);
  try {
    train::validate_distill_options(options, kind, use);
  } catch (const Error& e) {
    fail(path.string(), ": ", e.what());
  }
  return options;
}

std::string config_reference_markdown() {
  const DistillOptions defaults;
  std::ostringstream out;
  out << "# Run configuration reference\n\n"
      << "<!-- Generated from src/cli/run-config.cpp by build-*/tests/gen_config_doc; do not edit by hand. -->\n\n"
      << "`kdae distill --config run.yaml` and `kdae align --config run.yaml` read a YAML mapping of the keys below "
         "(see examples/run_kd.yaml and examples/run_dae.yaml). `--set key=value` (repeatable) overrides one key "
         "after the file is read; the value is parsed as YAML with the same rules. Unknown keys, a key given twice "
         "and values of the wrong type are errors naming the file, line and key. Every key takes effect, except "
         "those of the last section, which the reference's (kd-dae) configs carry: they are accepted with one warning "
         "naming them (docs/migrating.md). Keys marked "
         "\"no\" under *resume* may change when resuming, all others are covered by the config hash stored in "
         "each checkpoint.\n";
  std::string section;
  for (const auto& k : key_table()) {
    if (k.section != section) {
      section = k.section;
      out << "\n## " << section << "\n\n| key | type | default | resume | meaning |\n|---|---|---|---|---|\n";
    }
    std::string help = k.help, type = k.type;
    for (std::string* s : {&help, &type})
      for (size_t p = 0; (p = s->find('|', p)) != std::string::npos; p += 2) s->replace(p, 1, "\\|");
    out << "| `" << k.name << "` | " << type << " | `" << k.show(defaults) << "` | "
        << (k.resume_relevant ? "yes" : "no") << " | " << help << " |\n";
  }
  return out.str();
}

std::string resume_relevant_config(const DistillOptions& options) {
  std::string out;
  for (const auto& k : key_table())
    if (k.resume_relevant) out += k.name + ": " + k.show(options) + "\n";
  return out;
}

std::string config_hash(const DistillOptions& options) { return fnv1a_hex(resume_relevant_config(options)); }

}  // namespace kdae::cli
