#include "model/model-config.h"

#include "common/error.h"
#include "common/files.h"

namespace kdae::model {
namespace {

using nlohmann::json;

struct Reader {
  const json& j;
  const std::string& source;

  bool present(const char* key) const { return j.contains(key) && !j[key].is_null(); }
  int64_t integer(const char* key) const {
    if (!present(key)) fail(source, ": missing key '", key, "'");
    if (!j[key].is_number_integer()) fail(source, ": key '", key, "' must be an integer, got ", j[key].dump());
    return j[key].get<int64_t>();
  }
  int64_t integer_or(const char* key, int64_t fallback) const { return present(key) ? integer(key) : fallback; }
  double number_or(const char* key, double fallback) const {
    if (!present(key)) return fallback;
    if (!j[key].is_number()) fail(source, ": key '", key, "' must be a number, got ", j[key].dump());
    return j[key].get<double>();
  }
  bool boolean_or(const char* key, bool fallback) const {
    if (!present(key)) return fallback;
    if (!j[key].is_boolean()) fail(source, ": key '", key, "' must be true or false, got ", j[key].dump());
    return j[key].get<bool>();
  }
  std::optional<int64_t> token_id(const char* key) const {
    if (!present(key)) return std::nullopt;
    if (j[key].is_array()) return j[key].empty() ? std::nullopt : std::optional<int64_t>(j[key][0].get<int64_t>());
    return integer(key);
  }
};

std::string family_of(const json& j, const std::string& source) {
  std::string arch;
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty())
    arch = j["architectures"][0].get<std::string>();
  std::string type = j.value("model_type", "");
  static const std::pair<const char*, const char*> families[] = {
      {"LlamaForCausalLM", "llama"}, {"MistralForCausalLM", "mistral"},
      {"MixtralForCausalLM", "mixtral"}, {"Qwen2ForCausalLM", "qwen2"}};
  for (const auto& [a, t] : families)
    if (arch == a || (arch.empty() && type == t)) return t;
  fail(source, ": unsupported architecture '", arch.empty() ? type : arch,
       "' (supported: LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM, Qwen2ForCausalLM)");
}

void read_rope(const json& j, const std::string& source, ModelConfig& c) {
  // transformers 4.x: rope_theta + rope_scaling; 5.x: rope_parameters holding both.
  const json* params = nullptr;
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) params = &j["rope_parameters"];
  else if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) params = &j["rope_scaling"];
  c.rope_theta = Reader{j, source}.number_or("rope_theta", 10000.0);
  if (!params) return;
  Reader r{*params, source};
  c.rope_theta = r.number_or("rope_theta", c.rope_theta);
  std::string type = params->value("rope_type", params->value("type", std::string("default")));
  if (type == "default") return;
  if (type != "llama3") fail(source, ": rope scaling type '", type, "' is not supported (default, llama3)");
  c.rope_scaling.type = type;
  c.rope_scaling.factor = r.number_or("factor", 8.0);
  c.rope_scaling.low_freq_factor = r.number_or("low_freq_factor", 1.0);
  c.rope_scaling.high_freq_factor = r.number_or("high_freq_factor", 4.0);
  c.rope_scaling.original_max_position_embeddings = r.integer_or("original_max_position_embeddings", 8192);
}

void read_sliding_window(const json& j, const std::string& source, ModelConfig& c) {
  Reader r{j, source};
  if (c.model_type == "qwen2" && !r.boolean_or("use_sliding_window", false)) return;
  if (!r.present("sliding_window")) return;
  c.sliding_window = r.integer("sliding_window");
  if (j.contains("layer_types") && j["layer_types"].is_array()) {
    for (const auto& t : j["layer_types"]) c.sliding_layers.push_back(t.get<std::string>() == "sliding_attention");
    if (static_cast<int64_t>(c.sliding_layers.size()) != c.num_layers)
      fail(source, ": layer_types has ", c.sliding_layers.size(), " entries for ", c.num_layers, " layers");
  } else if (c.model_type == "qwen2") {
    const int64_t full_layers = r.integer_or("max_window_layers", c.num_layers);
    for (int64_t l = 0; l < c.num_layers; ++l) c.sliding_layers.push_back(l >= full_layers);
  }
}

}  // namespace

