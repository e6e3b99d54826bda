// The training data as an endless, deterministic stream of micro-batches. Each epoch's sample order
// comes from data/sampler.h (seeded by random_seed and the epoch number; align mixes in its domain
// share), then samples become rows (one per row, or packed by data::pack_rows) and rows become
// micro-batches of train_batch_size. Data parallel: the stream is the job's, world_size x batch_size
// rows per step of the position, of which this rank takes its contiguous slice, so ranks see disjoint
// samples and a 1-rank run with batch_size x world_size sees the same rows in the same micro-batches.
// The position (epoch, index of the next sample in that epoch's
// order) is all a checkpoint needs to continue exactly where a run stopped.
#pragma once
#include <cstdint>
#include <vector>

#include "data/batch.h"
#include "data/dataset.h"
#include "train/checkpoint.h"

namespace kdae::train {

struct MicroBatch {
  data::Batch batch;
  std::vector<std::vector<size_t>> row_samples;  // dataset sample indices packed in each row, in order
  SamplerPosition start;                         // where this micro-batch began
};

struct DataStreamOptions {
  int64_t batch_size = 8;        // rows per micro-batch
  int64_t seq_length = 2048;
  bool packing = false;
  bool shuffle = true;
  uint64_t seed = 42;
  int32_t pad_id = 0;
  int rank = 0, world_size = 1;  // data parallel (see above)
  // align's domain mixing: in_domain[i] marks samples of the domain set; fraction in (0, 1) = the share
  // of supervised tokens they supply per epoch (0 = no mixing, each sample once per epoch).
  std::vector<bool> in_domain;
  double domain_fraction = 0.0;
};

class DataStream {
 public:
  // usable[i] = false leaves sample i out of every epoch (e.g. no teacher for its domain).
  DataStream(const data::Dataset& dataset, std::vector<bool> usable, DataStreamOptions options);

  // Wraps into the next epoch when the current one is used up. A rank whose slice of an epoch's last
  // rows is empty gets a micro-batch without rows (row_samples empty, batch undefined).
  MicroBatch next();  // wraps into the next epoch when the current one is used up
  SamplerPosition position() const { return position_; }
  void seek(SamplerPosition position);

  int64_t micro_batches_per_epoch() const;  // of epoch 0, the job's (the same on every rank) (align's mixed epochs differ by a few)
  double epoch_progress() const;            // fractional epochs done
  double realised_domain_fraction() const { return realised_fraction_; }

 private:
  void load_epoch(int64_t epoch);

  const data::Dataset& dataset_;
  std::vector<size_t> usable_;  // indices of usable samples
  DataStreamOptions options_;
  SamplerPosition position_;
  int64_t loaded_epoch_ = -1;
  std::vector<size_t> order_;                   // dataset indices in this epoch's order
  std::vector<std::vector<size_t>> rows_;       // positions into order_, per row
  std::vector<size_t> row_of_position_;         // order position -> first row containing it
  double realised_fraction_ = 0.0;
  int64_t epoch0_micro_batches_ = 0;
};

}  // namespace kdae::train
