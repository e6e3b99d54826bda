// A TensorBoard event-file writer of our own (no protobuf or TensorFlow dependency): TFRecord framing
// (u64 length, masked CRC32C of the length, data, masked CRC32C of the data) around hand-encoded Event
// protobufs. The first record carries file_version "brain.Event:2"; each scalar is an Event with
// wall_time, step and a Summary holding one Value {tag, simple_value}. Torch-free.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>

namespace kdae::train {

uint32_t crc32c(std::string_view bytes);
uint32_t masked_crc32c(std::string_view bytes);  // the rotation + constant TFRecord stores

// One serialized Event message (exposed for tests).
std::string encode_file_version_event(double wall_time, const std::string& version);
std::string encode_scalar_event(double wall_time, int64_t step, const std::string& tag, float value);
std::string tfrecord_frame(std::string_view data);

class TensorBoardWriter {
 public:
  // Creates log_dir if needed and a new file events.out.tfevents.<unix seconds>.<hostname> in it
  // (a ".<pid>" suffix is added should that name already exist). Buffered writes reach the disk
  // every flush_seconds, on flush() and on close()/destruction.
  explicit TensorBoardWriter(const std::filesystem::path& log_dir, double flush_seconds = 10.0);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  void add_scalar(const std::string& tag, double value, int64_t step);
  void add_scalar(const std::string& tag, double value, int64_t step, double wall_time);
  void flush();
  void close();
  const std::filesystem::path& path() const { return path_; }

 private:
  void write_record(const std::string& event);

  std::filesystem::path path_;
  std::FILE* file_ = nullptr;
  double flush_seconds_;
  std::chrono::steady_clock::time_point last_flush_;
};

}  // namespace kdae::train
