#include "train/metrics-log.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/error.h"
#include "common/files.h"
#include "train/tensorboard.h"

namespace kdae::train {
namespace fs = std::filesystem;

namespace {
// Keeps lines whose step is <= resume_step; unparsable lines (a torn last line from a kill) go too.
void truncate_after(const fs::path& path, int64_t resume_step) {
  std::istringstream in(read_file(path));
  std::string kept;
  for (std::string line; std::getline(in, line);) {
    try {
      const auto j = nlohmann::json::parse(line);
      if (j.at("step").get<int64_t>() <= resume_step) kept += line + "\n";
    } catch (const std::exception&) {
    }
  }
  write_file_atomic(path, kept);
}
}  // namespace

MetricsLog::MetricsLog(const fs::path& output_dir, bool tensorboard, std::optional<int64_t> resume_step)
    : jsonl_path_(output_dir / "metrics.jsonl") {
  std::error_code ec;
  fs::create_directories(output_dir, ec);
  if (ec) fail(output_dir.string(), ": cannot create the output directory: ", ec.message());
  if (resume_step && fs::exists(jsonl_path_)) truncate_after(jsonl_path_, *resume_step);
  if (resume_step && fs::exists(completions_path())) truncate_after(completions_path(), *resume_step);
  jsonl_.open(jsonl_path_, std::ios::app);
  if (!jsonl_) fail(jsonl_path_.string(), ": cannot open for appending: ", std::strerror(errno));
  if (tensorboard) tensorboard_ = std::make_unique<TensorBoardWriter>(output_dir / "runs");
}

MetricsLog::~MetricsLog() {
  try {
    close();
  } catch (...) {
  }
}

void MetricsLog::log(int64_t step, double epoch, const Scalars& scalars) {
  nlohmann::ordered_json line;
  line["step"] = step;
  line["epoch"] = epoch;
  for (const auto& [name, value] : scalars) {
    if (name == "step" || name == "epoch") fail("metrics: '", name, "' is reserved");
    if (std::isfinite(value))
      line[name] = value;
    else
      line[name] = nullptr;
    if (tensorboard_) tensorboard_->add_scalar(name, value, step);
  }
  // One whole line per write + flush: a kill leaves at most one torn last line, which the resume
  // path drops.
  jsonl_ << line.dump() << "\n" << std::flush;
  if (!jsonl_) fail(jsonl_path_.string(), ": write failed");
}

void MetricsLog::log_completion(const std::string& json_line) {
  if (!completions_.is_open()) {
    completions_.open(completions_path(), std::ios::app);
    if (!completions_) fail(completions_path().string(), ": cannot open for appending: ", std::strerror(errno));
  }
  completions_ << json_line << "\n" << std::flush;
  if (!completions_) fail(completions_path().string(), ": write failed");
}

void MetricsLog::flush() {
  jsonl_.flush();
  if (tensorboard_) tensorboard_->flush();
}

void MetricsLog::close() {
  if (jsonl_.is_open()) jsonl_.close();
  if (completions_.is_open()) completions_.close();
  if (tensorboard_) tensorboard_->close();
}

}  // namespace kdae::train
