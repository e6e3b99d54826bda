// kdae forward: one forward pass over given token ids, tensors written to safetensors
// (the oracle tests compare them with transformers).
#include <torch/types.h>

#include <sstream>

#include "cli/commands.h"
#include "io/peft-adapters.h"
#include "model/lora.h"
#include "common/device.h"
#include "common/error.h"
#include "common/files.h"
#include "io/hf-model.h"
#include "io/safetensors.h"

namespace kdae::cli {
namespace {

std::vector<int64_t> parse_token_list(const std::string& text, const std::string& source) {
  std::vector<int64_t> ids;
  std::string item;
  std::istringstream in(text);
  int line = 1;
  char c;
  auto flush = [&] {
    if (item.empty()) return;
    try {
      size_t used = 0;
      ids.push_back(std::stoll(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      fail(source, ":", line, ": '", item, "' is not a token id");
    }
    item.clear();
  };
  while (in.get(c)) {
    if (c == ',' || c == ' ' || c == '\n' || c == '\t' || c == '[' || c == ']') {
      flush();
      if (c == '\n') ++line;
    } else {
      item.push_back(c);
    }
  }
  flush();
  if (ids.empty()) fail(source, ": no token ids given");
  return ids;
}

int run_forward(const Args& args) {
  apply_compute_options(args);
  std::vector<int64_t> ids;
  if (args.has("tokens") == args.has("tokens-file")) usage_fail("give exactly one of --tokens or --tokens-file");
  if (args.has("tokens")) ids = parse_token_list(args.get("tokens"), "--tokens");
  else ids = parse_token_list(read_file(args.get("tokens-file")), args.get("tokens-file"));

  const auto device = parse_device(args.get("device"));
  const auto dtype = parse_dtype(args.get("dtype"));
  model::Transformer model = io::load_model(args.get("model"), {device, dtype});
  if (auto dir = args.maybe("adapters")) {  // unmerged: the LoRA forward a training run computes
    io::PeftAdapters adapters = io::read_peft_adapters(*dir);
    model::add_lora(model, adapters.settings, args.get("model"));
    model::load_lora_tensors(model, adapters.tensors, *dir);
    model->to(device, dtype);
  }
  model->eval();
  for (int64_t id : ids)
    if (id < 0 || id >= model->config().vocab_size)
      fail("token id ", id, " is outside the vocabulary (size ", model->config().vocab_size, ")");

  torch::InferenceMode inference;
  torch::Tensor input = torch::tensor(ids, torch::kInt64).unsqueeze(0).to(device);  // (1, T)
  model::ForwardOptions opts;
  opts.attentions = args.flag("attentions");
  opts.hidden_states = args.flag("hidden-states");
  opts.router_logits = args.flag("router-logits");
  model::ForwardOutput out = model->forward(input, opts);

  io::NamedTensors tensors;
  tensors.emplace_back("logits", out.logits[0].to(torch::kFloat32));  // (T, V)
  for (size_t l = 0; l < out.attentions.size(); ++l)
    tensors.emplace_back("attentions." + std::to_string(l), out.attentions[l][0].to(torch::kFloat32));  // (H, T, T)
  for (size_t l = 0; l < out.hidden_states.size(); ++l)
    tensors.emplace_back("hidden_states." + std::to_string(l), out.hidden_states[l][0].to(torch::kFloat32));  // (T, D)
  for (size_t l = 0; l < out.router_logits.size(); ++l)
    tensors.emplace_back("router_logits." + std::to_string(l), out.router_logits[l].to(torch::kFloat32));  // (T, E)
  io::write_safetensors(args.get("out"), tensors);
  return 0;
}

}  // namespace

Command forward_command() {
  std::vector<Option> options = {
      {"model", "DIR", "HF model directory (config.json + safetensors)", "", false, true},
      {"adapters", "DIR", "PEFT LoRA adapter directory applied unmerged on top of --model"},
      {"tokens", "IDS", "comma-separated token ids, e.g. 1,2,3"},
      {"tokens-file", "F", "file of token ids (comma/space/newline separated)"},
      {"out", "OUT", "output .safetensors: logits [T,V], attentions.L [H,T,T], hidden_states.L [T,D]", "", false, true},
      {"attentions", "", "also write per-layer attention probabilities (eager attention)"},
      {"hidden-states", "", "also write the N+1 hidden states (embeddings, each layer, final norm)"},
      {"router-logits", "", "also write per-layer router logits router_logits.L [T,E] (MoE models)"},
  };
  for (auto& o : device_options()) options.push_back(o);
  for (auto& o : compute_options()) options.push_back(o);
  return {"forward", "run one forward pass and write logits (and optionally attentions, hidden states) to safetensors",
          "", options, run_forward};
}

}  // namespace kdae::cli
