// Data parallel's gradient exchange, once per optimizer step: every rank's gradients are summed over
// the ranks in flat buckets (~bucket_bytes each, in reverse parameter order, the order backward
// produces them), so each rank then holds the job's gradient and takes the same optimizer step. Sums,
// not means: the trainer already weights each micro-batch by its share of the job's tokens.
//
// Overlap: after prepare_for_backward(), each parameter reports when backward has accumulated its
// gradient (a post-accumulate-grad hook); a bucket whose parameters are all done starts its all-reduce
// at once, in bucket order (every rank must issue collectives in the same order), while backward goes
// on. finish() starts the buckets still open (parameters without a gradient on this rank, e.g. an MoE
// expert no token chose, count as zeros) and waits. Each bucket carries one presence count per
// parameter: a parameter no rank has a gradient for keeps none (AdamW skips it, as one process would).
#pragma once
#include <torch/types.h>

#include <functional>
#include <string>
#include <vector>

#include "dist/process-group.h"

namespace kdae::dist {

class GradientSync {
 public:
  GradientSync(std::vector<torch::Tensor> params, Group& group, int64_t bucket_bytes = int64_t{25} << 20);
  ~GradientSync();
  GradientSync(const GradientSync&) = delete;
  GradientSync& operator=(const GradientSync&) = delete;

  // The next backward is the step's last: reduce as buckets fill; `at` names the step in errors.
  void prepare_for_backward(const std::string& at);
  void finish();  // after that backward: start the rest, then wait
  int64_t buckets() const { return static_cast<int64_t>(buckets_.size()); }
  int64_t bytes_last_step() const { return bytes_last_step_; }  // gradient payload per rank, last step
  int64_t buckets_started_in_backward() const { return started_in_backward_; }

  void ready(size_t param);  // called by the hooks

 private:
  void start(size_t bucket);

  std::vector<torch::Tensor> params_;
  Group& group_;
  std::vector<std::vector<size_t>> buckets_;  // indices into params_, one device and dtype per bucket
  std::vector<size_t> bucket_of_;
  bool armed_ = false, in_backward_ = false;
  std::vector<bool> done_;
  std::vector<size_t> missing_;  // per bucket: parameters not yet done
  size_t next_ = 0;              // the next bucket to start
  std::vector<torch::Tensor> flat_;
  std::vector<std::function<void()>> waits_;
  std::string at_;
  int64_t bytes_last_step_ = 0, started_in_backward_ = 0;
};

}  // namespace kdae::dist
