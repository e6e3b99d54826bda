// Test driver for the model oracle tests: loads an HF directory, runs forward + backward of
// sum(logits) on the given ids, writes parameter gradients (HF names) to a safetensors file,
// and optionally re-saves the model with io::save_model (round-trip test).
// usage: model_probe MODEL_DIR IDS(comma) GRADS_OUT [SAVE_DIR]
#include <iostream>
#include <sstream>

#include "io/hf-model.h"
#include "io/safetensors.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: model_probe MODEL_DIR IDS GRADS_OUT [SAVE_DIR]\n";
    return 2;
  }
  try {
    auto model = kdae::io::load_model(argv[1]);
    std::vector<int64_t> ids;
    std::stringstream in(argv[2]);
    for (std::string item; std::getline(in, item, ',');) ids.push_back(std::stoll(item));
    auto input = torch::tensor(ids, torch::kInt64).unsqueeze(0);  // (1, T)
    auto out = model->forward(input);
    out.logits.sum().backward();
    kdae::io::NamedTensors grads;
    for (auto& p : model->named_parameters())
      if (p.value().grad().defined()) grads.emplace_back(p.key(), p.value().grad());
    kdae::io::write_safetensors(argv[3], grads);
    if (argc > 4) kdae::io::save_model(model, argv[4], {torch::kFloat32, false, argv[1]});
  } catch (const std::exception& e) {
    std::cerr << "model_probe: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
