// Training checkpoints: <output_dir>/checkpoint-<step>/ holding
//   model.safetensors (or HF-style shards + index)   the trainable model's weights
//   optimizer.safetensors                             AdamW state by parameter name (train/optimizer.h)
//   or optimizer-rank-<r>-of-<n>.safetensors           each rank's part of a sharded AdamW state
//   trainer_state.json                                 magic, version, counters, RNG states, config hash
// The directory is written under a hidden staging name and renamed into place, so a kill -9 at any
// moment leaves the previous checkpoints intact and the new one either complete or absent (a stale
// ".checkpoint-<step>.partial-<pid>" staging directory is never mistaken for a checkpoint).
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace kdae::train {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

inline constexpr const char* kTrainerStateMagic = "kdae-trainer-state";
inline constexpr int kTrainerStateVersion = 1;

// Where the data sampler stands: the next sample is number `index` of epoch `epoch`'s order.
struct SamplerPosition {
  int64_t epoch = 0;
  int64_t index = 0;
};

struct TrainerState {
  int64_t step = 0;            // optimizer steps taken
  double epoch = 0;            // fractional epochs done (for logs)
  SamplerPosition sampler;
  int64_t scheduler_step = 0;  // argument of the next LrSchedule::lr_at
  std::string cpu_rng_state;                 // raw bytes of the default CPU generator state
  std::vector<std::string> cuda_rng_states;  // one per CUDA device, empty without CUDA
  std::string config_hash;     // of the run options that must not change across a resume
  nlohmann::json metrics_tail = nlohmann::json::array();  // last few logged metric objects
  // Sums of the logging window still open at this step (its steps are not logged yet), so a resumed
  // run logs the same window averages as an uninterrupted one.
  nlohmann::json log_window = nlohmann::json::object();
  nlohmann::json loss_scaler;  // train::LossScaler::to_json(); null unless training in float16
  int64_t global_batch = 0;    // sequences per optimizer step over all ranks (0: written before kdae knew)
  int64_t world_size = 1;      // ranks of the job that wrote it
};

// Reads the default CPU (and every CUDA) generator's state into state, and restores it.
void capture_rng_states(TrainerState& state);
void restore_rng_states(const TrainerState& state);

nlohmann::json trainer_state_to_json(const TrainerState& state);
// path is only used in error messages.
TrainerState trainer_state_from_json(const nlohmann::json& json, const std::filesystem::path& path);

struct CheckpointContents {
  const NamedTensors* model = nullptr;      // required
  const NamedTensors* optimizer = nullptr;  // AdamW::state(); may be null (weights-only)
  TrainerState state;
  // Sharded optimizer state: rank r's part, written by write_optimizer_shard, moved in as
  // optimizer-rank-<r>-of-<n>.safetensors (n = the vector's size).
  std::vector<std::filesystem::path> optimizer_shards;
  // Writes further files into the checkpoint's staging directory (LoRA runs: the PEFT adapters), so
  // they are published with the rest or not at all.
  std::function<void(const std::filesystem::path& staging)> write_extra;
};

// Writes <output_dir>/checkpoint-<state.step>/ atomically (replacing one of the same step), then,
// when keep_last > 0, deletes the oldest complete checkpoints so at most keep_last remain. Returns
// the checkpoint directory.
std::filesystem::path save_checkpoint(const std::filesystem::path& output_dir, const CheckpointContents& contents,
                                      int keep_last);

// Each rank of a job with a sharded optimizer writes its part beside the checkpoint to be (a hidden
// file in output_dir, atomically) and returns its path; the caller gathers the paths once all ranks
// are done, and rank 0's save_checkpoint moves them in before it commits. A job that dies earlier
// commits nothing; the leftovers are deleted by a later save.
std::filesystem::path optimizer_shard_path(const std::filesystem::path& output_dir, int64_t step, int rank, int ranks);
void write_optimizer_shard(const std::filesystem::path& path, const NamedTensors& part);

// The checkpoint-<N> directory with the largest N, or nullopt. Staging and other names are ignored;
// the result is not validated (load_checkpoint does that and says what to do when it is damaged).
std::optional<std::filesystem::path> find_latest_checkpoint(const std::filesystem::path& output_dir);

// True when dir has a readable trainer_state.json of our magic and version and its weight files.
bool is_complete_checkpoint(const std::filesystem::path& dir);

struct LoadedCheckpoint {
  std::filesystem::path dir;
  TrainerState state;
  NamedTensors optimizer;  // empty when the checkpoint has no optimizer state
};

// Validates and reads trainer_state.json and the optimizer state (whole, or every rank's part, of
// any world size); model weights are read by the caller with io::CheckpointReader(dir). With
// `wanted`, only the optimizer tensors it accepts are read (a rank's share). Errors say which file
// is damaged and what to do.
LoadedCheckpoint load_checkpoint(const std::filesystem::path& dir,
                                 const std::function<bool(const std::string&)>& wanted = nullptr);

// Deletes the oldest complete checkpoints beyond keep_last; damaged ones are left for the user.
void rotate_checkpoints(const std::filesystem::path& output_dir, int keep_last);

std::string base64_encode(const std::string& bytes);
std::string base64_decode(const std::string& text);  // throws kdae::Error on bad input

}  // namespace kdae::train
