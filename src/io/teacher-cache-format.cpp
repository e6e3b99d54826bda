#include "io/teacher-cache-format.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <string_view>

#include "common/error.h"
#include "common/files.h"
#include "common/hash.h"

namespace kdae::io {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr char kMagic[8] = {'K', 'D', 'A', 'E', 'T', 'C', 'S', '\n'};
constexpr uint64_t kPrefix = 16;  // magic + version + JSON length

int64_t record_bytes_for(int64_t k, int64_t id_bits, int64_t lp_bits) {
  return 8 + (k * id_bits + (k - 1) * lp_bits + 7) / 8;
}

// LSB-first bit stream over a record's packed part.
class BitWriter {
 public:
  explicit BitWriter(uint8_t* out) : out_(out) {}
  void put(uint64_t value, int64_t bits) {
    for (int64_t i = 0; i < bits; ++i, ++pos_)
      if ((value >> i) & 1u) out_[pos_ >> 3] |= static_cast<uint8_t>(1u << (pos_ & 7));
  }

 private:
  uint8_t* out_;
  int64_t pos_ = 0;
};

class BitReader {
 public:
  explicit BitReader(const uint8_t* in) : in_(in) {}
  uint64_t get(int64_t bits) {
    uint64_t value = 0;
    for (int64_t i = 0; i < bits; ++i, ++pos_) value |= static_cast<uint64_t>((in_[pos_ >> 3] >> (pos_ & 7)) & 1u) << i;
    return value;
  }

 private:
  const uint8_t* in_;
  int64_t pos_ = 0;
};

json to_json(const TeacherCacheHeader& h) {
  return json{{"format", "kdae-teacher-cache"},
              {"tokenizer_fingerprint", h.tokenizer_fingerprint},
              {"template_fingerprint", h.template_fingerprint},
              {"dataset_fingerprint", h.dataset_fingerprint},
              {"dataset_samples", h.dataset_samples},
              {"vocab", h.vocab},
              {"padded_vocab", h.padded_vocab},
              {"seq_length", h.seq_length},
              {"temperature", h.temperature},
              {"top_k", h.top_k},
              {"top_p", h.top_p},
              {"codec", h.codec},
              {"logprob_bits", h.logprob_bits},
              {"teacher", h.teacher},
              {"domain", h.domain},
              {"sample_begin", h.sample_begin},
              {"sample_end", h.sample_end},
              {"rows", h.rows},
              {"checksum", h.checksum},
              {"error_sum", h.error_sum},
              {"error_rows", h.error_rows}};
}

template <typename T>
T field(const json& j, const char* name, const std::string& source) {
  auto it = j.find(name);
  if (it == j.end()) fail(source, ": teacher cache header has no field '", name, "'");
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    fail(source, ": teacher cache header field '", name, "' has the wrong type: ", it->dump());
  }
}

TeacherCacheHeader from_json(const json& j, const std::string& source) {
  if (!j.is_object() || field<std::string>(j, "format", source) != "kdae-teacher-cache")
    fail(source, ": not a kdae teacher cache header");
  TeacherCacheHeader h;
  h.tokenizer_fingerprint = field<std::string>(j, "tokenizer_fingerprint", source);
  h.template_fingerprint = field<std::string>(j, "template_fingerprint", source);
  h.dataset_fingerprint = field<std::string>(j, "dataset_fingerprint", source);
  h.dataset_samples = field<int64_t>(j, "dataset_samples", source);
  h.vocab = field<int64_t>(j, "vocab", source);
  h.padded_vocab = field<int64_t>(j, "padded_vocab", source);
  h.seq_length = field<int64_t>(j, "seq_length", source);
  h.temperature = field<double>(j, "temperature", source);
  h.top_k = field<int64_t>(j, "top_k", source);
  h.top_p = field<double>(j, "top_p", source);
  h.codec = field<std::string>(j, "codec", source);
  h.logprob_bits = field<int64_t>(j, "logprob_bits", source);
  h.teacher = field<std::string>(j, "teacher", source);
  h.domain = j.contains("domain") ? field<std::string>(j, "domain", source) : std::string();
  h.sample_begin = field<int64_t>(j, "sample_begin", source);
  h.sample_end = field<int64_t>(j, "sample_end", source);
  h.rows = field<int64_t>(j, "rows", source);
  h.checksum = field<std::string>(j, "checksum", source);
  h.error_sum = field<double>(j, "error_sum", source);
  h.error_rows = field<int64_t>(j, "error_rows", source);
  return h;
}