ModelConfig config_from_hf_json(const json& j, const std::string& source) {
  if (!j.is_object()) fail(source, ": not a JSON object");
  Reader r{j, source};
  ModelConfig c;
  c.original = j;
  c.model_type = family_of(j, source);
  c.architecture = c.model_type == "llama" ? "LlamaForCausalLM"
                   : c.model_type == "mistral" ? "MistralForCausalLM"
                   : c.model_type == "mixtral" ? "MixtralForCausalLM" : "Qwen2ForCausalLM";
  c.vocab_size = r.integer("vocab_size");
  c.hidden_size = r.integer("hidden_size");
  c.intermediate_size = r.integer("intermediate_size");
  c.num_layers = r.integer("num_hidden_layers");
  c.num_heads = r.integer("num_attention_heads");
  c.num_kv_heads = r.integer_or("num_key_value_heads", c.num_heads);
  c.head_dim = r.integer_or("head_dim", c.num_heads > 0 ? c.hidden_size / c.num_heads : 0);
  c.rms_norm_eps = r.number_or("rms_norm_eps", 1e-6);
  c.max_position_embeddings = r.integer_or("max_position_embeddings", 2048);
  c.tie_word_embeddings = r.boolean_or("tie_word_embeddings", false);
  if (j.value("hidden_act", std::string("silu")) != "silu")
    fail(source, ": hidden_act '", j["hidden_act"].get<std::string>(), "' is not supported (silu)");
  read_rope(j, source, c);
  if (c.model_type == "qwen2") {
    c.qkv_bias = true;
  } else if (c.model_type == "llama") {
    c.qkv_bias = c.o_bias = r.boolean_or("attention_bias", false);
    c.mlp_bias = r.boolean_or("mlp_bias", false);
  }
  if (c.model_type == "mixtral") {
    c.num_experts = r.integer("num_local_experts");
    c.experts_per_token = r.integer("num_experts_per_tok");
    c.router_aux_loss_coef = r.number_or("router_aux_loss_coef", 0.001);
  }
  read_sliding_window(j, source, c);
  c.bos_token_id = r.token_id("bos_token_id");
  c.eos_token_id = r.token_id("eos_token_id");
  c.pad_token_id = r.token_id("pad_token_id");
  if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) c.torch_dtype = j["torch_dtype"];
  if (j.contains("dtype") && j["dtype"].is_string()) c.torch_dtype = j["dtype"];

  if (c.vocab_size <= 0 || c.hidden_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 || c.num_kv_heads <= 0 ||
      c.head_dim <= 0 || c.intermediate_size <= 0)
    fail(source, ": sizes must be positive");
  if (c.num_heads % c.num_kv_heads != 0)
    fail(source, ": num_attention_heads ", c.num_heads, " is not a multiple of num_key_value_heads ", c.num_kv_heads);
  if (c.head_dim % 2 != 0) fail(source, ": head_dim ", c.head_dim, " must be even for rotary embeddings");
  if (c.is_moe() && (c.experts_per_token < 1 || c.experts_per_token > c.num_experts))
    fail(source, ": num_experts_per_tok ", c.experts_per_token, " must be in [1, ", c.num_experts, "]");
  return c;
}

ModelConfig load_config(const std::filesystem::path& model_dir) {
  const auto path = model_dir / "config.json";
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    fail(path.string(), ": not valid JSON: ", e.what());
  }
  return config_from_hf_json(j, path.string());
}

nlohmann::json config_to_hf_json(const ModelConfig& c) {
  json j = c.original.is_object() ? c.original : json::object();
  j["architectures"] = {c.architecture};
  j["model_type"] = c.model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  j["head_dim"] = c.head_dim;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["hidden_act"] = "silu";
  j.erase("rope_parameters");
  j["rope_theta"] = c.rope_theta;
  if (c.rope_scaling.type == "llama3") {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", c.rope_scaling.factor},
                         {"low_freq_factor", c.rope_scaling.low_freq_factor},
                         {"high_freq_factor", c.rope_scaling.high_freq_factor},
                         {"original_max_position_embeddings", c.rope_scaling.original_max_position_embeddings}};
  } else {
    j.erase("rope_scaling");
  }
  if (c.model_type == "llama") {
    j["attention_bias"] = c.qkv_bias;
    j["mlp_bias"] = c.mlp_bias;
  }
  if (c.is_moe()) {
    j["num_local_experts"] = c.num_experts;
    j["num_experts_per_tok"] = c.experts_per_token;
    j["router_aux_loss_coef"] = c.router_aux_loss_coef;
  }
  if (c.model_type != "llama") j["sliding_window"] = c.sliding_window ? json(*c.sliding_window) : json(nullptr);
  if (c.bos_token_id) j["bos_token_id"] = *c.bos_token_id;
  if (c.eos_token_id) j["eos_token_id"] = *c.eos_token_id;
  j["torch_dtype"] = c.torch_dtype;
  j.erase("dtype");
  return j;
}

ParameterCounts count_parameters(const ModelConfig& c) {
  const int64_t D = c.hidden_size, F = c.intermediate_size, hd = c.head_dim;
  const int64_t attn = D * c.num_heads * hd * 2 + D * c.num_kv_heads * hd * 2 +
                       (c.qkv_bias ? (c.num_heads + 2 * c.num_kv_heads) * hd : 0) + (c.o_bias ? D : 0);
  const int64_t expert = 3 * D * F + (c.mlp_bias ? 2 * F + D : 0);
  const int64_t experts = c.is_moe() ? c.num_experts * expert + c.num_experts * D : expert;
  const int64_t active_experts = c.is_moe() ? c.experts_per_token * expert + c.num_experts * D : expert;
  const int64_t norms = 2 * D;
  ParameterCounts p;
  p.embedding = c.vocab_size * D;
  const int64_t head = c.tie_word_embeddings ? 0 : c.vocab_size * D;
  p.total = p.embedding + head + D + c.num_layers * (attn + experts + norms);
  p.active_per_token = p.embedding + head + D + c.num_layers * (attn + active_experts + norms);
  return p;
}

}  // namespace kdae::model
