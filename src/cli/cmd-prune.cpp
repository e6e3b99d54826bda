// kdae prune: a depth-pruned copy of a model (the usual start of a distilled student that shares
// its teacher's tokenizer and width), its layers chosen by measured importance or every k-th.
#include <filesystem>
#include <iostream>

#include "cli/commands.h"
#include "cli/pruning.h"
#include "common/device.h"
#include "common/error.h"
#include "io/hf-model.h"

namespace kdae::cli {
namespace {
namespace fs = std::filesystem;

int run_prune(const Args& args) {
  apply_compute_options(args);
  const fs::path source = args.get("model"), out = args.get("out");
  if (fs::exists(out) && !args.flag("overwrite")) usage_fail(out.string(), " exists: choose another --out, or pass --overwrite");
  PruneSpec spec = prune_spec_from(args);
  spec.data = args.has("data") ? args.get("data") : "";
  spec.chat_template = args.get("template");
  spec.seq_length = args.get_int("seq-length");
  auto model = io::load_model(source, {parse_device(args.get("device")), parse_dtype(args.get("dtype"))});
  model->eval();
  const auto tokenizer = tok::Tokenizer::load(source);
  const auto choice = choose_layers(model, *tokenizer, spec);
  std::cout << save_pruned(model, source.string(), spec, choice, out.string(), args.flag("overwrite")) << "\n";
  return 0;
}

}  // namespace

Command prune_command() {
  Command c;
  c.name = "prune";
  c.summary = "depth-prune a model: keep the layers that matter most (or every k-th)";
  c.description =
      "Writes --out: an HF directory with the kept decoder layers of --model (embeddings, final norm, head and\n"
      "tokenizer kept), and --out/prune.json (kept layers; per removal round the layer and the KL of the pruned\n"
      "model to --model on the calibration answers). --prune importance needs --data. See docs/pruning.md.";
  c.options = {
      {"model", "DIR", "model to prune (HF directory)", "", false, true},
      {"out", "DIR", "output HF directory", "", false, true},
      {"data", "FILE", "JSONL conversations for --prune importance (their answer tokens are measured)"},
      {"template", "NAME", "chat template of --data (auto = from the tokenizer)", "auto"},
      {"seq-length", "N", "calibration tokens per sample", "256"},
      {"overwrite", "", "replace --out if it exists"},
  };
  for (auto& o : prune_options(8)) c.options.push_back(o);
  for (auto& o : device_options()) c.options.push_back(o);
  for (auto& o : compute_options()) c.options.push_back(o);
  c.run = run_prune;
  return c;
}

}  // namespace kdae::cli
