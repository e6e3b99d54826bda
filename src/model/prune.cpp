#include "model/prune.h"

#include <string>

#include "common/error.h"

namespace kdae::model {

std::vector<int64_t> every_kth_layer(int64_t num_layers, int64_t k) {
  if (k < 1) fail("keep every k-th layer: k must be >= 1, got ", k);
  std::vector<int64_t> out;
  for (int64_t l = 0; l < num_layers; l += k) out.push_back(l);
  if (out.back() != num_layers - 1) out.push_back(num_layers - 1);
  return out;
}

Transformer keep_layers(Transformer& source, const std::vector<int64_t>& layers) {
  const ModelConfig& from = source->config();
  for (size_t i = 0; i < layers.size(); ++i)
    if (layers[i] < 0 || layers[i] >= from.num_layers || (i > 0 && layers[i] <= layers[i - 1]))
      fail("layers to keep must be ascending, distinct and in [0, ", from.num_layers, "); got ", layers[i]);
  if (layers.empty()) fail("keep at least one layer");
  ModelConfig config = from;
  config.num_layers = static_cast<int64_t>(layers.size());
  if (!from.sliding_layers.empty()) {
    config.sliding_layers.clear();
    for (int64_t l : layers) config.sliding_layers.push_back(from.sliding_layers[l]);
  }
  Transformer pruned(config);
  const auto source_params = source->named_parameters();
  torch::NoGradGuard no_grad;
  for (auto& item : pruned->named_parameters()) {
    std::string name = item.key();
    const std::string prefix = "model.layers.";
    if (name.rfind(prefix, 0) == 0) {
      const size_t dot = name.find('.', prefix.size());
      const int64_t index = std::stoll(name.substr(prefix.size(), dot - prefix.size()));
      name = prefix + std::to_string(layers[index]) + name.substr(dot);
    }
    const torch::Tensor* from_param = source_params.find(name);
    if (!from_param) fail("pruning: the source model has no parameter ", name);
    item.value().copy_(*from_param);
  }
  pruned->to(source->parameters().front().device(), source->parameters().front().scalar_type());
  return pruned;
}

}  // namespace kdae::model
