// The optimizer of a data-parallel job. sharding: none keeps AdamW's state whole on every rank;
// sharding: optimizer (ZeRO-1) gives each parameter one owner rank (whole tensors, balanced by size,
// deterministic) that alone keeps its AdamW moments and updates it; the owner then broadcasts the new
// values. Gradients are whole on every rank (dist/grad-sync), so clipping sees the job's norm. The
// optimizer-state memory per rank falls to about 1/N. Checkpoints hold one part per rank (each rank
// writes its own, nothing is gathered); the parts name their tensors, so a run resumes on any world
// size and any sharding: each rank reads the tensors it owns, from whichever part holds them.
// sharding: gradients (ZeRO-2) also reduces each gradient to its owner alone (dist/grad-sync with
// gradient_owners()): the others drop theirs once the bucket is on its way, and clipping and the
// fp16 overflow check combine their figures over the ranks.
#pragma once
#include <map>
#include <memory>

#include "dist/process-group.h"
#include "train/optimizer.h"

namespace kdae::train {

enum class Sharding { none, optimizer, gradients };
Sharding parse_sharding(const std::string& name);  // none | optimizer | gradients

// Each parameter's owner rank: contiguous runs of the parameter list, balanced by size.
std::vector<int> plan_owners(const NamedTensors& params, int ranks);

class ShardedOptimizer {
 public:
  ShardedOptimizer(NamedTensors params, AdamWOptions options, dist::Group& group, Sharding sharding);

  void step(double lr);
  void zero_grad();  // every parameter's gradient, owned or not
  // This rank's moments in AdamW::state()'s names: the whole state unless sharded.
  NamedTensors local_state() const;
  bool writes_shards() const { return sharded(); }  // checkpoints hold one part per rank
  bool owns_state(const std::string& state_name) const;  // this rank keeps that tensor of the state
  void load_state(const NamedTensors& state);  // any part of the whole state; keeps this rank's part
  int64_t local_state_bytes() const;           // optimizer moments held by this rank
  int64_t broadcast_bytes_last_step() const { return broadcast_bytes_; }  // updated parameters, all owners
  // Per parameter, the rank its gradient is reduced to; empty when every rank gets every gradient.
  std::vector<int> gradient_owners() const;
  // The group the gradients are split over (clipping and overflow checks sum over it), or none.
  dist::Group* gradient_shards() const;

 private:
  bool sharded() const { return sharding_ != Sharding::none && group_.distributed(); }
  bool shards_gradients() const { return sharding_ == Sharding::gradients && group_.distributed(); }
  void broadcast_from_owners();

  NamedTensors params_;
  dist::Group& group_;
  Sharding sharding_;
  std::vector<int> owner_;  // per parameter
  std::map<std::string, int> owner_of_;  // parameter name -> owner
  std::unique_ptr<AdamW> local_;
  int64_t broadcast_bytes_ = 0;
};

}  // namespace kdae::train
