// TeacherCache: the rows of a (packed) micro-batch come back in the row-major order of its
// supervised positions, and wrong reuse (another dataset, a changed sample, an unfinished cache,
// shards of two runs) is an error naming what differs.
#include <gtest/gtest.h>
#include <torch/types.h>

#include <filesystem>
#include <string>
#include <unistd.h>
#include <vector>

#include "common/error.h"
#include "common/files.h"
#include "data/batch.h"
#include "io/teacher-cache-format.h"
#include "train/teacher-cache.h"

using namespace kdae;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kV = 1000, kK = 4;

io::TeacherCacheHeader base_header(int64_t samples) {
  io::TeacherCacheHeader h;
  h.tokenizer_fingerprint = "tok";
  h.template_fingerprint = "tpl";
  h.dataset_fingerprint = "data";
  h.dataset_samples = samples;
  h.vocab = kV;
  h.padded_vocab = kV;
  h.seq_length = 16;
  h.top_k = kK;
  h.logprob_bits = 8;
  return h;
}

std::vector<data::TokenizedSample> make_samples() {
  // ids, supervised flags: rows = positions i with supervised[i + 1] (collate's shifted labels).
  std::vector<data::TokenizedSample> s(4);
  s[0].ids = {1, 2, 3, 4, 5};
  s[0].supervised = {0, 0, 1, 1, 1};  // rows at 1, 2, 3
  s[1].ids = {6, 7, 8};
  s[1].supervised = {0, 1, 1};        // rows at 0, 1
  s[2].ids = {9, 10, 11, 12};
  s[2].supervised = {0, 0, 0, 1};     // row at 2
  s[3].ids = {13, 14, 15, 16, 17, 18};
  s[3].supervised = {0, 1, 0, 1, 1, 0};  // rows at 0, 2, 3
  return s;
}

int64_t rows_of(const data::TokenizedSample& s) {
  int64_t n = 0;
  for (size_t i = 0; i + 1 < s.ids.size(); ++i) n += s.supervised[i + 1];
  return n;
}

