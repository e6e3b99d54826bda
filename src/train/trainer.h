// The one training loop of kdae distill and kdae align: data stream -> teachers + student ->
// objective -> AdamW under the schedule, with gradient accumulation, clipping, evaluation,
// checkpoints that resume to the identical loss curve, metrics.jsonl + TensorBoard and a progress
// bar, and an HF model directory at the end. The two recipes differ only in their TeacherSet.
#pragma once
#include <filesystem>
#include <string>

#include "data/dataset.h"
#include "train/distill-options.h"
#include "train/metrics-log.h"

namespace kdae::train {

struct TrainSummary {
  int64_t steps = 0;
  std::filesystem::path model_dir;  // <output_dir>/model
  Scalars last_eval;
};

// config_hash: cli::config_hash(options), stored in checkpoints and compared on resume.
TrainSummary run_training(const DistillOptions& options, RunKind kind, const std::string& config_hash);

// `kdae eval`: the student at options.base_model_path against the run's teachers on
// options.eval_data_path (same metrics as evaluation during training, per domain for align).
Scalars evaluate_student(const DistillOptions& options, RunKind kind);

// The loader options of a run's data (what kdae teacher-cache must use for the fingerprints to agree).
data::DatasetOptions dataset_options(const DistillOptions& options);

// $KDAE_HOME (default ~/.cache/kdae)/datasets unless the option names a directory; "none" = empty.
std::filesystem::path dataset_cache_dir(const std::string& option);

}  // namespace kdae::train
