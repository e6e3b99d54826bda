// Router losses and statistics on given router logits, for tests/python/test_upcycle.py.
//   router_loss_probe IN.safetensors OUT.safetensors NUM_EXPERTS TOP_K
// IN: router_logits.<l> (N, E) for l = 0, 1, ...; optional token_mask (N).
// OUT: aux_loss (), z_loss (), aux_grad.<l> and z_grad.<l> (N, E) (gradients of each loss with respect
// to the logits), load.<l> (E), entropy (L), min_load (L).
#include <torch/types.h>

#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <iostream>
#include <string>

#include "distill/router-loss.h"
#include "io/safetensors.h"

using namespace kdae;

int main(int argc, char** argv) try {
  if (argc != 5) {
    std::cerr << "usage: router_loss_probe IN.safetensors OUT.safetensors NUM_EXPERTS TOP_K\n";
    return 2;
  }
  at::set_num_threads(1);
  io::SafetensorsFile in(argv[1]);
  const int64_t E = std::stoll(argv[3]), K = std::stoll(argv[4]);
  std::vector<torch::Tensor> logits;
  for (size_t l = 0; in.has("router_logits." + std::to_string(l)); ++l)
    logits.push_back(in.get("router_logits." + std::to_string(l)).clone().requires_grad_(true));  // (N, E)
  const torch::Tensor mask = in.has("token_mask") ? in.get("token_mask").clone() : torch::Tensor();  // (N)

  io::NamedTensors out;
  const torch::Tensor aux = distill::load_balancing_loss(logits, E, K, mask);
  const auto aux_grads = torch::autograd::grad({aux}, logits);
  const torch::Tensor z = distill::router_z_loss(logits, mask);
  const auto z_grads = torch::autograd::grad({z}, logits);
  out.emplace_back("aux_loss", aux.detach());
  out.emplace_back("z_loss", z.detach());
  for (size_t l = 0; l < logits.size(); ++l) {
    out.emplace_back("aux_grad." + std::to_string(l), aux_grads[l]);
    out.emplace_back("z_grad." + std::to_string(l), z_grads[l]);
  }
  const distill::RouterStats stats = distill::router_stats(logits, K, mask);
  for (size_t l = 0; l < stats.load.size(); ++l)
    out.emplace_back("load." + std::to_string(l), torch::tensor(stats.load[l], torch::kFloat64));
  out.emplace_back("entropy", torch::tensor(stats.entropy, torch::kFloat64));
  out.emplace_back("min_load", torch::tensor(stats.min_load, torch::kFloat64));
  io::write_safetensors(argv[2], out);
  return 0;
} catch (const std::exception& e) {
  std::cerr << "router_loss_probe: " << e.what() << "\n";
  return 1;
}
