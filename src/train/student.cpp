#include "train/student.h"

#include <iostream>
#include <set>

#include "common/device.h"
#include "common/error.h"
#include "io/hf-model.h"
#include "model/layers.h"

namespace kdae::train {
namespace {

std::string last_component(const std::string& name) {
  const auto dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

void add_lora(model::Transformer& student, const DistillOptions& o) {
  const std::set<std::string> targets(o.peft_target_modules.begin(), o.peft_target_modules.end());
  std::set<std::string> matched;
  for (auto& p : student->parameters()) p.set_requires_grad(false);
  for (const auto& item : student->named_modules()) {
    auto* linear = dynamic_cast<model::LinearImpl*>(item.value().get());
    const std::string suffix = last_component(item.key());
    if (!linear || !targets.count(suffix)) continue;
    linear->enable_lora(o.peft_lora_r, o.peft_lora_alpha, o.peft_lora_dropout);
    matched.insert(suffix);
  }
  for (const auto& t : targets)
    if (!matched.count(t))
      fail("config key 'peft_target_modules' names '", t, "', which is no linear layer of the student ",
           o.base_model_path, " (names are the last part of HF parameter names, e.g. q_proj, gate_proj, w1)");
}

void freeze_matching(model::Transformer& student, const std::string& part) {
  for (auto& item : student->named_parameters())
    if (item.key().find(part) != std::string::npos) item.value().set_requires_grad(false);
}

}  // namespace

model::Transformer load_student(const DistillOptions& o, torch::Device device) {
  auto student = io::load_model(o.base_model_path, {device, torch::kFloat32});
  if ((o.freeze_routers || o.freeze_experts) && !student->config().is_moe())
    fail("freeze_routers / freeze_experts need an MoE student; ", o.base_model_path, " is dense");
  if (o.use_peft) add_lora(student, o);
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
  for (const auto& item : student->named_modules())
    if (auto* linear = dynamic_cast<model::LinearImpl*>(item.value().get())) linear->merge_lora();
  io::SaveOptions save;
  save.dtype = parse_dtype(o.dtype);
  save.overwrite = o.overwrite;
  save.copy_tokenizer_from = o.base_model_path;
  io::save_model(student, dir, save);
}

}  // namespace kdae::train
