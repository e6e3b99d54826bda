// A progress bar on stderr for long work (training, teacher caching, conversion, demo):
//   train  37% |#######.............|  370/1000  2.41 it/s  ETA 4m21s  loss=2.3141 lr=1.9e-05
// On a TTY it is redrawn in place ("\r", at most refresh_hz times a second); otherwise (CI logs,
// redirected stderr) it prints one plain line every plain_interval_s seconds, and one at the end.
// Torch-free.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace kdae {

struct ProgressOptions {
  std::string label;          // printed first: "train", "cache teacher"
  int64_t total = 0;          // steps expected; 0 = unknown (no bar, no ETA)
  std::string rate_unit;      // "" = rate in steps ("it/s"); "tok" = work units per second ("tok/s")
  double refresh_hz = 10.0;   // TTY redraw limit
  double plain_interval_s = 30.0;
  std::optional<bool> tty;    // unset: isatty(stderr) (only meaningful when out is std::cerr)
  std::ostream* out = nullptr;  // nullptr = std::cerr
  std::function<double()> clock;  // seconds, monotonic; unset = steady_clock (tests inject one)
};

class Progress {
 public:
  explicit Progress(ProgressOptions options);
  ~Progress();  // finishes the line if finish() was not called
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // Advances by steps (and work units, e.g. tokens, for the rate) and redraws if due.
  void advance(int64_t steps = 1, int64_t work = 0);
  // Jumps to an absolute step (e.g. after resuming); the rate counts only work done in this process.
  void set_step(int64_t step);
  // A named figure shown after the ETA, in insertion order: set("loss", 2.31).
  void set(const std::string& name, double value);
  void finish();

  // The text of the line at this moment (without "\r" or "\n").
  std::string line() const;

 private:
  double now() const;
  void maybe_draw(bool force);

  ProgressOptions opt_;
  bool tty_ = false;
  bool finished_ = false;
  int64_t step_ = 0, start_step_ = 0, work_ = 0;
  double start_time_ = 0, last_draw_ = -1e300;
  size_t last_width_ = 0;
  std::vector<std::pair<std::string, double>> figures_;
};

// "4m21s", "1h02m", "59s"; negative or non-finite = "?".
std::string format_duration(double seconds);

}  // namespace kdae
