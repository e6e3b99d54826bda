#include "train/loss-scaler.h"

#include "common/error.h"
#include "dist/process-group.h"

namespace kdae::train {

LossScaler::LossScaler(LossScalerOptions options) : options_(options), scale_(options.enabled ? options.init_scale : 1.0) {
  if (options_.enabled && !(options_.init_scale > 0)) fail("loss_scale_init must be > 0, got ", options_.init_scale);
}

torch::Tensor LossScaler::scale(const torch::Tensor& loss) const { return enabled() ? loss * scale_ : loss; }

bool LossScaler::unscale_and_update(const std::vector<torch::Tensor>& params, dist::Group* shards) {
  if (!enabled()) return true;
  torch::NoGradGuard no_grad;
  torch::Tensor finite;  // () bool, one device sync for the whole model
  for (const auto& p : params) {
    auto g = p.grad();
    if (!g.defined()) continue;
    g.mul_(1.0 / scale_);
    auto ok = g.isfinite().all();
    finite = finite.defined() ? finite.logical_and(ok) : ok;
  }
  bool clean = !finite.defined() || finite.item<bool>();
  if (shards) clean = shards->max({clean ? 0.0 : 1.0}, "the fp16 overflow check")[0] == 0;
  if (!clean) {
    scale_ *= options_.backoff_factor;
    clean_steps_ = 0;
    ++skipped_;
    return false;
  }
  if (++clean_steps_ >= options_.growth_interval) {
    scale_ *= options_.growth_factor;
    clean_steps_ = 0;
  }
  return true;
}

nlohmann::json LossScaler::to_json() const {
  return {{"scale", scale_}, {"clean_steps", clean_steps_}, {"skipped_steps", skipped_}};
}

void LossScaler::load_json(const nlohmann::json& state) {
  if (!enabled() || state.is_null()) return;
  scale_ = state.at("scale").get<double>();
  clean_steps_ = state.at("clean_steps").get<int64_t>();
  skipped_ = state.at("skipped_steps").get<int64_t>();
}

}  // namespace kdae::train
