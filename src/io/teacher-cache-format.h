// The teacher cache shard format, torch-free: what `kdae teacher-cache` writes and training reads.
// A cache is a directory of shards shard-00000.kdtc, shard-00001.kdtc, ... each holding the rows of a
// contiguous range of dataset samples [sample_begin, sample_end). One row per supervised position
// (labels[t] != -100 in data::collate's shifted convention), in sample order then position order.
//
// Shard layout (little-endian):
//   8 bytes   magic "KDAETCS\n"
//   u32       format version (kTeacherCacheVersion)
//   u32       J = JSON header length; J bytes of JSON (TeacherCacheHeader), space-padded to 8-byte alignment
//   u64 x (samples + 1)   row offsets: sample sample_begin + i owns rows [off[i], off[i+1])
//   rows x record_bytes   the row records
// A row record: f32 log p of the top-1 id, f32 tail mass, then a bit stream (LSB first) of k ids in
// id_bits = ceil(log2 V) bits each and k - 1 codes in logprob_bits each for entries 1..k-1.
// Codec "sqrt-rel": code_j = round(L * sqrt(p_j / p_0)), L = 2^logprob_bits - 1, so
// |sqrt(p_j / p_0) - code_j / L| <= 1 / (2L); code 0 = absent (log-prob -inf; its mass is in the tail).
// The tail is 1 - (the true mass of the present entries). Readers renormalize the decoded
// distribution (present entries + tail) to sum to 1. See docs/teacher-cache.md for error bounds.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace kdae::io {

inline constexpr uint32_t kTeacherCacheVersion = 1;

struct TeacherCacheHeader {
  // What a reuse must match.
  std::string tokenizer_fingerprint;
  std::string template_fingerprint;
  std::string dataset_fingerprint;  // data::Dataset::fingerprint
  int64_t dataset_samples = 0;      // samples in the whole dataset
  int64_t vocab = 0;                // true vocabulary size V
  int64_t padded_vocab = 0;         // the teacher's logit width
  int64_t seq_length = 0;
  // How the signal was captured and coded.
  double temperature = 1.0;  // capture temperature tau_c: log softmax(z / tau_c)
  int64_t top_k = 0;
  double top_p = 1.0;        // entries past the smallest prefix with mass >= top_p are absent
  std::string codec = "sqrt-rel";
  int64_t logprob_bits = 8;  // 2..16
  std::string teacher;       // the teacher's path (informational)
  // "" = every sample has its rows; else only samples of this domain do (the others hold 0 rows), for
  // the domain teachers of kdae align. Absent in older shards (= "").
  std::string domain;
  // This shard.
  int64_t sample_begin = 0, sample_end = 0;
  int64_t rows = 0;
  std::string checksum;      // FNV-1a 64 (hex) of everything after the JSON header
  // Reconstruction error measured while writing: sum over error_rows sampled rows of
  // KL(full teacher || decoded sparse teacher with tail) in nats.
  double error_sum = 0.0;
  int64_t error_rows = 0;

  int64_t id_bits() const;       // ceil(log2 V), >= 1
  int64_t record_bytes() const;  // bytes per row
};

// The logprob_bits giving records of at most max_bytes at this k and V (at most 8, at least 4):
// the default, 160 bytes per row.
int64_t default_logprob_bits(int64_t top_k, int64_t vocab, int64_t max_bytes = 160);

// Encodes and decodes one row record (header fields V, k, logprob_bits, codec).
class RowCodec {
 public:
  explicit RowCodec(const TeacherCacheHeader& header);
  // ids (k) sorted by descending log-prob, logprobs (k) exact log-probs at the capture temperature
  // (entries with -inf are absent), tail = 1 - their total mass. Entries the codec cannot represent
  // (code 0) move into the tail. Writes record_bytes bytes to out.
  void encode(const int32_t* ids, const float* logprobs, double tail, uint8_t* out) const;
  // ids (k), logprobs (k) renormalized with the tail (-inf = absent; the id is then 0), tail.
  void decode(const uint8_t* in, int64_t* ids, float* logprobs, float* tail) const;

 private:
  int64_t vocab_, k_, id_bits_, lp_bits_, record_bytes_;
};

// Accumulates one shard in memory and writes it atomically (a crash leaves no partial shard).
class TeacherShardWriter {
 public:
  TeacherShardWriter(std::filesystem::path path, TeacherCacheHeader header);
  // The next sample's records (rows x record_bytes, in position order); rows may be 0.
  void add_sample(const uint8_t* records, int64_t rows);
  void add_error(double kl_sum, int64_t rows);  // reconstruction error of sampled rows
  int64_t bytes() const;                        // the shard's size if finished now
  int64_t samples() const { return static_cast<int64_t>(offsets_.size()) - 1; }
  // Sets sample_end, rows and checksum, writes the file; returns its final header.
  TeacherCacheHeader finish();

 private:
  std::filesystem::path path_;
  TeacherCacheHeader header_;
  std::vector<uint64_t> offsets_{0};
  std::vector<uint8_t> records_;
};

// A shard mapped read-only. open() validates everything before any row is read: magic, version,
// JSON fields, sizes against the file size (truncation), offsets, checksum; errors name the file.
class TeacherShard {
 public:
  static std::shared_ptr<TeacherShard> open(const std::filesystem::path& path);
  ~TeacherShard();
  TeacherShard(const TeacherShard&) = delete;
  TeacherShard& operator=(const TeacherShard&) = delete;

  const TeacherCacheHeader& header() const { return header_; }
  const std::filesystem::path& path() const { return path_; }
  // Rows [first, last) of dataset sample s (sample_begin <= s < sample_end), shard-relative.
  std::pair<int64_t, int64_t> sample_rows(int64_t sample) const;
  const uint8_t* record(int64_t row) const;

 private:
  TeacherShard() = default;
  std::filesystem::path path_;
  TeacherCacheHeader header_;
  const uint8_t* map_ = nullptr;
  uint64_t size_ = 0;
  const uint64_t* offsets_ = nullptr;
  const uint8_t* records_ = nullptr;
};

std::string shard_file_name(int64_t index);  // "shard-00007.kdtc"
// The shard files of a cache directory in index order (empty when none); an error naming the
// directory when the indices have a gap.
std::vector<std::filesystem::path> list_shards(const std::filesystem::path& dir);

// Names the first field where two shard headers of one cache disagree ("" when they agree), ignoring
// the per-shard fields (sample range, rows, checksum, error).
std::string header_mismatch(const TeacherCacheHeader& a, const TeacherCacheHeader& b);

}  // namespace kdae::io
