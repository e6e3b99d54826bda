// The teacher's side of attention KD while the student's forward drives it: the teacher advances
// layer by layer as the student asks for the map paired with each of its layers, so no more than one
// layer's maps exist at a time. When the student recomputes a layer in backward (gradient
// checkpointing) it asks again; the teacher layer's input was kept (b x T x D, not the T x T map)
// and its map is recomputed from it.
#pragma once
#include <torch/types.h>

#include <map>
#include <set>

#include "distill/attention-kl.h"
#include "model/transformer.h"

namespace kdae::train {

class TeacherAttention {
 public:
  // options: the teacher's forward (positions, segments, hidden states ...) without attention hooks.
  // recomputed_student_layers: those the student recomputes in backward, whose maps must be re-derivable.
  TeacherAttention(model::Transformer teacher, const torch::Tensor& teacher_ids, model::ForwardOptions options,
                   const distill::LayerPairs& pairs, torch::Device student_device,
                   std::set<int64_t> recomputed_student_layers);
  TeacherAttention(const TeacherAttention&) = delete;
  TeacherAttention& operator=(const TeacherAttention&) = delete;

  // (b, Ht, T, T) fp32 on the student's device: the map of the teacher layer paired with student
  // layer l; undefined when l has no pair.
  torch::Tensor map_for(int64_t student_layer);
  // The rest of the teacher's forward (final norm, head or final hidden state).
  model::ForwardOutput finish();

 private:
  model::Transformer teacher_;
  model::ForwardState state_;
  std::map<int64_t, int64_t> teacher_layer_of_;  // student layer -> teacher layer
  std::set<int64_t> keep_;                       // teacher layers whose map is asked for more than once
  std::map<int64_t, torch::Tensor> inputs_;      // teacher layer -> its input, when kept
  torch::Tensor last_probs_;
  torch::Device device_;

};

}  // namespace kdae::train
