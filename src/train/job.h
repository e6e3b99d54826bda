// A training command's place in a multi-process job: joins the launcher's process group (torchrun,
// srun, mpirun; dist/launch-env.h) once per process and turns the run's options into this rank's:
// a CUDA device without an index becomes cuda:LOCAL_RANK, and global_batch_size sets the gradient
// accumulation. A plain single process gets its options back unchanged.
#pragma once
#include "dist/process-group.h"
#include "train/distill-options.h"

namespace kdae::train {

DistillOptions join_job(const DistillOptions& options);

// A device name as this rank should use it: in a multi-process job "auto" / "cuda" become
// "cuda:LOCAL_RANK"; anything else is kept.
std::string rank_device(const std::string& name, const dist::LaunchEnv& env);

// Sequences per optimizer step over the whole job.
int64_t global_batch(const DistillOptions& options, const dist::Group& group);

}  // namespace kdae::train
