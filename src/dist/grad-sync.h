// Data parallel's one collective per optimizer step: after the last micro-batch's backward, every
// rank's gradients are summed over the ranks in flat buckets (~bucket_bytes each, in reverse
// parameter order as backward produces them), so each rank then holds the job's gradient and takes
// the same optimizer step. Sums, not means: the trainer already weights each micro-batch by its share
// of the job's tokens. A parameter no rank has a gradient for keeps none (AdamW skips it, as one
// process would); one that only some ranks have is zero on the others.
#pragma once
#include <torch/types.h>

#include <vector>

#include "dist/process-group.h"

namespace kdae::dist {

class GradientSync {
 public:
  GradientSync(std::vector<torch::Tensor> params, Group& group, int64_t bucket_bytes = int64_t{25} << 20);

  void all_reduce(const std::string& at);  // `at` names the step in errors
  int64_t buckets() const { return static_cast<int64_t>(buckets_.size()); }
  int64_t bytes_last_step() const { return bytes_last_step_; }  // payload of the last all_reduce, per rank

 private:
  std::vector<torch::Tensor> params_;
  Group& group_;
  std::vector<std::vector<size_t>> buckets_;  // indices into params_, one device and dtype per bucket
  int64_t bytes_last_step_ = 0;
};

}  // namespace kdae::dist
