// The one metrics sink of a training run: every logged step becomes one line of
// <output_dir>/metrics.jsonl ({"step": 10, "epoch": 0.25, "train/loss": 2.31, ...}) and one scalar
// per name in the TensorBoard event file under <output_dir>/runs. Generated samples (on-policy
// answers) go to <output_dir>/completions.jsonl, one JSON object with a "step" per line.
//
// The sink reduces nothing. The caller logs figures that are already global: summed over gradient
// accumulation micro-batches and ranks and divided by the global supervised-token count (or whatever
// the figure's definition is). It does not average across accumulation steps, which is how the
// reference trainer got per-rank, per-micro-batch means (paper-notes defect 8).
#pragma once
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace kdae::train {

class TensorBoardWriter;

using Scalars = std::vector<std::pair<std::string, double>>;

class MetricsLog {
 public:
  // resume_step: when resuming from a checkpoint at that step, lines of metrics.jsonl with a larger
  // step (written after the checkpoint by the run that died) are dropped first so the file stays
  // one line per step. Without it an existing metrics.jsonl is appended to.
  MetricsLog(const std::filesystem::path& output_dir, bool tensorboard = true,
             std::optional<int64_t> resume_step = std::nullopt);
  ~MetricsLog();

  // Non-finite values are written as JSON null (JSON has no NaN) and as NaN/inf to TensorBoard.
  void log(int64_t step, double epoch, const Scalars& scalars);
  void log_completion(const std::string& json_line);  // created on first use
  void flush();
  void close();

  std::filesystem::path jsonl_path() const { return jsonl_path_; }
  std::filesystem::path completions_path() const { return jsonl_path_.parent_path() / "completions.jsonl"; }

 private:
  std::filesystem::path jsonl_path_;
  std::ofstream jsonl_, completions_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;
};

}  // namespace kdae::train
