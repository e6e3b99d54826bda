// On-policy distillation (GKD, Agarwal et al. 2023, arXiv 2306.13649): for a share of micro-batches
// the student answers the batch's prompts itself, without gradient, and the objective's divergence
// is taken on its own tokens, scored by the teachers in the step's usual forward. The rest of the
// micro-batches are off-policy (the dataset's answers), as in the paper's KD.
//
// A sample's prompt is everything before its last supervised run (earlier turns stay as context);
// the new sample is prompt + generated tokens + the stop token when the reply ended on one, and only
// the generated tokens and that stop token are supervised. Domain and weight carry over, so DAE
// routing sends the sample to its own teacher.
#pragma once
#include <cstdint>
#include <vector>

#include "data/dataset.h"
#include "generate/batch-decoder.h"
#include "model/transformer.h"
#include "train/data-stream.h"

namespace kdae::train {

struct OnPolicyOptions {
  double fraction = 0;            // GKD's lambda: the share of micro-batches that are on-policy
  double temperature = 1.0;       // sampling temperature (0 = greedy)
  double top_p = 1.0;
  int64_t max_new_tokens = 128;   // also capped by seq_length - prompt length
  std::vector<int64_t> stop_ids;  // EOS and the chat template's end-of-turn token
  int64_t seq_length = 2048;
  bool packing = false;
  int32_t pad_id = 0;
  uint64_t seed = 42;
};

// Whether micro-batch `micro` of optimizer step `step` is on-policy: a draw that depends only on
// (seed, step, micro), so a resumed run makes the same choices.
bool is_on_policy(const OnPolicyOptions& options, int64_t step, int64_t micro);

// The sampling seed of one row's generation; `kdae generate --seed` with it draws the same tokens.
uint64_t rollout_seed(const OnPolicyOptions& options, int64_t step, int64_t micro, size_t row);

// One sample's generation.
struct Rollout {
  size_t sample = 0;  // dataset index of the prompt's sample
  uint64_t seed = 0;
  std::vector<int64_t> prompt, completion;  // completion includes the stop token when it stopped on one
  bool stopped = false;                     // ended on a stop id (else it ran out of tokens)
};

struct OnPolicyBatch {
  MicroBatch micro;
  std::vector<Rollout> rollouts;
  int64_t generated_tokens = 0;  // without stop tokens
  double seconds = 0;            // generation wall time
};

// The student's answers to `off`'s prompts as a micro-batch of the same form (packed when the run
// packs). Runs the student in eval mode under NoGrad and restores its mode.
OnPolicyBatch on_policy_batch(model::Transformer& student, const data::Dataset& dataset, const MicroBatch& off,
                              const OnPolicyOptions& options, int64_t step, int64_t micro);

}  // namespace kdae::train
