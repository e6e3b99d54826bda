// The teacher cache shard format: codec round trip against the documented bound, shard write/read,
// and the clear errors for truncated, corrupt and mismatched shards.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

#include "common/error.h"
#include "common/files.h"
#include "io/teacher-cache-format.h"

using namespace kdae::io;
namespace fs = std::filesystem;

namespace {

// A row of a softmax over V random logits: the top-k ids and log-probs, sorted, and the exact tail.
struct Row {
  std::vector<int32_t> ids;
  std::vector<float> logprobs;
  double tail = 0;
  std::vector<double> p;  // full distribution
};

Row random_row(int64_t V, int64_t k, std::mt19937& rng, double scale) {
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<double> z(V);
  for (auto& x : z) x = normal(rng);
  double m = *std::max_element(z.begin(), z.end()), s = 0;
  for (auto x : z) s += std::exp(x - m);
  Row row;
  row.p.resize(V);
  for (int64_t i = 0; i < V; ++i) row.p[i] = std::exp(z[i] - m) / s;
  std::vector<int32_t> order(V);
  for (int64_t i = 0; i < V; ++i) order[i] = static_cast<int32_t>(i);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return row.p[a] > row.p[b]; });
  double kept = 0;
  for (int64_t j = 0; j < k; ++j) {
    row.ids.push_back(order[j]);
    row.logprobs.push_back(static_cast<float>(std::log(row.p[order[j]])));
    kept += row.p[order[j]];
  }
  for (int64_t j = k; j < V; ++j) row.tail += row.p[order[j]];
  (void)kept;
  return row;
}

TeacherCacheHeader header_for(int64_t V, int64_t k, int64_t bits) {
  TeacherCacheHeader h;
  h.tokenizer_fingerprint = "tok";
  h.template_fingerprint = "tpl";
  h.dataset_fingerprint = "data";
  h.dataset_samples = 3;
  h.vocab = V;
  h.padded_vocab = V + 8;
  h.seq_length = 16;
  h.top_k = k;
  h.logprob_bits = bits;
  return h;
}

fs::path temp_dir(const std::string& name) {
  auto dir = fs::temp_directory_path() / ("kdae-tc-" + name + "-" + std::to_string(::getpid()));
  kdae::remove_tree(dir);
  fs::create_directories(dir);
  return dir;
}

// Writes a shard of 3 samples with 2, 0 and 3 rows to dir; returns its path.
fs::path write_shard(const fs::path& dir, const TeacherCacheHeader& h, int64_t index = 0) {
  std::mt19937 rng(7);
  const RowCodec codec(h);
  TeacherShardWriter writer(dir / shard_file_name(index), h);
  for (int64_t rows : {2, 0, 3}) {
    std::vector<uint8_t> records(rows * h.record_bytes());
    for (int64_t r = 0; r < rows; ++r) {
      auto row = random_row(h.vocab, h.top_k, rng, 2.0);
      codec.encode(row.ids.data(), row.logprobs.data(), row.tail, records.data() + r * h.record_bytes());
    }
    writer.add_sample(records.data(), rows);
  }
  writer.add_error(0.5, 5);
  writer.finish();
  return dir / shard_file_name(index);
}

std::string open_error(const fs::path& path) {
  try {
    TeacherShard::open(path);
  } catch (const kdae::Error& e) {
    return e.what();
  }
  return "";
}

void patch(const fs::path& path, int64_t offset, char value) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(offset);
  f.put(value);
}

}  // namespace

TEST(TeacherCacheFormat, RecordSizeMeetsTheTargetAtK64) {
  // V = 32000 (Mistral/Mixtral): 15-bit ids; the default bits keep a row within 160 bytes.
  const int64_t bits = default_logprob_bits(64, 32000);
  EXPECT_EQ(bits, 4);
  EXPECT_EQ(header_for(32000, 64, bits).record_bytes(), 8 + (64 * 15 + 63 * 4 + 7) / 8);
  EXPECT_LE(header_for(32000, 64, bits).record_bytes(), 160);
  EXPECT_EQ(header_for(256, 64, 8).id_bits(), 8);
  EXPECT_EQ(header_for(257, 64, 8).id_bits(), 9);
  EXPECT_EQ(default_logprob_bits(64, 256), 8);
}

