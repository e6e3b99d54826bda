#include "common/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <sstream>

namespace kdae {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<long long>(std::llround(seconds));
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", s / 3600, (s % 3600) / 60);
  else if (s >= 60)
    std::snprintf(buf, sizeof buf, "%lldm%02llds", s / 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%llds", s);
  return buf;
}

Progress::Progress(ProgressOptions options) : opt_(std::move(options)) {
  if (!opt_.out) opt_.out = &std::cerr;
  tty_ = opt_.tty.value_or(opt_.out == &std::cerr && ::isatty(STDERR_FILENO));
  start_time_ = now();
}

Progress::~Progress() {
  if (!finished_) finish();
}

double Progress::now() const {
  if (opt_.clock) return opt_.clock();
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void Progress::advance(int64_t steps, int64_t work) {
  step_ += steps;
  work_ += work;
  maybe_draw(false);
}

void Progress::set_step(int64_t step) {
  // Rate and ETA measure this process only: a resumed run starts counting from here.
  step_ = step;
  start_step_ = step;
  work_ = 0;
  start_time_ = now();
}

void Progress::set(const std::string& name, double value) {
  for (auto& [n, v] : figures_)
    if (n == name) {
      v = value;
      return;
    }
  figures_.emplace_back(name, value);
}

std::string Progress::line() const {
  std::ostringstream out;
  if (!opt_.label.empty()) out << opt_.label << " ";
  const double elapsed = now() - start_time_;
  const int64_t done_here = step_ - start_step_;
  if (opt_.total > 0) {
    const double frac = std::clamp(static_cast<double>(step_) / static_cast<double>(opt_.total), 0.0, 1.0);
    constexpr int width = 20;
    const int filled = static_cast<int>(frac * width);
    char pct[8];
    std::snprintf(pct, sizeof pct, "%3d%%", static_cast<int>(frac * 100));
    out << pct << " |" << std::string(filled, '#') << std::string(width - filled, '.') << "| " << step_ << "/"
        << opt_.total;
  } else {
    out << step_;
  }
  char rate[48];
  if (elapsed > 0 && done_here > 0) {
    const bool by_work = !opt_.rate_unit.empty();
    const double r = (by_work ? static_cast<double>(work_) : static_cast<double>(done_here)) / elapsed;
    std::snprintf(rate, sizeof rate, r >= 100 ? "%.0f" : "%.2f", r);
    out << "  " << rate << " " << (by_work ? opt_.rate_unit : "it") << "/s";
    if (opt_.total > 0) {
      const double eta = static_cast<double>(opt_.total - step_) * elapsed / static_cast<double>(done_here);
      out << "  ETA " << format_duration(std::max(0.0, eta));
    }
  }
  for (const auto& [name, value] : figures_) {
    char v[32];
    std::snprintf(v, sizeof v, "%.4g", value);
    out << "  " << name << "=" << v;
  }
  return out.str();
}

void Progress::maybe_draw(bool force) {
  const double t = now();
  const double interval = tty_ ? 1.0 / std::max(opt_.refresh_hz, 1e-3) : opt_.plain_interval_s;
  if (!force && t - last_draw_ < interval) return;
  last_draw_ = t;
  std::string text = line();
  std::ostream& out = *opt_.out;
  if (tty_) {
    // Pad over the previous, possibly longer, line instead of relying on terminal escape codes.
    const size_t width = text.size();
    if (width < last_width_) text += std::string(last_width_ - width, ' ');
    last_width_ = width;
    out << "\r" << text << std::flush;
  } else {
    out << text << "\n" << std::flush;
  }
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  maybe_draw(true);
  if (tty_) *opt_.out << "\n" << std::flush;
}

}  // namespace kdae
