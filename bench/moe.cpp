// MoE vs dense training throughput: bench_moe [D F L B T REPS THREADS]
// Three randomly initialised models with the same active MLP size per token: a dense model with MLP width
// 2F, a 2-expert top-2 and an 8-expert top-2 Mixtral with expert width F. Each timed step is forward +
// cross-entropy + backward on B x T random tokens. The models run round-robin (one step each per round,
// after a warm-up step) so drift hits all three alike; prints median tokens/s per model and the ratio to
// dense. THREADS defaults to 1: on a shared, loaded machine OpenMP threads spin and waste the cores
// (2 threads ran 8x slower there), which hides the comparison. Figures: docs/performance.md ("MoE").
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <torch/nn/functional.h>

#include "common/threads.h"
#include "model/transformer.h"

namespace {

using kdae::model::ModelConfig;

ModelConfig config(int64_t D, int64_t F, int64_t L, int64_t experts) {
  ModelConfig c;
  c.vocab_size = 1024;
  c.hidden_size = D;
  c.intermediate_size = experts ? F : 2 * F;
  c.num_layers = L;
  c.num_heads = D / 64;
  c.num_kv_heads = std::max<int64_t>(1, D / 128);
  c.head_dim = 64;
  c.max_position_embeddings = 4096;
  if (experts) {
    c.architecture = "MixtralForCausalLM";
    c.model_type = "mixtral";
    c.num_experts = experts;
    c.experts_per_token = 2;
  }
  return c;
}

double step(kdae::model::Transformer& model, const torch::Tensor& ids, const torch::Tensor& targets) {
  const auto start = std::chrono::steady_clock::now();
  model->zero_grad();
  torch::Tensor logits = model->forward(ids).logits;  // (B, T, V)
  torch::Tensor loss = torch::nn::functional::cross_entropy(logits.flatten(0, 1), targets.flatten());
  loss.backward();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  auto arg = [&](int i, int64_t fallback) { return argc > i ? std::stoll(argv[i]) : fallback; };
  const int64_t D = arg(1, 512), F = arg(2, 1024), L = arg(3, 4), B = arg(4, 4), T = arg(5, 256);
  const int reps = static_cast<int>(arg(6, 5));
  kdae::set_threads(static_cast<int>(arg(7, 1)));
  torch::manual_seed(0);
  const char* names[] = {"dense (MLP 2F)", "moe 2x top-2", "moe 8x top-2"};
  std::vector<kdae::model::Transformer> models = {kdae::model::Transformer(config(D, F, L, 0)),
                                                  kdae::model::Transformer(config(D, F, L, 2)),
                                                  kdae::model::Transformer(config(D, F, L, 8))};
  // Random routers of scale 0.02 route almost uniformly; a wider router spreads tokens over the experts
  // as a trained one would, so the 8-expert case really runs 8 unequal groups.
  {
    torch::NoGradGuard no_grad;
    for (size_t m = 1; m < models.size(); ++m)
      for (auto& p : models[m]->named_parameters())
        if (p.key().find("block_sparse_moe.gate.") != std::string::npos) p.value().normal_(0, 1);
  }
  const torch::Tensor ids = torch::randint(1024, {B, T}, torch::kInt64);      // (B, T)
  const torch::Tensor targets = torch::randint(1024, {B, T}, torch::kInt64);  // (B, T)
  std::vector<std::vector<double>> rates(models.size());
  for (auto& m : models) {
    m->train();
    step(m, ids, targets);
  }
  for (int r = 0; r < reps; ++r)
    for (size_t m = 0; m < models.size(); ++m) rates[m].push_back(static_cast<double>(B * T) / step(models[m], ids, targets));
  std::printf("D %lld, F %lld, layers %lld, batch %lld x %lld, %d rounds, fwd+bwd\n", (long long)D, (long long)F,
              (long long)L, (long long)B, (long long)T, reps);
  std::printf("| model | params | tokens/s (median) | vs dense |\n| --- | --- | --- | --- |\n");
  double dense = 0;
  for (size_t m = 0; m < models.size(); ++m) {
    std::sort(rates[m].begin(), rates[m].end());
    const double median = rates[m][rates[m].size() / 2];
    if (m == 0) dense = median;
    int64_t params = 0;
    for (auto& p : models[m]->parameters()) params += p.numel();
    std::printf("| %s | %.1fM | %.0f | %.2fx |\n", names[m], params / 1e6, median, median / dense);
  }
  return 0;
}
