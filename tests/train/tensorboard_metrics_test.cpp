// CRC32C and framing against published check values, and the metrics sink's files.
#include <gtest/gtest.h>

#include <cstdlib>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/files.h"
#include "train/metrics-log.h"
#include "train/tensorboard.h"

using namespace kdae::train;
namespace fs = std::filesystem;

namespace {
// Not fs::remove_all: LibTorch's exported copy of it crashes (see src/train/checkpoint.cpp).
void remove_tree(const fs::path& dir) { ASSERT_EQ(std::system(("rm -rf '" + dir.string() + "'").c_str()), 0); }

fs::path fresh_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("kdae-train-test-" + name + "-" + std::to_string(::getpid()));
  remove_tree(dir);
  fs::create_directories(dir);
  return dir;
}
}  // namespace

TEST(TensorBoard, Crc32cCheckValues) {
  EXPECT_EQ(crc32c("123456789"), 0xE3069283u);  // the CRC-32C check value (RFC 3720 family)
  EXPECT_EQ(crc32c(""), 0u);
  EXPECT_EQ(crc32c(std::string(32, '\0')), 0x8A9136AAu);  // RFC 3720 B.4: 32 bytes of zeros
}

TEST(TensorBoard, RecordFraming) {
  const std::string data = "hello";
  const std::string rec = tfrecord_frame(data);
  ASSERT_EQ(rec.size(), 8 + 4 + data.size() + 4);
  EXPECT_EQ(static_cast<unsigned char>(rec[0]), 5);
  EXPECT_EQ(rec.substr(12, 5), data);
  const uint32_t c = crc32c(data);
  const uint32_t masked = ((c >> 15) | (c << 17)) + 0xa282ead8u;
  uint32_t stored = 0;
  for (int i = 0; i < 4; ++i) stored |= uint32_t(static_cast<unsigned char>(rec[17 + i])) << (8 * i);
  EXPECT_EQ(stored, masked);
}

TEST(TensorBoard, ScalarEventBytes) {
  // wall_time 0.0, step 3, tag "a", value 1.0f, encoded by hand from event.proto / summary.proto.
  const std::string ev = encode_scalar_event(0.0, 3, "a", 1.0f);
  const std::string expect = std::string("\x09\0\0\0\0\0\0\0\0\x10\x03\x2a\x0a\x0a\x08\x0a\x01" "a" "\x15\0\0\x80\x3f", 23);
  EXPECT_EQ(ev, expect);
}

TEST(MetricsLog, WritesJsonlAndEvents) {
  const fs::path dir = fresh_dir("metrics");
  {
    MetricsLog log(dir);
    log.log(10, 0.25, {{"train/loss", 2.5}, {"train/lr", 1e-5}});
    log.log(20, 0.5, {{"train/loss", std::nan("")}});
  }
  std::ifstream in(dir / "metrics.jsonl");
  std::string l1, l2;
  std::getline(in, l1);
  std::getline(in, l2);
  EXPECT_EQ(l1, R"({"step":10,"epoch":0.25,"train/loss":2.5,"train/lr":1e-05})");
  EXPECT_EQ(nlohmann::json::parse(l2)["train/loss"], nullptr);
  int events = 0;
  for (const auto& e : fs::directory_iterator(dir / "runs"))
    events += e.path().filename().string().rfind("events.out.tfevents.", 0) == 0;
  EXPECT_EQ(events, 1);

  // Resuming from step 10 drops the later line and a torn tail.
  { std::ofstream(dir / "metrics.jsonl", std::ios::app) << "{\"step\":30,\"ep"; }
  {
    MetricsLog log(dir, false, 10);
    log.log(11, 0.27, {{"train/loss", 2.0}});
  }
  const std::string all = kdae::read_file(dir / "metrics.jsonl");
  EXPECT_EQ(all, l1 + "\n" + R"({"step":11,"epoch":0.27,"train/loss":2.0})" + "\n");
  remove_tree(dir);
}
