#include "train/lr-schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "common/error.h"

namespace kdae::train {

LrScheduleKind parse_lr_schedule(const std::string& name) {
  if (name == "constant") return LrScheduleKind::constant;
  if (name == "linear") return LrScheduleKind::linear;
  if (name == "cosine") return LrScheduleKind::cosine;
  fail("unknown lr_scheduler '", name, "' (expected cosine, linear or constant)");
}

std::string lr_schedule_name(LrScheduleKind kind) {
  switch (kind) {
    case LrScheduleKind::constant: return "constant";
    case LrScheduleKind::linear: return "linear";
    case LrScheduleKind::cosine: return "cosine";
  }
  return "?";
}

int64_t resolve_warmup_steps(int64_t warmup_steps, double warmup_ratio, int64_t total_steps) {
  if (warmup_steps > 0) return warmup_steps;
  if (warmup_ratio < 0 || warmup_ratio > 1) fail("warmup_ratio ", warmup_ratio, " is outside [0, 1]");
  return static_cast<int64_t>(std::ceil(warmup_ratio * static_cast<double>(total_steps)));
}

LrSchedule::LrSchedule(LrScheduleKind kind, double base_lr, int64_t total_steps, int64_t warmup_steps)
    : kind_(kind), base_lr_(base_lr), total_steps_(total_steps), warmup_steps_(warmup_steps) {
  if (total_steps < 0 || warmup_steps < 0) fail("lr schedule: negative step count");
}

double LrSchedule::multiplier_at(int64_t step) const {
  // Same arithmetic and order as transformers.optimization, so values agree to the last bit or two.
  const double s = static_cast<double>(step);
  const double warm = static_cast<double>(warmup_steps_);
  if (step < warmup_steps_) return s / std::max(1.0, warm);
  const double decay_span = std::max(1.0, static_cast<double>(total_steps_ - warmup_steps_));
  switch (kind_) {
    case LrScheduleKind::constant: return 1.0;
    case LrScheduleKind::linear:
      return std::max(0.0, static_cast<double>(total_steps_ - step) / decay_span);
    case LrScheduleKind::cosine: {
      const double progress = (s - warm) / decay_span;
      // HF's num_cycles = 0.5: cos(pi * 2 * 0.5 * progress)
      return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * 2.0 * 0.5 * progress)));
    }
  }
  return 1.0;
}

double LrSchedule::lr_at(int64_t step) const { return base_lr_ * multiplier_at(step); }

}  // namespace kdae::train
