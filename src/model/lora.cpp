#include "model/lora.h"

#include <map>
#include <set>
#include <sstream>

#include "common/error.h"
#include "model/layers.h"

namespace kdae::model {
namespace {

std::string last_component(const std::string& name) {
  const auto dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

template <typename Visit>
void for_each_linear(Transformer& model, Visit visit) {
  for (const auto& item : model->named_modules())
    if (auto* linear = dynamic_cast<LinearImpl*>(item.value().get())) visit(item.key(), *linear);
}

}  // namespace

std::vector<std::string> default_lora_targets(const ModelConfig& config) {
  if (config.is_moe()) return {"q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3"};
  return {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
}

void add_lora(Transformer& model, const io::LoraSettings& settings, const std::string& model_name) {
  const std::set<std::string> targets(settings.target_modules.begin(), settings.target_modules.end());
  std::set<std::string> matched, available;
  for (auto& p : model->parameters()) p.set_requires_grad(false);
  for_each_linear(model, [&](const std::string& name, LinearImpl& linear) {
    const std::string suffix = last_component(name);
    available.insert(suffix);
    if (!targets.count(suffix)) return;
    linear.enable_lora(settings.rank, settings.alpha, settings.dropout);
    matched.insert(suffix);
  });
  for (const auto& t : targets) {
    if (matched.count(t)) continue;
    std::ostringstream names;
    for (const auto& a : available) names << (names.tellp() ? ", " : "") << a;
    fail("LoRA target module '", t, "' is no linear layer of ", model_name, " (its linear layers: ", names.str(),
         "; the router block_sparse_moe.gate counts as 'gate')");
  }
}

io::NamedTensors lora_tensors(Transformer& model) {
  io::NamedTensors out;
  for (const auto& item : model->named_parameters()) {
    const std::string suffix = last_component(item.key());
    if (suffix == "lora_A" || suffix == "lora_B") out.emplace_back(item.key(), item.value());
  }
  return out;
}

void load_lora_tensors(Transformer& model, const io::NamedTensors& tensors, const std::string& source) {
  std::map<std::string, torch::Tensor> have;
  for (auto& [name, t] : lora_tensors(model)) have[name] = t;
  torch::NoGradGuard no_grad;
  std::set<std::string> loaded;
  for (const auto& [name, t] : tensors) {
    auto it = have.find(name);
    if (it == have.end())
      fail(source, ": adapter tensor '", name, "' has no LoRA layer in the model (other target_modules?)");
    if (it->second.sizes() != t.sizes())
      fail(source, ": adapter tensor '", name, "' has shape ", t.sizes(), ", the model's is ", it->second.sizes(),
           " (another rank or base model?)");
    it->second.copy_(t);
    loaded.insert(name);
  }
  for (const auto& [name, t] : have)
    if (!loaded.count(name)) fail(source, ": no tensor for the model's adapter '", name, "'");
}

void merge_lora(Transformer& model) {
  for_each_linear(model, [](const std::string&, LinearImpl& linear) { linear.merge_lora(); });
}

}  // namespace kdae::model
