#include "data/dataset-cache.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cstring>

#include "common/error.h"
#include "common/files.h"
#include "common/hash.h"

namespace kdae::data {
namespace fs = std::filesystem;

namespace {

constexpr char kMagic[8] = {'K', 'D', 'A', 'E', 'D', 'S', 'C', '\0'};
constexpr uint32_t kVersion = 2;
constexpr uint32_t kEndian = 0x01020304;

struct Header {
  char magic[8];
  uint32_t version;
  uint32_t endian;
  char fingerprint[64];
  uint64_t samples, tokens, meta_bytes, file_bytes, checksum;
  char reserved[8];
};
static_assert(sizeof(Header) == 128);

uint64_t pad8(uint64_t n) { return (n + 7) & ~uint64_t{7}; }

// Section sizes follow from the counts alone, so a reader can check them before touching data.
struct Layout {
  uint64_t offsets, domain, line, weight, ids, supervised, meta, end;
  Layout(uint64_t samples, uint64_t tokens, uint64_t meta_bytes) {
    offsets = sizeof(Header);
    domain = offsets + 8 * (samples + 1);
    line = domain + 8 * samples;
    weight = line + 8 * samples;
    ids = weight + pad8(4 * samples);
    supervised = ids + pad8(4 * tokens);
    meta = supervised + pad8(tokens);
    end = meta + meta_bytes;
  }
};

// A read-only mapping released on scope exit.
struct Mapping {
  const unsigned char* data = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (data) ::munmap(const_cast<unsigned char*>(data), size);
  }
};

template <typename T>
void copy_out(std::vector<T>& dst, const unsigned char* src, size_t count) {
  dst.resize(count);
  if (count) std::memcpy(dst.data(), src, count * sizeof(T));
}

nlohmann::json meta_of(const Dataset& d) {
  nlohmann::json skipped = nlohmann::json::object();
  for (const auto& [reason, n] : d.stats.skipped) skipped[reason] = n;
  nlohmann::json ignored = nlohmann::json::object();
  for (const auto& [field, n] : d.stats.ignored_fields) ignored[field] = n;
  return {{"lines", d.stats.lines}, {"truncated", d.stats.truncated}, {"skipped", skipped}, {"ignored_fields", ignored},
          {"domain_names", d.domain_names}, {"chat_template", d.chat_template}};
}

// Fills everything but path/fingerprint from a validated mapping; throws on inconsistent content.
Dataset decode(const Mapping& m, const Header& h) {
  const Layout l(h.samples, h.tokens, h.meta_bytes);
  std::vector<uint64_t> offsets;
  copy_out(offsets, m.data + l.offsets, h.samples + 1);
  if (offsets[0] != 0 || offsets[h.samples] != h.tokens) fail("token offsets do not cover the ids");
  std::vector<int64_t> domain;
  std::vector<float> weight;
  Dataset d;
  copy_out(domain, m.data + l.domain, h.samples);
  copy_out(d.sample_lines, m.data + l.line, h.samples);
  copy_out(weight, m.data + l.weight, h.samples);
  const auto meta = nlohmann::json::parse(m.data + l.meta, m.data + l.end);
  d.domain_names = meta.at("domain_names").get<std::vector<std::string>>();
  d.chat_template = meta.at("chat_template").get<std::string>();
  d.stats.lines = meta.at("lines").get<int64_t>();
  d.stats.truncated = meta.at("truncated").get<int64_t>();
  for (const auto& [reason, n] : meta.at("skipped").items()) d.stats.skipped[reason] = n.get<int64_t>();
  for (const auto& [field, n] : meta.at("ignored_fields").items()) d.stats.ignored_fields[field] = n.get<int64_t>();
  d.samples.resize(h.samples);
  for (uint64_t i = 0; i < h.samples; ++i) {
    if (offsets[i + 1] < offsets[i]) fail("token offsets decrease at sample ", i);
    if (domain[i] < 0 || domain[i] >= static_cast<int64_t>(d.domain_names.size())) fail("sample ", i, " has no domain name");
    auto& s = d.samples[i];
    const uint64_t n = offsets[i + 1] - offsets[i];
    copy_out(s.ids, m.data + l.ids + 4 * offsets[i], n);
    copy_out(s.supervised, m.data + l.supervised + offsets[i], n);
    s.domain = domain[i];
    s.weight = weight[i];
    d.stats.lengths.push_back(static_cast<int64_t>(n));
    d.stats.tokens += static_cast<int64_t>(n);
    for (uint8_t f : s.supervised) d.stats.supervised_tokens += f;
  }
  d.stats.samples = static_cast<int64_t>(h.samples);
  return d;
}

}  // namespace