void check_header(const TeacherCacheHeader& h, const std::string& source) {
  if (h.codec != "sqrt-rel") fail(source, ": unknown teacher cache codec '", h.codec, "' (this kdae reads sqrt-rel)");
  if (h.vocab < 1 || h.padded_vocab < h.vocab || h.padded_vocab > (int64_t{1} << 31))
    fail(source, ": bad vocabulary sizes (vocab ", h.vocab, ", padded_vocab ", h.padded_vocab, ")");
  if (h.top_k < 1 || h.top_k > h.vocab) fail(source, ": top_k ", h.top_k, " outside [1, vocab ", h.vocab, "]");
  if (h.logprob_bits < 2 || h.logprob_bits > 16) fail(source, ": logprob_bits ", h.logprob_bits, " outside [2, 16]");
  if (!(h.temperature > 0.0) || !(h.top_p > 0.0 && h.top_p <= 1.0))
    fail(source, ": bad temperature ", h.temperature, " or top_p ", h.top_p);
  if (h.sample_begin < 0 || h.sample_end < h.sample_begin || h.sample_end > h.dataset_samples || h.rows < 0)
    fail(source, ": bad sample range [", h.sample_begin, ", ", h.sample_end, ") of ", h.dataset_samples,
         " samples, or rows ", h.rows);
}

// Closes the descriptor on every path out of open().
struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

int64_t TeacherCacheHeader::id_bits() const {
  int64_t bits = 1;
  while ((int64_t{1} << bits) < vocab) ++bits;
  return bits;
}

int64_t TeacherCacheHeader::record_bytes() const { return record_bytes_for(top_k, id_bits(), logprob_bits); }

int64_t default_logprob_bits(int64_t top_k, int64_t vocab, int64_t max_bytes) {
  TeacherCacheHeader h;
  h.vocab = vocab;
  for (int64_t bits = 8; bits > 4; --bits)
    if (record_bytes_for(top_k, h.id_bits(), bits) <= max_bytes) return bits;
  return 4;
}

RowCodec::RowCodec(const TeacherCacheHeader& header)
    : vocab_(header.vocab), k_(header.top_k), id_bits_(header.id_bits()), lp_bits_(header.logprob_bits),
      record_bytes_(header.record_bytes()) {}

void RowCodec::encode(const int32_t* ids, const float* logprobs, double tail, uint8_t* out) const {
  std::memset(out, 0, static_cast<size_t>(record_bytes_));
  const float lp0 = logprobs[0];
  if (!std::isfinite(lp0)) fail("teacher cache: the top-1 log-prob of a row is not finite (", lp0, ")");
  const double levels = static_cast<double>((int64_t{1} << lp_bits_) - 1);
  BitWriter bits(out + 8);
  for (int64_t j = 0; j < k_; ++j) {
    const bool present = j == 0 || logprobs[j] != -std::numeric_limits<float>::infinity();
    if (present && (ids[j] < 0 || ids[j] >= vocab_)) fail("teacher cache: token id ", ids[j], " outside [0, ", vocab_, ")");
    bits.put(present ? static_cast<uint64_t>(ids[j]) : 0, id_bits_);
  }
  for (int64_t j = 1; j < k_; ++j) {
    int64_t code = 0;
    if (logprobs[j] != -std::numeric_limits<float>::infinity()) {
      const double u = std::exp(0.5 * (static_cast<double>(logprobs[j]) - lp0));  // sqrt(p_j / p_0)
      code = std::clamp<int64_t>(std::llround(u * levels), 0, static_cast<int64_t>(levels));
      if (code == 0) tail += std::exp(static_cast<double>(logprobs[j]));  // too small to code: into the tail
    }
    bits.put(static_cast<uint64_t>(code), lp_bits_);
  }
  const float tail32 = static_cast<float>(std::max(tail, 0.0));
  std::memcpy(out, &lp0, 4);
  std::memcpy(out + 4, &tail32, 4);
}

