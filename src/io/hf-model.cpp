#include "io/hf-model.h"

#include <set>

#include "common/device.h"
#include "common/error.h"
#include "common/files.h"
#include "io/safetensors.h"

namespace kdae::io {
namespace fs = std::filesystem;

namespace {

// Checkpoint entries that carry no weights we need (old HF exports saved rotary buffers).
bool ignorable(const std::string& name) { return name.find("rotary_emb.inv_freq") != std::string::npos; }

bool is_adapter(const std::string& name) { return name.find("lora_") != std::string::npos; }

struct DefaultDtypeGuard {
  caffe2::TypeMeta saved = torch::get_default_dtype();
  explicit DefaultDtypeGuard(torch::ScalarType t) { torch::set_default_dtype(c10::scalarTypeToTypeMeta(t)); }
  ~DefaultDtypeGuard() { torch::set_default_dtype(saved); }
};

std::string shape_text(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

const char* kPassThroughFiles[] = {"generation_config.json", "tokenizer.json", "tokenizer_config.json",
                                   "tokenizer.model", "special_tokens_map.json", "added_tokens.json",
                                   "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json"};

}  // namespace

model::Transformer load_model(const fs::path& dir, const LoadOptions& options) {
  model::ModelConfig config = model::load_config(dir);
  CheckpointReader reader(dir);
  model::Transformer model(nullptr);
  {
    // Build directly in the target dtype: a bf16 model never exists in fp32 on the host.
    DefaultDtypeGuard guard(options.dtype == torch::kFloat32 ? torch::kFloat32 : options.dtype);
    torch::NoGradGuard no_grad;
    model = model::Transformer(config);
  }
  std::set<std::string> consumed;
  torch::NoGradGuard no_grad;
  for (auto& item : model->named_parameters()) {
    const std::string& name = item.key();
    if (is_adapter(name)) continue;
    if (!reader.has(name))
      fail(dir.string(), ": checkpoint is missing tensor '", name, "' (expected shape ", shape_text(item.value().sizes().vec()), ")");
    const auto got = reader.shape(name);
    if (got != item.value().sizes().vec())
      fail(dir.string(), ": tensor '", name, "' has shape ", shape_text(got), ", expected ",
           shape_text(item.value().sizes().vec()), " from config.json");
    item.value().copy_(reader.get(name));
    consumed.insert(name);
  }
  for (const auto& name : reader.names()) {
    if (consumed.count(name) || ignorable(name)) continue;
    if (name == "lm_head.weight" && config.tie_word_embeddings) continue;  // some exporters write the tied copy
    fail(dir.string(), ": unexpected tensor '", name, "' for a ", config.architecture, " with this config.json");
  }
  model->to(options.device);
  return model;
}

std::vector<std::pair<std::string, torch::Tensor>> checkpoint_tensors(model::Transformer& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (auto& item : model->named_parameters())
    if (!is_adapter(item.key())) out.emplace_back(item.key(), item.value());
  return out;
}

void save_model(model::Transformer& model, const fs::path& dir, const SaveOptions& options) {
  NamedTensors tensors;
  for (auto& [name, tensor] : checkpoint_tensors(model)) tensors.emplace_back(name, tensor.detach());
  save_model_files(model->config(), tensors, dir, options);
}

void save_model_files(const model::ModelConfig& model_config, const NamedTensors& model_tensors, const fs::path& dir,
                      const SaveOptions& options) {
  if (fs::exists(dir) && !options.overwrite) fail(dir.string(), ": already exists (pass --overwrite to replace it)");
  const fs::path staging = staging_path_for(dir);
  remove_tree(staging);
  fs::create_directories(staging);
  try {
    model::ModelConfig config = model_config;
    config.torch_dtype = dtype_name(options.dtype);
    write_file_atomic(staging / "config.json", model::config_to_hf_json(config).dump(2) + "\n");
    NamedTensors tensors;
    for (auto& [name, tensor] : model_tensors) tensors.emplace_back(name, tensor.to(options.dtype));
    write_checkpoint(staging, tensors, options.max_shard_bytes);
    if (!options.copy_tokenizer_from.empty()) {
      for (const char* file : kPassThroughFiles) {
        const fs::path src = options.copy_tokenizer_from / file;
        if (fs::exists(src)) write_file_atomic(staging / file, read_file(src));
      }
    }
    if (!fs::exists(staging / "generation_config.json")) {
      nlohmann::json gen = {{"_from_model_config", true}};
      if (config.bos_token_id) gen["bos_token_id"] = *config.bos_token_id;
      if (config.eos_token_id) gen["eos_token_id"] = *config.eos_token_id;
      write_file_atomic(staging / "generation_config.json", gen.dump(2) + "\n");
    }
    publish_directory(staging, dir, options.overwrite);
  } catch (...) {
    remove_tree(staging);
    throw;
  }
}

}  // namespace kdae::io
