#include "train/student.h"

#include <iostream>
#include <algorithm>

#include "common/device.h"
#include "common/error.h"
#include "io/hf-model.h"
#include "model/lora.h"

namespace kdae::train {
namespace {

// The frozen base needs no fp32 master copy: under a bf16/fp16 autocast it is held in that dtype
// (half the memory of a 7B base) while the adapters, which the optimizer updates, stay fp32.
void hold_frozen_base_in(model::Transformer& student, torch::ScalarType compute_dtype) {
  if (compute_dtype == torch::kFloat32) return;
  torch::NoGradGuard no_grad;
  for (auto& p : student->parameters())
    if (!p.requires_grad()) p.set_data(p.to(compute_dtype));
}

void load_init_adapters(model::Transformer& student, const io::LoraSettings& run, const std::string& dir) {
  io::PeftAdapters adapters = io::read_peft_adapters(dir);
  const auto& file = adapters.settings;
  auto sorted = [](std::vector<std::string> v) {
    std::sort(v.begin(), v.end());
    return v;
  };
  if (file.rank != run.rank || file.alpha != run.alpha || sorted(file.target_modules) != sorted(run.target_modules))
    fail("peft_init_adapters ", dir, " has r ", file.rank, ", lora_alpha ", file.alpha, " and ",
         file.target_modules.size(), " target modules; this run has peft_lora_r ", run.rank, ", peft_lora_alpha ",
         run.alpha, " and ", run.target_modules.size(), " (set them to the adapters' values)");
  model::load_lora_tensors(student, adapters.tensors, dir);
}

void freeze_matching(model::Transformer& student, const std::string& part) {
  for (auto& item : student->named_parameters())
    if (item.key().find(part) != std::string::npos) item.value().set_requires_grad(false);
}

}  // namespace

io::LoraSettings lora_settings(const DistillOptions& o, const model::ModelConfig& config) {
  io::LoraSettings s;
  s.rank = o.peft_lora_r;
  s.alpha = o.peft_lora_alpha;
  s.dropout = o.peft_lora_dropout;
  s.target_modules = o.peft_target_modules.empty() ? model::default_lora_targets(config) : o.peft_target_modules;
  s.base_model = o.base_model_path;
  return s;
}

void save_adapters(model::Transformer& student, const DistillOptions& o, const std::filesystem::path& dir) {
  io::write_peft_adapters(dir, {lora_settings(o, student->config()), model::lora_tensors(student)});
}

model::Transformer load_student(const DistillOptions& o, torch::Device device) {
  auto student = io::load_model(o.base_model_path, {device, torch::kFloat32});
  if ((o.freeze_routers || o.freeze_experts) && !student->config().is_moe())
    fail("freeze_routers / freeze_experts need an MoE student; ", o.base_model_path, " is dense");
  if (o.use_peft) {
    const io::LoraSettings settings = lora_settings(o, student->config());
    model::add_lora(student, settings, o.base_model_path);
    if (!o.peft_init_adapters.empty()) load_init_adapters(student, settings, o.peft_init_adapters);
    hold_frozen_base_in(student, parse_dtype(o.dtype));
  }
  if (o.freeze_routers) freeze_matching(student, ".block_sparse_moe.gate.");
  if (o.freeze_experts) freeze_matching(student, ".block_sparse_moe.experts.");
  student->gradient_checkpointing = o.gradient_checkpointing;
  student->checkpoint_every = o.gradient_checkpointing_every;
  student->train();
  return student;
}

NamedTensors trainable_parameters(model::Transformer& student) {
  NamedTensors out;
  for (const auto& item : student->named_parameters())
    if (item.value().requires_grad()) out.emplace_back(item.key(), item.value());
  if (out.empty()) fail("the student has no trainable parameter (everything is frozen)");
  return out;
}

void save_final_model(model::Transformer& student, const DistillOptions& o, const std::filesystem::path& dir) {
  model::merge_lora(student);
  io::SaveOptions save;
  save.dtype = parse_dtype(o.dtype);
  save.overwrite = o.overwrite;
  save.copy_tokenizer_from = o.base_model_path;
  io::save_model(student, dir, save);
}

}  // namespace kdae::train
