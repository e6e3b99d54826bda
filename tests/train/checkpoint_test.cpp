// Checkpoint round trip, torn staging directories, rotation, damage reports and RNG restore.
#include "train/checkpoint.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <torch/cuda.h>
#include <torch/types.h>

#include <fstream>

#include "common/error.h"
#include "common/files.h"
#include "io/safetensors.h"

using namespace kdae::train;
namespace fs = std::filesystem;

namespace {
// Not fs::remove_all: LibTorch's exported copy of it crashes (see src/train/checkpoint.cpp).
void remove_tree(const fs::path& dir) { ASSERT_EQ(std::system(("rm -rf '" + dir.string() + "'").c_str()), 0); }

fs::path fresh_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("kdae-ckpt-test-" + name + "-" + std::to_string(::getpid()));
  remove_tree(dir);
  fs::create_directories(dir);
  return dir;
}

NamedTensors model_weights(float fill) {
  return {{"model.embed_tokens.weight", torch::full({5, 3}, fill)}, {"model.norm.weight", torch::arange(3.0f)}};
}

fs::path save_at(const fs::path& out, int64_t step, int keep_last) {
  const NamedTensors model = model_weights(float(step));
  const NamedTensors opt = {{"model.norm.weight.step", torch::full({}, float(step))},
                            {"model.norm.weight.exp_avg", torch::ones({3})},
                            {"model.norm.weight.exp_avg_sq", torch::ones({3}) * 2}};
  CheckpointContents c;
  c.model = &model;
  c.optimizer = &opt;
  c.state.step = step;
  c.state.epoch = step / 100.0;
  c.state.sampler = {step / 10, step % 10};
  c.state.scheduler_step = step;
  c.state.config_hash = "abc123";
  c.state.metrics_tail = nlohmann::json::array({{{"step", step}, {"train/loss", 1.5}}});
  capture_rng_states(c.state);
  return save_checkpoint(out, c, keep_last);
}
}  // namespace

TEST(Checkpoint, Base64) {
  for (std::string s : {"", "f", "fo", "foo", "foob", "fooba", "foobar"}) EXPECT_EQ(base64_decode(base64_encode(s)), s);
  EXPECT_EQ(base64_encode("foobar"), "Zm9vYmFy");  // RFC 4648 test vectors
  EXPECT_EQ(base64_encode("fooba"), "Zm9vYmE=");
  EXPECT_EQ(base64_encode("foob"), "Zm9vYg==");
  std::string all;
  for (int i = 0; i < 256; ++i) all.push_back(char(i));
  EXPECT_EQ(base64_decode(base64_encode(all)), all);
  EXPECT_THROW(base64_decode("Zm9v!mFy"), kdae::Error);
}

TEST(Checkpoint, RoundTrip) {
  const fs::path out = fresh_dir("roundtrip");
  const fs::path dir = save_at(out, 40, 0);
  EXPECT_EQ(dir, out / "checkpoint-40");
  EXPECT_TRUE(is_complete_checkpoint(dir));
  const auto loaded = load_checkpoint(dir);
  EXPECT_EQ(loaded.state.step, 40);
  EXPECT_DOUBLE_EQ(loaded.state.epoch, 0.4);
  EXPECT_EQ(loaded.state.sampler.epoch, 4);
  EXPECT_EQ(loaded.state.sampler.index, 0);
  EXPECT_EQ(loaded.state.scheduler_step, 40);
  EXPECT_EQ(loaded.state.config_hash, "abc123");
  EXPECT_EQ(loaded.state.metrics_tail[0]["train/loss"], 1.5);
  EXPECT_FALSE(loaded.state.cpu_rng_state.empty());
  ASSERT_EQ(loaded.optimizer.size(), 3u);
  for (const auto& [name, t] : loaded.optimizer)
    if (name == "model.norm.weight.exp_avg_sq") EXPECT_TRUE(t.equal(torch::ones({3}) * 2));
  kdae::io::CheckpointReader weights(dir);
  EXPECT_TRUE(weights.get("model.embed_tokens.weight").equal(torch::full({5, 3}, 40.0f)));
  const auto json = nlohmann::json::parse(kdae::read_file(dir / "trainer_state.json"));
  EXPECT_EQ(json["magic"], "kdae-trainer-state");
  EXPECT_EQ(json["format_version"], 1);
  // Saving the same step again (a resumed run) replaces the checkpoint in place.
  save_at(out, 40, 0);
  EXPECT_TRUE(is_complete_checkpoint(dir));
  int entries = 0;
  for (const auto& e : fs::directory_iterator(out)) entries += !e.path().empty();
  EXPECT_EQ(entries, 1);
  remove_tree(out);
}

TEST(Checkpoint, TornStagingIgnoredAndRotation) {
  const fs::path out = fresh_dir("rotate");
  save_at(out, 10, 0);
  save_at(out, 20, 0);
  // What a kill -9 during a save leaves: a staging directory with partial files.
  const fs::path torn = out / ".checkpoint-30.partial-999999999";  // no such process
  fs::create_directories(torn);
  std::ofstream(torn / "model.safetensors") << "\x08\x00";
  EXPECT_EQ(find_latest_checkpoint(out), out / "checkpoint-20");
  // A damaged checkpoint directory (not ours) must survive rotation.
  fs::create_directories(out / "checkpoint-5");
  save_at(out, 30, 2);
  EXPECT_FALSE(fs::exists(out / "checkpoint-10"));
  EXPECT_TRUE(fs::exists(out / "checkpoint-20"));
  EXPECT_TRUE(fs::exists(out / "checkpoint-30"));
  EXPECT_TRUE(fs::exists(out / "checkpoint-5"));
  EXPECT_FALSE(fs::exists(torn));  // the dead writer's staging directory was cleaned up
  EXPECT_EQ(find_latest_checkpoint(out), out / "checkpoint-30");
  EXPECT_EQ(find_latest_checkpoint(out / "nothing-here"), std::nullopt);
  remove_tree(out);
}

