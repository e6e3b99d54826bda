// Grouped-query attention: fused scaled-dot-product attention when no probabilities are wanted,
// an eager path (matching HF's eager attention) when they are.
#include <ATen/ops/scaled_dot_product_attention.h>

#include "model/transformer.h"

namespace kdae::model {

AttentionImpl::AttentionImpl(const ModelConfig& c, int64_t layer)
    : layer_(layer), num_heads_(c.num_heads), num_kv_heads_(c.num_kv_heads), head_dim_(c.head_dim) {
  q_proj = register_module("q_proj", Linear(c.hidden_size, c.num_heads * c.head_dim, c.qkv_bias));
  k_proj = register_module("k_proj", Linear(c.hidden_size, c.num_kv_heads * c.head_dim, c.qkv_bias));
  v_proj = register_module("v_proj", Linear(c.hidden_size, c.num_kv_heads * c.head_dim, c.qkv_bias));
  o_proj = register_module("o_proj", Linear(c.num_heads * c.head_dim, c.hidden_size, c.o_bias));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const LayerContext& ctx, torch::Tensor* probs_out) {
  const int64_t B = x.size(0), T = x.size(1);
  torch::Tensor q = q_proj(x).view({B, T, num_heads_, head_dim_}).transpose(1, 2);     // (B, H, T, hd)
  torch::Tensor k = k_proj(x).view({B, T, num_kv_heads_, head_dim_}).transpose(1, 2);  // (B, Hkv, T, hd)
  torch::Tensor v = v_proj(x).view({B, T, num_kv_heads_, head_dim_}).transpose(1, 2);  // (B, Hkv, T, hd)
  q = apply_rope(q, ctx.rope);
  k = apply_rope(k, ctx.rope);
  if (ctx.cache) {
    auto& keys = ctx.cache->keys[layer_];
    auto& values = ctx.cache->values[layer_];
    keys = keys.defined() ? torch::cat({keys, k}, 2) : k;        // (B, Hkv, S, hd)
    values = values.defined() ? torch::cat({values, v}, 2) : v;  // (B, Hkv, S, hd)
    k = keys;
    v = values;
  }
  const torch::Tensor& mask = ctx.window_mask.defined() ? ctx.window_mask : ctx.mask;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim_));
  torch::Tensor out;  // (B, H, T, hd)
  if (probs_out) {
    const int64_t groups = num_heads_ / num_kv_heads_;
    torch::Tensor kr = k.repeat_interleave(groups, 1);                        // (B, H, S, hd)
    torch::Tensor vr = v.repeat_interleave(groups, 1);                        // (B, H, S, hd)
    // Scaling q instead of the scores and masking in place save two passes over the (B, H, T, S) map
    // and their backward (scale = 1/sqrt(hd) is a power of two for the usual hd, so this is exact).
    torch::Tensor scores = torch::matmul(q * scale, kr.transpose(2, 3));     // (B, H, T, S)
    torch::Tensor allowed = mask;
    if (!allowed.defined() && T > 1) {
      allowed = torch::ones({T, k.size(2)}, torch::dtype(torch::kBool).device(x.device())).tril(k.size(2) - T);  // (T, S)
    }
    if (allowed.defined()) scores.masked_fill_(allowed.logical_not(), -std::numeric_limits<float>::infinity());
    torch::Tensor probs = torch::softmax(scores, -1, torch::kFloat32).to(q.scalar_type());  // (B, H, T, S)
    out = torch::matmul(probs, vr);                                                      // (B, H, T, hd)
    *probs_out = probs;
  } else {
    // The CPU flash kernel does not take enable_gqa (it falls back to the slower math path):
    // expanding the kv heads there measured faster (docs/performance.md).
    const bool expand = !x.is_cuda() && num_heads_ != num_kv_heads_;
    const torch::Tensor kk = expand ? k.repeat_interleave(num_heads_ / num_kv_heads_, 1) : k;  // (B, H, S, hd)
    const torch::Tensor vv = expand ? v.repeat_interleave(num_heads_ / num_kv_heads_, 1) : v;  // (B, H, S, hd)
    if (mask.defined()) out = at::scaled_dot_product_attention(q, kk, vv, mask, 0.0, false, scale, !expand);
    else out = at::scaled_dot_product_attention(q, kk, vv, std::nullopt, 0.0, /*is_causal=*/T > 1, scale, !expand);
  }
  return o_proj(out.transpose(1, 2).reshape({B, T, num_heads_ * head_dim_}));  // (B, T, D)
}

}  // namespace kdae::model
