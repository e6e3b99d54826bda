// Teacher cache shards (io/teacher-cache-format.h) under AddressSanitizer: a round trip, then truncated,
// bit-flipped and crafted shards. Each bad shard must be a kdae::Error naming the file, never a crash or
// an out-of-bounds read; a shard that still opens must only hand out in-bounds records.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/files.h"
#include "common/hash.h"
#include "io/teacher-cache-format.h"

namespace fs = std::filesystem;
using namespace kdae::io;

namespace {

constexpr int64_t kVocab = 1000, kTopK = 8;
const std::vector<int64_t> kRowsPerSample = {2, 0, 3};

TeacherCacheHeader header() {
  TeacherCacheHeader h;
  h.tokenizer_fingerprint = "tok";
  h.template_fingerprint = "tpl";
  h.dataset_fingerprint = "data";
  h.dataset_samples = static_cast<int64_t>(kRowsPerSample.size());
  h.vocab = kVocab;
  h.padded_vocab = 1024;
  h.seq_length = 64;
  h.top_k = kTopK;
  h.logprob_bits = 8;
  return h;
}

// Row r: ids r, r + 7, ..., log-probs of a geometric distribution, the rest in the tail.
void row(int64_t r, std::vector<int32_t>& ids, std::vector<float>& logprobs, double& tail) {
  ids.resize(kTopK);
  logprobs.resize(kTopK);
  double mass = 0;
  for (int64_t j = 0; j < kTopK; ++j) {
    ids[j] = static_cast<int32_t>((r * 31 + j * 7) % kVocab);
    logprobs[j] = static_cast<float>(std::log(0.5) * (j + 1));
    mass += std::exp(logprobs[j]);
  }
  tail = 1.0 - mass;
}

struct Fixture {
  fs::path dir;
  fs::path good;
  std::string bytes;
};

Fixture write_good_shard() {
  Fixture f;
  f.dir = fs::temp_directory_path() / ("kdae-asan-cache-" + std::to_string(::getpid()));
  fs::create_directories(f.dir);
  f.good = f.dir / shard_file_name(0);
  const RowCodec codec(header());
  TeacherShardWriter writer(f.good, header());
  int64_t r = 0;
  for (int64_t rows : kRowsPerSample) {
    std::vector<uint8_t> records(static_cast<size_t>(rows * header().record_bytes()));
    for (int64_t i = 0; i < rows; ++i, ++r) {
      std::vector<int32_t> ids;
      std::vector<float> lp;
      double tail = 0;
      row(r, ids, lp, tail);
      codec.encode(ids.data(), lp.data(), tail, records.data() + i * header().record_bytes());
    }
    writer.add_sample(records.data(), rows);
  }
  writer.finish();
  f.bytes = kdae::read_file(f.good);
  return f;
}

std::string open_error(const fs::path& path) {
  try {
    auto shard = TeacherShard::open(path);
    // Opened: every record it describes must be readable (ASan checks the bounds).
    const RowCodec codec(shard->header());
    std::vector<int64_t> ids(static_cast<size_t>(shard->header().top_k));
    std::vector<float> lp(ids.size());
    float tail = 0;
    for (int64_t s = shard->header().sample_begin; s < shard->header().sample_end; ++s) {
      const auto [first, last] = shard->sample_rows(s);
      for (int64_t r = first; r < last; ++r) codec.decode(shard->record(r), ids.data(), lp.data(), &tail);
    }
  } catch (const kdae::Error& e) {
    return e.what();
  }
  return "";
}

fs::path write(const Fixture& f, const std::string& name, const std::string& bytes) {
  const fs::path p = f.dir / name;
  std::ofstream(p, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return p;
}

// The shard with its JSON header edited (length and padding fixed; checksum recomputed when asked).
std::string with_header(const std::string& bytes, const std::function<void(nlohmann::json&)>& edit,
                        bool fix_checksum, const std::function<void(std::string&)>& edit_body = {}) {
  uint32_t length = 0;
  std::memcpy(&length, bytes.data() + 12, 4);
  auto j = nlohmann::json::parse(bytes.substr(16, length));
  std::string body = bytes.substr(16 + length);
  if (edit_body) edit_body(body);
  edit(j);
  if (fix_checksum) j["checksum"] = kdae::fnv1a_hex(body);
  std::string text = j.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const auto new_length = static_cast<uint32_t>(text.size());
  std::string out = bytes.substr(0, 12);
  out.append(reinterpret_cast<const char*>(&new_length), 4);
  return out + text + body;
}

}  // namespace

TEST(TeacherCacheAsan, RoundTripThenEveryTruncationAndByteFlip) {
  const Fixture f = write_good_shard();
  ASSERT_EQ(open_error(f.good), "");
  auto shard = TeacherShard::open(f.good);
  const RowCodec codec(shard->header());
  std::vector<int64_t> ids(kTopK);
  std::vector<float> lp(kTopK);
  float tail = 0;
  const auto [first, last] = shard->sample_rows(2);
  EXPECT_EQ(last - first, 3);
  codec.decode(shard->record(first), ids.data(), lp.data(), &tail);
  std::vector<int32_t> want_ids;
  std::vector<float> want_lp;
  double want_tail = 0;
  row(2, want_ids, want_lp, want_tail);  // sample 2 starts at row 2 (rows 2 + 0 before it)
  for (int64_t j = 0; j < kTopK; ++j) {
    EXPECT_EQ(ids[j], want_ids[j]);
    EXPECT_NEAR(lp[j], want_lp[j], 0.05);
  }
  EXPECT_NEAR(tail, want_tail, 0.02);

  for (size_t cut = 0; cut < f.bytes.size(); ++cut) {
    const auto p = write(f, "cut.kdtc", f.bytes.substr(0, cut));
    const auto e = open_error(p);
    EXPECT_NE(e.find(p.string()), std::string::npos) << "cut at " << cut << ": " << e;
  }
  for (size_t at = 0; at < f.bytes.size(); ++at) {
    std::string flipped = f.bytes;
    flipped[at] = static_cast<char>(flipped[at] ^ 0x5a);
    open_error(write(f, "flip.kdtc", flipped));  // an error or an in-bounds shard; ASan checks the rest
  }
  fs::remove_all(f.dir);
}

TEST(TeacherCacheAsan, CraftedHeadersAreRefused) {
  const Fixture f = write_good_shard();
  auto refused = [&](const std::string& bytes, const std::string& needle) {
    const auto p = write(f, "crafted.kdtc", bytes);
    const auto e = open_error(p);
    EXPECT_NE(e.find(needle), std::string::npos) << e;
  };
  // Counts whose products would overflow a 64-bit size check.
  refused(with_header(f.bytes, [](auto& j) { j["rows"] = int64_t{1} << 61; }, true), "truncated");
  refused(with_header(f.bytes, [](auto& j) { j["sample_end"] = int64_t{1} << 61; j["dataset_samples"] = int64_t{1} << 62; }, true),
          "truncated");
  refused(with_header(f.bytes, [](auto& j) { j["vocab"] = int64_t{1} << 40; j["padded_vocab"] = int64_t{1} << 40; }, true),
          "vocabulary");
  refused(with_header(f.bytes, [](auto& j) { j["top_k"] = kVocab + 1; }, true), "top_k");
  refused(with_header(f.bytes, [](auto& j) { j["logprob_bits"] = 40; }, true), "logprob_bits");
  // A consistent checksum over offsets that decrease or overrun the rows.
  refused(with_header(f.bytes, [](auto&) {}, true,
                      [](std::string& body) {
                        const uint64_t bad = 5;
                        std::memcpy(body.data() + 8, &bad, 8);
                      }),
          "offsets");
  refused(with_header(f.bytes, [](auto&) {}, false, [](std::string& body) { body[body.size() - 1] ^= 1; }), "checksum");
  fs::remove_all(f.dir);
}
