#include "io/tensor-names.h"

#include <regex>

namespace kdae::io {
namespace {

struct LayerName {
  const char* gguf;  // after "blk.N."
  const char* hf;    // after "model.layers.N."
};
// Suffixes ".weight" / ".bias" carry over unchanged.
const LayerName kLayerNames[] = {
    {"attn_norm", "input_layernorm"},
    {"attn_q", "self_attn.q_proj"},
    {"attn_k", "self_attn.k_proj"},
    {"attn_v", "self_attn.v_proj"},
    {"attn_output", "self_attn.o_proj"},
    {"ffn_norm", "post_attention_layernorm"},
    {"ffn_gate", "mlp.gate_proj"},
    {"ffn_up", "mlp.up_proj"},
    {"ffn_down", "mlp.down_proj"},
    {"ffn_gate_inp", "block_sparse_moe.gate"},
};
// Mixtral's w1 = gate, w2 = down, w3 = up.
const LayerName kExpertNames[] = {
    {"ffn_gate_exps", "w1"},
    {"ffn_down_exps", "w2"},
    {"ffn_up_exps", "w3"},
};
// Older llama.cpp Mixtral files kept one tensor per expert: blk.N.ffn_gate.E.weight.
const LayerName kOldExpertNames[] = {
    {"ffn_gate", "w1"},
    {"ffn_down", "w2"},
    {"ffn_up", "w3"},
};
const LayerName kGlobalNames[] = {
    {"token_embd.weight", "model.embed_tokens.weight"},
    {"output_norm.weight", "model.norm.weight"},
    {"output.weight", "lm_head.weight"},
};

}  // namespace

std::optional<HfName> gguf_to_hf_name(const std::string& g) {
  for (const auto& n : kGlobalNames)
    if (g == n.gguf) return HfName{n.hf, -1};
  static const std::regex layer(R"(blk\.(\d+)\.([a-z_]+)\.(weight|bias))");
  static const std::regex old_expert(R"(blk\.(\d+)\.(ffn_gate|ffn_down|ffn_up)\.(\d+)\.weight)");
  std::smatch m;
  if (std::regex_match(g, m, layer)) {
    const std::string prefix = "model.layers." + m[1].str() + ".";
    for (const auto& n : kLayerNames)
      if (m[2] == n.gguf) return HfName{prefix + n.hf + "." + m[3].str(), -1};
    for (const auto& n : kExpertNames)
      if (m[2] == n.gguf && m[3] == "weight")
        return HfName{prefix + "block_sparse_moe.experts.{E}." + n.hf + ".weight", -2};
    return std::nullopt;
  }
  if (std::regex_match(g, m, old_expert)) {
    for (const auto& n : kOldExpertNames)
      if (m[2] == n.gguf)
        return HfName{"model.layers." + m[1].str() + ".block_sparse_moe.experts." + m[3].str() + "." + n.hf + ".weight",
                      -1};
  }
  return std::nullopt;
}

std::string hf_expert_name(const std::string& pattern, int expert) {
  std::string out = pattern;
  const auto at = out.find("{E}");
  if (at != std::string::npos) out.replace(at, 3, std::to_string(expert));
  return out;
}

std::optional<std::pair<std::string, int>> hf_to_gguf_name(const std::string& h) {
  for (const auto& n : kGlobalNames)
    if (h == n.hf) return std::make_pair(std::string(n.gguf), -1);
  static const std::regex layer(R"(model\.layers\.(\d+)\.(.+)\.(weight|bias))");
  static const std::regex expert(R"(model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight)");
  std::smatch m;
  if (std::regex_match(h, m, expert)) {
    for (const auto& n : kExpertNames)
      if (m[3] == n.hf) return std::make_pair("blk." + m[1].str() + "." + n.gguf + ".weight", std::stoi(m[2].str()));
  }
  if (std::regex_match(h, m, layer)) {
    for (const auto& n : kLayerNames)
      if (m[2] == n.hf) return std::make_pair("blk." + m[1].str() + "." + n.gguf + "." + m[3].str(), -1);
  }
  return std::nullopt;
}

bool is_rope_permuted(const std::string& arch, const std::string& gguf_name) {
  // llama.cpp permutes q/k rows for every model it files under "llama" (Llama, Mistral, Mixtral);
  // qwen2 keeps HF's half-split rotary layout and needs nothing.
  if (arch != "llama" && arch != "mistral") return false;
  static const std::regex qk(R"(blk\.\d+\.attn_[qk]\.(weight|bias))");
  return std::regex_match(gguf_name, qk);
}

const std::vector<HParamKey>& hparam_keys() {
  static const std::vector<HParamKey> keys = {
      {"context_length", "max_position_embeddings", false},
      {"embedding_length", "hidden_size", false},
      {"block_count", "num_hidden_layers", false},
      {"feed_forward_length", "intermediate_size", false},
      {"attention.head_count", "num_attention_heads", false},
      {"attention.head_count_kv", "num_key_value_heads", false},
      {"attention.key_length", "head_dim", false},
      {"rope.freq_base", "rope_theta", true},
      {"attention.layer_norm_rms_epsilon", "rms_norm_eps", true},
      {"expert_count", "num_local_experts", false},
      {"expert_used_count", "num_experts_per_tok", false},
      {"vocab_size", "vocab_size", false},
      {"attention.sliding_window", "sliding_window", false},
  };
  return keys;
}

std::optional<std::string> gguf_arch_for_hf(const std::string& a) {
  if (a == "LlamaForCausalLM" || a == "MistralForCausalLM" || a == "MixtralForCausalLM") return "llama";
  if (a == "Qwen2ForCausalLM") return "qwen2";
  return std::nullopt;
}

std::optional<std::string> hf_architecture_for_gguf(const std::string& arch, bool has_experts) {
  if (arch == "llama") return has_experts ? "MixtralForCausalLM" : "LlamaForCausalLM";
  if (arch == "mistral") return has_experts ? "MixtralForCausalLM" : "MistralForCausalLM";
  if (arch == "qwen2") return "Qwen2ForCausalLM";
  return std::nullopt;
}

std::string hf_model_type(const std::string& a) {
  if (a == "MistralForCausalLM") return "mistral";
  if (a == "MixtralForCausalLM") return "mixtral";
  if (a == "Qwen2ForCausalLM") return "qwen2";
  return "llama";
}

}  // namespace kdae::io
