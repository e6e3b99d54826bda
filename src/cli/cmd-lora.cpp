// kdae lora merge: a base model plus PEFT LoRA adapters (kdae's or PEFT's) -> one HF model directory,
// the same merged model kdae distill writes at the end of a LoRA run.
#include <iostream>

#include "cli/commands.h"
#include "common/device.h"
#include "common/error.h"
#include "io/hf-model.h"
#include "io/peft-adapters.h"
#include "model/lora.h"

namespace kdae::cli {
namespace {

int run_merge(const Args& args) {
  const std::string base = args.get("base"), adapters_dir = args.get("adapters"), out = args.get("out");
  io::PeftAdapters adapters = io::read_peft_adapters(adapters_dir);
  // fp32 as distill's master weights, so the merge rounds exactly as the one at the end of training.
  auto model = io::load_model(base, {torch::kCPU, torch::kFloat32});
  model::add_lora(model, adapters.settings, base);
  model::load_lora_tensors(model, adapters.tensors, adapters_dir);
  model::merge_lora(model);
  io::SaveOptions save;
  save.dtype = parse_dtype(args.get("dtype"));
  save.overwrite = args.flag("overwrite");
  save.copy_tokenizer_from = base;
  io::save_model(model, out, save);
  std::cerr << "merged " << adapters.tensors.size() / 2 << " adapters (r " << adapters.settings.rank << ", alpha "
            << adapters.settings.alpha << ") into " << out << "\n";
  return 0;
}

int run_lora(const Args& args) {
  const auto& verb = args.positional();
  if (verb.size() != 1 || verb[0] != "merge") usage_fail("kdae lora: expected the subcommand `merge`");
  return run_merge(args);
}

}  // namespace

Command lora_command() {
  return {"lora",
          "LoRA adapters: `kdae lora merge` folds PEFT adapters into their base model",
          "kdae lora merge --base DIR --adapters DIR --out DIR: reads adapter_config.json + adapter_model.safetensors\n"
          "(PEFT's layout, as kdae distill/align write with save_adapters), adds the adapters to the base model's\n"
          "target modules, merges W += (alpha / r) B A in float32 and writes an HF directory (tokenizer copied from\n"
          "--base). Refuses DoRA, rsLoRA and per-layer rank/alpha patterns.",
          {{"base", "DIR", "the base HF model the adapters were trained on", "", false, true},
           {"adapters", "DIR", "PEFT adapter directory", "", false, true},
           {"out", "DIR", "where the merged model is written", "", false, true},
           {"dtype", "T", "dtype of the written weights: float32, bfloat16, float16", "float32"},
           {"overwrite", "", "replace an existing --out directory"}},
          run_lora,
          "merge"};
}

}  // namespace kdae::cli