fs::path dataset_cache_file(const fs::path& cache_dir, const std::string& fingerprint) {
  return cache_dir / ("dataset-" + fingerprint + ".kdaeds");
}

std::optional<Dataset> read_dataset_cache(const fs::path& file, const std::string& fingerprint, std::string* why) {
  why->clear();
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  struct stat st {};
  Mapping m;
  if (::fstat(fd, &st) == 0 && st.st_size > 0) {
    m.size = static_cast<size_t>(st.st_size);
    void* p = ::mmap(nullptr, m.size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p != MAP_FAILED) m.data = static_cast<const unsigned char*>(p);
  }
  ::close(fd);
  if (!m.data) return *why = "cannot be mapped", std::nullopt;
  if (m.size < sizeof(Header)) return *why = "shorter than its header", std::nullopt;
  Header h;
  std::memcpy(&h, m.data, sizeof h);
  if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0) return *why = "not a kdae dataset cache (bad magic)", std::nullopt;
  if (h.version != kVersion || h.endian != kEndian)
    return *why = str("format version ", h.version, ", expected ", kVersion), std::nullopt;
  if (std::string(h.fingerprint, strnlen(h.fingerprint, sizeof h.fingerprint)) != fingerprint)
    return *why = "fingerprint differs from its name", std::nullopt;
  // Bound the counts before multiplying them, so a corrupt header cannot overflow the layout.
  if (h.samples > m.size || h.tokens > m.size || h.meta_bytes > m.size || h.file_bytes != m.size ||
      Layout(h.samples, h.tokens, h.meta_bytes).end != m.size)
    return *why = str("size ", m.size, " does not match its header (truncated?)"), std::nullopt;
  if (fnv1a(std::string_view(reinterpret_cast<const char*>(m.data) + sizeof(Header), m.size - sizeof(Header))) != h.checksum)
    return *why = "checksum mismatch (corrupt)", std::nullopt;
  try {
    Dataset d = decode(m, h);
    d.fingerprint = fingerprint;
    d.from_cache = true;
    return d;
  } catch (const std::exception& e) {
    *why = str("inconsistent content: ", e.what());
    return std::nullopt;
  }
}

void write_dataset_cache(const fs::path& file, const Dataset& d) {
  const std::string meta = meta_of(d).dump();
  const uint64_t samples = d.samples.size();
  uint64_t tokens = 0;
  for (const auto& s : d.samples) tokens += s.ids.size();
  const Layout l(samples, tokens, meta.size());
  std::string bytes(l.end, '\0');
  auto put = [&](uint64_t at, const void* src, size_t n) {
    if (n) std::memcpy(bytes.data() + at, src, n);
  };
  uint64_t offset = 0;
  for (uint64_t i = 0; i < samples; ++i) {
    const auto& s = d.samples[i];
    const int64_t line = i < d.sample_lines.size() ? d.sample_lines[i] : 0;
    put(l.offsets + 8 * i, &offset, 8);
    put(l.domain + 8 * i, &s.domain, 8);
    put(l.line + 8 * i, &line, 8);
    put(l.weight + 4 * i, &s.weight, 4);
    put(l.ids + 4 * offset, s.ids.data(), 4 * s.ids.size());
    put(l.supervised + offset, s.supervised.data(), s.supervised.size());
    offset += s.ids.size();
  }
  put(l.offsets + 8 * samples, &offset, 8);
  put(l.meta, meta.data(), meta.size());
  Header h{};
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  h.version = kVersion;
  h.endian = kEndian;
  std::strncpy(h.fingerprint, d.fingerprint.c_str(), sizeof h.fingerprint - 1);
  h.samples = samples;
  h.tokens = tokens;
  h.meta_bytes = meta.size();
  h.file_bytes = l.end;
  h.checksum = fnv1a(std::string_view(bytes.data() + sizeof(Header), l.end - sizeof(Header)));
  std::memcpy(bytes.data(), &h, sizeof h);
  fs::create_directories(file.parent_path());
  write_file_atomic(file, bytes);
}

}  // namespace kdae::data
