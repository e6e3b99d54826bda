#include "train/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ftw.h>

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <regex>

#include "common/error.h"
#include "common/files.h"
#include "io/safetensors.h"

namespace kdae::train {
namespace fs = std::filesystem;

namespace {

const char* kStateFile = "trainer_state.json";

const char* kOptimizerFile = "optimizer.safetensors";

std::string optimizer_shard_name(size_t rank, size_t ranks) {
  return "optimizer-rank-" + std::to_string(rank) + "-of-" + std::to_string(ranks) + ".safetensors";
}

// Parts of sharded optimizer states that never got committed (the job died before), of other steps.
void remove_stale_optimizer_shards(const fs::path& output_dir, int64_t step) {
  static const std::regex pattern(R"(\.checkpoint-([0-9]+)\.optimizer-rank-[0-9]+-of-[0-9]+\.safetensors)");
  for (const auto& entry : fs::directory_iterator(output_dir)) {
    std::smatch m;
    const std::string name = entry.path().filename().string();
    if (std::regex_match(name, m, pattern) && std::stoll(m[1].str()) != step) fs::remove(entry.path());
  }
}

// The optimizer files of a checkpoint: the whole state, or every rank's part (all of them, or an error).
std::vector<fs::path> optimizer_files(const fs::path& dir, const std::string& remedy) {
  if (fs::exists(dir / kOptimizerFile)) return {dir / kOptimizerFile};
  static const std::regex pattern(R"(optimizer-rank-([0-9]{1,6})-of-([0-9]{1,6})\.safetensors)");
  std::map<size_t, size_t> ranks_of;  // rank -> world size its name gives
  for (const auto& entry : fs::directory_iterator(dir)) {
    std::smatch m;
    const std::string name = entry.path().filename().string();
    if (std::regex_match(name, m, pattern)) ranks_of[std::stoul(m[1].str())] = std::stoul(m[2].str());
  }
  if (ranks_of.empty()) return {};
  const size_t ranks = ranks_of.begin()->second;
  std::vector<fs::path> out;
  for (size_t r = 0; r < ranks; ++r) {
    const auto it = ranks_of.find(r);
    if (it == ranks_of.end() || it->second != ranks)
      fail((dir / optimizer_shard_name(r, ranks)).string(), ": missing, so the checkpoint's optimizer state is incomplete", remedy);
    out.push_back(dir / optimizer_shard_name(r, ranks));
  }
  if (ranks_of.size() != ranks) fail(dir.string(), ": optimizer parts of different world sizes", remedy);
  return out;
}

std::optional<int64_t> checkpoint_step(const fs::path& dir) {
  static const std::regex pattern("checkpoint-([0-9]{1,18})");
  std::smatch m;
  const std::string name = dir.filename().string();
  if (!std::regex_match(name, m, pattern)) return std::nullopt;
  return std::stoll(m[1].str());
}

std::vector<std::pair<int64_t, fs::path>> list_checkpoints(const fs::path& output_dir) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  if (!fs::is_directory(output_dir, ec)) return out;
  for (const auto& entry : fs::directory_iterator(output_dir)) {
    if (!entry.is_directory()) continue;
    if (auto step = checkpoint_step(entry.path())) out.emplace_back(*step, entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

bool has_model_weights(const fs::path& dir) {
  return fs::exists(dir / "model.safetensors") || fs::exists(dir / "model.safetensors.index.json");
}

std::string tensor_bytes(const torch::Tensor& t) {
  const torch::Tensor c = t.contiguous().to(torch::kCPU);
  return std::string(static_cast<const char*>(c.data_ptr()), c.nbytes());
}

torch::Tensor bytes_tensor(const std::string& bytes) {
  torch::Tensor t = torch::empty({static_cast<int64_t>(bytes.size())}, torch::kUInt8);  // (n)
  std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
  return t;
}

// Staging directories of saves that died (kill -9, power loss) hold a whole model each: delete those
// whose writer process is gone. A live writer (another run on the same output_dir) is left alone.
void remove_stale_staging(const fs::path& output_dir) {
  static const std::regex pattern(R"(\.checkpoint-[0-9]+\.partial-([0-9]{1,9})(\.deleting)?)");
  std::vector<fs::path> stale;
  for (const auto& entry : fs::directory_iterator(output_dir)) {
    std::smatch m;
    const std::string name = entry.path().filename().string();
    if (!std::regex_match(name, m, pattern)) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(m[1].str()));
    if (pid != ::getpid() && ::kill(pid, 0) != 0 && errno == ESRCH) stale.push_back(entry.path());
  }
  for (const auto& dir : stale) remove_tree(dir);
}

}  // namespace

std::string base64_encode(const std::string& bytes) {
  static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8) | uint8_t(bytes[i + 2]);
    for (int k = 3; k >= 0; --k) out.push_back(alphabet[(v >> (6 * k)) & 63]);
  }
  const size_t rest = bytes.size() - i;
  if (rest > 0) {
    uint32_t v = uint8_t(bytes[i]) << 16;
    if (rest == 2) v |= uint8_t(bytes[i + 1]) << 8;
    out.push_back(alphabet[(v >> 18) & 63]);
    out.push_back(alphabet[(v >> 12) & 63]);
    out.push_back(rest == 2 ? alphabet[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

std::string base64_decode(const std::string& text) {
  auto value = [&](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    fail("base64: invalid character '", c, "'");
  };
  if (text.size() % 4 != 0) fail("base64: length ", text.size(), " is not a multiple of 4");
  std::string out;
  for (size_t i = 0; i < text.size(); i += 4) {
    const int pad = (text[i + 3] == '=') + (text[i + 2] == '=');
    if (pad && i + 4 != text.size()) fail("base64: padding before the end");
    uint32_t v = (value(text[i]) << 18) | (value(text[i + 1]) << 12);
    if (pad < 2) v |= value(text[i + 2]) << 6;
    if (pad < 1) v |= value(text[i + 3]);
    out.push_back(char((v >> 16) & 0xFF));
    if (pad < 2) out.push_back(char((v >> 8) & 0xFF));
    if (pad < 1) out.push_back(char(v & 0xFF));
  }
  return out;
}

void capture_rng_states(TrainerState& state) {
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    state.cpu_rng_state = tensor_bytes(gen.get_state());
  }
  state.cuda_rng_states.clear();
  if (!at::hasCUDA()) return;
  for (size_t d = 0; d < at::getNumGPUs(); ++d) {
    auto gen = at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(d)));
    std::lock_guard<std::mutex> lock(gen.mutex());
    state.cuda_rng_states.push_back(tensor_bytes(gen.get_state()));
  }
}

void restore_rng_states(const TrainerState& state) {
  if (!state.cpu_rng_state.empty()) {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(bytes_tensor(state.cpu_rng_state));
  }
  if (state.cuda_rng_states.empty()) return;
  const size_t gpus = at::hasCUDA() ? at::getNumGPUs() : 0;
  // A resume on fewer GPUs restores what it can; the random streams of missing devices are moot.
  for (size_t d = 0; d < std::min(gpus, state.cuda_rng_states.size()); ++d) {
    auto gen = at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(d)));
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(bytes_tensor(state.cuda_rng_states[d]));
  }
}

