// Dimensions: L layers, E experts, D hidden, F MLP width, V vocab, T prompt tokens.
//
// Memory: the output is never built as a model. Its tensors are the base's and the donors'
// memory-mapped checkpoint tensors (CheckpointReader) plus the routers, written shard by shard, so
// resident memory stays near the routers' size; only --router hidden loads the base once (one model,
// fp32) to run the prompts, and frees it before writing. --noise materialises each noisy expert tensor.
#include "io/upcycle.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/types.h>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/files.h"
#include "io/hf-model.h"
#include "io/safetensors.h"
#include "tokenizer/tokenizer.h"

namespace kdae::io {
namespace fs = std::filesystem;
using model::ModelConfig;
using model::Transformer;
using model::ForwardOptions;
using model::ForwardOutput;
using model::load_config;

RouterInit parse_router_init(const std::string& name) {
  if (name == "random") return RouterInit::Random;
  if (name == "embed") return RouterInit::Embed;
  if (name == "hidden") return RouterInit::Hidden;
  usage_fail("--router must be random, embed or hidden, got '", name, "'");
}

std::vector<std::vector<std::string>> read_expert_prompts(const fs::path& path, int64_t num_experts) {
  std::vector<std::vector<std::string>> prompts(static_cast<size_t>(num_experts));
  const std::string text = read_file(path);
  size_t start = 0;
  for (int line = 1; start < text.size(); ++line) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string row = text.substr(start, end - start);
    start = end + 1;
    if (row.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = str(path.string(), ":", line);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(row);
    } catch (const nlohmann::json::exception& e) {
      fail(where, ": not valid JSON: ", e.what());
    }
    if (!j.is_object() || !j.contains("expert") || !j["expert"].is_number_integer())
      fail(where, ": each line needs an integer \"expert\" field, e.g. {\"expert\": 0, \"text\": \"...\"}");
    if (!j.contains("text") || !j["text"].is_string() || j["text"].get<std::string>().empty())
      fail(where, ": each line needs a non-empty string \"text\" field");
    const int64_t e = j["expert"].get<int64_t>();
    if (e < 0 || e >= num_experts) fail(where, ": expert ", e, " is outside [0, ", num_experts, ")");
    prompts[static_cast<size_t>(e)].push_back(j["text"].get<std::string>());
  }
  for (int64_t e = 0; e < num_experts; ++e)
    if (prompts[static_cast<size_t>(e)].empty())
      fail(path.string(), ": no prompts for expert ", e, " (each of the ", num_experts, " experts needs at least one)");
  return prompts;
}

