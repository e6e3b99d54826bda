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
  torch::Tensor flat_expert = chosen.reshape({-1});                            // (N*K)
  torch::Tensor order = flat_expert.argsort();                                 // (N*K)
  torch::Tensor counts = torch::bincount(flat_expert, {}, static_cast<int64_t>(experts->size())).cpu();  // (E)
  torch::Tensor token_of = order.div(top_k_, "floor");                         // (N*K) token per sorted slot
  torch::Tensor weight_of = weights.reshape({-1}).index_select(0, order);      // (N*K)
  // One gather, contiguous per-expert slices, one scatter: backward is then one index_add, one cat and
  // one index_select instead of a full-size (N, D) gradient per expert.
  torch::Tensor grouped = h.index_select(0, token_of);                         // (N*K, D)
  const int64_t* count = counts.data_ptr<int64_t>();
  std::vector<torch::Tensor> ys = grouped.split_with_sizes(c10::IntArrayRef(count, experts->size()), 0);
  for (size_t e = 0; e < experts->size(); ++e)
    if (count[e] > 0) ys[e] = experts[e]->as<MLPImpl>()->forward(ys[e]);       // (n_e, D); unselected experts never run
  torch::Tensor y = torch::cat(ys) * weight_of.unsqueeze(1);                  // (N*K, D)
  torch::Tensor out = torch::zeros_like(h).index_add_(0, token_of, y);        // (N, D)
  if (router_logits_out) *router_logits_out = logits;
  return out.view(shape);  // (B, T, D)
}

}  // namespace kdae::model
