// teacher_sharding: full. A frozen teacher's decoder layers split over the job's ranks: each rank
// keeps 1/N of every layer's weights (the layer's bytes, in one flat buffer) and gathers the layer
// whole just before it runs, dropping it after (model::LayerResidency), as FSDP does for a frozen
// module. Embeddings, final norm and head stay whole on every rank. Per rank a teacher then needs
// its layers' bytes / N plus one gathered layer, instead of all of it.
//
// Every gather is a collective, so every rank must run the teacher the same number of times and in
// the same interleaving: train/distill-step runs each sharded teacher any rank needs on every rank
// (a rank without rows for it runs it on a stand-in row), and each gather checks that all ranks
// are at the same teacher and layer, so a slip is an error, never another layer's weights.
#pragma once
#include <cstdint>

#include "dist/process-group.h"
#include "model/transformer.h"

namespace kdae::train {

enum class TeacherSharding { replicate, full };
TeacherSharding parse_teacher_sharding(const std::string& name);  // replicate | full

// Splits `teacher`'s layers over `group` (all ranks call it, with the same teacher_id for the same
// model), keeps this rank's parts on `device`, moves the rest of the model there and installs the
// gathering residency. Load the teacher on the CPU first: the device then never holds it whole.
void shard_teacher_layers(model::Transformer& teacher, dist::Group& group, int64_t teacher_id, torch::Device device);

}  // namespace kdae::train
