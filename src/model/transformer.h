// The one transformer kdae implements: Llama, Mistral (sliding window) and Qwen2 (qkv bias) are
// configurations, Mixtral is the MoE branch taken where a layer has a router.
// Dimensions: B batch, T query tokens, S key tokens (cache + T), D hidden, H query heads,
// Hkv key/value heads, hd head dim, F MLP width, E experts, K experts per token, V vocab, N layers.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/types.h>

#include <functional>
#include <memory>
#include <vector>

#include "model/layers.h"
#include "model/model-config.h"
#include "model/rope.h"

namespace kdae::model {

// Keys and values of past tokens, per layer, for incremental decoding.
struct KVCache {
  std::vector<torch::Tensor> keys, values;  // per layer (B, Hkv, S, hd)
  int64_t length() const { return keys.empty() || !keys[0].defined() ? 0 : keys[0].size(2); }
};

struct ForwardOptions {
  torch::Tensor position_ids;  // (B, T) int64; default: cache length + arange(T)
  torch::Tensor segment_ids;   // (B, T) int; packed samples attend only within their segment (0 = padding)
  // (B, S) bool over cache + new keys, false = a padding slot. Batched decoding left-pads rows of
  // different lengths into one cache, so each row's tokens stay contiguous and end at the last
  // column: causal and sliding-window distances in columns are then real token distances.
  torch::Tensor key_mask;
  bool attentions = false;     // keep per-layer attention probabilities (eager path)
  bool hidden_states = false;  // keep N + 1 hidden states (embeddings, each layer, final norm)
  bool router_logits = false;  // keep per-layer router logits (MoE)
  bool mlp_inputs = false;     // keep per-layer MLP/MoE inputs (post_attention_layernorm outputs)
  bool logits = true;          // false: skip the LM head; final_hidden holds its input (the fused head)
  KVCache* cache = nullptr;
  // Called per layer with its attention probabilities (B, H, T, S) instead of keeping them all:
  // attention KD reads one layer at a time and never holds every map at once.
  std::function<void(int64_t layer, const torch::Tensor& probs)> on_attention;
  // Layers for which on_attention / attention_term is called (empty = all). The others keep the fused
  // SDPA kernel, which never forms the T x T map (a teacher deeper than its student only needs its
  // mapped layers).
  std::vector<bool> attention_layers;
  // Attention KD of a model being trained: layer l's probabilities -> that layer's loss (a scalar,
  // differentiable in probs), kept in ForwardOutput::attention_terms. Unlike on_attention it composes
  // with gradient checkpointing: a recomputed layer calls it again in backward on the recomputed map,
  // so it must return the same value on every call and have no side effects.
  std::function<torch::Tensor(int64_t layer, const torch::Tensor& probs)> attention_term;
};

// What every layer of one forward pass shares: rotary tables and the attention masks.
struct LayerContext {
  RopeTables rope;
  torch::Tensor mask;         // (B, 1, T, S) bool, true = may attend; undefined = plain causal (or none for T=1)
  torch::Tensor window_mask;  // same for sliding-window layers; undefined = as `mask`
  KVCache* cache = nullptr;
};

struct ForwardOutput {
  torch::Tensor logits;                     // (B, T, V)
  torch::Tensor final_hidden;               // (B, T, D) final-norm output, when logits = false
  std::vector<torch::Tensor> attentions;    // N x (B, H, T, S)
  std::vector<torch::Tensor> hidden_states; // (N + 1) x (B, T, D)
  std::vector<torch::Tensor> router_logits; // N x (B*T, E)
  std::vector<torch::Tensor> mlp_inputs;    // N x (B, T, D)
  std::vector<torch::Tensor> attention_terms;  // per reported layer, () from attention_term
};

// A forward pass in progress, for callers that interleave two models layer by layer (attention KD
// runs the teacher in lock-step with the student so only one layer's maps exist at a time).
struct ForwardState {
  ForwardOptions options;
  LayerContext ctx;
  torch::Tensor x;          // (B, T, D) input of layer next_layer
  int64_t next_layer = 0;
  ForwardOutput out;        // what the options ask to keep, so far
};

class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(const ModelConfig& config, int64_t layer);
  // x (B, T, D) -> (B, T, D); probs_out receives (B, H, T, S) when requested.
  torch::Tensor forward(const torch::Tensor& x, const struct LayerContext& ctx, torch::Tensor* probs_out);
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  int64_t layer_, num_heads_, num_kv_heads_, head_dim_;
};
TORCH_MODULE(Attention);

