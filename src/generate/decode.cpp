#include "generate/decode.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>

#include "common/error.h"

namespace kdae::gen {
namespace {

// Keeps the cache entries of the longest common prefix of state.tokens and prompt, but always
// leaves at least one prompt token to feed: its logits pick the first new token.
size_t reuse_prefix(DecodeState& state, const std::vector<int64_t>& prompt) {
  size_t keep = 0;
  const size_t limit = std::min(state.tokens.size(), prompt.size() - 1);
  while (keep < limit && state.tokens[keep] == prompt[keep]) ++keep;
  if (keep == 0) {
    state.cache = model::KVCache{};
  } else if (keep < static_cast<size_t>(state.cache.length())) {
    for (auto* list : {&state.cache.keys, &state.cache.values})
      for (auto& t : *list) t = t.narrow(2, 0, static_cast<int64_t>(keep));  // (B, Hkv, keep, hd)
  }
  state.tokens.resize(keep);
  return keep;
}

}  // namespace

int64_t pick_token(const torch::Tensor& logits, double temperature, double top_p, torch::Generator& gen) {
  if (temperature <= 0) return logits.argmax().item<int64_t>();
  torch::Tensor probs = torch::softmax(logits.to(torch::kFloat32) / temperature, -1);  // (V)
  auto [sorted, order] = probs.sort(-1, /*descending=*/true);                         // (V), (V)
  torch::Tensor keep = (sorted.cumsum(-1) - sorted) < top_p;                          // (V) nucleus
  sorted = sorted * keep;
  const int64_t choice = torch::multinomial(sorted / sorted.sum(), 1, false, gen).item<int64_t>();
  return order[choice].item<int64_t>();
}

torch::Generator sampling_generator(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

std::vector<int64_t> generate(model::Transformer& model, const std::vector<int64_t>& prompt, const GenerateOptions& options,
                              const std::function<void(int64_t)>& on_token, DecodeState* state) {
  if (prompt.empty()) fail("generate: the prompt has no tokens");
  DecodeState local;
  DecodeState& s = state ? *state : local;
  const size_t reused = reuse_prefix(s, prompt);
  auto gen = sampling_generator(options.seed);
  const torch::Device device = model->parameters().front().device();

  torch::InferenceMode inference;
  model::ForwardOptions fwd;
  fwd.cache = &s.cache;
  std::vector<int64_t> step(prompt.begin() + static_cast<std::ptrdiff_t>(reused), prompt.end());
  std::vector<int64_t> produced;
  for (int64_t i = 0; i < options.max_new_tokens; ++i) {
    torch::Tensor input = torch::tensor(step, torch::kInt64).unsqueeze(0).to(device);  // (1, T)
    torch::Tensor logits = model->forward(input, fwd).logits[0][-1].cpu();             // (V)
    s.tokens.insert(s.tokens.end(), step.begin(), step.end());
    const int64_t next = pick_token(logits, options.temperature, options.top_p, gen);
    if (std::find(options.stop_ids.begin(), options.stop_ids.end(), next) != options.stop_ids.end()) break;
    produced.push_back(next);
    if (on_token) on_token(next);
    step = {next};
  }
  return produced;
}

}  // namespace kdae::gen
