#include "train/tensorboard.h"

#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "common/error.h"

namespace kdae::train {
namespace fs = std::filesystem;

namespace {

// CRC-32C (Castagnoli), reflected polynomial 0x82F63B78, one table lookup per byte: event files are
// small, so the bytewise form is fast enough.
const std::array<uint32_t, 256>& crc_table() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  return table;
}

// Protobuf wire encoding: field key = (field_number << 3) | wire_type.
void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
void put_key(std::string& out, int field, int wire_type) { put_varint(out, (uint64_t(field) << 3) | wire_type); }
void put_bytes(std::string& out, int field, std::string_view bytes) {
  put_key(out, field, 2);
  put_varint(out, bytes.size());
  out.append(bytes);
}
void put_double(std::string& out, int field, double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, 8);
  put_key(out, field, 1);
  put_le(out, bits, 8);
}
void put_float(std::string& out, int field, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  put_key(out, field, 5);
  put_le(out, bits, 4);
}

// Event fields (tensorflow/core/util/event.proto): 1 wall_time (double), 2 step (int64),
// 3 file_version (string), 5 summary (Summary). Summary: 1 value (repeated Value).
// Value: 1 tag (string), 2 simple_value (float).
std::string event_header(double wall_time, int64_t step) {
  std::string out;
  put_double(out, 1, wall_time);
  if (step != 0) {
    put_key(out, 2, 0);
    put_varint(out, static_cast<uint64_t>(step));  // int64: negatives take ten bytes, as protobuf does
  }
  return out;
}

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

uint32_t crc32c(std::string_view bytes) {
  const auto& table = crc_table();
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : bytes) c = table[(c ^ b) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(std::string_view bytes) {
  const uint32_t c = crc32c(bytes);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::string encode_file_version_event(double wall_time, const std::string& version) {
  std::string out = event_header(wall_time, 0);
  put_bytes(out, 3, version);
  return out;
}

std::string encode_scalar_event(double wall_time, int64_t step, const std::string& tag, float value) {
  std::string v;
  put_bytes(v, 1, tag);
  put_float(v, 2, value);
  std::string summary;
  put_bytes(summary, 1, v);
  std::string out = event_header(wall_time, step);
  put_bytes(out, 5, summary);
  return out;
}

std::string tfrecord_frame(std::string_view data) {
  std::string len;
  put_le(len, data.size(), 8);
  std::string out = len;
  put_le(out, masked_crc32c(len), 4);
  out.append(data);
  put_le(out, masked_crc32c(data), 4);
  return out;
}

TensorBoardWriter::TensorBoardWriter(const fs::path& log_dir, double flush_seconds) : flush_seconds_(flush_seconds) {
  std::error_code ec;
  fs::create_directories(log_dir, ec);
  if (ec) fail(log_dir.string(), ": cannot create the TensorBoard log directory: ", ec.message());
  char host[256] = "localhost";
  if (::gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "localhost");
  host[sizeof host - 1] = 0;
  const auto seconds = static_cast<long long>(unix_now());
  // Built with += : gcc 12 flags `"literal" + std::string&&` with a false -Wstringop-overflow.
  std::string name = "events.out.tfevents.";
  name += std::to_string(seconds);
  name += ".";
  name += host;
  path_ = log_dir / name;
  if (fs::exists(path_)) path_ += std::string(".") += std::to_string(::getpid());
  file_ = std::fopen(path_.c_str(), "wbx");
  if (!file_) fail(path_.string(), ": cannot create the TensorBoard event file: ", std::strerror(errno));
  last_flush_ = std::chrono::steady_clock::now();
  write_record(encode_file_version_event(unix_now(), "brain.Event:2"));
  flush();
}

TensorBoardWriter::~TensorBoardWriter() {
  try {
    close();
  } catch (...) {
    // A destructor must not throw; close() already tried to flush.
  }
}

void TensorBoardWriter::write_record(const std::string& event) {
  if (!file_) fail(path_.string(), ": TensorBoard writer is closed");
  const std::string record = tfrecord_frame(event);
  if (std::fwrite(record.data(), 1, record.size(), file_) != record.size())
    fail(path_.string(), ": write failed: ", std::strerror(errno));
}

void TensorBoardWriter::add_scalar(const std::string& tag, double value, int64_t step) {
  add_scalar(tag, value, step, unix_now());
}

void TensorBoardWriter::add_scalar(const std::string& tag, double value, int64_t step, double wall_time) {
  write_record(encode_scalar_event(wall_time, step, tag, static_cast<float>(value)));
  const auto now = std::chrono::steady_clock::now();
  if (std::chrono::duration<double>(now - last_flush_).count() >= flush_seconds_) flush();
}

void TensorBoardWriter::flush() {
  if (!file_) return;
  if (std::fflush(file_) != 0) fail(path_.string(), ": flush failed: ", std::strerror(errno));
  last_flush_ = std::chrono::steady_clock::now();
}

void TensorBoardWriter::close() {
  if (!file_) return;
  std::FILE* f = file_;
  file_ = nullptr;
  const bool flushed = std::fflush(f) == 0;
  const bool closed = std::fclose(f) == 0;
  if (!flushed || !closed) fail(path_.string(), ": cannot flush/close: ", std::strerror(errno));
}

}  // namespace kdae::train
