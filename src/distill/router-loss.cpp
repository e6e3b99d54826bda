#include "distill/router-loss.h"

#include "common/error.h"

namespace kdae::distill {
namespace {

// (N) fp32 row weights: the mask as 0/1, or ones.
torch::Tensor row_weights(const torch::Tensor& logits, const torch::Tensor& token_mask) {
  const int64_t n = logits.size(0);
  if (!token_mask.defined()) return torch::ones({n}, logits.options().dtype(torch::kFloat32));
  if (token_mask.numel() != n)
    fail("router token mask has ", token_mask.numel(), " elements for ", n, " router logit rows");
  return token_mask.reshape({-1}).to(logits.device()).ne(0).to(torch::kFloat32);  // (N)
}

void check_layers(const std::vector<torch::Tensor>& router_logits) {
  if (router_logits.empty()) fail("router losses need the router logits of at least one layer");
  for (size_t l = 0; l < router_logits.size(); ++l)
    if (router_logits[l].dim() != 2) fail("router_logits.", l, " must be (N, E), got ", router_logits[l].sizes());
}

}  // namespace

torch::Tensor load_balancing_loss(const std::vector<torch::Tensor>& router_logits, int64_t num_experts, int64_t top_k,
                                  const torch::Tensor& token_mask) {
  check_layers(router_logits);
  const auto opts = router_logits[0].options().dtype(torch::kFloat32);
  torch::Tensor assigned = torch::zeros({num_experts}, opts);  // (E) top-k assignments, summed over layers
  torch::Tensor prob_sum = torch::zeros({num_experts}, opts);  // (E)
  torch::Tensor rows = torch::zeros({}, opts);                 // ()
  for (const auto& logits : router_logits) {
    if (logits.size(1) != num_experts) fail("router logits have ", logits.size(1), " experts, expected ", num_experts);
    const torch::Tensor w = row_weights(logits, token_mask);                          // (N)
    const torch::Tensor probs = torch::softmax(logits.to(torch::kFloat32), -1);       // (N, E)
    const torch::Tensor chosen = std::get<1>(probs.topk(top_k, -1));                 // (N, K)
    assigned = assigned.scatter_add(0, chosen.reshape({-1}), w.repeat_interleave(top_k));
    prob_sum = prob_sum + (probs * w.unsqueeze(-1)).sum(0);
    rows = rows + w.sum();
  }
  return (assigned / rows * (prob_sum / rows)).sum() * static_cast<double>(num_experts);  // ()
}

torch::Tensor router_z_loss(const std::vector<torch::Tensor>& router_logits, const torch::Tensor& token_mask) {
  check_layers(router_logits);
  torch::Tensor total = torch::zeros({}, router_logits[0].options().dtype(torch::kFloat32));  // ()
  for (const auto& logits : router_logits) {
    const torch::Tensor w = row_weights(logits, token_mask);                     // (N)
    const torch::Tensor z = torch::logsumexp(logits.to(torch::kFloat32), -1);   // (N)
    total = total + (z.square() * w).sum() / w.sum().clamp_min(1.0);
  }
  return total / static_cast<double>(router_logits.size());
}

RouterStats router_stats(const std::vector<torch::Tensor>& router_logits, int64_t top_k,
                         const torch::Tensor& token_mask) {
  check_layers(router_logits);
  torch::NoGradGuard no_grad;
  RouterStats stats;
  for (const auto& logits : router_logits) {
    const int64_t E = logits.size(1);
    const torch::Tensor w = row_weights(logits, token_mask);                           // (N)
    const torch::Tensor logp = torch::log_softmax(logits.to(torch::kFloat32), -1);     // (N, E)
    const torch::Tensor chosen = std::get<1>(logp.topk(top_k, -1));                   // (N, K)
    torch::Tensor counts = torch::zeros({E}, w.options()).scatter_add(0, chosen.reshape({-1}), w.repeat_interleave(top_k));
    const double assignments = counts.sum().item<double>();
    torch::Tensor load = (assignments > 0 ? counts / assignments : counts).cpu();     // (E)
    const torch::Tensor entropy = -(logp.exp() * logp).sum(-1);                      // (N)
    const double rows = w.sum().item<double>();
    stats.entropy.push_back(rows > 0 ? ((entropy * w).sum() / rows).item<double>() : 0.0);
    stats.load.emplace_back(load.data_ptr<float>(), load.data_ptr<float>() + E);
    stats.min_load.push_back(load.min().item<double>());
  }
  return stats;
}

}  // namespace kdae::distill
