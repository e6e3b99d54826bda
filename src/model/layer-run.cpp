#include "model/layer-run.h"

#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/ivalue.h>
#include <torch/autograd.h>
#include <torch/custom_class.h>

#include <mutex>

#include "common/error.h"

namespace kdae::model {

LayerResult run_layer(DecoderLayerImpl& layer, int64_t index, const torch::Tensor& x, const LayerContext& ctx,
                      const LayerRequest& request) {
  LayerResult r;
  const bool probs = request.probs || static_cast<bool>(request.attention_term);
  r.y = layer.forward(x, ctx, probs ? &r.probs : nullptr, request.router ? &r.router : nullptr,
                      request.mlp_input ? &r.mlp_input : nullptr);
  if (request.attention_term) r.attention_term = request.attention_term(index, r.probs);
  if (!request.probs) r.probs = torch::Tensor();
  return r;
}

namespace {

// The generator state of one device, captured at the forward and swapped in for the recompute.
struct RngSnapshot {
  torch::Device device = torch::kCPU;
  torch::Tensor state;

  static RngSnapshot capture(torch::Device device) {
    auto gen = at::globalContext().defaultGenerator(device);
    std::lock_guard<std::mutex> lock(gen.mutex());
    return {device, gen.get_state()};
  }
  // Sets this state and returns the one it replaced.
  RngSnapshot swap_in() const {
    auto gen = at::globalContext().defaultGenerator(device);
    std::lock_guard<std::mutex> lock(gen.mutex());
    RngSnapshot previous{device, gen.get_state()};
    gen.set_state(state);
    return previous;
  }
};

struct AutocastSnapshot {
  at::DeviceType type = at::kCPU;
  bool enabled = false;
  at::ScalarType dtype = at::kBFloat16;

  static AutocastSnapshot capture(at::DeviceType type) {
    return {type, at::autocast::is_autocast_enabled(type), at::autocast::get_autocast_dtype(type)};
  }
  AutocastSnapshot swap_in() const {
    AutocastSnapshot previous = capture(type);
    at::autocast::set_autocast_enabled(type, enabled);
    at::autocast::set_autocast_dtype(type, dtype);
    return previous;
  }
};

// Everything the recompute needs, owned by the graph node (an IValue capsule in saved_data), so the
// context tensors and the attention_term closure live exactly as long as the node.
struct Recompute : torch::CustomClassHolder {
  DecoderLayerImpl* layer = nullptr;
  int64_t index = 0;
  LayerContext ctx;
  LayerRequest request;
  std::vector<RngSnapshot> rng;
  std::vector<AutocastSnapshot> autocast;
};

// Outputs in a fixed order, defined ones only: y, then router, mlp_input, attention_term as requested.
torch::autograd::variable_list outputs_of(const LayerResult& r, const LayerRequest& request) {
  torch::autograd::variable_list out{r.y};
  if (request.router && r.router.defined()) out.push_back(r.router);
  if (request.mlp_input) out.push_back(r.mlp_input);
  if (request.attention_term) out.push_back(r.attention_term);
  return out;
}

struct CheckpointedLayer : torch::autograd::Function<CheckpointedLayer> {
  // anchor: an empty tensor that requires grad, so the node joins the graph even when x does not (a
  // LoRA student's embeddings are frozen, yet the layer's adapters need their gradients).
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* node, torch::Tensor x,
                                                torch::Tensor anchor, c10::intrusive_ptr<Recompute> recompute) {
    node->saved_data["recompute"] = c10::IValue::make_capsule(recompute);
    node->save_for_backward({x});
    torch::NoGradGuard no_grad;
    return outputs_of(run_layer(*recompute->layer, recompute->index, x, recompute->ctx, recompute->request),
                      recompute->request);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* node,
                                                 torch::autograd::variable_list grads) {
    auto recompute = c10::static_intrusive_pointer_cast<Recompute>(node->saved_data["recompute"].toCapsule());
    torch::Tensor x = node->get_saved_variables()[0].detach().requires_grad_(true);
    std::vector<RngSnapshot> rng_after;
    std::vector<AutocastSnapshot> autocast_after;
    for (const auto& s : recompute->rng) rng_after.push_back(s.swap_in());
    for (const auto& s : recompute->autocast) autocast_after.push_back(s.swap_in());
    torch::autograd::variable_list outputs;
    {
      torch::AutoGradMode enable(true);
      outputs = outputs_of(run_layer(*recompute->layer, recompute->index, x, recompute->ctx, recompute->request),
                           recompute->request);
    }
    for (const auto& s : autocast_after) s.swap_in();
    for (const auto& s : rng_after) s.swap_in();
    torch::autograd::variable_list with_grad, their_grads;
    for (size_t i = 0; i < outputs.size(); ++i) {
      if (!grads[i].defined() || !outputs[i].requires_grad()) continue;
      with_grad.push_back(outputs[i]);
      their_grads.push_back(grads[i]);
    }
    if (!with_grad.empty()) torch::autograd::backward(with_grad, their_grads);
    return {node->needs_input_grad(0) ? x.grad() : torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

LayerResult run_layer_checkpointed(DecoderLayerImpl& layer, int64_t index, const torch::Tensor& x,
                                   const LayerContext& ctx, const LayerRequest& request) {
  if (request.probs)
    fail("gradient checkpointing cannot return layer ", index, "'s attention map with gradients; ",
         "attention KD under checkpointing goes through ForwardOptions::attention_term");
  if (ctx.cache) fail("gradient checkpointing cannot be combined with a KV cache (layer ", index, ")");
  auto recompute = c10::make_intrusive<Recompute>();
  recompute->layer = &layer;
  recompute->index = index;
  recompute->ctx = ctx;
  recompute->request = request;
  recompute->rng.push_back(RngSnapshot::capture(torch::kCPU));
  if (!x.device().is_cpu()) recompute->rng.push_back(RngSnapshot::capture(x.device()));
  recompute->autocast.push_back(AutocastSnapshot::capture(at::kCPU));
  if (!x.device().is_cpu()) recompute->autocast.push_back(AutocastSnapshot::capture(x.device().type()));
  auto anchor = torch::empty({0}, x.options().dtype(torch::kFloat32)).requires_grad_(!x.requires_grad());
  auto out = CheckpointedLayer::apply(x, anchor, recompute);
  LayerResult r;
  size_t next = 0;
  r.y = out[next++];
  if (request.router && layer.moe) r.router = out[next++];
  if (request.mlp_input) r.mlp_input = out[next++];
  if (request.attention_term) r.attention_term = out[next++];
  return r;
}

}  // namespace kdae::model
