// Teacher cache codec and sparse loss: bench_teacher_cache [V N K REPS]
// On N rows of synthetic peaked teacher logits (V columns, N(0, 1) * 4: top-1 mass ~0.3-0.6, like a
// sharp LLM head), for logprob_bits 4 and 8 at top-k K: bytes per row, encode and decode rows/s
// (median of REPS), and the reconstruction error KL(full || decoded sparse, tail spread evenly) per
// row. Then the forward_kl fwd+bwd time of the sparse loss vs the dense chunked loss on the same rows.
// Dimension legend: N rows, V vocabulary, k top-k.
#include <torch/types.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <vector>

#include "distill/divergence.h"
#include "distill/sparse-divergence.h"
#include "io/teacher-cache-format.h"

namespace distill = kdae::distill;

namespace {

double median_seconds(int reps, const std::function<void()>& f) {
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto start = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t V = argc > 1 ? std::stoll(argv[1]) : 32000, N = argc > 2 ? std::stoll(argv[2]) : 2048;
  const int64_t K = argc > 3 ? std::stoll(argv[3]) : 64;
  const int reps = argc > 4 ? std::stoi(argv[4]) : 5;
  torch::manual_seed(0);
  auto teacher = torch::randn({N, V}) * 4;                                    // (N, V)
  auto logp = at::log_softmax(teacher, 1);                                    // (N, V)
  auto [values, indices] = logp.topk(K, 1);                                   // (N, k)
  auto tail = at::logsumexp(logp.scatter(1, indices, -INFINITY), 1).exp().to(torch::kFloat64);  // (N)
  auto ids32 = indices.to(torch::kInt32).contiguous();
  values = values.contiguous();
  std::printf("V %lld  N %lld  k %lld  mean top-k mass %.3f\n", (long long)V, (long long)N, (long long)K,
              1.0 - tail.mean().item<double>());
  distill::SparseTeacherRows sparse_rows;
  for (int64_t bits : {4, 8}) {
    kdae::io::TeacherCacheHeader h;
    h.vocab = V;
    h.top_k = K;
    h.logprob_bits = bits;
    const kdae::io::RowCodec codec(h);
    const int64_t rb = h.record_bytes();
    std::vector<uint8_t> records(N * rb);
    const double enc = median_seconds(reps, [&] {
      for (int64_t r = 0; r < N; ++r)
        codec.encode(ids32.data_ptr<int32_t>() + r * K, values.data_ptr<float>() + r * K, tail[r].item<double>(),
                     records.data() + r * rb);
    });
    auto ids = torch::empty({N, K}, torch::kInt64);
    auto lp = torch::empty({N, K}, torch::kFloat32);
    auto t = torch::empty({N}, torch::kFloat32);
    const double dec = median_seconds(reps, [&] {
      for (int64_t r = 0; r < N; ++r)
        codec.decode(records.data() + r * rb, ids.data_ptr<int64_t>() + r * K, lp.data_ptr<float>() + r * K,
                     t.data_ptr<float>() + r);
    });
    auto present = lp > -INFINITY;                                                         // (N, k)
    auto q = (t / (V - present.sum(1)).to(torch::kFloat32)).log().clamp_min(-1e4).unsqueeze(1).expand({N, V}).clone();
    q.scatter_(1, at::where(present, ids, ids.narrow(1, 0, 1)), at::where(present, lp, lp.narrow(1, 0, 1)));
    const double kl = (logp.exp() * (logp - q)).sum(1).mean().item<double>();
    std::printf("bits %lld: %lld bytes/row  encode %.0f rows/s  decode %.0f rows/s  KL(full || sparse) %.5f nats/row\n",
                (long long)bits, (long long)rb, N / enc, N / dec, kl);
    if (bits == 8) sparse_rows = {ids, lp, t, 1.0};
  }
  auto student = (teacher + torch::randn({N, V})).requires_grad_(true);  // (N, V)
  distill::SparseDivergenceOptions so;
  so.vocab = V;
  const double sparse_s = median_seconds(reps, [&] {
    student.mutable_grad() = torch::Tensor();
    distill::sparse_row_divergence(student, sparse_rows, so).sum().backward();
  });
  distill::DivergenceOptions d;
  auto rows = torch::arange(N, torch::kInt64);
  const double dense_s = median_seconds(reps, [&] {
    student.mutable_grad() = torch::Tensor();
    distill::row_divergence(student, teacher, rows, d).sum().backward();
  });
  std::printf("forward_kl fwd+bwd: sparse (k %lld) %.3f s, dense chunked %.3f s\n", (long long)K, sparse_s, dense_s);
  return 0;
}
