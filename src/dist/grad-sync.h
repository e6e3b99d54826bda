// Data parallel's gradient exchange, once per optimizer step: every rank's gradients are summed over
// the ranks in flat buckets (~bucket_bytes each, in reverse parameter order, the order backward
// produces them), so each rank then holds the job's gradient and takes the same optimizer step. Sums,
// not means: the trainer already weights each micro-batch by its share of the job's tokens.
//
// Overlap: after prepare_for_backward(), each parameter reports when backward has accumulated its
// gradient (a post-accumulate-grad hook); a bucket whose parameters are all done starts its all-reduce
// at once, in bucket order (every rank must issue collectives in the same order), while backward goes
// on; a bucket whose reduction is complete when a later one starts is copied back and its buffer
// freed then, so the buffers in flight stay few. finish() starts the buckets still open (parameters without a gradient on this rank, e.g. an MoE
// expert no token chose, count as zeros) and waits. Each bucket carries one presence count per
// parameter: a parameter no rank has a gradient for keeps none (AdamW skips it, as one process would).
//
// With owners (ZeRO-2: one rank per parameter, contiguous runs), buckets never span two owners and
// each is reduced to its owner alone; the other ranks drop those gradients as the bucket starts.
#pragma once
#include <torch/types.h>

#include <string>
#include <vector>

#include "dist/process-group.h"

namespace kdae::dist {

class GradientSync {
 public:
  GradientSync(std::vector<torch::Tensor> params, Group& group, int64_t bucket_bytes = int64_t{25} << 20,
               std::vector<int> owners = {});
  ~GradientSync();
  GradientSync(const GradientSync&) = delete;
  GradientSync& operator=(const GradientSync&) = delete;

  // The next backward is the step's last: reduce as buckets fill; `at` names the step in errors.
  void prepare_for_backward(const std::string& at);
  void finish();  // after that backward: start the rest, then wait
  int64_t buckets() const { return static_cast<int64_t>(buckets_.size()); }
  int64_t bytes_last_step() const { return bytes_last_step_; }  // gradient payload per rank, last step
  int64_t buckets_started_in_backward() const { return started_in_backward_; }
  int64_t gradient_bytes_held() const { return held_bytes_; }  // by this rank after the last finish()

  void ready(size_t param);  // called by the hooks

 private:
  void start(size_t bucket);
  void retire(size_t bucket);        // waits for its reduction, then gives the result to the gradients
  bool keeps(size_t bucket) const;   // this rank keeps the bucket's gradients (always, without owners)

  std::vector<torch::Tensor> params_;
  Group& group_;
  std::vector<std::vector<size_t>> buckets_;  // indices into params_, one device and dtype per bucket
  std::vector<size_t> bucket_of_;
  std::vector<int> owners_;        // per parameter; empty: all-reduce
  std::vector<int> bucket_owner_;  // per bucket, with owners
  bool armed_ = false, in_backward_ = false;
  std::vector<bool> done_;
  std::vector<size_t> missing_;  // per bucket: parameters not yet done
  size_t next_ = 0;              // the next bucket to start
  size_t retired_ = 0;           // buckets before it are reduced and back in the gradients
  std::vector<torch::Tensor> flat_;
  std::vector<Pending> pending_;
  std::string at_;
  int64_t bytes_last_step_ = 0, started_in_backward_ = 0, held_bytes_ = 0;
};

}  // namespace kdae::dist