static std::string ordered_dump(const TrainerState& s) {
  // ordered_json so the file reads top to bottom (plain json sorts keys).
  nlohmann::ordered_json j;
  j["magic"] = kTrainerStateMagic;
  j["format_version"] = kTrainerStateVersion;
  j["step"] = s.step;
  j["epoch"] = s.epoch;
  j["sampler"] = {{"epoch", s.sampler.epoch}, {"index", s.sampler.index}};
  j["scheduler_step"] = s.scheduler_step;
  j["config_hash"] = s.config_hash;
  j["rng"]["cpu"] = base64_encode(s.cpu_rng_state);
  j["rng"]["cuda"] = nlohmann::ordered_json::array();
  for (const auto& c : s.cuda_rng_states) j["rng"]["cuda"].push_back(base64_encode(c));
  j["metrics_tail"] = nlohmann::ordered_json::parse(s.metrics_tail.dump());
  j["log_window"] = nlohmann::ordered_json::parse(s.log_window.dump());
  j["global_batch"] = s.global_batch;
  j["world_size"] = s.world_size;
  if (!s.loss_scaler.is_null()) j["loss_scaler"] = nlohmann::ordered_json::parse(s.loss_scaler.dump());
  return j.dump(2) + "\n";
}

nlohmann::json trainer_state_to_json(const TrainerState& s) { return nlohmann::json::parse(ordered_dump(s)); }