TEST(TeacherCacheFormat, CodecRoundTripWithinTheStatedBound) {
  std::mt19937 rng(1);
  for (int64_t bits : {4, 8, 12}) {
    for (double scale : {1.0, 4.0}) {
      const auto h = header_for(1000, 64, bits);
      const RowCodec codec(h);
      const double L = std::pow(2.0, bits) - 1;
      std::vector<uint8_t> record(h.record_bytes());
      for (int trial = 0; trial < 20; ++trial) {
        auto row = random_row(1000, 64, rng, scale);
        codec.encode(row.ids.data(), row.logprobs.data(), row.tail, record.data());
        std::vector<int64_t> ids(64);
        std::vector<float> lp(64);
        float tail = 0;
        codec.decode(record.data(), ids.data(), lp.data(), &tail);
        double mass = tail, dropped = 0, bound = 0;
        for (int64_t j = 0; j < 64; ++j) {
          const double u = std::sqrt(row.p[row.ids[j]] / row.p[row.ids[0]]);
          if (lp[j] == -std::numeric_limits<float>::infinity()) {
            EXPECT_LT(u, 0.5 / L + 1e-6) << "bits " << bits << " entry " << j;  // only code 0 is absent
            dropped += row.p[row.ids[j]];
            continue;
          }
          EXPECT_EQ(ids[j], row.ids[j]);
          // Normalization cancels in the ratio to the top-1: sqrt(p_j / p_0) is off by <= 1/(2L).
          const double u_hat = std::exp(0.5 * (lp[j] - lp[0]));
          EXPECT_NEAR(u_hat, u, 0.5 / L + 1e-6) << "bits " << bits << " entry " << j;
          mass += std::exp(static_cast<double>(lp[j]));
          if (j > 0) bound += row.p[row.ids[0]] * (u / L + 0.25 / (L * L));
        }
        EXPECT_NEAR(mass, 1.0, 1e-5);
        // The tail holds the true tail plus the dropped entries, divided by the normalization Z, and
        // |Z - 1| <= sum_j p_0 (u_j / L + 1 / (4 L^2)) (docs/teacher-cache.md).
        const double z = (row.tail + dropped) / tail;
        EXPECT_NEAR(z, 1.0, bound + 1e-5);
        EXPECT_NEAR(std::exp(lp[0]) * z, row.p[row.ids[0]], 1e-5);
      }
    }
  }
}

TEST(TeacherCacheFormat, ExactRowsAtFullVocabularyHaveNoTail) {
  std::mt19937 rng(3);
  const auto h = header_for(50, 50, 16);
  const RowCodec codec(h);
  auto row = random_row(50, 50, rng, 1.0);
  std::vector<uint8_t> record(h.record_bytes());
  codec.encode(row.ids.data(), row.logprobs.data(), row.tail, record.data());
  std::vector<int64_t> ids(50);
  std::vector<float> lp(50);
  float tail = 1;
  codec.decode(record.data(), ids.data(), lp.data(), &tail);
  EXPECT_EQ(tail, 0.0f);
  for (int j = 0; j < 50; ++j) EXPECT_NEAR(lp[j], row.logprobs[j], 1e-3);
}

TEST(TeacherCacheFormat, ShardWriteReadRoundTrip) {
  const auto dir = temp_dir("rt");
  const auto h = header_for(1000, 16, 8);
  const auto path = write_shard(dir, h);
  auto shard = TeacherShard::open(path);
  EXPECT_EQ(shard->header().rows, 5);
  EXPECT_EQ(shard->header().sample_end, 3);
  EXPECT_EQ(shard->header().error_rows, 5);
  EXPECT_EQ(shard->sample_rows(0), (std::pair<int64_t, int64_t>{0, 2}));
  EXPECT_EQ(shard->sample_rows(1), (std::pair<int64_t, int64_t>{2, 2}));
  EXPECT_EQ(shard->sample_rows(2), (std::pair<int64_t, int64_t>{2, 5}));
  EXPECT_THROW(shard->sample_rows(3), kdae::Error);
  EXPECT_EQ(header_mismatch(h, shard->header()), "");
  EXPECT_EQ(list_shards(dir), std::vector<fs::path>{path});
  kdae::remove_tree(dir);
}

TEST(TeacherCacheFormat, TruncatedAndCorruptShardsAreErrorsNamingTheFile) {
  const auto dir = temp_dir("bad");
  const auto h = header_for(1000, 16, 8);
  const auto path = write_shard(dir, h);
  const auto size = fs::file_size(path);

  fs::resize_file(path, size - 1);
  auto e = open_error(path);
  EXPECT_NE(e.find(path.string()), std::string::npos) << e;
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;

  fs::resize_file(path, 10);
  e = open_error(path);
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;

  write_shard(dir, h);
  patch(path, static_cast<int64_t>(size) - 3, 0x5a);  // a record byte
  e = open_error(path);
  EXPECT_NE(e.find(path.string()), std::string::npos) << e;
  EXPECT_NE(e.find("checksum"), std::string::npos) << e;

  write_shard(dir, h);
  patch(path, 0, 'X');
  EXPECT_NE(open_error(path).find("bad magic"), std::string::npos);

  write_shard(dir, h);
  patch(path, 8, 9);  // version 9
  e = open_error(path);
  EXPECT_NE(e.find("version 9"), std::string::npos) << e;

  write_shard(dir, h);
  patch(path, 17, '?');  // inside the JSON
  e = open_error(path);
  EXPECT_NE(e.find("corrupt teacher cache header"), std::string::npos) << e;
  kdae::remove_tree(dir);
}

TEST(TeacherCacheFormat, ShardListingAndHeaderMismatch) {
  const auto dir = temp_dir("list");
  write_shard(dir, header_for(1000, 16, 8), 0);
  write_shard(dir, header_for(1000, 16, 8), 2);
  try {
    list_shards(dir);
    FAIL() << "a gap must be an error";
  } catch (const kdae::Error& e) {
    EXPECT_NE(std::string(e.what()).find("shard-00001.kdtc is missing"), std::string::npos) << e.what();
  }
  auto other = header_for(1000, 16, 8);
  other.dataset_fingerprint = "other";
  EXPECT_EQ(header_mismatch(header_for(1000, 16, 8), other), "dataset_fingerprint");
  other = header_for(1000, 16, 8);
  other.sample_begin = 3;
  other.rows = 9;
  EXPECT_EQ(header_mismatch(header_for(1000, 16, 8), other), "");
  kdae::remove_tree(dir);
}
