#include "model/transformer.h"

#include <torch/autograd.h>
#include <torch/nn/functional.h>

#include "common/error.h"

namespace kdae::model {
namespace F = torch::nn::functional;

MLPImpl::MLPImpl(int64_t hidden, int64_t intermediate, bool bias, const char* gate_name, const char* down_name,
                 const char* up_name) {
  gate = register_module(gate_name, Linear(hidden, intermediate, bias));
  down = register_module(down_name, Linear(intermediate, hidden, bias));
  up = register_module(up_name, Linear(hidden, intermediate, bias));
}

torch::Tensor MLPImpl::forward(const torch::Tensor& x) { return down(F::silu(gate(x)) * up(x)); }

DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& c, int64_t layer) {
  self_attn = register_module("self_attn", Attention(c, layer));
  if (c.is_moe()) {
    moe = register_module("block_sparse_moe", SparseMoe(c));
  } else {
    mlp = register_module("mlp", MLP(c.hidden_size, c.intermediate_size, c.mlp_bias, "gate_proj", "down_proj", "up_proj"));
  }
  input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& x, const LayerContext& ctx, torch::Tensor* probs,
                                        torch::Tensor* router, torch::Tensor* mlp_input) {
  torch::Tensor h = x + self_attn(input_layernorm(x), ctx, probs);  // (B, T, D)
  torch::Tensor normed = post_attention_layernorm(h);               // (B, T, D)
  if (mlp_input) *mlp_input = normed;
  return h + (moe ? moe(normed, router) : mlp(normed));             // (B, T, D)
}

BackboneImpl::BackboneImpl(const ModelConfig& c) {
  embed_tokens = register_module("embed_tokens", Weight(torch::randn({c.vocab_size, c.hidden_size}) * 0.02));  // (V, D)
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t l = 0; l < c.num_layers; ++l) layers->push_back(DecoderLayer(c, l));
  norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps));
}

TransformerImpl::TransformerImpl(ModelConfig config) : config_(std::move(config)) {
  model = register_module("model", Backbone(config_));
  if (!config_.tie_word_embeddings)
    lm_head = register_module("lm_head", Weight(torch::randn({config_.vocab_size, config_.hidden_size}) * 0.02));  // (V, D)
  // Not a buffer: module.to(bf16) would round it, while HF keeps the frequencies in fp32.
  inv_freq_ = rope_inverse_frequencies(config_);  // (hd/2)
}

torch::Tensor TransformerImpl::lm_head_weight() const { return lm_head ? lm_head->weight : model->embed_tokens->weight; }

