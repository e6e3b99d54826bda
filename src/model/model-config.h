// Hyper-parameters of the one transformer kdae implements. Llama, Mistral, Qwen2 and Mixtral are
// configurations of it (Mixtral = the MoE branch), read from and written to HF config.json.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace kdae::model {

struct RopeScaling {
  std::string type = "default";  // "default" or "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string architecture = "LlamaForCausalLM";  // HF class name
  std::string model_type = "llama";
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  int64_t max_position_embeddings = 2048;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;   // Qwen2, or Llama attention_bias
  bool o_bias = false;     // Llama attention_bias
  bool mlp_bias = false;   // Llama mlp_bias
  std::optional<int64_t> sliding_window;      // keys within this many positions of the query
  std::vector<bool> sliding_layers;           // per layer: does the window apply (empty = all layers)
  int64_t num_experts = 0;                    // 0 = dense MLP
  int64_t experts_per_token = 0;
  double router_aux_loss_coef = 0.0;
  std::optional<int64_t> bos_token_id, eos_token_id, pad_token_id;
  std::string torch_dtype = "float32";
  // The config.json as read, so unknown keys survive a load/save round trip.
  nlohmann::json original;

  bool is_moe() const { return num_experts > 0; }
  bool window_applies(int64_t layer) const {
    return sliding_window && (sliding_layers.empty() || sliding_layers[static_cast<size_t>(layer)]);
  }
};

// Parses config.json; `source` names the file in errors (missing key, unsupported architecture).
ModelConfig config_from_hf_json(const nlohmann::json& json, const std::string& source);
ModelConfig load_config(const std::filesystem::path& model_dir);
// config.json content that transformers loads as the same model.
nlohmann::json config_to_hf_json(const ModelConfig& config);

struct ParameterCounts {
  int64_t total = 0;
  int64_t active_per_token = 0;  // MoE: only experts_per_token experts count
  int64_t embedding = 0;
};
ParameterCounts count_parameters(const ModelConfig& config);

}  // namespace kdae::model
