#include "train/job.h"

#include "common/device.h"
#include "common/error.h"

namespace kdae::train {

// "auto" and "cuda" mean this rank's GPU; an explicit cuda:N is the user's choice and kept.
std::string rank_device(const std::string& name, const dist::LaunchEnv& env) {
  if (!env.distributed()) return name;
  const c10::Device device = parse_device(name);
  if (!device.is_cuda() || name.find(':') != std::string::npos) return name;
  return "cuda:" + std::to_string(env.local_rank);
}

DistillOptions join_job(const DistillOptions& options) {
  DistillOptions o = options;
  dist::Group& group = dist::world();
  const dist::LaunchEnv env = group.distributed() ? group.env() : dist::detect_launch_env();
  o.device = rank_device(o.device, env);
  o.teacher_device = rank_device(o.teacher_device, env);
  if (!group.distributed() && env.distributed())
    dist::join(env, {dist::parse_backend(o.backend), std::chrono::seconds(o.dist_timeout_s), parse_device(o.device)});
  const int64_t world = group.size();
  if (o.global_batch_size > 0) {
    const int64_t per_step = o.train_batch_size * world;
    if (o.global_batch_size % per_step != 0)
      fail("global_batch_size ", o.global_batch_size, " is not a multiple of train_batch_size x ranks = ",
           o.train_batch_size, " x ", world, " = ", per_step, "; change one of them so the job's batch divides exactly");
    o.gradient_accumulation_steps = o.global_batch_size / per_step;
  }
  return o;
}

int64_t global_batch(const DistillOptions& o, const dist::Group& group) {
  return o.train_batch_size * o.gradient_accumulation_steps * group.size();
}

}  // namespace kdae::train