TrainerState trainer_state_from_json(const nlohmann::json& j, const fs::path& path) {
  const std::string where = path.string();
  if (!j.is_object() || j.value("magic", "") != kTrainerStateMagic)
    fail(where, ": not a kdae trainer state (magic \"", kTrainerStateMagic,
         "\" missing); this directory was not written by kdae's trainer");
  const int version = j.value("format_version", -1);
  if (version != kTrainerStateVersion)
    fail(where, ": trainer state format version ", version, " but this kdae reads version ", kTrainerStateVersion,
         version > kTrainerStateVersion ? "; resume with the kdae that wrote it (or a newer one)"
                                        : "; resume with an older kdae, or start a fresh run");
  TrainerState s;
  try {
    s.step = j.at("step").get<int64_t>();
    s.epoch = j.at("epoch").get<double>();
    s.sampler.epoch = j.at("sampler").at("epoch").get<int64_t>();
    s.sampler.index = j.at("sampler").at("index").get<int64_t>();
    s.scheduler_step = j.at("scheduler_step").get<int64_t>();
    s.cpu_rng_state = base64_decode(j.at("rng").at("cpu").get<std::string>());
    for (const auto& c : j.at("rng").at("cuda")) s.cuda_rng_states.push_back(base64_decode(c.get<std::string>()));
    s.config_hash = j.at("config_hash").get<std::string>();
    s.metrics_tail = j.value("metrics_tail", nlohmann::json::array());
    s.log_window = j.value("log_window", nlohmann::json::object());
    s.loss_scaler = j.value("loss_scaler", nlohmann::json());
    s.global_batch = j.value("global_batch", int64_t{0});
    s.world_size = j.value("world_size", int64_t{1});
  } catch (const nlohmann::json::exception& e) {
    fail(where, ": damaged trainer state (", e.what(), "); delete this checkpoint directory to resume from the "
         "previous one");
  } catch (const Error& e) {
    fail(where, ": damaged trainer state (", e.what(), "); delete this checkpoint directory to resume from the "
         "previous one");
  }
  return s;
}

fs::path save_checkpoint(const fs::path& output_dir, const CheckpointContents& contents, int keep_last) {
  if (!contents.model) fail("save_checkpoint: no model weights given");
  std::error_code ec;
  fs::create_directories(output_dir, ec);
  if (ec) fail(output_dir.string(), ": cannot create the output directory: ", ec.message());
  remove_stale_staging(output_dir);
  const fs::path target = output_dir / ("checkpoint-" + std::to_string(contents.state.step));
  const fs::path staging = staging_path_for(target);
  remove_tree(staging);
  fs::create_directories(staging, ec);
  if (ec) fail(staging.string(), ": cannot create the staging directory: ", ec.message());
  try {
    io::write_checkpoint(staging, *contents.model);
    if (contents.optimizer) io::write_safetensors(staging / kOptimizerFile, *contents.optimizer);
    const size_t ranks = contents.optimizer_shards.size();
    for (size_t r = 0; r < ranks; ++r) fs::rename(contents.optimizer_shards[r], staging / optimizer_shard_name(r, ranks));
    if (contents.write_extra) contents.write_extra(staging);
    // Written last: its presence inside a published directory means every other file is complete.
    write_file_atomic(staging / kStateFile, ordered_dump(contents.state));
    // Re-saving a step (after a resume) replaces that checkpoint: move it aside first, because
    // publish_directory's own overwrite path deletes with std::filesystem::remove_all (see remove_tree).
    const fs::path old = target.string() + ".old-" + std::to_string(::getpid());
    const bool replacing = fs::exists(target);
    if (replacing) fs::rename(target, old);
    publish_directory(staging, target, /*overwrite=*/false);
    if (replacing) remove_tree(old);
  } catch (...) {
    const fs::path old = target.string() + ".old-" + std::to_string(::getpid());
    if (fs::exists(old) && !fs::exists(target)) fs::rename(old, target, ec);  // put the old one back
    try {
      remove_tree(staging);
    } catch (...) {
    }
    throw;
  }
  remove_stale_optimizer_shards(output_dir, contents.state.step);
  if (keep_last > 0) rotate_checkpoints(output_dir, keep_last);
  return target;
}