namespace {

// May query i (absolute index past + i) attend key j? Causal, same packed segment, inside the window.
torch::Tensor build_mask(int64_t B, int64_t T, int64_t past, const torch::Tensor& segment_ids,
                         std::optional<int64_t> window, torch::Device device) {
  auto idx = torch::TensorOptions().dtype(torch::kInt64).device(device);
  torch::Tensor q = torch::arange(past, past + T, idx).view({T, 1});  // (T, 1)
  torch::Tensor k = torch::arange(0, past + T, idx).view({1, -1});    // (1, S)
  torch::Tensor allowed = k <= q;                                      // (T, S)
  if (window) allowed = allowed.logical_and(q - k < *window);
  allowed = allowed.view({1, 1, T, past + T}).expand({B, 1, T, past + T});  // (B, 1, T, S)
  if (segment_ids.defined()) {
    torch::Tensor same = segment_ids.unsqueeze(2) == segment_ids.unsqueeze(1);  // (B, T, T)
    allowed = allowed.logical_and(same.unsqueeze(1));
  }
  return allowed.contiguous();
}

// Recomputes a layer in backward instead of keeping its activations (no C++ checkpoint API exists).
// The layer's context tensors ride in saved_data so they live exactly as long as the graph node.
struct CheckpointedLayer : torch::autograd::Function<CheckpointedLayer> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, DecoderLayerImpl* layer,
                               const LayerContext& layer_ctx) {
    ctx->saved_data["layer"] = reinterpret_cast<int64_t>(layer);
    ctx->saved_data["cos"] = layer_ctx.rope.cos;
    ctx->saved_data["sin"] = layer_ctx.rope.sin;
    ctx->saved_data["mask"] = layer_ctx.mask;
    ctx->saved_data["window_mask"] = layer_ctx.window_mask;
    ctx->save_for_backward({x});
    torch::NoGradGuard no_grad;
    return layer->forward(x, layer_ctx, nullptr, nullptr);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* layer = reinterpret_cast<DecoderLayerImpl*>(ctx->saved_data["layer"].toInt());
    LayerContext layer_ctx;
    layer_ctx.rope = {ctx->saved_data["cos"].toTensor(), ctx->saved_data["sin"].toTensor()};
    layer_ctx.mask = ctx->saved_data["mask"].toTensor();
    layer_ctx.window_mask = ctx->saved_data["window_mask"].toTensor();
    torch::Tensor x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    torch::AutoGradMode enable(true);
    torch::Tensor y = layer->forward(x, layer_ctx, nullptr, nullptr);
    torch::autograd::backward({y}, {grads[0]});
    return {x.grad(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

ForwardState TransformerImpl::begin(const torch::Tensor& input_ids, const ForwardOptions& opt) {
  if (input_ids.dim() != 2) fail("input_ids must be (B, T), got ", input_ids.sizes());
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  const int64_t past = opt.cache ? opt.cache->length() : 0;
  if (opt.cache && opt.segment_ids.defined()) fail("packed segments cannot be combined with a KV cache");
  if (opt.cache && opt.cache->keys.empty()) {
    opt.cache->keys.resize(config_.num_layers);
    opt.cache->values.resize(config_.num_layers);
  }
  const auto device = input_ids.device();
  torch::Tensor positions = opt.position_ids.defined()
                                ? opt.position_ids.to(device)
                                : torch::arange(past, past + T, torch::dtype(torch::kInt64).device(device)).expand({B, T});  // (B, T)
  ForwardState state;
  state.options = opt;
  state.x = F::embedding(input_ids, model->embed_tokens->weight);  // (B, T, D)
  LayerContext& ctx = state.ctx;
  ctx.rope = rope_tables(inv_freq_, positions, state.x.scalar_type());
  ctx.cache = opt.cache;
  const bool needs_window = config_.sliding_window && past + T > *config_.sliding_window;
  // Plain causal attention (past = 0) or single-token decoding needs no explicit mask: SDPA's fast paths.
  if (opt.segment_ids.defined() || (past > 0 && T > 1)) ctx.mask = build_mask(B, T, past, opt.segment_ids, std::nullopt, device);
  if (needs_window) ctx.window_mask = build_mask(B, T, past, opt.segment_ids, config_.sliding_window, device);
  return state;
}

void TransformerImpl::advance(ForwardState& state, int64_t until_layer) {
  const ForwardOptions& opt = state.options;
  const bool keep_probs = opt.attentions || static_cast<bool>(opt.on_attention);
  const bool checkpoint = gradient_checkpointing && is_training() && torch::GradMode::is_enabled() && !keep_probs &&
                          !opt.router_logits && !opt.mlp_inputs && !opt.cache;
  until_layer = std::min(until_layer, config_.num_layers);
  for (int64_t& l = state.next_layer; l < until_layer; ++l) {
    if (opt.hidden_states) state.out.hidden_states.push_back(state.x);
    auto* layer = model->layers[l]->as<DecoderLayerImpl>();
    LayerContext layer_ctx = state.ctx;
    if (!config_.window_applies(l)) layer_ctx.window_mask = torch::Tensor();
    if (checkpoint) {
      state.x = CheckpointedLayer::apply(state.x, layer, layer_ctx);
      continue;
    }
    torch::Tensor probs, router, mlp_input;
    const bool report = opt.on_attention && (opt.attention_layers.empty() ||
                                             (l < static_cast<int64_t>(opt.attention_layers.size()) && opt.attention_layers[l]));
    const bool layer_probs = opt.attentions || report;
    state.x = layer->forward(state.x, layer_ctx, layer_probs ? &probs : nullptr, opt.router_logits ? &router : nullptr,
                             opt.mlp_inputs ? &mlp_input : nullptr);
    if (report) opt.on_attention(l, probs);
    if (opt.attentions) state.out.attentions.push_back(probs);
    if (opt.router_logits && router.defined()) state.out.router_logits.push_back(router);
    if (opt.mlp_inputs) state.out.mlp_inputs.push_back(mlp_input);
  }
}

ForwardOutput TransformerImpl::finish(ForwardState& state) {
  advance(state, config_.num_layers);
  torch::Tensor x = model->norm(state.x);  // (B, T, D)
  state.x = torch::Tensor();
  ForwardOutput out = std::move(state.out);
  if (state.options.hidden_states) out.hidden_states.push_back(x);
  if (state.options.logits) {
    out.logits = F::linear(x, lm_head_weight());  // (B, T, V)
  } else {
    out.final_hidden = x;
  }
  return out;
}

ForwardOutput TransformerImpl::forward(const torch::Tensor& input_ids, const ForwardOptions& opt) {
  ForwardState state = begin(input_ids, opt);
  return finish(state);
}

}  // namespace kdae::model
