// MoE router training terms and figures (definitions with formulas: docs/moe.md).
//
// Dimension legend: N = routed tokens (B*T rows of a layer's router logits), E = experts, K = experts
// per token, L = MoE layers.
//
// - load_balancing_loss: Mixtral's auxiliary loss as transformers' load_balancing_loss_func computes it,
//   pooled over layers: f_e = top-k assignments to e / rows, P_e = mean router probability of e, both
//   summed over layers and masked rows excluded; loss = E * sum_e f_e * P_e (= K at perfect balance).
//   Differentiable through P only (top-k is a selection).
// - router_z_loss (ST-MoE): per layer, mean over rows of logsumexp(logits)^2; averaged over layers.
// - router_stats: no capacity factor exists in kdae's MoE, so no token is ever dropped (dropped = 0).
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace kdae::distill {

// router_logits: L x (N, E); token_mask: (N) or any shape with N elements, nonzero = counts; undefined = all.
torch::Tensor load_balancing_loss(const std::vector<torch::Tensor>& router_logits, int64_t num_experts,
                                  int64_t top_k, const torch::Tensor& token_mask = {});  // () fp32

torch::Tensor router_z_loss(const std::vector<torch::Tensor>& router_logits,
                            const torch::Tensor& token_mask = {});  // () fp32

struct RouterStats {
  std::vector<std::vector<double>> load;  // per layer (E): share of top-k assignments, sums to 1
  std::vector<double> entropy;            // per layer: mean over rows of -sum_e p_e log p_e (nats)
  std::vector<double> min_load;           // per layer: min_e load; 0 = an expert collapsed (never chosen)
  double dropped_fraction = 0.0;          // always 0: no capacity factor, every token reaches its K experts
};

RouterStats router_stats(const std::vector<torch::Tensor>& router_logits, int64_t top_k,
                         const torch::Tensor& token_mask = {});

}  // namespace kdae::distill