fs::path optimizer_shard_path(const fs::path& output_dir, int64_t step, int rank, int ranks) {
  return output_dir / (".checkpoint-" + std::to_string(step) + "." +
                       optimizer_shard_name(static_cast<size_t>(rank), static_cast<size_t>(ranks)));
}

void write_optimizer_shard(const fs::path& path, const NamedTensors& part) { io::write_safetensors(path, part); }

std::optional<fs::path> find_latest_checkpoint(const fs::path& output_dir) {
  auto all = list_checkpoints(output_dir);
  if (all.empty()) return std::nullopt;
  return all.back().second;
}

bool is_complete_checkpoint(const fs::path& dir) {
  try {
    if (!has_model_weights(dir)) return false;
    trainer_state_from_json(nlohmann::json::parse(read_file(dir / kStateFile)), dir / kStateFile);
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

LoadedCheckpoint load_checkpoint(const fs::path& dir, const std::function<bool(const std::string&)>& wanted) {
  LoadedCheckpoint out;
  out.dir = dir;
  const fs::path state_path = dir / kStateFile;
  const std::string remedy = "; delete " + dir.string() + " to resume from the previous checkpoint, or start afresh";
  if (!fs::is_directory(dir)) fail(dir.string(), ": checkpoint directory does not exist");
  if (!fs::exists(state_path)) fail(state_path.string(), ": missing, so the checkpoint is incomplete", remedy);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(state_path));
  } catch (const nlohmann::json::exception& e) {
    fail(state_path.string(), ": not valid JSON (", e.what(), ")", remedy);
  }
  out.state = trainer_state_from_json(j, state_path);
  if (!has_model_weights(dir)) fail(dir.string(), ": model.safetensors is missing", remedy);
  try {
    io::CheckpointReader weights(dir);  // parses every header: catches truncated weight files
    for (const auto& file : optimizer_files(dir, remedy)) {
      io::SafetensorsFile opt(file);
      for (const auto& name : opt.names())
        if (!wanted || wanted(name)) out.optimizer.emplace_back(name, opt.get(name).clone());
    }
  } catch (const Error& e) {
    fail(e.what(), remedy);
  }
  return out;
}

void rotate_checkpoints(const fs::path& output_dir, int keep_last) {
  if (keep_last <= 0) return;
  std::vector<fs::path> complete;
  for (const auto& [step, dir] : list_checkpoints(output_dir))
    if (is_complete_checkpoint(dir)) complete.push_back(dir);
  for (size_t i = 0; i + keep_last < complete.size(); ++i) {
    // Renamed to a hidden name first: a kill in the middle of the deletion must not leave a
    // half-deleted checkpoint-<N> that find_latest_checkpoint could pick.
    const fs::path doomed = staging_path_for(complete[i]).string() + ".deleting";
    fs::rename(complete[i], doomed);
    remove_tree(doomed);
  }
}

}  // namespace kdae::train