void RowCodec::decode(const uint8_t* in, int64_t* ids, float* logprobs, float* tail) const {
  float lp0 = 0, tail32 = 0;
  std::memcpy(&lp0, in, 4);
  std::memcpy(&tail32, in + 4, 4);
  const double levels = static_cast<double>((int64_t{1} << lp_bits_) - 1);
  BitReader bits(in + 8);
  for (int64_t j = 0; j < k_; ++j) ids[j] = static_cast<int64_t>(bits.get(id_bits_));
  // Decoded log-probs before renormalization: lp0 + 2 log(code / L).
  std::vector<double> raw(static_cast<size_t>(k_));
  raw[0] = lp0;
  double mass = std::exp(static_cast<double>(lp0)) + tail32;
  for (int64_t j = 1; j < k_; ++j) {
    const auto code = bits.get(lp_bits_);
    raw[j] = code == 0 ? -std::numeric_limits<double>::infinity() : lp0 + 2.0 * std::log(code / levels);
    if (code != 0) mass += std::exp(raw[j]);
    if (code == 0) ids[j] = 0;
  }
  const double log_mass = std::log(mass);
  for (int64_t j = 0; j < k_; ++j) logprobs[j] = static_cast<float>(raw[j] - log_mass);
  *tail = static_cast<float>(tail32 / mass);
}

TeacherShardWriter::TeacherShardWriter(fs::path path, TeacherCacheHeader header)
    : path_(std::move(path)), header_(std::move(header)) {
  header_.error_sum = 0.0;
  header_.error_rows = 0;
}

void TeacherShardWriter::add_sample(const uint8_t* records, int64_t rows) {
  if (rows > 0) records_.insert(records_.end(), records, records + rows * header_.record_bytes());
  offsets_.push_back(offsets_.back() + static_cast<uint64_t>(rows));
}

void TeacherShardWriter::add_error(double kl_sum, int64_t rows) {
  header_.error_sum += kl_sum;
  header_.error_rows += rows;
}

int64_t TeacherShardWriter::bytes() const {
  return static_cast<int64_t>(kPrefix + 1024 + offsets_.size() * 8 + records_.size());
}

TeacherCacheHeader TeacherShardWriter::finish() {
  header_.sample_end = header_.sample_begin + samples();
  header_.rows = static_cast<int64_t>(offsets_.back());
  std::string body(offsets_.size() * 8 + records_.size(), '\0');
  std::memcpy(body.data(), offsets_.data(), offsets_.size() * 8);
  if (!records_.empty()) std::memcpy(body.data() + offsets_.size() * 8, records_.data(), records_.size());
  header_.checksum = fnv1a_hex(body);
  std::string text = to_json(header_).dump();
  text.append((8 - (text.size() % 8)) % 8, ' ');
  const uint32_t version = kTeacherCacheVersion;
  const auto length = static_cast<uint32_t>(text.size());
  AtomicFileWriter out(path_);
  out.write(kMagic, 8);
  out.write(&version, 4);
  out.write(&length, 4);
  out.write(text.data(), text.size());
  out.write(body.data(), body.size());
  out.commit();
  return header_;
}

