#include "train/data-stream.h"

#include <algorithm>

#include "common/error.h"
#include "data/sampler.h"

namespace kdae::train {

DataStream::DataStream(const data::Dataset& dataset, std::vector<bool> usable, DataStreamOptions options)
    : dataset_(dataset), options_(std::move(options)) {
  for (size_t i = 0; i < dataset.samples.size(); ++i)
    if (usable.empty() || usable[i]) usable_.push_back(i);
  if (usable_.empty()) fail(dataset.path.string(), ": no usable training sample");
  load_epoch(0);
  if (options_.world_size < 1 || options_.rank < 0 || options_.rank >= options_.world_size)
    fail("data stream: rank ", options_.rank, " of world size ", options_.world_size);
  const int64_t job_rows = options_.batch_size * options_.world_size;
  epoch0_micro_batches_ = (static_cast<int64_t>(rows_.size()) + job_rows - 1) / job_rows;
}

void DataStream::load_epoch(int64_t epoch) {
  if (epoch == loaded_epoch_) return;
  const size_t n = usable_.size();
  std::vector<size_t> local;
  if (options_.domain_fraction > 0 && options_.domain_fraction < 1 && !options_.in_domain.empty()) {
    std::vector<bool> in_domain(n);
    std::vector<int64_t> supervised(n);
    for (size_t i = 0; i < n; ++i) {
      const auto& s = dataset_.samples[usable_[i]];
      in_domain[i] = options_.in_domain[usable_[i]];
      int64_t count = 0;
      for (auto f : s.supervised) count += f;
      supervised[i] = count;
    }
    local = data::mixed_epoch_order(in_domain, supervised, options_.domain_fraction, options_.seed, epoch,
                                    &realised_fraction_);
  } else {
    local = data::epoch_order(n, options_.seed, epoch, options_.shuffle);
  }
  order_.resize(local.size());
  for (size_t i = 0; i < local.size(); ++i) order_[i] = usable_[local[i]];

  rows_.clear();
  if (options_.packing) {
    std::vector<const data::TokenizedSample*> ptrs;
    for (size_t idx : order_) ptrs.push_back(&dataset_.samples[idx]);
    rows_ = data::pack_rows(ptrs, options_.seq_length);
  } else {
    for (size_t i = 0; i < order_.size(); ++i) rows_.push_back({i});
  }
  row_of_position_.assign(order_.size(), 0);
  for (size_t r = rows_.size(); r-- > 0;)
    for (size_t p : rows_[r]) row_of_position_[p] = r;
  loaded_epoch_ = epoch;
}

void DataStream::seek(SamplerPosition position) {
  load_epoch(position.epoch);
  if (position.index < 0 || position.index > static_cast<int64_t>(order_.size()))
    fail("data position ", position.index, " is outside epoch ", position.epoch, " (", order_.size(),
         " samples): the training data changed since the checkpoint");
  position_ = position;
}

MicroBatch DataStream::next() {
  if (position_.index >= static_cast<int64_t>(order_.size())) {
    position_ = {position_.epoch + 1, 0};
    load_epoch(position_.epoch);
  }
  load_epoch(position_.epoch);
  MicroBatch mb;
  mb.start = position_;
  std::vector<std::vector<const data::TokenizedSample*>> rows;
  const size_t first = row_of_position_[position_.index];
  const size_t end = std::min(rows_.size(), first + static_cast<size_t>(options_.batch_size * options_.world_size));
  const size_t mine = std::min(end, first + static_cast<size_t>(options_.batch_size * options_.rank));
  for (size_t r = mine; r < std::min(end, mine + static_cast<size_t>(options_.batch_size)); ++r) {
    std::vector<const data::TokenizedSample*> row;
    std::vector<size_t> ids;
    for (size_t p : rows_[r]) {
      row.push_back(&dataset_.samples[order_[p]]);
      ids.push_back(order_[p]);
    }
    rows.push_back(std::move(row));
    mb.row_samples.push_back(std::move(ids));
  }
  position_.index = end < rows_.size() ? static_cast<int64_t>(rows_[end].front()) : static_cast<int64_t>(order_.size());
  if (!rows.empty()) mb.batch = data::collate(rows, options_.pad_id, 0);
  return mb;
}

int64_t DataStream::micro_batches_per_epoch() const { return epoch0_micro_batches_; }

double DataStream::epoch_progress() const {
  const double size = static_cast<double>(order_.size());
  return static_cast<double>(position_.epoch) + (size > 0 ? position_.index / size : 0.0);
}

}  // namespace kdae::train
