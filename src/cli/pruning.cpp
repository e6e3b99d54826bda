#include "cli/pruning.h"

#include <filesystem>
#include <iomanip>
#include <iostream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/files.h"
#include "common/progress.h"
#include "data/batch.h"
#include "data/dataset.h"
#include "io/hf-model.h"
#include "model/layer-importance.h"
#include "model/prune.h"

namespace kdae::cli {
namespace {

// The first spec.calibration_samples samples of spec.data, four per batch; the counted positions are
// those whose next token is supervised (the answers).
std::vector<model::CalibrationBatch> calibration_batches(const tok::Tokenizer& tokenizer, const PruneSpec& spec,
                                                         torch::Device device) {
  if (spec.data.empty()) usage_fail("pruning by importance needs calibration data (--data)");
  data::DatasetOptions options;
  options.chat_template = spec.chat_template == "auto" ? "" : spec.chat_template;
  options.seq_length = spec.seq_length;
  const auto dataset = data::load_dataset(spec.data, tokenizer, options);
  const size_t n = std::min<size_t>(static_cast<size_t>(spec.calibration_samples), dataset.samples.size());
  if (n == 0) fail(spec.data, ": no samples to calibrate the pruning on");
  std::vector<model::CalibrationBatch> batches;
  for (size_t begin = 0; begin < n; begin += 4) {
    std::vector<std::vector<const data::TokenizedSample*>> rows;
    for (size_t i = begin; i < std::min(n, begin + 4); ++i) rows.push_back({&dataset.samples[i]});
    const auto batch = data::collate(rows, tokenizer.special().padding());
    batches.push_back({batch.input_ids.to(device), (batch.labels.reshape({-1}) != -100).nonzero().reshape({-1})});
  }
  return batches;
}

}  // namespace

std::vector<Option> prune_options(int64_t calibration_samples) {
  return {
      {"prune", "METHOD", "importance: drop, one at a time, the layer whose removal changes the model's answers least "
                          "(KL on calibration samples); every: keep layers 0, K, 2K, ... and the last", "importance"},
      {"keep-layers", "N", "layers the pruned model keeps (--prune importance)", "20"},
      {"keep-every", "K", "keep every K-th layer and the last (--prune every)", "3"},
      {"calibration-samples", "N", "training conversations the importance is measured on (their answer tokens); "
                                   "each doubles the cost", std::to_string(calibration_samples)},
  };
}

PruneSpec prune_spec_from(const Args& args) {
  PruneSpec spec;
  spec.method = args.get("prune");
  if (spec.method != "importance" && spec.method != "every") usage_fail("--prune must be importance or every, got ", spec.method);
  spec.keep_layers = args.get_int("keep-layers");
  spec.keep_every = args.get_int("keep-every");
  spec.calibration_samples = args.get_int("calibration-samples");
  if (spec.calibration_samples < 1) usage_fail("--calibration-samples must be >= 1");
  return spec;
}

PruneChoice choose_layers(model::Transformer& model, const tok::Tokenizer& tokenizer, const PruneSpec& spec) {
  PruneChoice choice;
  const int64_t N = model->config().num_layers;
  if (spec.method == "every") {
    choice.kept = model::every_kth_layer(N, spec.keep_every);
  } else {
    const auto device = model->parameters().front().device();
    const auto batches = calibration_batches(tokenizer, spec, device);
    const int64_t rounds = N - spec.keep_layers, n_batches = static_cast<int64_t>(batches.size());
    if (spec.keep_layers < 1 || rounds < 0) fail("--keep-layers must be in [1, ", N, "], got ", spec.keep_layers);
    std::cerr << "prune: measuring layer importance on " << spec.calibration_samples << " calibration samples of "
              << spec.data << " (" << rounds << " rounds of greedy removal)\n";
    int64_t branches = 0;  // (candidate, batch) pairs over all rounds: N, N - 1, ... candidates
    for (int64_t r = 0; r < rounds; ++r) branches += (N - r) * n_batches;
    Progress progress({.label = "prune", .total = branches});
    model::ImportanceCallbacks callbacks;
    callbacks.on_branch = [&] { progress.advance(); };
    callbacks.on_round = [&](int64_t layer, double kl) {
      choice.removed.emplace_back(layer, kl);
      progress.set("removed", static_cast<double>(layer));
      progress.set("kl", kl);
    };
    choice.kept = model::keep_by_importance(model, batches, spec.keep_layers, callbacks);
    progress.finish();
    for (const auto& [layer, kl] : choice.removed)
      std::cerr << "prune: removed layer " << layer << " (KL to the unpruned model after this round: "
                << std::setprecision(4) << kl << " nats/token)\n";
  }
  std::cerr << "prune: keeping layers";
  for (auto l : choice.kept) std::cerr << " " << l;
  std::cerr << " (" << choice.kept.size() << " of " << N << ")\n";
  return choice;
}

std::string save_pruned(model::Transformer& model, const std::string& source, const PruneSpec& spec,
                        const PruneChoice& choice, const std::string& out, bool overwrite) {
  namespace fs = std::filesystem;
  auto pruned = model::keep_layers(model, choice.kept);
  io::SaveOptions save;
  save.overwrite = overwrite;
  save.copy_tokenizer_from = source;
  io::save_model(pruned, out, save);
  nlohmann::json record = {{"source", fs::absolute(source).string()}, {"method", spec.method},
                           {"source_layers", model->config().num_layers}, {"kept", choice.kept}};
  for (const auto& [layer, kl] : choice.removed) record["removed"].push_back({{"layer", layer}, {"kl", kl}});
  write_file_atomic(fs::path(out) / "prune.json", record.dump(2) + "\n");
  return record.dump();
}

}  // namespace kdae::cli
