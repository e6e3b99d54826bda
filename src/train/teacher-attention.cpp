#include "train/teacher-attention.h"

#include <algorithm>

#include "common/error.h"

namespace kdae::train {

TeacherAttention::TeacherAttention(model::Transformer teacher, const torch::Tensor& teacher_ids,
                                   model::ForwardOptions options, const distill::LayerPairs& pairs,
                                   torch::Device student_device, std::set<int64_t> recomputed_student_layers)
    : teacher_(std::move(teacher)), device_(student_device) {
  for (const auto& [sl, tl] : pairs) teacher_layer_of_[sl] = tl;
  // A map is asked for again when its student layer is recomputed in backward, when an explicit layer_map
  // names a teacher layer twice, or names it after a deeper one (the teacher has passed it by then).
  std::map<int64_t, int> times_named;
  for (const auto& [sl, tl] : teacher_layer_of_) ++times_named[tl];
  int64_t deepest = -1;
  for (const auto& [sl, tl] : teacher_layer_of_) {
    if (recomputed_student_layers.count(sl) || times_named[tl] > 1 || tl < deepest) keep_.insert(tl);
    deepest = std::max(deepest, tl);
  }
  options.on_attention = [this](int64_t, const torch::Tensor& probs) { last_probs_ = probs; };
  options.attention_layers.assign(teacher_->config().num_layers, false);
  for (const auto& [sl, tl] : pairs) options.attention_layers[tl] = true;
  torch::NoGradGuard no_grad;
  state_ = teacher_->begin(teacher_ids, options);
}

torch::Tensor TeacherAttention::map_for(int64_t student_layer) {
  auto pair = teacher_layer_of_.find(student_layer);
  if (pair == teacher_layer_of_.end()) return {};
  const int64_t tl = pair->second;
  torch::NoGradGuard no_grad;
  if (tl < state_.next_layer) {
    auto input = inputs_.find(tl);
    if (input == inputs_.end())
      fail("attention KD asked again for teacher layer ", tl, "'s map, whose input was not kept");
    return teacher_->attention_probs(tl, input->second, state_.ctx).to(device_, torch::kFloat32);
  }
  while (state_.next_layer <= tl) {  // one layer at a time, keeping the inputs asked for again
    if (keep_.count(state_.next_layer)) inputs_[state_.next_layer] = state_.x;
    teacher_->advance(state_, state_.next_layer + 1);
  }
  torch::Tensor probs = std::move(last_probs_);
  return probs.to(device_, torch::kFloat32);  // (b, Ht, T, T)
}

model::ForwardOutput TeacherAttention::finish() {
  torch::NoGradGuard no_grad;
  return teacher_->finish(state_);
}

}  // namespace kdae::train
