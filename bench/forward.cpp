// Forward throughput and peak memory of kdae's transformer: bench_forward MODEL_DIR [B T REPS THREADS]
// Prints median tokens/s over REPS timed passes (after one warm-up) and peak RSS. The Python peer
// bench/forward_peer.py does the same with transformers; compare them in one run (see docs/performance.md).
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <iostream>

#include "common/threads.h"
#include "io/hf-model.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: bench_forward MODEL_DIR [B T REPS THREADS]\n";
    return 2;
  }
  const int64_t B = argc > 2 ? std::stoll(argv[2]) : 4, T = argc > 3 ? std::stoll(argv[3]) : 256;
  const int reps = argc > 4 ? std::stoi(argv[4]) : 5;
  kdae::set_threads(argc > 5 ? std::stoi(argv[5]) : 0);
  auto model = kdae::io::load_model(argv[1]);
  model->eval();
  torch::manual_seed(0);
  auto ids = torch::randint(model->config().vocab_size, {B, T}, torch::kInt64);  // (B, T)
  torch::InferenceMode inference;
  model->forward(ids);
  std::vector<double> rates;
  for (int r = 0; r < reps; ++r) {
    const auto start = std::chrono::steady_clock::now();
    model->forward(ids);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    rates.push_back(static_cast<double>(B * T) / s);
  }
  std::sort(rates.begin(), rates.end());
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  std::cout << "{\"impl\": \"kdae\", \"tokens_per_s\": " << rates[rates.size() / 2]
            << ", \"peak_rss_mib\": " << usage.ru_maxrss / 1024.0 << "}\n";
  return 0;
}
