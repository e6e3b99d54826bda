#include "model/layer-importance.h"

#include <torch/nn/functional/linear.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/error.h"

namespace kdae::model {
namespace {

// The model's log-probabilities (R, V) at the counted positions of a finished forward state, the
// final norm and head applied to those positions only.
torch::Tensor counted_log_probs(Transformer& model, ForwardState& state, const torch::Tensor& positions) {
  state.next_layer = model->config().num_layers;  // every layer this branch runs has run
  auto hidden = model->finish(state).final_hidden;                                // (B, T, D)
  auto rows = hidden.reshape({-1, hidden.size(2)}).index_select(0, positions);    // (R, D)
  return at::log_softmax(torch::nn::functional::linear(rows, model->lm_head_weight()).to(torch::kFloat32), 1);  // (R, V)
}

void run_layer(Transformer& model, ForwardState& state, int64_t layer) {
  state.next_layer = layer;
  model->advance(state, layer + 1);
}

double kl_sum(const torch::Tensor& p_log, const torch::Tensor& q_log) {
  return (p_log.exp() * (p_log - q_log)).sum().item<double>();
}

// The unpruned model's log-probabilities at each batch's counted positions: the fixed side of every
// KL, computed once for all rounds (R x V floats per batch).
std::vector<torch::Tensor> reference_log_probs(Transformer& model, const std::vector<CalibrationBatch>& batches) {
  ForwardOptions options;
  options.logits = false;
  std::vector<torch::Tensor> out;
  for (const auto& batch : batches) {
    auto state = model->begin(batch.input_ids, options);
    model->advance(state, model->config().num_layers);
    out.push_back(counted_log_probs(model, state, batch.positions.to(batch.input_ids.device())));  // (R, V)
  }
  return out;
}

std::vector<double> removal_kl(Transformer& model, const std::vector<CalibrationBatch>& batches,
                               const std::vector<torch::Tensor>& references, const std::vector<int64_t>& removed,
                               const std::function<void()>& on_branch) {
  const int64_t N = model->config().num_layers;
  std::vector<bool> gone(static_cast<size_t>(N), false);
  for (int64_t l : removed) {
    if (l < 0 || l >= N) fail("layer importance: removed layer ", l, " is not in [0, ", N, ")");
    gone[l] = true;
  }
  ForwardOptions options;
  options.logits = false;
  std::vector<double> sums(static_cast<size_t>(N), 0.0);
  int64_t counted = 0;
  for (size_t b = 0; b < batches.size(); ++b) {
    const auto& batch = batches[b];
    const auto positions = batch.positions.to(batch.input_ids.device());
    counted += positions.numel();
    if (positions.numel() == 0) continue;
    auto prefix = model->begin(batch.input_ids, options);  // runs the kept layers before l
    for (int64_t l = 0; l < N; ++l) {
      if (gone[l]) continue;
      ForwardState branch = prefix;
      for (int64_t m = l + 1; m < N; ++m)
        if (!gone[m]) run_layer(model, branch, m);
      sums[l] += kl_sum(references[b], counted_log_probs(model, branch, positions));
      if (on_branch) on_branch();
      run_layer(model, prefix, l);
    }
  }
  if (counted == 0) fail("layer importance: the calibration batches count no positions");
  std::vector<double> out(static_cast<size_t>(N));
  for (int64_t l = 0; l < N; ++l) out[l] = gone[l] ? std::numeric_limits<double>::quiet_NaN() : sums[l] / double(counted);
  return out;
}

}  // namespace

std::vector<double> layer_removal_kl(Transformer& model, const std::vector<CalibrationBatch>& batches,
                                     const std::vector<int64_t>& removed, const std::function<void()>& on_branch) {
  torch::InferenceMode inference;
  return removal_kl(model, batches, reference_log_probs(model, batches), removed, on_branch);
}

std::vector<int64_t> keep_by_importance(Transformer& model, const std::vector<CalibrationBatch>& batches, int64_t keep,
                                        const ImportanceCallbacks& callbacks) {
  const int64_t N = model->config().num_layers;
  if (keep < 1 || keep > N) fail("layers to keep must be in [1, ", N, "], got ", keep);
  torch::InferenceMode inference;
  const auto references = reference_log_probs(model, batches);
  std::vector<int64_t> removed;
  while (N - static_cast<int64_t>(removed.size()) > keep) {
    const auto kl = removal_kl(model, batches, references, removed, callbacks.on_branch);
    int64_t cheapest = -1;
    for (int64_t l = 0; l < N; ++l)
      if (!std::isnan(kl[l]) && (cheapest < 0 || kl[l] < kl[cheapest])) cheapest = l;
    removed.push_back(cheapest);
    if (callbacks.on_round) callbacks.on_round(cheapest, kl[cheapest]);
  }
  std::vector<int64_t> kept;
  for (int64_t l = 0; l < N; ++l)
    if (std::find(removed.begin(), removed.end(), l) == removed.end()) kept.push_back(l);
  return kept;
}

}  // namespace kdae::model
