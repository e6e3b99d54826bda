// Sparse upcycling: a Mixtral-architecture MoE built from dense models. Attention, norms, embeddings
// and head come from the base; expert e's MLP (w1/w3/w2) is donor e's gate_proj/up_proj/down_proj (or
// a copy of the base's); each layer's router (block_sparse_moe.gate, (E, D)) is initialised randomly
// or from per-expert prompts. Modes and the prompts file format: docs/moe.md.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace kdae::io {

enum class RouterInit {
  Random,  // normal(0, router_std), seeded
  Embed,   // per expert: normalised mean token embedding of its prompts (same for every layer)
  Hidden,  // per layer and expert: normalised mean MoE input of its prompts, run through the base
};
RouterInit parse_router_init(const std::string& name);  // "random", "embed", "hidden"

struct UpcycleOptions {
  std::filesystem::path base;                 // dense HF directory: attention, norms, embeddings, head
  std::vector<std::filesystem::path> donors;  // one per expert; empty = num_experts copies of the base
  int64_t num_experts = 2;
  int64_t top_k = 2;
  RouterInit router = RouterInit::Random;
  std::filesystem::path prompts;  // JSONL {"expert": e, "text": "..."}; required by embed and hidden
  double noise = 0.0;             // expert weights += noise * std(weight) * N(0, 1), per tensor
  double router_std = 0.02;       // random routers (HF's initializer_range default)
  uint64_t seed = 0;
  double aux_loss_coef = 0.02;    // config.router_aux_loss_coef
  std::filesystem::path out;
  bool overwrite = false;
};

// Writes the MoE directory atomically (staging + rename; never replaces `out` unless overwrite).
void upcycle(const UpcycleOptions& options);

// Per-expert prompt texts from the JSONL prompts file; errors name the file and line, or an expert
// without prompts.
std::vector<std::vector<std::string>> read_expert_prompts(const std::filesystem::path& path, int64_t num_experts);

}  // namespace kdae::io
