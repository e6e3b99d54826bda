// Learning-rate schedules: linear warmup then constant, linear decay to zero, or cosine decay to zero.
// lr(step) equals transformers' get_{constant,linear,cosine}_schedule_with_warmup at every step, where
// step counts optimizer steps already taken (the first update uses lr(0), which is 0 when warmup > 0,
// exactly as HF's LambdaLR does). Torch-free.
#pragma once
#include <cstdint>
#include <string>

namespace kdae::train {

enum class LrScheduleKind { constant, linear, cosine };

LrScheduleKind parse_lr_schedule(const std::string& name);  // "constant", "linear", "cosine"
std::string lr_schedule_name(LrScheduleKind kind);

// HF's rule: warmup_steps when > 0, else ceil(warmup_ratio * total_steps).
int64_t resolve_warmup_steps(int64_t warmup_steps, double warmup_ratio, int64_t total_steps);

class LrSchedule {
 public:
  LrSchedule(LrScheduleKind kind, double base_lr, int64_t total_steps, int64_t warmup_steps);
  double lr_at(int64_t step) const;  // any step >= 0; decays clamp at 0 past total_steps
  double multiplier_at(int64_t step) const;
  int64_t total_steps() const { return total_steps_; }
  int64_t warmup_steps() const { return warmup_steps_; }

 private:
  LrScheduleKind kind_;
  double base_lr_;
  int64_t total_steps_, warmup_steps_;
};

}  // namespace kdae::train
