#include "train/on-policy.h"

#include <torch/autograd.h>

#include <chrono>
#include <string>

#include "common/error.h"
#include "common/hash.h"
#include "data/batch.h"

namespace kdae::train {
namespace {

uint64_t draw(const OnPolicyOptions& o, const std::string& what) {
  return fnv1a("on-policy:" + std::to_string(o.seed) + ":" + what);
}

// Where the sample's last supervised run starts: the prompt is everything before it.
size_t prompt_length(const data::TokenizedSample& s, size_t index) {
  size_t end = s.supervised.size();
  while (end > 0 && !s.supervised[end - 1]) --end;
  if (end == 0) fail("on-policy: training sample ", index, " has no supervised token to replace");
  size_t start = end;
  while (start > 0 && s.supervised[start - 1]) --start;
  if (start == 0) fail("on-policy: training sample ", index, " has no prompt before its answer");
  return start;
}

data::TokenizedSample rollout_sample(const Rollout& r, const data::TokenizedSample& source) {
  data::TokenizedSample s;
  s.ids.assign(r.prompt.begin(), r.prompt.end());
  s.ids.insert(s.ids.end(), r.completion.begin(), r.completion.end());
  s.supervised.assign(r.prompt.size(), 0);
  s.supervised.resize(s.ids.size(), 1);
  s.domain = source.domain;
  s.weight = source.weight;
  return s;
}

// Rows of the new micro-batch: one sample each, or packed like the data stream packs.
std::vector<std::vector<size_t>> batch_rows(const std::vector<data::TokenizedSample>& samples, const OnPolicyOptions& o) {
  if (o.packing) {
    std::vector<const data::TokenizedSample*> ptrs;
    for (const auto& s : samples) ptrs.push_back(&s);
    return data::pack_rows(ptrs, o.seq_length);
  }
  std::vector<std::vector<size_t>> rows;
  for (size_t i = 0; i < samples.size(); ++i) rows.push_back({i});
  return rows;
}

}  // namespace

bool is_on_policy(const OnPolicyOptions& o, int64_t step, int64_t micro) {
  if (o.fraction <= 0) return false;
  if (o.fraction >= 1) return true;
  const double u = static_cast<double>(draw(o, std::to_string(step) + ":" + std::to_string(micro)) >> 11) * 0x1.0p-53;
  return u < o.fraction;
}

uint64_t rollout_seed(const OnPolicyOptions& o, int64_t step, int64_t micro, size_t row) {
  // 53 bits: exact in JSON (completions.jsonl) and in every tool that reads it back.
  return draw(o, std::to_string(step) + ":" + std::to_string(micro) + ":" + std::to_string(row)) >> 11;
}

OnPolicyBatch on_policy_batch(model::Transformer& student, const data::Dataset& dataset, const MicroBatch& off,
                              const OnPolicyOptions& o, int64_t step, int64_t micro) {
  const auto started = std::chrono::steady_clock::now();
  OnPolicyBatch out;
  std::vector<gen::SequenceRequest> requests;
  for (const auto& row : off.row_samples)
    for (size_t index : row) {
      const data::TokenizedSample& s = dataset.samples.at(index);
      Rollout r;
      r.sample = index;
      r.seed = rollout_seed(o, step, micro, out.rollouts.size());
      r.prompt.assign(s.ids.begin(), s.ids.begin() + static_cast<std::ptrdiff_t>(prompt_length(s, index)));
      gen::SequenceRequest q;
      q.prompt = r.prompt;
      q.options.max_new_tokens = std::min<int64_t>(o.max_new_tokens, o.seq_length - static_cast<int64_t>(r.prompt.size()));
      q.options.temperature = o.temperature;
      q.options.top_p = o.top_p;
      q.options.seed = r.seed;
      q.options.stop_ids = o.stop_ids;
      requests.push_back(std::move(q));
      out.rollouts.push_back(std::move(r));
    }
  std::vector<gen::Completion> completions;
  {
    torch::NoGradGuard no_grad;
    const bool was_training = student->is_training();
    student->eval();  // no LoRA dropout: the tokens are what `kdae generate` draws
    completions = gen::decode_all(student, std::move(requests), static_cast<int64_t>(out.rollouts.size()));
    if (was_training) student->train();
  }
  std::vector<data::TokenizedSample> samples;
  for (size_t i = 0; i < out.rollouts.size(); ++i) {
    Rollout& r = out.rollouts[i];
    r.completion = completions[i].tokens;
    out.generated_tokens += static_cast<int64_t>(r.completion.size());
    r.stopped = completions[i].finish == gen::FinishReason::stop;
    if (r.stopped) r.completion.push_back(completions[i].stop_token);
    samples.push_back(rollout_sample(r, dataset.samples.at(r.sample)));
  }
  std::vector<std::vector<const data::TokenizedSample*>> rows;
  for (const auto& row : batch_rows(samples, o)) {
    std::vector<const data::TokenizedSample*> ptrs;
    std::vector<size_t> indices;
    for (size_t i : row) {
      ptrs.push_back(&samples[i]);
      indices.push_back(out.rollouts[i].sample);
    }
    rows.push_back(std::move(ptrs));
    out.micro.row_samples.push_back(std::move(indices));
  }
  out.micro.batch = data::collate(rows, o.pad_id, 0);
  out.micro.start = off.start;
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return out;
}

}  // namespace kdae::train
