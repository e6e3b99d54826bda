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
