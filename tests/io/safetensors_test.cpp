#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/files.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;
using namespace kdae::io;

namespace {
fs::path fresh_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("kdae-io-" + name + "-" + std::to_string(::getpid()));
  kdae::remove_tree(dir);
  fs::create_directories(dir);
  return dir;
}
}  // namespace

TEST(Safetensors, ShardedCheckpointRoundTripsEveryDtype) {
  const fs::path dir = fresh_dir("shards");
  NamedTensors tensors = {
      {"a.weight", torch::randn({16, 8})},
      {"b.weight", torch::randn({16, 8}).to(torch::kBFloat16)},
      {"c.weight", torch::randn({40}).to(torch::kFloat16)},
      {"d.ids", torch::arange(10, torch::kInt64)},
  };
  write_checkpoint(dir, tensors, /*max_shard_bytes=*/600);
  ASSERT_TRUE(fs::exists(dir / "model.safetensors.index.json"));
  ASSERT_FALSE(fs::exists(dir / "model.safetensors"));
  const auto index = nlohmann::json::parse(kdae::read_file(dir / "model.safetensors.index.json"));
  EXPECT_EQ(index["weight_map"]["a.weight"], "model-00001-of-00002.safetensors");
  EXPECT_EQ(index["weight_map"]["b.weight"], "model-00002-of-00002.safetensors");  // 512 B, then 256+80+80 B
  EXPECT_EQ(index["weight_map"]["d.ids"], "model-00002-of-00002.safetensors");
  CheckpointReader reader(dir);
  EXPECT_EQ(reader.names().size(), 4u);
  for (const auto& [name, t] : tensors) {
    torch::Tensor back = reader.get(name);
    EXPECT_EQ(back.scalar_type(), t.scalar_type()) << name;
    EXPECT_TRUE(torch::equal(back, t)) << name;
  }
  EXPECT_EQ(reader.shape("a.weight"), (std::vector<int64_t>{16, 8}));
  kdae::remove_tree(dir);
}

TEST(Safetensors, MissingTensorAndMissingFilesNameTheDirectory) {
  const fs::path dir = fresh_dir("missing");
  EXPECT_THROW(CheckpointReader{dir}, kdae::Error);
  write_checkpoint(dir, {{"x", torch::ones({2})}});
  CheckpointReader reader(dir);
  try {
    reader.get("y");
    FAIL() << "expected an error";
  } catch (const kdae::Error& e) {
    EXPECT_NE(std::string(e.what()).find("'y'"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find(dir.string()), std::string::npos);
  }
  kdae::remove_tree(dir);
}

TEST(Safetensors, WriteNeverLeavesATornFile) {
  const fs::path dir = fresh_dir("atomic");
  write_safetensors(dir / "m.safetensors", {{"x", torch::ones({4})}});
  // A failing write (unsupported dtype) must leave the earlier file intact and no temp file behind.
  EXPECT_THROW(write_safetensors(dir / "m.safetensors", {{"x", torch::ones({4}, torch::kComplexFloat)}}), kdae::Error);
  SafetensorsFile file(dir / "m.safetensors");
  EXPECT_TRUE(torch::equal(file.get("x"), torch::ones({4})));
  size_t entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++entries;
  EXPECT_EQ(entries, 1u);
  kdae::remove_tree(dir);
}
