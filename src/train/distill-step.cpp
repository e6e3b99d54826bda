// Dimension legend: B = rows, b = one teacher's rows, T = time, V = vocabulary, H = heads.
#include "train/distill-step.h"

#include <ATen/autocast_mode.h>
#include <torch/autograd.h>

#include <map>
#include <set>

#include "common/error.h"
#include "dist/process-group.h"
#include "distill/router-loss.h"
#include "train/teacher-attention.h"
#include "train/teacher-cache.h"

namespace kdae::train {
namespace {

// One teacher's part of a micro-batch while the student's forward drives it.
struct LiveTeacher {
  int index = -1;
  bool stand_in = false;  // a sharded teacher run only so the ranks gather its layers together
  std::vector<int64_t> rows;
  torch::Tensor rows_on_student;  // (b) int64
  std::shared_ptr<TeacherAttention> attention;  // attention KD: the teacher advances with the student
  model::ForwardOutput out;
  const distill::LayerPairs* pairs = nullptr;
};

std::map<int, std::vector<int64_t>> rows_by_teacher(const StepSetup& s, const data::Batch& batch) {
  std::map<int, std::vector<int64_t>> groups;
  auto domains = batch.domain.to(torch::kCPU).contiguous();
  const auto* d = domains.data_ptr<int64_t>();
  for (int64_t r = 0; r < domains.numel(); ++r) {
    const int teacher = d[r] >= 0 && d[r] < static_cast<int64_t>(s.teacher_of_domain.size()) ? s.teacher_of_domain[d[r]] : -1;
    if (teacher < 0) fail("micro-batch row ", r, " has domain index ", d[r], " with no teacher");
    groups[teacher].push_back(r);
  }
  return groups;
}

}  // namespace

std::vector<distill::LayerPairs> build_layer_pairs(const std::vector<int64_t>& layer_map,
                                                   const model::ModelConfig& student, TeacherSet& teachers) {
  std::vector<distill::LayerPairs> out;
  for (size_t i = 0; i < teachers.size(); ++i) {
    if (!teachers.at(i).model) {
      out.emplace_back();
      continue;
    }
    const int64_t tl = teachers.at(i).model->config().num_layers;
    distill::LayerPairs pairs;
    if (layer_map.empty()) {
      pairs = distill::uniform_layer_map(student.num_layers, tl);
    } else {
      if (static_cast<int64_t>(layer_map.size()) != student.num_layers)
        fail("config key 'layer_map' lists ", layer_map.size(), " teacher layers but the student has ",
             student.num_layers, " layers (one entry per student layer)");
      for (int64_t l = 0; l < student.num_layers; ++l) pairs.emplace_back(l, layer_map[l]);
    }
    distill::check_layer_map(pairs, student.num_layers, tl);
    out.push_back(std::move(pairs));
  }
  return out;
}

namespace {

// The micro-batch on the student's device, and which terms this step computes.
struct StepInputs {
  torch::Tensor ids, positions, segments, labels, token_mask;  // (B, T)
  torch::Tensor query_mask;  // (B, T) bool: rows of the divergence and of the attention term
  bool need_attention = false, need_hidden = false;
};

StepInputs step_inputs(const StepSetup& s, const data::Batch& batch) {
  StepInputs in;
  const auto dev = s.device;
  in.ids = batch.input_ids.to(dev);
  in.positions = batch.position_ids.to(dev);
  if (s.packing) in.segments = batch.segment_ids.to(dev);
  in.labels = batch.labels.to(dev);
  in.token_mask = batch.token_mask.to(dev);
  in.query_mask = distill::supervised_mask(in.labels, in.token_mask, s.objective.alignment);
  const bool kd_on = s.objective.lambda > 0;
  in.need_attention = kd_on && s.objective.attention_weight > 0;
  in.need_hidden = kd_on && s.objective.hidden_weight > 0;
  return in;
}

// With sharded teachers, every teacher some rank needs runs on every rank: the others get a
// stand-in (no rows). One small all-reduce per micro-batch.
void add_stand_ins(StepSetup& s, std::map<int, std::vector<int64_t>>& groups) {
  if (!s.teachers->sharded()) return;
  std::vector<double> needed(s.teachers->size(), 0.0);
  for (const auto& [index, rows] : groups) needed[static_cast<size_t>(index)] = 1.0;
  needed = dist::world().max(std::move(needed), "which sharded teachers run");
  for (size_t i = 0; i < needed.size(); ++i)
    if (needed[i] > 0 && s.teachers->at(i).model && s.teachers->at(i).model->residency) groups.try_emplace(static_cast<int>(i));
}

// Starts each live teacher: run whole, or (attention KD) only embedded, to be driven layer by layer
// by the student's forward. A stand-in runs on one token of the micro-batch's first row.
std::vector<LiveTeacher> start_teachers(StepSetup& s, std::map<int, std::vector<int64_t>> groups, const StepInputs& in) {
  std::vector<LiveTeacher> live;
  if (!s.run_teachers) return live;
  add_stand_ins(s, groups);
  std::set<int64_t> recomputed;  // student layers whose maps are asked for again in backward
  for (int64_t l = 0; l < s.student->config().num_layers; ++l)
    if (s.student->recomputes_layer(l)) recomputed.insert(l);
  for (const auto& [index, rows] : groups) {
    LiveTeacher t;
    t.index = index;
    t.rows = rows;
    t.stand_in = rows.empty();
    t.rows_on_student = torch::tensor(rows, torch::kInt64).to(s.device);
    t.pairs = &s.layer_pairs.at(index);
    Teacher& teacher = s.teachers->at(index);
    if (!teacher.cache) {
      const std::vector<int64_t> picked = t.stand_in ? std::vector<int64_t>{0} : rows;
      auto rows_t = torch::tensor(picked, torch::kInt64).to(teacher.device);
      auto cut = [&](const torch::Tensor& x) {  // (B, T) -> (b, T), or (1, 1) for a stand-in
        torch::Tensor y = x.to(teacher.device).index_select(0, rows_t);
        return t.stand_in ? y.narrow(1, 0, 1) : y;
      };
      model::ForwardOptions opts;
      opts.position_ids = cut(in.positions);
      if (in.segments.defined()) opts.segment_ids = cut(in.segments);
      opts.hidden_states = in.need_hidden && !t.stand_in;
      opts.logits = !s.fused_head && !t.stand_in;
      torch::NoGradGuard no_grad;
      auto teacher_ids = cut(in.ids);  // (b, T)
      if (in.need_attention)
        t.attention = std::make_shared<TeacherAttention>(teacher.model, teacher_ids, opts, *t.pairs, s.device, recomputed);
      else
        t.out = teacher.model->forward(teacher_ids, opts);
    }
    live.push_back(std::move(t));
  }
  return live;
}

// The attention-KL term of one student layer against every teacher's paired map. The student calls it
// again for a layer it recomputes in backward, so it reads and never accumulates.
std::function<torch::Tensor(int64_t, const torch::Tensor&)> attention_term(const std::vector<LiveTeacher>& live,
                                                                         const torch::Tensor& query_mask) {
  std::vector<std::pair<std::shared_ptr<TeacherAttention>, torch::Tensor>> targets;  // (teacher, its rows)
  for (const auto& t : live)  // cached teachers have no maps; a stand-in advances but adds nothing
    if (t.attention) targets.emplace_back(t.attention, t.stand_in ? torch::Tensor() : t.rows_on_student);
  return [targets, query_mask](int64_t layer, const torch::Tensor& probs) {
    distill::LossSum layer_sum;
    for (const auto& [teacher, rows] : targets) {
      torch::Tensor teacher_probs = teacher->map_for(layer);  // (b, Ht, T, T)
      if (!teacher_probs.defined() || !rows.defined()) continue;
      layer_sum.add(distill::attention_kl_layer(probs.index_select(0, rows), teacher_probs, query_mask.index_select(0, rows)));
    }
    return layer_sum.sum.defined() ? layer_sum.sum : torch::zeros({}, probs.options().dtype(torch::kFloat32));
  };
}

// L_attn's denominator: supervised rows x student heads x mapped layers, over the teachers.
int64_t attention_rows(const StepSetup& s, const std::vector<LiveTeacher>& live, const torch::Tensor& query_mask) {
  int64_t n = 0;
  for (const auto& t : live)
    if (t.attention && !t.stand_in)
      n += query_mask.index_select(0, t.rows_on_student).sum().item<int64_t>() * s.student->config().num_heads *
         static_cast<int64_t>(t.pairs->size());
  return n;
}

// The student's forward under the compute dtype; with attention KD it drives the teachers, which then finish.
model::ForwardOutput student_forward(StepSetup& s, const StepInputs& in, std::vector<LiveTeacher>& live,
                                     distill::LossSum& attention) {
  model::ForwardOptions opts;
  opts.position_ids = in.positions;
  opts.segment_ids = in.segments;
  opts.hidden_states = in.need_hidden;
  opts.logits = !s.fused_head;
  opts.router_logits = s.student->config().is_moe();
  if (in.need_attention) opts.attention_term = attention_term(live, in.query_mask);
  model::ForwardOutput out;
  {
    ComputeDtypeGuard autocast(s.device, s.compute_dtype);
    out = s.student->forward(in.ids, opts);
  }
  if (in.need_attention) {
    for (auto& t : live)
      if (t.attention) t.out = t.attention->finish();
    for (const auto& term : out.attention_terms) attention.add(term, 0);
    attention.count = attention_rows(s, live, in.query_mask);
  }
  return out;
}

// One teacher's share of the divergence: its cached top-k, its final hidden state and head, or logits.
distill::TeacherPart teacher_part(const StepSetup& s, const LiveTeacher& t, const MicroBatch& mb) {
  const Teacher& teacher = s.teachers->at(t.index);
  distill::TeacherPart part{t.rows_on_student, torch::Tensor(), s.temperature_override.value_or(teacher.temperature),
                            teacher.weight};
  if (teacher.cache) {
    std::vector<std::vector<size_t>> samples;  // of this teacher's rows
    for (int64_t r : t.rows) samples.push_back(mb.row_samples.at(static_cast<size_t>(r)));
    part.sparse = teacher.cache->rows_for(samples, mb.batch.labels.index_select(0, t.rows_on_student.cpu()), s.device);
    part.is_sparse = true;
  } else if (s.fused_head) {
    part.hidden = t.out.final_hidden;
    part.head = teacher.model->lm_head_weight();
  } else {
    part.logits = t.out.logits.to(s.device);
  }
  return part;
}

// The hidden-state term of one teacher's rows over its layer pairs.
void add_hidden_pairs(StepSetup& s, const LiveTeacher& t, const model::ForwardOutput& student_out,
                      const torch::Tensor& query_mask, distill::LossSum& hidden) {
  for (size_t p = 0; p < t.pairs->size(); ++p) {
    const auto [sl, tl] = (*t.pairs)[p];
    auto student_h = student_out.hidden_states.at(sl + 1).index_select(0, t.rows_on_student);  // (b, T, Ds)
    auto teacher_h = t.out.hidden_states.at(tl + 1).to(s.device, torch::kFloat32);           // (b, T, Dt)
    hidden.add(s.hidden->layer(static_cast<int64_t>(p), student_h.to(torch::kFloat32), teacher_h,
                               query_mask.index_select(0, t.rows_on_student)));
  }
}

// MoE students: the weighted aux and z losses, and detached router logits for the load statistics.
void add_router_terms(const StepSetup& s, const data::Batch& batch, const model::ForwardOutput& student_out,
                      StepResult& result) {
  if (student_out.router_logits.empty()) return;
  const auto& config = s.student->config();
  auto real_tokens = batch.segment_ids.ne(0).reshape({-1}).to(s.device);  // (B*T): padding routes nowhere
  if (s.router_aux_coef > 0)
    result.router_loss = distill::load_balancing_loss(student_out.router_logits, config.num_experts,
                                                      config.experts_per_token, real_tokens) * s.router_aux_coef;
  if (s.router_z_coef > 0) {
    auto z = distill::router_z_loss(student_out.router_logits, real_tokens) * s.router_z_coef;
    result.router_loss = result.router_loss.defined() ? result.router_loss + z : z;
  }
  for (auto& r : student_out.router_logits) result.router_logits.push_back(r.detach());
  result.router_token_mask = real_tokens;
}

}  // namespace

StepResult compute_step(StepSetup& s, const MicroBatch& mb) {
  const StepInputs in = step_inputs(s, mb.batch);
  std::vector<LiveTeacher> live = start_teachers(s, rows_by_teacher(s, mb.batch), in);
  distill::KdBatch kd;
  model::ForwardOutput student_out = student_forward(s, in, live, kd.attention);
  if (s.fused_head) {
    kd.student_hidden = student_out.final_hidden;
    kd.student_head = s.student->lm_head_weight();
  } else {
    kd.student_logits = student_out.logits;
  }
  kd.labels = in.labels;
  kd.token_mask = in.token_mask;
  kd.sample_weights = mb.batch.weight.to(s.device);
  StepResult result;
  for (auto& t : live) {
    if (t.stand_in) continue;
    kd.teachers.push_back(teacher_part(s, t, mb));
    result.part_teacher.push_back(t.index);
    if (in.need_hidden) add_hidden_pairs(s, t, student_out, in.query_mask, kd.hidden);
    t.out = model::ForwardOutput();  // the teacher's hidden states are no longer needed
  }
  {
    // Under the compute dtype so the fused head's matmuls run like the student's other linears (the
    // losses themselves cast to fp32).
    ComputeDtypeGuard autocast(s.device, s.compute_dtype);
    result.terms = distill::kd_objective(kd, s.objective);
  }
  add_router_terms(s, mb.batch, student_out, result);
  return result;
}

void run_sharded_teachers_only(StepSetup& s) {
  if (!s.teachers || !s.teachers->sharded() || !s.run_teachers) return;
  torch::NoGradGuard no_grad;
  StepInputs in;  // one padding token: only the gathers matter
  in.ids = torch::zeros({1, 1}, torch::kInt64).to(s.device);
  in.positions = in.ids;
  if (s.packing) in.segments = torch::ones({1, 1}, torch::kInt32).to(s.device);
  in.labels = torch::full({1, 1}, -100, torch::kInt64).to(s.device);
  in.token_mask = torch::zeros({1, 1}, torch::kBool).to(s.device);
  in.query_mask = in.token_mask;
  in.need_attention = s.objective.lambda > 0 && s.objective.attention_weight > 0;
  std::vector<LiveTeacher> live = start_teachers(s, {}, in);
  if (live.empty() || !in.need_attention) return;
  // Attention KD: the student's layers drive the teachers'; in eval mode, so no dropout draws.
  const bool was_training = s.student->is_training();
  s.student->eval();
  distill::LossSum unused;
  student_forward(s, in, live, unused);
  if (was_training) s.student->train();
}

ComputeDtypeGuard::ComputeDtypeGuard(torch::Device device, torch::ScalarType dtype) : type_(device.type()) {
  if (dtype == torch::kFloat32) return;
  active_ = true;
  previous_enabled_ = at::autocast::is_autocast_enabled(type_);
  previous_dtype_ = at::autocast::get_autocast_dtype(type_);
  at::autocast::set_autocast_dtype(type_, dtype);
  at::autocast::set_autocast_enabled(type_, true);
}

ComputeDtypeGuard::~ComputeDtypeGuard() {
  if (!active_) return;
  at::autocast::set_autocast_enabled(type_, previous_enabled_);
  at::autocast::set_autocast_dtype(type_, previous_dtype_);
  at::autocast::clear_cache();
}

}  // namespace kdae::train