TEST(Checkpoint, DamageIsReportedWithARemedy) {
  const fs::path out = fresh_dir("damage");
  const fs::path dir = save_at(out, 7, 0);
  auto message = [&] {
    try {
      load_checkpoint(dir);
    } catch (const kdae::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  // A newer format version.
  auto json = nlohmann::json::parse(kdae::read_file(dir / "trainer_state.json"));
  json["format_version"] = 2;
  kdae::write_file_atomic(dir / "trainer_state.json", json.dump());
  EXPECT_NE(message().find("format version 2 but this kdae reads version 1"), std::string::npos) << message();
  // Truncated JSON.
  kdae::write_file_atomic(dir / "trainer_state.json", "{\"magic\": \"kdae-tr");
  EXPECT_NE(message().find("not valid JSON"), std::string::npos) << message();
  EXPECT_NE(message().find("to resume from the previous checkpoint"), std::string::npos);
  EXPECT_FALSE(is_complete_checkpoint(dir));
  fs::remove(dir / "trainer_state.json");
  EXPECT_NE(message().find("incomplete"), std::string::npos) << message();
  remove_tree(out);
}

// A sharded optimizer's parts: written beside the checkpoint by each rank, moved in at the commit,
// read back whole or filtered to one rank's share; a missing part is an error naming it.
TEST(Checkpoint, OptimizerPartsPerRank) {
  const fs::path out = fresh_dir("parts");
  fs::create_directories(out);
  const NamedTensors model = model_weights(1.0f);
  const std::vector<NamedTensors> parts = {
      {{"a.step", torch::full({}, 3.0f)}, {"a.exp_avg", torch::ones({2})}, {"a.exp_avg_sq", torch::ones({2}) * 4}},
      {{"b.step", torch::full({}, 3.0f)}, {"b.exp_avg", torch::full({2}, 5.0f)}, {"b.exp_avg_sq", torch::ones({2})}}};
  // A part of an earlier step that never got committed: the next save deletes it.
  write_optimizer_shard(optimizer_shard_path(out, 5, 1, 2), parts[1]);
  CheckpointContents c;
  c.model = &model;
  c.state.step = 10;
  for (int r = 0; r < 2; ++r) {
    c.optimizer_shards.push_back(optimizer_shard_path(out, 10, r, 2));
    write_optimizer_shard(c.optimizer_shards.back(), parts[r]);
  }
  const fs::path dir = save_checkpoint(out, c, 0);
  EXPECT_FALSE(fs::exists(dir / "optimizer.safetensors"));
  EXPECT_TRUE(fs::exists(dir / "optimizer-rank-0-of-2.safetensors"));
  EXPECT_TRUE(fs::exists(dir / "optimizer-rank-1-of-2.safetensors"));
  for (const auto& entry : fs::directory_iterator(out))
    EXPECT_EQ(entry.path().filename().string().rfind(".checkpoint-", 0), std::string::npos) << entry.path();

  const auto all = load_checkpoint(dir);
  ASSERT_EQ(all.optimizer.size(), 6u);
  for (const auto& [name, t] : all.optimizer)
    if (name == "b.exp_avg") EXPECT_TRUE(t.equal(torch::full({2}, 5.0f)));
  const auto only_b = load_checkpoint(dir, [](const std::string& name) { return name.rfind("b.", 0) == 0; });
  ASSERT_EQ(only_b.optimizer.size(), 3u);
  for (const auto& [name, t] : only_b.optimizer) EXPECT_EQ(name.rfind("b.", 0), 0u) << name;

  fs::remove(dir / "optimizer-rank-1-of-2.safetensors");
  try {
    load_checkpoint(dir);
    FAIL() << "a missing part must be an error";
  } catch (const kdae::Error& e) {
    EXPECT_NE(std::string(e.what()).find("optimizer-rank-1-of-2.safetensors: missing"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("resume from the previous checkpoint"), std::string::npos) << e.what();
  }
}

TEST(Checkpoint, RngRestoreRepeatsTheStream) {
  torch::manual_seed(123);
  torch::rand({3});
  TrainerState s;
  capture_rng_states(s);
  const auto json = trainer_state_to_json(s);
  const torch::Tensor first = torch::rand({16});  // (16)
  const torch::Tensor first_n = torch::randn({4});
  torch::manual_seed(999);  // disturb
  restore_rng_states(trainer_state_from_json(json, "memory"));
  EXPECT_TRUE(torch::rand({16}).equal(first));
  EXPECT_TRUE(torch::randn({4}).equal(first_n));
}

TEST(Checkpoint, CudaRngRestore) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(5);
  TrainerState s;
  capture_rng_states(s);
  ASSERT_EQ(s.cuda_rng_states.size(), static_cast<size_t>(torch::cuda::device_count()));
  const auto json = trainer_state_to_json(s);
  const torch::Tensor first = torch::rand({64}, torch::kCUDA).cpu();
  torch::manual_seed(6);
  restore_rng_states(trainer_state_from_json(json, "memory"));
  EXPECT_TRUE(torch::rand({64}, torch::kCUDA).cpu().equal(first));
}