// Row r of sample s stores top-1 id 100 s + r, so the order can be read back.
fs::path write_cache(const std::vector<data::TokenizedSample>& samples, int64_t split, int64_t end) {
  auto dir = fs::temp_directory_path() / ("kdae-tcache-" + std::to_string(::getpid()));
  remove_tree(dir);
  fs::create_directories(dir);
  const auto h = base_header(static_cast<int64_t>(samples.size()));
  const io::RowCodec codec(h);
  int64_t shard = 0;
  for (auto [begin, stop] : {std::pair<int64_t, int64_t>{0, split}, {split, end}}) {
    auto header = h;
    header.sample_begin = begin;
    io::TeacherShardWriter writer(dir / io::shard_file_name(shard++), header);
    for (int64_t s = begin; s < stop; ++s) {
      const int64_t n = rows_of(samples[s]);
      std::vector<uint8_t> records(n * h.record_bytes());
      for (int64_t r = 0; r < n; ++r) {
        const int32_t ids[kK] = {static_cast<int32_t>(100 * s + r), 1, 2, 3};
        const float lp[kK] = {-0.5f, -1.5f, -2.5f, -3.5f};
        double tail = 1.0;
        for (float x : lp) tail -= std::exp(static_cast<double>(x));
        codec.encode(ids, lp, tail, records.data() + r * h.record_bytes());
      }
      writer.add_sample(records.data(), n);
    }
    writer.finish();
  }
  return dir;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(TeacherCache, RowsOfAPackedBatchComeInMaskOrder) {
  const auto samples = make_samples();
  const auto dir = write_cache(samples, 2, 4);
  const auto cache = train::TeacherCache::open(dir);
  EXPECT_TRUE(cache.complete());
  EXPECT_EQ(cache.top_k(), kK);
  // Row 0 packs samples 3 and 0, row 1 holds sample 2, row 2 sample 1 (any order the stream picks).
  const std::vector<std::vector<size_t>> row_samples = {{3, 0}, {2}, {1}};
  std::vector<std::vector<const data::TokenizedSample*>> rows;
  for (const auto& r : row_samples) {
    rows.emplace_back();
    for (size_t s : r) rows.back().push_back(&samples[s]);
  }
  const auto batch = data::collate(rows, 0, 16);
  const auto got = cache.rows_for(row_samples, batch.labels, torch::kCPU);
  ASSERT_EQ(got.ids.size(0), (batch.labels != -100).sum().item<int64_t>());
  // Expected from the batch itself: per supervised (b, t), its sample (segment) and rank in it.
  std::vector<int64_t> want;
  for (int64_t b = 0; b < batch.labels.size(0); ++b) {
    std::vector<int64_t> seen(samples.size(), 0);
    for (int64_t t = 0; t < batch.labels.size(1); ++t) {
      if (batch.labels[b][t].item<int64_t>() == -100) continue;
      const auto s = row_samples[b][batch.segment_ids[b][t].item<int32_t>() - 1];
      want.push_back(100 * static_cast<int64_t>(s) + seen[s]++);
    }
  }
  EXPECT_TRUE(torch::equal(got.ids.select(1, 0), torch::tensor(want, torch::kInt64)));
  EXPECT_TRUE(torch::allclose(got.logprobs.exp().sum(1) + got.tail, torch::ones({got.ids.size(0)}), 0, 1e-5));
  remove_tree(dir);
}

TEST(TeacherCache, WrongReuseIsAnErrorNamingTheDifference) {
  auto samples = make_samples();
  const auto dir = write_cache(samples, 1, 3);  // sample 3 not cached yet
  const auto cache = train::TeacherCache::open(dir);
  EXPECT_FALSE(cache.complete());

  train::TeacherCacheKey key{"tok", "tpl", "data", 16, kV};
  cache.check_compatible(key);
  key.dataset_fingerprint = "changed";
  key.seq_length = 32;
  auto e = error_of([&] { cache.check_compatible(key); });
  EXPECT_NE(e.find(dir.string()), std::string::npos) << e;
  EXPECT_NE(e.find("dataset fingerprint: cache has data, this run has changed"), std::string::npos) << e;
  EXPECT_NE(e.find("seq_length: cache has 16, this run has 32"), std::string::npos) << e;

  // A sample the cache does not cover yet.
  std::vector<std::vector<const data::TokenizedSample*>> rows = {{&samples[3]}};
  e = error_of([&] { cache.rows_for({{3}}, data::collate(rows, 0).labels, torch::kCPU); });
  EXPECT_NE(e.find("covers samples [0, 3)"), std::string::npos) << e;

  // A sample that now supervises one more position than when it was cached.
  samples[2].supervised = {0, 0, 1, 1};
  rows = {{&samples[2]}};
  e = error_of([&] { cache.rows_for({{2}}, data::collate(rows, 0).labels, torch::kCPU); });
  EXPECT_NE(e.find("holds 1 rows for the samples 2 of batch row 0 but the batch supervises 2"), std::string::npos) << e;

  // A shard from another capture.
  auto other = base_header(4);
  other.temperature = 2.0;
  other.sample_begin = 3;
  io::TeacherShardWriter(dir / io::shard_file_name(2), other).finish();
  e = error_of([&] { train::TeacherCache::open(dir); });
  EXPECT_NE(e.find("shard-00002.kdtc: header field 'temperature' differs"), std::string::npos) << e;
  remove_tree(dir);
  e = error_of([&] { train::TeacherCache::open(dir); });
  EXPECT_NE(e.find(dir.string() + ": cannot list the teacher cache directory"), std::string::npos) << e;
  fs::create_directories(dir);
  e = error_of([&] { train::TeacherCache::open(dir); });
  EXPECT_NE(e.find("no teacher cache shards"), std::string::npos) << e;
  remove_tree(dir);
}
