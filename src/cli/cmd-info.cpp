// kdae info: what a model directory holds, without loading its weights.
#include <iostream>

#include "cli/commands.h"
#include "io/safetensors.h"
#include "model/model-config.h"

namespace kdae::cli {
namespace {

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) bytes /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f %s", bytes, units[u]);
  return buf;
}

int run_info(const Args& args) {
  const std::string dir = args.get("model");
  const model::ModelConfig c = model::load_config(dir);
  io::CheckpointReader reader(dir);
  std::map<std::string, int64_t> dtypes;
  double stored_bytes = 0;
  for (const auto& name : reader.names()) {
    torch::Tensor t = reader.get(name);
    dtypes[c10::toString(t.scalar_type())] += t.numel();
    stored_bytes += static_cast<double>(t.nbytes());
  }
  const auto counts = model::count_parameters(c);
  nlohmann::ordered_json out;
  out["architecture"] = c.architecture;
  out["layers"] = c.num_layers;
  out["hidden_size"] = c.hidden_size;
  out["heads"] = c.num_heads;
  out["kv_heads"] = c.num_kv_heads;
  out["head_dim"] = c.head_dim;
  out["intermediate_size"] = c.intermediate_size;
  out["vocab_size"] = c.vocab_size;
  if (c.is_moe()) {
    out["experts"] = c.num_experts;
    out["experts_per_token"] = c.experts_per_token;
  }
  if (c.sliding_window) out["sliding_window"] = *c.sliding_window;
  out["tied_embeddings"] = c.tie_word_embeddings;
  out["parameters"] = counts.total;
  out["active_parameters_per_token"] = counts.active_per_token;
  out["stored_dtypes"] = dtypes;
  out["weights_memory"] = human_bytes(stored_bytes);
  out["bf16_memory"] = human_bytes(2.0 * static_cast<double>(counts.total));
  std::cout << out.dump(2) << "\n";
  return 0;
}

}  // namespace

Command info_command() {
  return {"info", "print architecture, parameter counts (total and active per token), dtypes and memory", "",
          {{"model", "DIR", "HF model directory", "", false, true}}, run_info};
}

}  // namespace kdae::cli
