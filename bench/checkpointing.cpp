// One attention-KD training step of a synthetic student (teacher of the same shape), with and without
// gradient checkpointing: seconds per step (median) and peak memory: the process's peak RSS (run one
// configuration per process: bench/run_checkpointing.sh does) and, where the CUDA headers exist, the
// CUDA caching allocator's peak of allocated bytes.
//   bench_checkpointing LAYERS HIDDEN HEADS SEQ VOCAB MODE(none|all|every2) STEPS [cpu|cuda] [float32|bfloat16]
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <torch/cuda.h>
#if __has_include(<cuda_runtime_api.h>) && __has_include(<c10/cuda/CUDACachingAllocator.h>)
#include <c10/cuda/CUDACachingAllocator.h>
#define KDAE_CUDA_STATS 1
#endif

#include "common/device.h"
#include "model/transformer.h"
#include "train/distill-step.h"
#include "train/teacher-set.h"

using namespace kdae;

namespace {

model::ModelConfig shape(int64_t layers, int64_t hidden, int64_t heads, int64_t vocab, int64_t seq) {
  model::ModelConfig c;
  c.vocab_size = vocab;
  c.hidden_size = hidden;
  c.intermediate_size = hidden * 8 / 3 / 64 * 64;
  c.num_layers = layers;
  c.num_heads = heads;
  c.num_kv_heads = std::max<int64_t>(1, heads / 4);
  c.head_dim = hidden / heads;
  c.max_position_embeddings = seq;
  return c;
}

train::MicroBatch batch_of(int64_t seq, int64_t vocab) {
  train::MicroBatch mb;
  auto& b = mb.batch;
  b.input_ids = torch::randint(0, vocab, {1, seq}, torch::kInt64);
  b.labels = torch::cat({b.input_ids.narrow(1, 1, seq - 1), torch::full({1, 1}, -100, torch::kInt64)}, 1);
  b.labels.narrow(1, 0, seq / 4).fill_(-100);  // a prompt quarter, unsupervised
  b.token_mask = b.labels.ne(-100);
  b.position_ids = torch::arange(seq).unsqueeze(0);
  b.segment_ids = torch::ones({1, seq}, torch::kInt32);
  b.domain = torch::zeros({1}, torch::kInt64);
  b.weight = torch::ones({1});
  mb.row_samples = {{0}};
  return mb;
}

double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

double cuda_peak_mib(torch::Device device) {
#ifdef KDAE_CUDA_STATS
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index());
    return static_cast<double>(stats.allocated_bytes[0].peak) / (1024.0 * 1024.0);
  }
#endif
  (void)device;
  return 0.0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 8) {
    std::fprintf(stderr, "usage: %s LAYERS HIDDEN HEADS SEQ VOCAB none|all|every2 STEPS [device] [dtype]\n", argv[0]);
    return 2;
  }
  const int64_t layers = std::stoll(argv[1]), hidden = std::stoll(argv[2]), heads = std::stoll(argv[3]);
  const int64_t seq = std::stoll(argv[4]), vocab = std::stoll(argv[5]), steps = std::stoll(argv[7]);
  const std::string mode = argv[6];
  const torch::Device device = parse_device(argc > 8 ? argv[8] : "cpu");
  const torch::ScalarType dtype = parse_dtype(argc > 9 ? argv[9] : "float32");
  torch::manual_seed(0);
  const auto config = shape(layers, hidden, heads, vocab, seq);
  model::Transformer student(config), teacher(config);
  student->to(device);
  teacher->to(device, dtype);
  teacher->eval();
  student->train();
  student->gradient_checkpointing = mode != "none";
  student->checkpoint_every = mode == "every2" ? 2 : 1;
  train::Teacher t;
  t.name = "*";
  t.model = teacher;
  t.device = device;
  train::TeacherSet teachers(std::vector<train::Teacher>{t});
  train::StepSetup setup;
  setup.student = student;
  setup.teachers = &teachers;
  setup.teacher_of_domain = {0};
  setup.objective.attention_weight = 1.0;
  setup.layer_pairs = train::build_layer_pairs({}, config, teachers);
  setup.device = device;
  setup.compute_dtype = dtype;
  const auto mb = batch_of(seq, vocab);
  std::vector<double> seconds;
  for (int64_t s = 0; s < steps + 1; ++s) {  // the first step warms up
    const auto start = std::chrono::steady_clock::now();
    student->zero_grad();
    auto r = train::compute_step(setup, mb);
    r.terms.total.backward();
    if (device.is_cuda()) torch::cuda::synchronize();
    if (s > 0) seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(seconds.begin(), seconds.end());
  const double median = seconds[seconds.size() / 2];
  std::printf("{\"layers\": %lld, \"hidden\": %lld, \"seq\": %lld, \"mode\": \"%s\", \"median_step_s\": %.3f, "
              "\"tokens_per_s\": %.1f, \"peak_rss_mib\": %.0f, \"cuda_peak_mib\": %.0f}\n",
              static_cast<long long>(layers), static_cast<long long>(hidden), static_cast<long long>(seq), mode.c_str(),
              median, static_cast<double>(seq) / median, peak_rss_mib(), cuda_peak_mib(device));
  return 0;
}
