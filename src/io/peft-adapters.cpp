#include "io/peft-adapters.h"

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/files.h"

namespace kdae::io {
namespace fs = std::filesystem;
namespace {

constexpr const char* kPeftPrefix = "base_model.model.";
constexpr const char* kConfigFile = "adapter_config.json";
constexpr const char* kWeightsFile = "adapter_model.safetensors";

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

nlohmann::json config_json(const LoraSettings& s) {
  return {{"peft_type", "LORA"},
          {"task_type", "CAUSAL_LM"},
          {"base_model_name_or_path", s.base_model},
          {"r", s.rank},
          {"lora_alpha", s.alpha},
          {"lora_dropout", s.dropout},
          {"target_modules", s.target_modules},
          {"bias", "none"},
          {"fan_in_fan_out", false},
          {"use_rslora", false},
          {"use_dora", false},
          {"init_lora_weights", true},
          {"inference_mode", true},
          {"modules_to_save", nullptr},
          {"rank_pattern", nlohmann::json::object()},
          {"alpha_pattern", nlohmann::json::object()}};
}

// PEFT options that change the arithmetic: kdae refuses them rather than load adapters wrongly.
void check_supported(const nlohmann::json& j, const fs::path& file) {
  if (j.value("peft_type", std::string()) != "LORA")
    fail(file.string(), ": peft_type is '", j.value("peft_type", std::string("missing")), "', kdae reads LORA adapters only");
  for (const char* flag : {"use_dora", "use_rslora", "fan_in_fan_out"})
    if (j.contains(flag) && j[flag].is_boolean() && j[flag].get<bool>())
      fail(file.string(), ": ", flag, " is true; kdae's LoRA is plain LoRA (scale alpha / r)");
  for (const char* pattern : {"rank_pattern", "alpha_pattern"})
    if (j.contains(pattern) && j[pattern].is_object() && !j[pattern].empty())
      fail(file.string(), ": ", pattern, " is set; kdae needs one rank and one alpha for every adapted layer");
  if (j.value("bias", std::string("none")) != "none")
    fail(file.string(), ": bias is '", j["bias"].get<std::string>(), "'; kdae trains no biases with LoRA");
  if (j.contains("modules_to_save") && !j["modules_to_save"].is_null() && !j["modules_to_save"].empty())
    fail(file.string(), ": modules_to_save is set; kdae adapters hold LoRA tensors only");
}

}  // namespace

std::string peft_tensor_name(const std::string& kdae_name) {
  if (!ends_with(kdae_name, ".lora_A") && !ends_with(kdae_name, ".lora_B"))
    fail("tensor '", kdae_name, "' is no LoRA adapter tensor");
  return kPeftPrefix + kdae_name + ".weight";
}

std::string kdae_tensor_name(const std::string& peft_name) {
  const std::string prefix = kPeftPrefix;
  std::string name = peft_name;
  if (name.rfind(prefix, 0) == 0) name = name.substr(prefix.size());
  if (ends_with(name, ".weight")) name = name.substr(0, name.size() - 7);
  // Anything else (a non-default adapter name, <module>.lora_A.<adapter>.weight; embeddings; biases) is refused.
  if (!ends_with(name, ".lora_A") && !ends_with(name, ".lora_B"))
    fail("tensor '", peft_name, "' is no LoRA A/B matrix under PEFT's naming (", prefix, "<module>.lora_A.weight)");
  return name;
}

void write_peft_adapters(const fs::path& dir, const PeftAdapters& adapters) {
  if (adapters.tensors.empty()) fail("no LoRA tensors to write to ", dir.string(), " (use_peft is off?)");
  const fs::path staging = staging_path_for(dir);
  remove_tree(staging);
  fs::create_directories(staging);
  try {
    NamedTensors renamed;
    for (const auto& [name, t] : adapters.tensors) renamed.emplace_back(peft_tensor_name(name), t.detach());
    write_safetensors(staging / kWeightsFile, renamed);
    write_file_atomic(staging / kConfigFile, config_json(adapters.settings).dump(2) + "\n");
    publish_directory(staging, dir, /*overwrite=*/true);
  } catch (...) {
    remove_tree(staging);
    throw;
  }
}

PeftAdapters read_peft_adapters(const fs::path& dir) {
  const fs::path config_file = dir / kConfigFile, weights_file = dir / kWeightsFile;
  if (!fs::exists(config_file)) fail(dir.string(), " holds no ", kConfigFile, ": not a PEFT adapter directory");
  if (!fs::exists(weights_file))
    fail(dir.string(), " holds no ", kWeightsFile, " (adapter_model.bin, PyTorch pickles, is not read: re-save with "
         "safe_serialization=True)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(config_file));
  } catch (const nlohmann::json::exception& e) {
    fail(config_file.string(), ": not valid JSON (", e.what(), ")");
  }
  check_supported(j, config_file);
  PeftAdapters out;
  try {
    out.settings.rank = j.at("r").get<int64_t>();
    out.settings.alpha = j.at("lora_alpha").get<double>();
    out.settings.dropout = j.value("lora_dropout", 0.0);
    const auto& targets = j.at("target_modules");
    if (targets.is_string()) fail(config_file.string(), ": target_modules is a regex ('", targets.get<std::string>(),
                                  "'); kdae needs a list of module names");
    out.settings.target_modules = targets.get<std::vector<std::string>>();
    out.settings.base_model = j.value("base_model_name_or_path", std::string());
  } catch (const nlohmann::json::exception& e) {
    fail(config_file.string(), ": ", e.what());
  }
  SafetensorsFile file(weights_file);
  for (const auto& name : file.names()) out.tensors.emplace_back(kdae_tensor_name(name), file.get(name));
  return out;
}

}  // namespace kdae::io