namespace {

bool has_tokenizer(const fs::path& dir) { return fs::exists(dir / "tokenizer.json") || fs::exists(dir / "tokenizer.model"); }

std::string tokenizer_fingerprint(const fs::path& dir) {
  return has_tokenizer(dir) ? tok::Tokenizer::load(dir)->fingerprint() : std::string();
}

// Everything expert MLPs and the shared layers must agree on; the error names the field and both values.
void check_donor(const ModelConfig& base, const fs::path& base_dir, const std::string& base_tokenizer,
                 const fs::path& donor_dir) {
  const ModelConfig d = load_config(donor_dir);
  const std::string file = (donor_dir / "config.json").string();
  auto same = [&](const char* field, const auto& want, const auto& got) {
    if (want != got)
      fail(file, ": ", field, " is ", got, " but the base (", base_dir.string(), ") has ", want,
           "; every donor must share the base's architecture");
  };
  same("model_type", base.model_type, d.model_type);
  same("vocab_size", base.vocab_size, d.vocab_size);
  same("hidden_size", base.hidden_size, d.hidden_size);
  same("intermediate_size", base.intermediate_size, d.intermediate_size);
  same("num_hidden_layers", base.num_layers, d.num_layers);
  same("num_attention_heads", base.num_heads, d.num_heads);
  same("num_key_value_heads", base.num_kv_heads, d.num_kv_heads);
  same("head_dim", base.head_dim, d.head_dim);
  same("mlp_bias", base.mlp_bias, d.mlp_bias);
  const std::string donor_tokenizer = tokenizer_fingerprint(donor_dir);
  if (donor_tokenizer != base_tokenizer)
    fail(donor_dir.string(), ": tokenizer differs from the base's (", base_dir.string(), "): ",
         donor_tokenizer.empty() ? "the donor has no tokenizer files"
         : base_tokenizer.empty() ? "the base has no tokenizer files"
                                  : "tokenizer fingerprints differ (vocabulary, merges, normalizer or special tokens)",
         "; every donor must share the base's tokenizer");
}

void check_options(const UpcycleOptions& o, const ModelConfig& base) {
  if (o.num_experts < 1) fail("--num-experts must be >= 1, got ", o.num_experts);
  if (o.top_k < 1 || o.top_k > o.num_experts) fail("--top-k must be in [1, ", o.num_experts, "], got ", o.top_k);
  if (!o.donors.empty() && static_cast<int64_t>(o.donors.size()) != o.num_experts)
    fail("--experts lists ", o.donors.size(), " models for --num-experts ", o.num_experts, " (one donor per expert)");
  if (o.noise < 0) fail("--noise must be >= 0, got ", o.noise);
  if (o.router != RouterInit::Random && o.prompts.empty()) fail("--router embed and hidden need --prompts FILE");
  if (o.router == RouterInit::Random && !o.prompts.empty()) fail("--prompts is used only by --router embed or hidden");
  const std::string file = (o.base / "config.json").string();
  if (base.is_moe()) fail(file, ": the base is already an MoE (", base.architecture, "); upcycle a dense model");
  if (base.qkv_bias || base.o_bias || base.mlp_bias)
    fail(file, ": the base has attention or MLP biases, which MixtralForCausalLM cannot hold");
  for (bool sliding : base.sliding_layers)
    if (!sliding) fail(file, ": per-layer sliding windows (layer_types) cannot be expressed in a Mixtral config");
  if (fs::exists(o.out) && !o.overwrite) fail(o.out.string(), ": already exists (pass --overwrite to replace it)");
}

ModelConfig moe_config(const ModelConfig& base, const UpcycleOptions& o) {
  ModelConfig c = base;
  c.architecture = "MixtralForCausalLM";
  c.model_type = "mixtral";
  c.num_experts = o.num_experts;
  c.experts_per_token = o.top_k;
  c.router_aux_loss_coef = o.aux_loss_coef;
  c.sliding_layers.clear();
  // Keys of the dense families that mean nothing (or something else) to Mixtral.
  for (const char* key : {"attention_bias", "mlp_bias", "pretraining_tp", "use_sliding_window", "max_window_layers",
                          "layer_types", "architectures", "auto_map"})
    c.original.erase(key);
  return c;
}

// Each expert's prompts as token ids (with the tokenizer's special tokens), checked against V.
std::vector<std::vector<torch::Tensor>> tokenized_prompts(const UpcycleOptions& o, int64_t vocab_size) {
  if (!has_tokenizer(o.base)) fail(o.base.string(), ": --router embed and hidden need the base's tokenizer files");
  auto tokenizer = tok::Tokenizer::load(o.base);
  std::vector<std::vector<torch::Tensor>> out;
  for (const auto& texts : read_expert_prompts(o.prompts, o.num_experts)) {
    out.emplace_back();
    for (const auto& text : texts) {
      std::vector<int64_t> ids;
      for (tok::TokenId id : tokenizer->encode(text, true)) {
        if (id >= vocab_size) fail(o.prompts.string(), ": token id ", id, " is outside the model's vocabulary ", vocab_size);
        ids.push_back(id);
      }
      if (!ids.empty()) out.back().push_back(torch::tensor(ids, torch::kInt64));  // (T)
    }
    if (out.back().empty()) fail(o.prompts.string(), ": the prompts of expert ", out.size() - 1, " tokenize to no tokens");
  }
  return out;
}

torch::Tensor unit_rows(const torch::Tensor& x) { return x / x.norm(2, -1, true).clamp_min(1e-12); }  // (..., D)

// L x (E, D) fp32 routers.
std::vector<torch::Tensor> random_routers(const UpcycleOptions& o, const ModelConfig& c) {
  at::Generator gen = at::detail::createCPUGenerator(o.seed);
  std::vector<torch::Tensor> out;
  for (int64_t l = 0; l < c.num_layers; ++l)
    out.push_back(torch::randn({o.num_experts, c.hidden_size}, gen, torch::kFloat32) * o.router_std);  // (E, D)
  return out;
}

std::vector<torch::Tensor> embed_routers(const UpcycleOptions& o, const ModelConfig& c, const CheckpointReader& base) {
  const torch::Tensor embed = base.get("model.embed_tokens.weight");  // (V, D), memory-mapped
  std::vector<torch::Tensor> rows;
  for (const auto& prompts : tokenized_prompts(o, c.vocab_size))
    rows.push_back(embed.index_select(0, torch::cat(prompts)).to(torch::kFloat32).mean(0));  // (D)
  const torch::Tensor gate = unit_rows(torch::stack(rows));  // (E, D)
  return std::vector<torch::Tensor>(static_cast<size_t>(c.num_layers), gate);
}

// One prompt at a time through the base (memory: one model plus one prompt's activations); each layer's
// MoE input (post_attention_layernorm output) is averaged per expert over all its prompt tokens.
std::vector<torch::Tensor> hidden_routers(const UpcycleOptions& o, const ModelConfig& c) {
  const auto prompts = tokenized_prompts(o, c.vocab_size);
  Transformer model = load_model(o.base);
  model->eval();
  torch::InferenceMode inference;
  torch::Tensor sums = torch::zeros({c.num_layers, o.num_experts, c.hidden_size});  // (L, E, D)
  ForwardOptions fwd;
  fwd.logits = false;
  fwd.mlp_inputs = true;
  for (int64_t e = 0; e < o.num_experts; ++e) {
    int64_t tokens = 0;
    for (const auto& ids : prompts[static_cast<size_t>(e)]) {
      ForwardOutput out = model->forward(ids.unsqueeze(0), fwd);                             // (1, T)
      for (int64_t l = 0; l < c.num_layers; ++l) sums[l][e] += out.mlp_inputs[l][0].sum(0);  // (D)
      tokens += ids.size(0);
    }
    sums.select(1, e).div_(static_cast<double>(tokens));
  }
  const std::vector<torch::Tensor> gates = unit_rows(sums).unbind(0);  // L x (E, D)
  return gates;
}

torch::Tensor with_noise(const torch::Tensor& w, double noise, at::Generator& gen) {
  if (noise == 0.0) return w;
  const torch::Tensor w32 = w.to(torch::kFloat32);                                     // (out, in)
  const double scale = noise * w32.std().item<double>();
  return (w32 + torch::randn(w.sizes(), gen, torch::kFloat32) * scale).to(w.scalar_type());  // (out, in)
}

// The checkpoint: the base's tensors except its MLPs, then per layer the router and E experts.
NamedTensors assemble(const UpcycleOptions& o, const ModelConfig& c, const CheckpointReader& base,
                          const std::vector<std::unique_ptr<CheckpointReader>>& donors,
                          const std::vector<torch::Tensor>& routers) {
  NamedTensors out;
  for (const auto& name : base.names()) {
    if (name.find(".mlp.") != std::string::npos || name.find("rotary_emb.inv_freq") != std::string::npos) continue;
    if (name == "lm_head.weight" && c.tie_word_embeddings) continue;
    out.emplace_back(name, base.get(name));
  }
  const torch::ScalarType dtype = base.get("model.embed_tokens.weight").scalar_type();
  at::Generator gen = at::detail::createCPUGenerator(o.seed + 1);
  static const std::pair<const char*, const char*> kExpertNames[] = {
      {"w1", "gate_proj"}, {"w2", "down_proj"}, {"w3", "up_proj"}};
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string layer = "model.layers." + std::to_string(l) + ".";
    out.emplace_back(layer + "block_sparse_moe.gate.weight", routers[static_cast<size_t>(l)].to(dtype));  // (E, D)
    for (int64_t e = 0; e < o.num_experts; ++e) {
      const CheckpointReader& donor = donors.empty() ? base : *donors[static_cast<size_t>(e)];
      for (const auto& [ours, dense] : kExpertNames) {
        const torch::Tensor w = donor.get(layer + "mlp." + dense + ".weight");  // (F, D) or (D, F)
        out.emplace_back(layer + "block_sparse_moe.experts." + std::to_string(e) + "." + ours + ".weight",
                         with_noise(w, o.noise, gen).to(dtype));
      }
    }
  }
  return out;
}

}  // namespace

void upcycle(const UpcycleOptions& o) {
  const ModelConfig base = load_config(o.base);
  check_options(o, base);
  const std::string base_tokenizer = tokenizer_fingerprint(o.base);
  for (const auto& donor : o.donors) check_donor(base, o.base, base_tokenizer, donor);
  const ModelConfig config = moe_config(base, o);

  CheckpointReader base_weights(o.base);
  std::vector<torch::Tensor> routers = o.router == RouterInit::Random ? random_routers(o, config)
                                       : o.router == RouterInit::Embed ? embed_routers(o, config, base_weights)
                                                                       : hidden_routers(o, config);
  std::vector<std::unique_ptr<CheckpointReader>> donors;
  for (const auto& dir : o.donors) donors.push_back(std::make_unique<CheckpointReader>(dir));
  NamedTensors tensors = assemble(o, config, base_weights, donors, routers);

  SaveOptions save;
  save.dtype = base_weights.get("model.embed_tokens.weight").scalar_type();
  save.overwrite = o.overwrite;
  save.copy_tokenizer_from = o.base;
  save_model_files(config, tensors, o.out, save);
}

}  // namespace kdae::io
