// Batch labels, masks, packing: expected values written out by hand.
#include <gtest/gtest.h>

#include "common/error.h"
#include "data/batch.h"

using namespace kdae::data;

namespace {
std::vector<int64_t> row(const torch::Tensor& t, int64_t b) {
  auto r = t[b].to(torch::kInt64).contiguous();
  return {r.data_ptr<int64_t>(), r.data_ptr<int64_t>() + r.numel()};
}
}  // namespace

TEST(Batch, ShiftedLabelsUnshiftedMaskAndPadding) {
  TokenizedSample a{{10, 11, 12, 13}, {0, 0, 1, 1}, 1, 0.5f};
  TokenizedSample b{{20, 21}, {0, 1}, 0, 1.0f};
  const Batch batch = collate({{&a}, {&b}}, /*pad_id=*/7);
  EXPECT_EQ(batch.input_ids.sizes(), (torch::IntArrayRef{2, 4}));
  EXPECT_EQ(row(batch.input_ids, 1), (std::vector<int64_t>{20, 21, 7, 7}));
  EXPECT_EQ(row(batch.labels, 0), (std::vector<int64_t>{-100, 12, 13, -100}));
  EXPECT_EQ(row(batch.labels, 1), (std::vector<int64_t>{21, -100, -100, -100}));
  EXPECT_EQ(row(batch.token_mask, 0), (std::vector<int64_t>{0, 0, 1, 1}));
  EXPECT_EQ(row(batch.segment_ids, 1), (std::vector<int64_t>{1, 1, 0, 0}));
  EXPECT_EQ(row(batch.position_ids, 0), (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(batch.domain[0].item<int64_t>(), 1);
  EXPECT_FLOAT_EQ(batch.weight[0].item<float>(), 0.5f);
  EXPECT_EQ(batch.input_ids.dtype(), torch::kInt64);
  EXPECT_EQ(batch.segment_ids.dtype(), torch::kInt32);
  EXPECT_EQ(batch.token_mask.dtype(), torch::kBool);
  EXPECT_EQ(collate({{&b}}, 0, 6).input_ids.size(1), 6);
}

TEST(Batch, PackedRowMatchesUnpackedPerSample) {
  TokenizedSample a{{1, 2, 3}, {0, 1, 1}, 0, 1.0f};
  TokenizedSample b{{4, 5, 6}, {1, 1, 1}, 0, 1.0f};  // first token supervised: still no cross-sample label
  const Batch packed = collate({{&a, &b}}, 0, 8);
  EXPECT_EQ(row(packed.labels, 0), (std::vector<int64_t>{2, 3, -100, 5, 6, -100, -100, -100}));
  EXPECT_EQ(row(packed.position_ids, 0), (std::vector<int64_t>{0, 1, 2, 0, 1, 2, 0, 0}));
  EXPECT_EQ(row(packed.segment_ids, 0), (std::vector<int64_t>{1, 1, 1, 2, 2, 2, 0, 0}));
  const Batch single = collate({{&a}, {&b}}, 0);
  const auto packed_labels = row(packed.labels, 0);
  EXPECT_EQ(row(single.labels, 0), std::vector<int64_t>(packed_labels.begin(), packed_labels.begin() + 3));
  EXPECT_EQ(row(single.labels, 1), std::vector<int64_t>(packed_labels.begin() + 3, packed_labels.begin() + 6));
}

TEST(Batch, PackRowsRespectsLengthDomainAndWeight) {
  TokenizedSample s3{{1, 2, 3}, {0, 1, 1}, 0, 1.0f}, s2{{1, 2}, {0, 1}, 0, 1.0f};
  TokenizedSample d{{1, 2}, {0, 1}, 1, 1.0f}, w{{1}, {1}, 1, 2.0f};
  const auto rows = pack_rows({&s3, &s2, &s3, &d, &d, &w}, 5);
  EXPECT_EQ(rows, (std::vector<std::vector<size_t>>{{0, 1}, {2}, {3, 4}, {5}}));
  EXPECT_THROW(pack_rows({&s3}, 2), kdae::Error);
  EXPECT_THROW(collate({{&s3, &d}}, 0), kdae::Error);
}
