// The job's processes as one c10d process group (the engine torch.distributed uses): Gloo on CPU,
// NCCL on CUDA. Process-wide like torch.distributed's default group: join() once at the start of a
// command; before that, and in a plain single process, world() is a group of one whose collectives
// do nothing. Every failure of a collective (a rank died, or did not arrive within dist_timeout_s)
// becomes a kdae::Error naming this rank and the step that failed.
#pragma once
#include <c10/core/Device.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "dist/launch-env.h"

namespace at {
class Tensor;
}

namespace kdae::dist {

enum class Backend { automatic, gloo, nccl };
Backend parse_backend(const std::string& name);  // auto | gloo | nccl

struct GroupOptions {
  Backend backend = Backend::automatic;       // automatic: NCCL when the device is CUDA, else Gloo
  std::chrono::milliseconds timeout{600000};  // per collective and per store wait
  c10::Device device{c10::kCPU};              // where this rank computes
};

// A collective in flight: done() asks without blocking; wait() blocks, and both report a failure
// (wait() throws it as a kdae::Error naming the step).
struct Pending {
  std::function<bool()> done = [] { return true; };
  std::function<void()> wait = [] {};
};

class Group {
 public:
  struct Impl;
  Group();
  ~Group();

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool is_main() const { return rank_ == 0; }
  // Joined through a launcher: collectives run, even with one rank (torchrun --nproc-per-node 1
  // exercises the backend exactly as a larger job does).
  bool distributed() const;
  const LaunchEnv& env() const { return env_; }
  std::string backend_name() const;

  // Sums a tensor over the ranks, in place ("what" names it in errors).
  void all_reduce_sum(at::Tensor& tensor, const std::string& what);
  // The same, started in the background. Every rank must start its collectives in the same order.
  Pending start_all_reduce_sum(at::Tensor& tensor, const std::string& what);
  // Sums a tensor over the ranks into `root`'s copy (the others' copies are left undefined), started
  // in the background like start_all_reduce_sum.
  Pending start_reduce_sum(at::Tensor& tensor, int root, const std::string& what);
  // Host figures: sums / maxima over the ranks (float64, exact for counts below 2^53).
  std::vector<double> sum(std::vector<double> values, const std::string& what);
  std::vector<double> max(std::vector<double> values, const std::string& what);
  void broadcast(at::Tensor& tensor, int root, const std::string& what);
  // Every rank's `part` (same shape and dtype everywhere), concatenated in rank order into `whole`
  // (size() x part's numel elements, flat).
  void all_gather(const at::Tensor& part, at::Tensor& whole, const std::string& what);
  void barrier(const std::string& what);

  // Rank 0 runs fn first; the others wait for it and then run fn themselves (then_all), or skip it.
  // An error on rank 0 stops every rank with rank 0's message, instead of leaving them waiting.
  void main_first(const std::string& what, const std::function<void()>& fn, bool then_all = true);
  // Fails on every rank when `value` differs between ranks (configs, world-dependent settings).
  void check_same(const std::string& what, const std::string& value);

 private:
  friend void join(const LaunchEnv& env, const GroupOptions& options);
  int rank_ = 0, size_ = 1;
  LaunchEnv env_;
  std::unique_ptr<Impl> impl_;
};

Group& world();
// Connects to the other ranks (TCPStore rendezvous at MASTER_ADDR:MASTER_PORT) and builds the
// backend. Without a launcher (LaunchEnv::distributed() false) it joins nothing. Joining twice is an error.
void join(const LaunchEnv& env, const GroupOptions& options);
// "rank 1/4" in a distributed job, "" otherwise: the prefix of every message a rank prints.
std::string rank_label();

}  // namespace kdae::dist