class MLPImpl : public torch::nn::Module {
 public:
  MLPImpl(int64_t hidden, int64_t intermediate, bool bias, const char* gate, const char* down, const char* up);
  torch::Tensor forward(const torch::Tensor& x);  // (..., D) -> (..., D): down(silu(gate(x)) * up(x))
  Linear gate{nullptr}, down{nullptr}, up{nullptr};
};
TORCH_MODULE(MLP);

class SparseMoeImpl : public torch::nn::Module {
 public:
  explicit SparseMoeImpl(const ModelConfig& config);
  // x (B, T, D) -> (B, T, D); router_logits_out receives (B*T, E).
  torch::Tensor forward(const torch::Tensor& x, torch::Tensor* router_logits_out);
  Linear gate{nullptr};
  torch::nn::ModuleList experts;

 private:
  int64_t top_k_;
};
TORCH_MODULE(SparseMoe);

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const ModelConfig& config, int64_t layer);
  torch::Tensor forward(const torch::Tensor& x, const LayerContext& ctx, torch::Tensor* probs, torch::Tensor* router,
                        torch::Tensor* mlp_input = nullptr);
  Attention self_attn{nullptr};
  MLP mlp{nullptr};
  SparseMoe moe{nullptr};
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
};
TORCH_MODULE(DecoderLayer);

// The "model." prefix of HF checkpoints.
class BackboneImpl : public torch::nn::Module {
 public:
  explicit BackboneImpl(const ModelConfig& config);
  Weight embed_tokens{nullptr};  // weight (V, D)
  torch::nn::ModuleList layers;
  RMSNorm norm{nullptr};
};
TORCH_MODULE(Backbone);

// Brings a decoder layer's weights into place just before the layer runs and lets them go after:
// a frozen model whose layers are split over ranks (train/teacher-sharding) gathers each one for its
// turn. Without one, weights stay resident.
struct LayerResidency {
  virtual ~LayerResidency() = default;
  virtual void acquire(int64_t layer) = 0;
  virtual void release(int64_t layer) = 0;
};

class TransformerImpl : public torch::nn::Module {
 public:
  explicit TransformerImpl(ModelConfig config);
  ForwardOutput forward(const torch::Tensor& input_ids, const ForwardOptions& options = {});
  // forward() in steps: begin embeds, advance runs layers up to (excluding) until_layer, finish runs
  // the rest, the final norm and the head.
  ForwardState begin(const torch::Tensor& input_ids, const ForwardOptions& options = {});
  void advance(ForwardState& state, int64_t until_layer);
  ForwardOutput finish(ForwardState& state);
  torch::Tensor lm_head_weight() const;  // (V, D): lm_head.weight, or the embeddings when tied
  // Layer l's attention probabilities (B, H, T, S) for its input x under a forward's context (the
  // attention half of the layer only): lets a caller re-derive a map it did not keep.
  torch::Tensor attention_probs(int64_t layer, const torch::Tensor& x, const LayerContext& ctx);
  // Whether a forward now would recompute layer l in backward (training, grad mode, checkpointing on).
  bool recomputes_layer(int64_t layer) const;

  const ModelConfig& config() const { return config_; }
  Backbone model{nullptr};
  Weight lm_head{nullptr};  // weight (V, D); null when tied
  // Recompute layers in backward instead of storing their activations: every layer l with
  // l % checkpoint_every == 0 (1 = all; 2 = every other, the speed/memory dial).
  bool gradient_checkpointing = false;
  int64_t checkpoint_every = 1;
  std::shared_ptr<LayerResidency> residency;  // null: every layer's weights are resident

 private:
  LayerContext layer_context(const LayerContext& shared, int64_t layer) const;  // without an inapplicable window
  ModelConfig config_;
  torch::Tensor inv_freq_;  // (hd/2) fp32 on the CPU; moved per call (tiny)
};
TORCH_MODULE(Transformer);

}  // namespace kdae::model
