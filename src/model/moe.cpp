// Mixtral's sparse MoE block: softmax router, top-k experts renormalised (softmax over the top-k),
// tokens grouped per expert so each expert runs one matmul over exactly its tokens.
#include "model/transformer.h"

namespace kdae::model {

SparseMoeImpl::SparseMoeImpl(const ModelConfig& c) : top_k_(c.experts_per_token) {
  gate = register_module("gate", Linear(c.hidden_size, c.num_experts, false));
  experts = register_module("experts", torch::nn::ModuleList());
  for (int64_t e = 0; e < c.num_experts; ++e)
    experts->push_back(MLP(c.hidden_size, c.intermediate_size, c.mlp_bias, "w1", "w2", "w3"));
}

torch::Tensor SparseMoeImpl::forward(const torch::Tensor& x, torch::Tensor* router_logits_out) {
  const auto shape = x.sizes().vec();
  torch::Tensor h = x.reshape({-1, x.size(-1)});                              // (N, D), N = B*T
  torch::Tensor logits = gate(h);                                              // (N, E)
  torch::Tensor probs = torch::softmax(logits, -1, torch::kFloat32);           // (N, E)
  auto [weights, chosen] = probs.topk(top_k_, -1);                             // (N, K), (N, K)
  weights = (weights / weights.sum(-1, true)).to(x.scalar_type());             // (N, K)
  torch::Tensor out = torch::zeros_like(h);                                    // (N, D)
  torch::Tensor flat_expert = chosen.reshape({-1});                            // (N*K)
  torch::Tensor order = flat_expert.argsort();                                 // (N*K)
  torch::Tensor counts = torch::bincount(flat_expert, {}, static_cast<int64_t>(experts->size())).cpu();  // (E)
  torch::Tensor token_of = order.div(top_k_, "floor");                         // (N*K) token per sorted slot
  torch::Tensor weight_of = weights.reshape({-1}).index_select(0, order);      // (N*K)
  const int64_t* count = counts.data_ptr<int64_t>();
  int64_t start = 0;
  for (size_t e = 0; e < experts->size(); ++e) {
    const int64_t n = count[e];
    if (n == 0) continue;
    torch::Tensor tokens = token_of.narrow(0, start, n);                        // (n)
    torch::Tensor y = experts[e]->as<MLPImpl>()->forward(h.index_select(0, tokens));  // (n, D)
    out.index_add_(0, tokens, y * weight_of.narrow(0, start, n).unsqueeze(1));
    start += n;
  }
  if (router_logits_out) *router_logits_out = logits;
  return out.view(shape);  // (B, T, D)
}

}  // namespace kdae::model
