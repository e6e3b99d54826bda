// Dynamic loss scaling for float16 training, with torch.amp.GradScaler's semantics: the loss is
// multiplied by S before backward so small fp16 gradients do not flush to zero; before the optimizer
// step the gradients are divided by S and checked. A step with an inf/NaN gradient is skipped (not
// applied) and S halves; after `growth_interval` clean steps in a row S doubles. Disabled (S = 1,
// never skips) for float32 and bfloat16, whose exponent range needs no scaling.
#pragma once
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace kdae::dist {
class Group;
}

namespace kdae::train {

struct LossScalerOptions {
  bool enabled = false;
  double init_scale = 65536.0;  // 2^16, GradScaler's default
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
};

class LossScaler {
 public:
  explicit LossScaler(LossScalerOptions options = {});
  bool enabled() const { return options_.enabled; }
  torch::Tensor scale(const torch::Tensor& loss) const;
  // Divides the gradients by S and updates S. Returns false when some gradient is not finite: the
  // caller must not apply this step. With `shards`, the gradients are split over that group's ranks
  // and every rank takes the job's decision.
  bool unscale_and_update(const std::vector<torch::Tensor>& params, dist::Group* shards = nullptr);
  double value() const { return scale_; }
  int64_t skipped_steps() const { return skipped_; }

  nlohmann::json to_json() const;  // for checkpoints: a resumed run continues with the same S
  void load_json(const nlohmann::json& state);

 private:
  LossScalerOptions options_;
  double scale_;
  int64_t clean_steps_ = 0;  // since the last change of S
  int64_t skipped_ = 0;
};

}  // namespace kdae::train
