#include "model/transformer.h"

#include <torch/autograd.h>
#include <torch/nn/functional.h>

#include "common/error.h"
#include "model/layer-run.h"

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

// Causal (and window) mask restricted to the real keys of each row. A padding query may still see
// itself: a row with no allowed key softmaxes to NaN, and its NaN keys would poison real rows'
// next layer through 0 x NaN.
torch::Tensor with_key_mask(torch::Tensor allowed, const torch::Tensor& key_mask, int64_t past) {
  const int64_t B = key_mask.size(0), S = key_mask.size(1), T = S - past;
  torch::Tensor keys = key_mask.view({B, 1, 1, S});
  if (!allowed.defined()) return keys.expand({B, 1, T, S}).contiguous();
  auto idx = torch::TensorOptions().dtype(torch::kInt64).device(key_mask.device());
  torch::Tensor self = torch::arange(past, S, idx).view({T, 1}) == torch::arange(0, S, idx).view({1, S});  // (T, S)
  return allowed.logical_and(keys).logical_or(self.view({1, 1, T, S})).contiguous();
}

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
  if (opt.key_mask.defined()) {
    if (opt.key_mask.dim() != 2 || opt.key_mask.size(0) != B || opt.key_mask.size(1) != past + T)
      fail("key_mask must be (B, cache + T) = (", B, ", ", past + T, "), got ", opt.key_mask.sizes());
    const torch::Tensor keys = opt.key_mask.to(device, torch::kBool);
    if (T > 1 && !ctx.mask.defined()) ctx.mask = build_mask(B, T, past, opt.segment_ids, std::nullopt, device);
    ctx.mask = with_key_mask(ctx.mask, keys, past);
    if (needs_window) ctx.window_mask = with_key_mask(ctx.window_mask, keys, past);
  }
  return state;
}

LayerContext TransformerImpl::layer_context(const LayerContext& shared, int64_t layer) const {
  LayerContext ctx = shared;
  if (!config_.window_applies(layer)) ctx.window_mask = torch::Tensor();
  return ctx;
}

bool TransformerImpl::recomputes_layer(int64_t layer) const {
  return gradient_checkpointing && is_training() && torch::GradMode::is_enabled() && layer % checkpoint_every == 0;
}

torch::Tensor TransformerImpl::attention_probs(int64_t layer, const torch::Tensor& x, const LayerContext& ctx) {
  auto* decoder = model->layers[layer]->as<DecoderLayerImpl>();
  torch::Tensor probs;
  if (residency) residency->acquire(layer);
  decoder->self_attn(decoder->input_layernorm(x), layer_context(ctx, layer), &probs);
  if (residency) residency->release(layer);
  return probs;
}

void TransformerImpl::advance(ForwardState& state, int64_t until_layer) {
  const ForwardOptions& opt = state.options;
  if (opt.on_attention && opt.attention_term) fail("ForwardOptions: set on_attention or attention_term, not both");
  until_layer = std::min(until_layer, config_.num_layers);
  for (int64_t& l = state.next_layer; l < until_layer; ++l) {
    if (opt.hidden_states) state.out.hidden_states.push_back(state.x);
    auto* layer = model->layers[l]->as<DecoderLayerImpl>();
    const bool reported = opt.attention_layers.empty() ||
                          (l < static_cast<int64_t>(opt.attention_layers.size()) && opt.attention_layers[l]);
    LayerRequest request;
    request.probs = opt.attentions || (opt.on_attention && reported);
    request.router = opt.router_logits;
    request.mlp_input = opt.mlp_inputs;
    if (reported) request.attention_term = opt.attention_term;
    const LayerContext ctx = layer_context(state.ctx, l);
    if (residency) residency->acquire(l);
    LayerResult r = recomputes_layer(l) ? run_layer_checkpointed(*layer, l, state.x, ctx, request)
                                        : run_layer(*layer, l, state.x, ctx, request);
    if (residency) residency->release(l);
    state.x = r.y;
    if (opt.on_attention && reported) opt.on_attention(l, r.probs);
    if (opt.attentions) state.out.attentions.push_back(r.probs);
    if (r.router.defined()) state.out.router_logits.push_back(r.router);
    if (opt.mlp_inputs) state.out.mlp_inputs.push_back(r.mlp_input);
    if (r.attention_term.defined()) state.out.attention_terms.push_back(r.attention_term);
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
