// KD loss forward + backward: chunked (analytic, recomputing) vs plain (full-vocabulary autograd).
//   bench_kd_loss [rows=2048] [repeats=3]
// Each case runs in a forked child so ru_maxrss (peak resident memory) is the case's own; the
// figure reported is the peak above the inputs already allocated. CPU only.
// Dimension legend: N = supervised rows, V = vocabulary.
#include <ATen/Parallel.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <torch/types.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "distill/divergence.h"

using namespace kdae::distill;

namespace {

long max_rss_kib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
}

void run_case(int64_t vocab, int64_t rows, bool chunked, int repeats) {
  torch::manual_seed(0);
  auto student = (torch::randn({rows, vocab}) * 2).requires_grad_(true);  // (N, V)
  auto teacher = torch::randn({rows, vocab}) * 2;                          // (N, V)
  auto index = torch::arange(rows, torch::kInt64);                         // (N)
  student.mutable_grad() = torch::zeros_like(student);                     // the gradient buffer is not the loss's cost
  DivergenceOptions opts;
  opts.chunked = chunked;
  const long base = max_rss_kib();
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    auto loss = row_divergence(student, teacher, index, opts).mean();
    loss.backward();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::printf("threads=%d V=%-6lld N=%-5lld %-8s chunk=%-5lld fwd+bwd %.3f s  peak +%.0f MiB\n", at::get_num_threads(), static_cast<long long>(vocab),
              static_cast<long long>(rows), chunked ? "chunked" : "plain",
              static_cast<long long>(chunked ? chunk_rows_for(vocab, opts) : rows), best,
              (max_rss_kib() - base) / 1024.0);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t rows = argc > 1 ? std::atoll(argv[1]) : 2048;
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 3;
  // No torch call in the parent: forking after OpenMP has started its pool is unsafe.
  for (int64_t vocab : {49152, 32000}) {
    for (bool chunked : {true, false}) {
      const pid_t pid = fork();
      if (pid == 0) {
        run_case(vocab, rows, chunked, repeats);
        _exit(0);
      }
      int status = 0;
      waitpid(pid, &status, 0);
    }
  }
  return 0;
}
