// THE registry of names shared by Hugging Face checkpoints and GGUF (llama.cpp) files for the Llama
// family (llama, mistral, qwen2, mixtral): tensor names both ways and hyper-parameter keys. Every
// GGUF reader and writer goes through here; torch-free.
//
// Per-layer tensors (N = layer):           GGUF                     HF
//   attention norm                          blk.N.attn_norm          model.layers.N.input_layernorm
//   q / k / v / o (weight, qwen2 q/k/v bias) blk.N.attn_{q,k,v,output} model.layers.N.self_attn.{q,k,v,o}_proj
//   ffn norm                                blk.N.ffn_norm           model.layers.N.post_attention_layernorm
//   dense MLP                               blk.N.ffn_{gate,up,down} model.layers.N.mlp.{gate,up,down}_proj
//   MoE router                              blk.N.ffn_gate_inp       model.layers.N.block_sparse_moe.gate
//   MoE experts, stacked (E, rows, cols)    blk.N.ffn_{gate,down,up}_exps  ...block_sparse_moe.experts.E.w{1,2,3}
// Globals: token_embd <-> model.embed_tokens, output_norm <-> model.norm, output <-> lm_head.
#pragma once
#include <optional>
#include <string>
#include <vector>

namespace kdae::io {

struct HfName {
  std::string name;  // HF tensor name
  int expert = -1;   // >= 0: this HF tensor is slice `expert` of a stacked GGUF expert tensor
};

// GGUF tensor name -> HF name (for stacked experts: the HF name pattern with "{E}" where the expert
// index goes, and expert = -2 to say "stacked"). nullopt for names with no HF counterpart
// (e.g. rope_freqs).
std::optional<HfName> gguf_to_hf_name(const std::string& gguf_name);

// Expands "{E}" in a stacked-expert HF pattern.
std::string hf_expert_name(const std::string& pattern, int expert);

// HF tensor name -> GGUF name; for an expert tensor, the stacked GGUF name and the expert index.
std::optional<std::pair<std::string, int>> hf_to_gguf_name(const std::string& hf_name);

// Whether llama.cpp's converter permuted this tensor's rows for its rope layout (q/k of llama-arch).
bool is_rope_permuted(const std::string& arch, const std::string& gguf_name);

// Hyper-parameters: "<arch>.<suffix>" in GGUF <-> a config.json key in HF.
struct HParamKey {
  const char* gguf_suffix;
  const char* hf_key;
  bool is_float;
};
const std::vector<HParamKey>& hparam_keys();

// llama.cpp architecture name for an HF "architectures" entry, and back.
std::optional<std::string> gguf_arch_for_hf(const std::string& hf_architecture);
// HF class for a GGUF file: arch plus whether it has experts (llama + experts = Mixtral).
std::optional<std::string> hf_architecture_for_gguf(const std::string& arch, bool has_experts);
// HF config "model_type" for an HF class (LlamaForCausalLM -> llama).
std::string hf_model_type(const std::string& hf_architecture);

}  // namespace kdae::io
