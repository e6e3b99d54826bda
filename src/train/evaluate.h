// Evaluation on held-out data: CE, perplexity, KL to the sample's own teacher, attention KL, and for
// align the KL to the general reference teacher; overall and per domain. Used every eval_steps by the
// trainer and by `kdae eval`.
#pragma once
#include "data/dataset.h"
#include "dist/process-group.h"
#include "train/distill-step.h"
#include "train/metrics-log.h"

namespace kdae::train {

struct EvalOptions {
  int64_t batch_size = 8;
  int64_t seq_length = 2048;
  int32_t pad_id = 0;
  bool per_domain = false;        // also report eval/<domain>/... figures
  bool reference_kl = false;      // also KL to TeacherSet::reference_index() for non-general domains
  bool packing = false;           // pack rows as training does (the figures must not change)
  dist::Group* group = nullptr;   // data parallel: each rank evaluates its slice and the sums are added
};

// Names: eval/loss (the objective with forward KL at temperature 1), eval/ce_loss, eval/perplexity, eval/kl (forward KL at
// temperature 1, token mean), eval/attn_kl (when attention KD is on), eval/tokens; per domain
// eval/<domain>/{ce_loss, perplexity, kl, kl_reference}. Runs without autograd, student in eval mode.
Scalars evaluate(StepSetup setup, const data::Dataset& dataset, const EvalOptions& options);

}  // namespace kdae::train