std::shared_ptr<TeacherShard> TeacherShard::open(const fs::path& path) {
  const std::string source = path.string();
  std::shared_ptr<TeacherShard> shard(new TeacherShard());
  shard->path_ = path;
  Fd fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (fd.fd < 0) fail(source, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd.fd, &st) != 0) fail(source, ": cannot stat: ", std::strerror(errno));
  shard->size_ = static_cast<uint64_t>(st.st_size);
  if (shard->size_ < kPrefix) fail(source, ": truncated teacher cache shard (", shard->size_, " bytes)");
  void* map = ::mmap(nullptr, shard->size_, PROT_READ, MAP_PRIVATE, fd.fd, 0);
  if (map == MAP_FAILED) fail(source, ": cannot mmap: ", std::strerror(errno));
  shard->map_ = static_cast<const uint8_t*>(map);
  const uint8_t* bytes = shard->map_;
  if (std::memcmp(bytes, kMagic, 8) != 0) fail(source, ": not a kdae teacher cache shard (bad magic)");
  uint32_t version = 0, length = 0;
  std::memcpy(&version, bytes + 8, 4);
  std::memcpy(&length, bytes + 12, 4);
  if (version != kTeacherCacheVersion)
    fail(source, ": teacher cache format version ", version, ", this kdae reads version ", kTeacherCacheVersion,
         ": re-create the cache with kdae teacher-cache");
  if (length % 8 != 0 || length > shard->size_ - kPrefix)
    fail(source, ": truncated or corrupt teacher cache shard (header length ", length, ", file ", shard->size_,
         " bytes)");
  json j;
  try {
    j = json::parse(std::string_view(reinterpret_cast<const char*>(bytes + kPrefix), length));
  } catch (const json::exception& e) {
    fail(source, ": corrupt teacher cache header: ", e.what());
  }
  shard->header_ = from_json(j, source);
  const auto& h = shard->header_;
  check_header(h, source);
  const uint64_t data_offset = kPrefix + length;
  const uint64_t samples = static_cast<uint64_t>(h.sample_end - h.sample_begin);
  // Bound the counts before multiplying them, so a corrupt header cannot overflow the size check.
  if (samples >= shard->size_ / 8 || static_cast<uint64_t>(h.rows) > shard->size_ / static_cast<uint64_t>(h.record_bytes()))
    fail(source, ": truncated teacher cache shard: its header describes ", samples, " samples and ", h.rows,
         " rows, more than the file's ", shard->size_, " bytes hold");
  const uint64_t expected = data_offset + (samples + 1) * 8 + static_cast<uint64_t>(h.rows * h.record_bytes());
  if (shard->size_ < expected)
    fail(source, ": truncated teacher cache shard: ", shard->size_, " bytes, its header describes ", expected);
  if (shard->size_ > expected)
    fail(source, ": corrupt teacher cache shard: ", shard->size_ - expected, " bytes past the end its header describes");
  const std::string checksum =
      fnv1a_hex(std::string_view(reinterpret_cast<const char*>(bytes + data_offset), shard->size_ - data_offset));
  if (checksum != h.checksum)
    fail(source, ": corrupt teacher cache shard: checksum ", checksum, " differs from the header's ", h.checksum);
  shard->offsets_ = reinterpret_cast<const uint64_t*>(bytes + data_offset);
  shard->records_ = bytes + data_offset + (samples + 1) * 8;
  if (shard->offsets_[0] != 0 || shard->offsets_[samples] != static_cast<uint64_t>(h.rows))
    fail(source, ": corrupt teacher cache shard: row offsets do not span the ", h.rows, " rows");
  for (uint64_t i = 0; i < samples; ++i)
    if (shard->offsets_[i + 1] < shard->offsets_[i]) fail(source, ": corrupt teacher cache shard: offsets decrease at sample ", i);
  return shard;
}

TeacherShard::~TeacherShard() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), size_);
}

std::pair<int64_t, int64_t> TeacherShard::sample_rows(int64_t sample) const {
  if (sample < header_.sample_begin || sample >= header_.sample_end)
    fail(path_.string(), ": sample ", sample, " is outside this shard's [", header_.sample_begin, ", ",
         header_.sample_end, ")");
  const auto i = static_cast<size_t>(sample - header_.sample_begin);
  return {static_cast<int64_t>(offsets_[i]), static_cast<int64_t>(offsets_[i + 1])};
}

const uint8_t* TeacherShard::record(int64_t row) const { return records_ + row * header_.record_bytes(); }

std::string shard_file_name(int64_t index) {
  char name[32];
  std::snprintf(name, sizeof name, "shard-%05lld.kdtc", static_cast<long long>(index));
  return name;
}

std::vector<fs::path> list_shards(const fs::path& dir) {
  std::map<int64_t, fs::path> found;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() != 16 || name.rfind("shard-", 0) != 0 || name.substr(11) != ".kdtc") continue;
    const std::string digits = name.substr(6, 5);
    if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) continue;
    found[std::stoll(digits)] = it->path();
  }
  if (ec) fail(dir.string(), ": cannot list the teacher cache directory: ", ec.message());
  std::vector<fs::path> shards;
  for (const auto& [index, path] : found) {
    if (index != static_cast<int64_t>(shards.size()))
      fail(dir.string(), ": teacher cache shard ", shard_file_name(static_cast<int64_t>(shards.size())), " is missing");
    shards.push_back(path);
  }
  return shards;
}

std::string header_mismatch(const TeacherCacheHeader& a, const TeacherCacheHeader& b) {
  auto ja = to_json(a), jb = to_json(b);
  for (const char* per_shard : {"sample_begin", "sample_end", "rows", "checksum", "error_sum", "error_rows"}) {
    ja.erase(per_shard);
    jb.erase(per_shard);
  }
  for (const auto& [key, value] : ja.items())
    if (jb[key] != value) return key;
  return "";
}

}  // namespace kdae::io
