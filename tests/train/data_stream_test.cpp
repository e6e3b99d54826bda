// Data parallel's sampler: each rank's micro-batch is its contiguous slice of the job's rows, so the
// ranks see disjoint samples that together are exactly what one process with world_size x batch_size
// rows per micro-batch sees, in every epoch and with packing.
#include <gtest/gtest.h>

#include <set>

#include "train/data-stream.h"

namespace kdae::train {
namespace {

data::Dataset make_dataset(int n) {
  data::Dataset d;
  d.path = "synthetic.jsonl";
  d.domain_names = {"general"};
  for (int i = 0; i < n; ++i) {
    data::TokenizedSample s;
    const int len = 3 + (i * 7) % 11;
    for (int t = 0; t < len; ++t) s.ids.push_back(10 + (i + t) % 50);
    s.supervised.assign(len, 1);
    s.supervised[0] = 0;
    d.samples.push_back(s);
  }
  return d;
}

std::vector<size_t> flatten(const MicroBatch& mb) {
  std::vector<size_t> out;
  for (const auto& row : mb.row_samples) out.insert(out.end(), row.begin(), row.end());
  return out;
}

void expect_ranks_tile_one_process(bool packing, int world, int64_t batch) {
  const auto dataset = make_dataset(37);  // not a multiple of the job's rows: the last step is partial
  DataStreamOptions one;
  one.batch_size = batch * world;
  one.seq_length = 24;
  one.packing = packing;
  one.seed = 5;
  DataStream single(dataset, {}, one);
  std::vector<DataStream> ranks;
  for (int r = 0; r < world; ++r) {
    DataStreamOptions o = one;
    o.batch_size = batch;
    o.rank = r;
    o.world_size = world;
    ranks.emplace_back(dataset, std::vector<bool>{}, o);
  }
  EXPECT_EQ(ranks[0].micro_batches_per_epoch(), single.micro_batches_per_epoch());
  const int64_t steps = 2 * single.micro_batches_per_epoch() + 1;  // into a third epoch
  for (int64_t step = 0; step < steps; ++step) {
    const MicroBatch whole = single.next();
    std::vector<size_t> joined;
    std::set<size_t> seen;
    for (auto& stream : ranks) {
      const MicroBatch part = stream.next();
      EXPECT_LE(static_cast<int64_t>(part.row_samples.size()), batch);
      EXPECT_EQ(part.row_samples.empty(), !part.batch.input_ids.defined());
      for (size_t s : flatten(part)) {
        EXPECT_TRUE(seen.insert(s).second) << "sample " << s << " on two ranks at step " << step;
        joined.push_back(s);
      }
      EXPECT_EQ(stream.position().epoch, single.position().epoch);
      EXPECT_EQ(stream.position().index, single.position().index);
    }
    EXPECT_EQ(joined, flatten(whole)) << "step " << step;
  }
}

TEST(DataStream, RanksTileTheSingleProcessMicroBatches) { expect_ranks_tile_one_process(false, 2, 4); }
TEST(DataStream, RanksTileItWithPacking) { expect_ranks_tile_one_process(true, 2, 2); }
TEST(DataStream, ThreeRanksWithAnEmptyTailSlice) { expect_ranks_tile_one_process(false, 3, 5); }

}  // namespace
}  // namespace kdae::train
