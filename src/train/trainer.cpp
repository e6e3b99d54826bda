#include "train/trainer.h"

#include <cmath>
#include <functional>
#include <cstdlib>
#include <iostream>
#include <optional>

#include "common/device.h"
#include "common/error.h"
#include "common/files.h"
#include "common/memory.h"
#include "common/progress.h"
#include "common/threads.h"
#include "data/dataset.h"
#include "dist/grad-sync.h"
#include "dist/process-group.h"
#include "distill/router-loss.h"
#include "generate/text-generator.h"
#include "io/hf-model.h"
#include "io/safetensors.h"
#include "tokenizer/tokenizer.h"
#include "train/data-stream.h"
#include "train/distill-step.h"
#include "train/evaluate.h"
#include "train/job.h"
#include "train/loss-scaler.h"
#include "train/lr-schedule.h"
#include "train/on-policy.h"
#include "train/optimizer.h"
#include "train/sharded-optimizer.h"
#include "train/student.h"
#include "train/teacher-cache.h"
#include "train/teacher-set.h"

namespace kdae::train {
namespace fs = std::filesystem;

fs::path dataset_cache_dir(const std::string& option) {
  if (option == "none") return {};
  if (!option.empty()) return option;
  if (const char* home = std::getenv("KDAE_HOME"); home && *home) return fs::path(home) / "datasets";
  const char* user_home = std::getenv("HOME");
  return fs::path(user_home ? user_home : ".") / ".cache" / "kdae" / "datasets";
}

namespace {

distill::KdObjectiveOptions objective_options(const DistillOptions& o, int64_t true_vocab) {
  distill::KdObjectiveOptions k;
  k.lambda = o.lambda_param;
  k.attention_weight = o.attn_weight;
  k.hidden_weight = o.hidden_weight;
  k.alignment = distill::parse_label_alignment(o.label_alignment);
  k.divergence.kind = distill::parse_divergence(o.divergence);
  k.divergence.temperature = o.temperature;
  k.divergence.beta = o.jsd_beta;
  k.divergence.alpha = o.skew_alpha;
  k.divergence.normalization = distill::parse_normalization(o.loss_normalization);
  k.divergence.student_vocab = k.divergence.teacher_vocab = true_vocab;
  if (o.kd_chunk_tokens > 0) k.divergence.chunk_rows = o.kd_chunk_tokens;
  return k;
}

}  // namespace

data::DatasetOptions dataset_options(const DistillOptions& o) {
  data::DatasetOptions d;
  d.chat_template = o.chat_template;
  d.instruction_key = o.instruction_key;
  d.response_key = o.response_key;
  d.seq_length = o.seq_length;
  d.truncation = data::parse_truncation(o.truncation);
  d.min_supervised_tokens = o.min_supervised_tokens;
  d.dedup = o.dedup;
  d.cache_dir = dataset_cache_dir(o.data_cache_dir);
  return d;
}

namespace {

// A fresh run must not mix its checkpoints and metrics into an earlier run's.
void prepare_output_dir(const DistillOptions& o, bool resuming) {
  const fs::path out = o.output_dir;
  const fs::path model_dir = out / "model";
  if (fs::exists(model_dir) && !o.overwrite)
    fail("output_dir ", out.string(), " already holds a final model (", model_dir.string(),
         "); set overwrite: true to replace it, or choose another output_dir");
  if (resuming) return;
  const bool earlier = find_latest_checkpoint(out).has_value() || fs::exists(out / "metrics.jsonl");
  if (earlier && !o.overwrite)
    fail("output_dir ", out.string(), " already holds a run (checkpoints or metrics.jsonl); continue it with "
         "resume_from_checkpoint: latest, set overwrite: true to start over, or choose another output_dir");
  if (earlier) {
    for (const auto& entry : fs::directory_iterator(out)) {
      const std::string name = entry.path().filename().string();
      if (name.rfind("checkpoint-", 0) == 0 || name == "runs") remove_tree(entry.path());
    }
    fs::remove(out / "metrics.jsonl");
    fs::remove(out / "completions.jsonl");
  }
  fs::create_directories(out);
}

struct Run {
  const DistillOptions& o;
  RunKind kind;
  torch::Device device;
  std::unique_ptr<tok::Tokenizer> tokenizer;
  model::Transformer student{nullptr};
  std::unique_ptr<TeacherSet> teachers;
  data::Dataset train, eval;
  bool has_eval = false;
  StepSetup setup;
  NamedTensors trainable;  // student parameters + KD-module parameters, by name
  LossScaler scaler;       // float16 only
  OnPolicyOptions on_policy;
  dist::Group& group = dist::world();

  explicit Run(const DistillOptions& options, RunKind k) : o(options), kind(k), device(parse_device(options.device)) {}
};

void load_data(Run& r) {
  const auto opts = dataset_options(r.o);
  r.train = data::load_dataset(r.o.training_data_path, *r.tokenizer, opts);
  if (!r.o.eval_data_path.empty()) {
    r.eval = data::load_dataset(r.o.eval_data_path, *r.tokenizer, opts);
    r.has_eval = true;
  }
}

std::vector<bool> usable_samples(const Run& r, const std::vector<int>& teacher_of_domain) {
  std::vector<bool> usable(r.train.samples.size(), true);
  std::vector<int64_t> per_domain(r.train.domain_names.size(), 0);
  for (size_t i = 0; i < r.train.samples.size(); ++i) {
    const int64_t d = r.train.samples[i].domain;
    ++per_domain[d];
    if (teacher_of_domain[d] >= 0) continue;
    if (r.o.on_missing_domain == "error")
      fail(r.train.path.string(), ": samples of domain '", r.train.domain_names[d],
           "' have no teacher (teachers: ", r.teachers->describe(),
           "); add one under 'teachers', or set on_missing_domain: skip");
    usable[i] = false;
  }
  if (r.kind == RunKind::align) {
    for (const auto& [domain, spec] : r.o.teachers) {
      bool found = false;
      for (size_t d = 0; d < r.train.domain_names.size(); ++d) found = found || (r.train.domain_names[d] == domain && per_domain[d] > 0);
      if (!found)
        fail(r.train.path.string(), ": teacher domain '", domain, "' has no training sample (domains present: ",
             [&] {
               std::string s;
               for (size_t d = 0; d < per_domain.size(); ++d)
                 if (per_domain[d] > 0) s += (s.empty() ? "" : ", ") + r.train.domain_names[d];
               return s;
             }(),
             ")");
    }
  }
  return usable;
}

void build_setup(Run& r, const std::vector<int>& teacher_of_domain) {
  auto& s = r.setup;
  s.student = r.student;
  s.teachers = r.teachers.get();
  s.teacher_of_domain = teacher_of_domain;
  s.objective = objective_options(r.o, r.tokenizer->vocab_size());
  s.layer_pairs = build_layer_pairs(r.o.layer_map, r.student->config(), *r.teachers);
  s.device = r.device;
  s.compute_dtype = parse_dtype(r.o.dtype);
  s.packing = r.o.packing;
  s.fused_head = r.o.fused_lm_head;
  s.run_teachers = r.o.lambda_param > 0;
  if (r.o.hidden_weight > 0) {
    const int64_t teacher_dim = r.teachers->at(0).model->config().hidden_size;
    for (size_t i = 1; i < r.teachers->size(); ++i)
      if (r.teachers->at(i).model->config().hidden_size != teacher_dim)
        fail("hidden_weight > 0 needs teachers of one hidden size; they differ");
    distill::HiddenLossOptions h;
    h.kind = distill::parse_hidden_loss(r.o.hidden_loss);
    h.student_dim = r.student->config().hidden_size;
    h.teacher_dim = teacher_dim;
    h.pairs = static_cast<int64_t>(s.layer_pairs.front().size());
    s.hidden = distill::HiddenLoss(h);
    s.hidden->to(r.device);
  }
  const double config_coef = r.student->config().router_aux_loss_coef;
  s.router_aux_coef = r.student->config().is_moe() ? (r.o.router_aux_loss_coef >= 0 ? r.o.router_aux_loss_coef : config_coef) : 0.0;
  s.router_z_coef = r.student->config().is_moe() ? r.o.router_z_loss_coef : 0.0;
  r.trainable = trainable_parameters(r.student);
  if (s.hidden && s.hidden->projects())
    for (const auto& item : s.hidden->named_parameters()) r.trainable.emplace_back("kd_hidden." + item.key(), item.value());
}

OnPolicyOptions on_policy_options(const DistillOptions& o, const tok::Tokenizer& tokenizer, const DataStreamOptions& stream) {
  OnPolicyOptions p;
  p.fraction = o.on_policy_fraction;
  p.temperature = o.generation_temperature;
  p.top_p = o.generation_top_p;
  p.max_new_tokens = o.max_new_tokens;
  if (p.fraction > 0) {
    const auto chat = data::chat_template_for(tokenizer, o.chat_template);
    p.stop_ids = gen::reply_stop_ids(tokenizer, chat ? &*chat : nullptr);
  }
  p.seq_length = o.seq_length;
  p.packing = o.packing;
  p.pad_id = stream.pad_id;
  p.seed = static_cast<uint64_t>(o.random_seed);
  return p;
}

// Sums of one logging window, token-weighted like the loss itself.
struct Window {
  double loss = 0, ce = 0, kd = 0, attn = 0, hidden = 0, router = 0;
  int64_t ce_tokens = 0, kd_tokens = 0, steps = 0, tokens = 0;
  std::map<int, std::pair<double, int64_t>> per_teacher;  // kd sum, tokens
  double seconds = 0;
  Scalars router_stats;  // MoE load figures of the window's last micro-batch
  // On-policy distillation: micro-batch counts, the divergence split by policy, generation figures.
  int64_t micro = 0, on_micro = 0, rollouts = 0, stopped = 0, generated = 0;
  double kd_on = 0, kd_off = 0, generation_seconds = 0;
  int64_t kd_on_tokens = 0, kd_off_tokens = 0;
};

// The window's sums for a checkpoint (the MoE figures of its last micro-batch are not kept: the next
// micro-batch replaces them).
nlohmann::json window_to_json(const Window& w) {
  nlohmann::json per_teacher = nlohmann::json::array();
  for (const auto& [teacher, sum] : w.per_teacher) per_teacher.push_back({teacher, sum.first, sum.second});
  return {{"loss", w.loss}, {"ce", w.ce}, {"kd", w.kd}, {"attn", w.attn}, {"hidden", w.hidden},
          {"router", w.router}, {"ce_tokens", w.ce_tokens}, {"kd_tokens", w.kd_tokens}, {"steps", w.steps},
          {"tokens", w.tokens}, {"seconds", w.seconds}, {"per_teacher", per_teacher},
          {"on_policy", {w.micro, w.on_micro, w.rollouts, w.stopped, w.generated, w.kd_on, w.kd_off,
                         w.generation_seconds, w.kd_on_tokens, w.kd_off_tokens}}};
}

Window window_from_json(const nlohmann::json& j) {
  Window w;
  if (!j.is_object() || j.empty()) return w;
  w.loss = j.at("loss"), w.ce = j.at("ce"), w.kd = j.at("kd"), w.attn = j.at("attn"), w.hidden = j.at("hidden");
  w.router = j.at("router"), w.ce_tokens = j.at("ce_tokens"), w.kd_tokens = j.at("kd_tokens");
  w.steps = j.at("steps"), w.tokens = j.at("tokens"), w.seconds = j.at("seconds");
  for (const auto& e : j.at("per_teacher")) w.per_teacher[e.at(0).get<int>()] = {e.at(1).get<double>(), e.at(2).get<int64_t>()};
  if (const auto it = j.find("on_policy"); it != j.end()) {
    const auto& a = *it;
    w.micro = a.at(0), w.on_micro = a.at(1), w.rollouts = a.at(2), w.stopped = a.at(3), w.generated = a.at(4);
    w.kd_on = a.at(5), w.kd_off = a.at(6), w.generation_seconds = a.at(7), w.kd_on_tokens = a.at(8);
    w.kd_off_tokens = a.at(9);
  }
  return w;
}

// The job's window: every rank's sums added; seconds are the slowest rank's, generation seconds the
// ranks' mean (they generate side by side).
Window job_window(const Run& r, const Window& w) {
  if (!r.group.distributed()) return w;
  std::vector<double> v = {w.loss, w.ce, w.kd, w.attn, w.hidden, w.router,
                           static_cast<double>(w.ce_tokens), static_cast<double>(w.kd_tokens),
                           static_cast<double>(w.tokens), static_cast<double>(w.micro), static_cast<double>(w.on_micro),
                           static_cast<double>(w.rollouts), static_cast<double>(w.stopped),
                           static_cast<double>(w.generated), w.kd_on, w.kd_off, w.generation_seconds,
                           static_cast<double>(w.kd_on_tokens), static_cast<double>(w.kd_off_tokens)};
  const size_t fixed = v.size();
  for (int t = 0; t < static_cast<int>(r.teachers->size()); ++t) {
    const auto it = w.per_teacher.find(t);
    v.push_back(it != w.per_teacher.end() ? 1.0 : 0.0);
    v.push_back(it != w.per_teacher.end() ? it->second.first : 0.0);
    v.push_back(it != w.per_teacher.end() ? static_cast<double>(it->second.second) : 0.0);
  }
  v = r.group.sum(std::move(v), "metrics of step " + std::to_string(w.steps));
  Window j;
  auto count = [&](size_t i) { return static_cast<int64_t>(v[i]); };
  j.loss = v[0], j.ce = v[1], j.kd = v[2], j.attn = v[3], j.hidden = v[4], j.router = v[5];
  j.ce_tokens = count(6), j.kd_tokens = count(7), j.tokens = count(8), j.micro = count(9), j.on_micro = count(10);
  j.rollouts = count(11), j.stopped = count(12), j.generated = count(13), j.kd_on = v[14], j.kd_off = v[15];
  j.generation_seconds = v[16] / r.group.size(), j.kd_on_tokens = count(17), j.kd_off_tokens = count(18);
  for (int t = 0; t < static_cast<int>(r.teachers->size()); ++t)
    if (v[fixed + 3 * t] > 0) j.per_teacher[t] = {v[fixed + 3 * t + 1], count(fixed + 3 * t + 2)};
  j.steps = w.steps;
  j.seconds = r.group.max({w.seconds}, "step time")[0];
  j.router_stats = w.router_stats;
  return j;
}

// Per MoE layer: the least-loaded expert's share of assignments (0 = collapsed) and the router entropy.
Scalars router_figures(const StepResult& res, int64_t top_k) {
  Scalars out;
  if (res.router_logits.empty()) return out;
  const auto stats = distill::router_stats(res.router_logits, top_k, res.router_token_mask);
  double min_load = 1.0;
  for (size_t l = 0; l < stats.min_load.size(); ++l) {
    out.emplace_back("moe/layer_" + std::to_string(l) + "/min_load", stats.min_load[l]);
    out.emplace_back("moe/layer_" + std::to_string(l) + "/entropy", stats.entropy[l]);
    min_load = std::min(min_load, stats.min_load[l]);
  }
  out.emplace_back("moe/min_load", min_load);
  out.emplace_back("moe/dropped_fraction", stats.dropped_fraction);
  return out;
}

struct StepBatches {
  std::vector<MicroBatch> micro;
  std::vector<int64_t> micro_ce, micro_kd;  // per micro-batch: CE tokens, KD tokens (or sequences)
  std::vector<bool> on_policy;              // per micro-batch: the student's own answers (no CE)
  std::vector<bool> empty;                  // per micro-batch: this rank's slice has no rows
  std::vector<std::pair<int64_t, std::vector<Rollout>>> rollouts;  // (micro-batch, its generations)
  int64_t ce_tokens = 0, kd_tokens = 0;  // the job's, over all ranks: the denominators of the token means
  int64_t tokens = 0, job_tokens = 0;     // this rank's / the job's input tokens
  int64_t generated = 0;
  double generation_seconds = 0;
};

// The stream's next micro-batch, answered by the student when the draw makes it on-policy.
MicroBatch next_micro_batch(DataStream& stream, Run& r, int64_t step, int64_t micro, StepBatches& s) {
  MicroBatch mb = stream.next();
  const bool on = !mb.row_samples.empty() && is_on_policy(r.on_policy, step, micro);
  s.on_policy.push_back(on);
  if (!on) return mb;
  OnPolicyBatch generated = on_policy_batch(r.student, r.train, mb, r.on_policy, step, micro);
  s.generated += generated.generated_tokens;
  s.generation_seconds += generated.seconds;
  s.rollouts.emplace_back(micro, std::move(generated.rollouts));
  return std::move(generated.micro);
}

StepBatches next_step_batches(DataStream& stream, Run& r, int64_t step) {
  StepBatches s;
  const auto alignment = r.setup.objective.alignment;
  const bool by_sequence = r.setup.objective.divergence.normalization == distill::Normalization::SequenceMean;
  for (int64_t i = 0; i < r.o.gradient_accumulation_steps; ++i) {
    MicroBatch mb = next_micro_batch(stream, r, step, i, s);
    s.empty.push_back(mb.row_samples.empty());
    if (s.empty.back()) {
      s.micro_ce.push_back(0);
      s.micro_kd.push_back(0);
      s.micro.push_back(std::move(mb));
      continue;
    }
    auto mask = distill::supervised_mask(mb.batch.labels, mb.batch.token_mask, alignment);  // (B, T)
    s.micro_ce.push_back(s.on_policy.back() ? 0 : mb.batch.labels.ne(-100).sum().item<int64_t>());
    s.micro_kd.push_back(by_sequence ? mask.any(1).sum().item<int64_t>() : mask.sum().item<int64_t>());
    s.ce_tokens += s.micro_ce.back();
    s.kd_tokens += s.micro_kd.back();
    s.tokens += mb.batch.segment_ids.ne(0).sum().item<int64_t>();
    s.micro.push_back(std::move(mb));
  }
  const auto job = r.group.sum({static_cast<double>(s.ce_tokens), static_cast<double>(s.kd_tokens),
                                static_cast<double>(s.tokens)},
                               "step " + std::to_string(step + 1) + " token counts");
  s.ce_tokens = static_cast<int64_t>(job[0]);
  s.kd_tokens = static_cast<int64_t>(job[1]);
  s.job_tokens = static_cast<int64_t>(job[2]);
  return s;
}

double to_double(const torch::Tensor& t) { return t.defined() ? t.detach().to(torch::kCPU, torch::kFloat64).item<double>() : 0.0; }

// Forward + backward of one optimizer step's micro-batches; each contributes its share of the
// step's global token means, so the gradient equals one big batch's.
// before_last_backward: data parallel's cue that the gradients of the coming backward are final
// (dist/grad-sync reduces them during it; the earlier micro-batches only accumulate).
void accumulate(Run& r, const StepBatches& batches, int64_t step, Window& w,
                const std::function<void()>& before_last_backward) {
  auto& objective = r.setup.objective;
  // The router loss is a mean per micro-batch (its balance term is not a token sum): ranks average it.
  const double router_share = 1.0 / static_cast<double>(batches.micro.size() * r.group.size());
  for (size_t i = 0; i < batches.micro.size(); ++i) {
    if (i + 1 == batches.micro.size()) before_last_backward();
    if (batches.empty[i]) {
      run_sharded_teachers_only(r.setup);
      continue;
    }
    const auto& mb = batches.micro[i];
    // This micro-batch's share of the step's token means, known before its forward: the fused head
    // computes the gradient of the weighted total in forward.
    // On-policy micro-batches have no CE (micro_ce = 0): the student's own tokens are no targets.
    objective.ce_share = batches.ce_tokens > 0 ? static_cast<double>(batches.micro_ce[i]) / batches.ce_tokens : 0.0;
    objective.kd_share = batches.kd_tokens > 0 ? static_cast<double>(batches.micro_kd[i]) / batches.kd_tokens : 0.0;
    StepResult res = compute_step(r.setup, mb);
    const auto& t = res.terms;
    distill::check_finite(t, step);
    torch::Tensor loss = t.total;
    if (res.router_loss.defined()) loss = loss + res.router_loss * router_share;
    if (loss.requires_grad()) r.scaler.scale(loss).backward();
    w.loss += to_double(loss);
    const bool on = batches.on_policy[i];
    if (!on) {
      w.ce += to_double(t.ce) * t.ce_tokens;
      w.ce_tokens += t.ce_tokens;
    }
    const double kd_sum = to_double(t.pred_layer_loss) * t.supervised_tokens;
    w.kd += kd_sum;
    (on ? w.kd_on : w.kd_off) += kd_sum;
    (on ? w.kd_on_tokens : w.kd_off_tokens) += t.supervised_tokens;
    ++w.micro;
    w.on_micro += on ? 1 : 0;
    w.attn += to_double(t.attention_loss) * t.supervised_tokens;
    w.hidden += to_double(t.hidden_loss) * t.supervised_tokens;
    w.router += to_double(res.router_loss) * router_share;
    w.kd_tokens += t.supervised_tokens;
    for (size_t p = 0; p < t.per_teacher.size(); ++p) {
      auto& slot = w.per_teacher[res.part_teacher[p]];
      slot.first += t.per_teacher[p].first * t.per_teacher[p].second;
      slot.second += t.per_teacher[p].second;
    }
    if (!res.router_logits.empty()) w.router_stats = router_figures(res, r.student->config().experts_per_token);
  }
  w.tokens += batches.tokens;
  w.generated += batches.generated;
  w.generation_seconds += batches.generation_seconds;
  for (const auto& [micro, rollouts] : batches.rollouts) {
    w.rollouts += static_cast<int64_t>(rollouts.size());
    for (const auto& g : rollouts) w.stopped += g.stopped ? 1 : 0;
  }
}

// GKD's figures: how much was on-policy, how the student's answers end, how fast it wrote them, and
// the divergence on its own tokens against the dataset's.
void add_on_policy_scalars(const Window& w, Scalars& s) {
  auto mean = [](double sum, int64_t n) { return n > 0 ? sum / static_cast<double>(n) : 0.0; };
  s.emplace_back("train/on_policy_share", mean(static_cast<double>(w.on_micro), w.micro));
  if (w.kd_on_tokens > 0) s.emplace_back("train/on_policy/kd_loss", mean(w.kd_on, w.kd_on_tokens));
  if (w.kd_off_tokens > 0) s.emplace_back("train/off_policy/kd_loss", mean(w.kd_off, w.kd_off_tokens));
  if (w.rollouts == 0) return;
  s.emplace_back("train/on_policy/generated_length", mean(static_cast<double>(w.generated), w.rollouts));
  s.emplace_back("train/on_policy/eos_rate", mean(static_cast<double>(w.stopped), w.rollouts));
  s.emplace_back("train/on_policy/generation_tokens_per_second", w.generation_seconds > 0 ? w.generated / w.generation_seconds : 0.0);
  s.emplace_back("train/on_policy/generation_time_share", w.seconds > 0 ? w.generation_seconds / w.seconds : 0.0);
}

// One line per on-policy answer of a logged step, for reading what the student writes.
void log_completions(MetricsLog& log, const tok::Tokenizer& tokenizer, const StepBatches& batches, int64_t step) {
  for (const auto& [micro, rollouts] : batches.rollouts)
    for (const auto& g : rollouts) {
      nlohmann::ordered_json line;
      line["step"] = step;
      line["micro_batch"] = micro;
      line["sample"] = g.sample;
      line["seed"] = g.seed;
      line["prompt"] = gen::decode_text(tokenizer, g.prompt);
      line["completion"] = gen::decode_text(tokenizer, g.completion);
      line["stopped"] = g.stopped;
      line["prompt_ids"] = g.prompt;
      line["completion_ids"] = g.completion;
      log.log_completion(line.dump());
    }
}

Scalars window_scalars(const Run& r, const Window& w, double lr, double grad_norm) {
  auto mean = [](double sum, int64_t n) { return n > 0 ? sum / static_cast<double>(n) : 0.0; };
  Scalars s = {{"train/loss", w.loss / std::max<int64_t>(w.steps, 1)},
               {"train/ce_loss", mean(w.ce, w.ce_tokens)},
               {"train/lr", lr},
               {"train/grad_norm", grad_norm},
               {"train/tokens_per_second", w.seconds > 0 ? w.tokens / w.seconds : 0.0},
               {"train/step_seconds", w.seconds / static_cast<double>(std::max<int64_t>(w.steps, 1))},
               {"train/supervised_tokens", static_cast<double>(w.kd_tokens)}};
  if (r.setup.run_teachers) s.emplace_back("train/kd_loss", mean(w.kd, w.kd_tokens));
  if (r.scaler.enabled()) {
    s.emplace_back("train/loss_scale", r.scaler.value());
    s.emplace_back("train/skipped_steps", static_cast<double>(r.scaler.skipped_steps()));  // since the run began
  }
  if (r.o.attn_weight > 0 && r.setup.run_teachers) s.emplace_back("train/attn_loss", mean(w.attn, w.kd_tokens));
  if (r.o.hidden_weight > 0) s.emplace_back("train/hidden_loss", mean(w.hidden, w.kd_tokens));
  if (r.setup.router_aux_coef > 0 || r.setup.router_z_coef > 0) s.emplace_back("train/router_loss", w.router / std::max<int64_t>(w.steps, 1));
  if (r.kind == RunKind::align)
    for (const auto& [teacher, sum] : w.per_teacher)
      s.emplace_back("train/" + r.teachers->at(teacher).name + "/kd_loss", mean(sum.first, sum.second));
  if (r.o.on_policy_fraction > 0) add_on_policy_scalars(w, s);
  s.insert(s.end(), w.router_stats.begin(), w.router_stats.end());
  return s;
}

NamedTensors checkpoint_model_tensors(const Run& r) {
  NamedTensors out;
  for (const auto& [name, t] : r.trainable) out.emplace_back(name, t.detach());
  return out;
}

void restore_trainable(Run& r, const fs::path& dir) {
  io::CheckpointReader reader(dir);
  torch::NoGradGuard no_grad;
  for (auto& [name, param] : r.trainable) {
    if (!reader.has(name))
      fail("checkpoint ", dir.string(), " has no tensor '", name,
           "': it was written by a run with other trainable parameters (LoRA / freeze settings)");
    auto saved = reader.get(name);
    if (saved.sizes() != param.sizes())
      fail("checkpoint ", dir.string(), ": tensor '", name, "' has shape ", saved.sizes(), ", the run expects ",
           param.sizes());
    param.copy_(saved);
  }
}

void check_teacher_cache(const Run& r) {
  for (size_t i = 0; i < r.teachers->size(); ++i) {
    const auto& teacher = r.teachers->at(i);
    const auto& cache = teacher.cache;
    if (!cache) continue;
    cache->check_compatible(cache_key_for(*r.tokenizer, r.train, r.o.chat_template, r.o.seq_length));
    if (teacher.temperature != cache->capture_temperature() && cache->top_k() < r.tokenizer->vocab_size())
      std::cerr << "warning: " << teacher.path << ": temperature " << teacher.temperature
                << " differs from the cache's capture temperature "
                << cache->capture_temperature() << "; with top-" << cache->top_k()
                << " the rescaled teacher is an approximation (tail mass spread evenly, docs/teacher-cache.md)\n";
  }
}

}  // namespace

Scalars evaluate_student(const DistillOptions& options, RunKind kind) {
  const DistillOptions o = join_job(options);
  if (o.threads > 0) set_threads(static_cast<int>(o.threads));
  if (o.eval_data_path.empty()) fail("kdae eval needs evaluation data (--data or eval_data_path)");
  Run r(o, kind);
  r.tokenizer = tok::Tokenizer::load(o.base_model_path);
  r.student = io::load_model(o.base_model_path, {r.device, torch::kFloat32});
  r.teachers = std::make_unique<TeacherSet>(o, kind, *r.tokenizer, r.student->config());
  r.eval = data::load_dataset(o.eval_data_path, *r.tokenizer, dataset_options(o));
  build_setup(r, r.teachers->assign(r.eval.domain_names));
  EvalOptions eval_opts{o.eval_batch_size, o.seq_length, r.tokenizer->special().padding(), kind == RunKind::align,
                        kind == RunKind::align, o.packing, &dist::world()};
  return evaluate(r.setup, r.eval, eval_opts);
}

namespace {

DataStreamOptions train_stream_options(const Run& r, RunKind kind) {
  const DistillOptions& o = r.o;
  DataStreamOptions opts;
  opts.batch_size = o.train_batch_size;
  opts.seq_length = o.seq_length;
  opts.packing = o.packing;
  opts.seed = static_cast<uint64_t>(o.random_seed);
  opts.pad_id = r.tokenizer->special().padding();
  opts.rank = r.group.rank();
  opts.world_size = r.group.size();
  if (kind == RunKind::align) {
    for (const auto& s : r.train.samples) opts.in_domain.push_back(r.train.domain_names[s.domain] != "general");
    opts.domain_fraction = o.domain_fraction;
  }
  return opts;
}

// How many optimizer steps, and when to save and evaluate.
struct Cadence {
  int64_t steps_per_epoch = 1, total_steps = 1, save_every = 0, eval_every = 0;
};

Cadence plan_cadence(const DistillOptions& o, int64_t micro_batches_per_epoch, bool has_eval) {
  Cadence c;
  const int64_t accumulation = o.gradient_accumulation_steps;
  c.steps_per_epoch = std::max<int64_t>(1, (micro_batches_per_epoch + accumulation - 1) / accumulation);
  c.total_steps = o.max_steps > 0 ? o.max_steps
                                  : std::max<int64_t>(1, static_cast<int64_t>(std::ceil(o.num_train_epochs * c.steps_per_epoch)));
  c.save_every = o.save_steps > 0                  ? o.save_steps
                 : o.save_fraction_of_epoch > 0 ? std::max<int64_t>(1, std::llround(o.save_fraction_of_epoch * c.steps_per_epoch))
                                                 : 0;
  c.eval_every = !has_eval ? 0 : o.eval_steps > 0 ? o.eval_steps : c.steps_per_epoch;
  return c;
}

struct Resumed {
  int64_t step = 0;
  nlohmann::json log_window;  // rank 0's: the job's sums, added once
};

// Restores weights, optimizer part, RNG, sampler and loss scale from the checkpoint the options name,
// after checking it belongs to this run (same settings, same global batch).
Resumed resume_run(Run& r, ShardedOptimizer& optimizer, DataStream& stream, int64_t job_batch,
                   const std::string& config_hash) {
  const DistillOptions& o = r.o;
  fs::path dir = o.resume_from_checkpoint;
  if (o.resume_from_checkpoint == "latest") {
    auto latest = find_latest_checkpoint(o.output_dir);
    if (!latest) fail("resume_from_checkpoint: latest, but ", o.output_dir, " holds no checkpoint-<step> directory");
    dir = *latest;
  }
  LoadedCheckpoint ckpt = load_checkpoint(dir, [&](const std::string& name) { return optimizer.owns_state(name); });
  if (ckpt.state.global_batch > 0 && ckpt.state.global_batch != job_batch)
    fail("checkpoint ", dir.string(), " was written with a global batch of ", ckpt.state.global_batch,
         " sequences per step (", ckpt.state.world_size, " ranks), this job's is ", job_batch, " (", r.group.size(),
         " ranks); resume with the same global batch (set global_batch_size: ", ckpt.state.global_batch, ")");
  if (ckpt.state.config_hash != config_hash)
    fail("checkpoint ", dir.string(), " was written with different training settings (config hash ",
         ckpt.state.config_hash, ", now ", config_hash, "); resume with the same config, or start a fresh run");
  restore_trainable(r, dir);
  if (!ckpt.optimizer.empty()) optimizer.load_state(ckpt.optimizer);
  restore_rng_states(ckpt.state);
  stream.seek(ckpt.state.sampler);
  r.scaler.load_json(ckpt.state.loss_scaler);
  Resumed out;
  out.step = ckpt.state.step;
  if (r.group.is_main()) {
    out.log_window = ckpt.state.log_window;
    std::cerr << "resuming from " << dir.string() << " at step " << out.step << "\n";
  }
  return out;
}

// What the job costs: collective traffic, sharded state held, memory (a collective on every rank).
void add_job_scalars(Scalars& scalars, dist::Group& group, const dist::GradientSync& grad_sync,
                     const ShardedOptimizer& optimizer, int64_t step) {
  if (group.distributed()) {
    scalars.emplace_back("dist/ranks", static_cast<double>(group.size()));
    scalars.emplace_back("dist/allreduce_bytes_per_step", static_cast<double>(grad_sync.bytes_last_step()));
    scalars.emplace_back("dist/buckets_overlapped", static_cast<double>(grad_sync.buckets_started_in_backward()) /
                                                        static_cast<double>(std::max<int64_t>(1, grad_sync.buckets())));
    // Rank 0's share of the sharded state.
    scalars.emplace_back("dist/optimizer_state_bytes", static_cast<double>(optimizer.local_state_bytes()));
    scalars.emplace_back("dist/gradient_bytes", static_cast<double>(grad_sync.gradient_bytes_held()));
    scalars.emplace_back("dist/broadcast_bytes_per_step", static_cast<double>(optimizer.broadcast_bytes_last_step()));
  }
  const auto memory = group.max({static_cast<double>(resident_bytes()), static_cast<double>(peak_resident_bytes())},
                                "step " + std::to_string(step) + " memory figures");
  scalars.emplace_back("memory/rss_gb", memory[0] / (1 << 30));       // the largest rank's
  scalars.emplace_back("memory/peak_rss_gb", memory[1] / (1 << 30));  // since training started
}

// Rank 0's opening lines: the job's layout, data, schedule and teachers.
void announce_run(const Run& r, RunKind kind, const DataStream& stream, const Cadence& c, int64_t job_batch) {
  const DistillOptions& o = r.o;
  if (r.group.distributed())
    std::cerr << "kdae: rank 0 of " << r.group.size() << " (" << r.group.env().launcher << ", " << r.group.backend_name()
              << "); global batch " << job_batch << " = " << o.train_batch_size << " per micro-batch x "
              << o.gradient_accumulation_steps << " accumulation x " << r.group.size() << " ranks\n";
  std::cerr << "kdae " << (kind == RunKind::align ? "align" : "distill") << ": " << r.train.samples.size()
            << " training samples" << (r.train.from_cache ? " (tokenized cache)" : "") << ", " << c.steps_per_epoch
            << " steps per epoch, " << c.total_steps << " steps; " << r.trainable.size() << " trainable tensors; "
            << r.teachers->describe() << "\n";
  if (kind == RunKind::align && o.domain_fraction > 0)
    std::cerr << "domain share of supervised tokens: " << stream.realised_domain_fraction() << " (asked "
              << o.domain_fraction << ")\n";
  if (r.on_policy.fraction > 0)
    std::cerr << "on-policy: " << r.on_policy.fraction << " of micro-batches answered by the student (temperature "
              << r.on_policy.temperature << ", top_p " << r.on_policy.top_p << ", up to " << r.on_policy.max_new_tokens
              << " new tokens); answers of logged steps in " << (fs::path(o.output_dir) / "completions.jsonl").string() << "\n";
}

}  // namespace

TrainSummary run_training(const DistillOptions& options, RunKind kind, const std::string& config_hash) {
  const DistillOptions o = join_job(options);
  dist::Group& group = dist::world();
  if (o.threads > 0) set_threads(static_cast<int>(o.threads));
  group.check_same("the run config (config hash)", config_hash);
  const bool resuming = !o.resume_from_checkpoint.empty();
  group.main_first("preparing output_dir", [&] { prepare_output_dir(o, resuming); }, false);
  torch::manual_seed(static_cast<uint64_t>(o.random_seed));  // one seed for all ranks: LoRA's init must agree

  Run r(o, kind);
  r.scaler = LossScaler({.enabled = o.dtype == "float16", .init_scale = o.loss_scale_init,
                         .growth_interval = o.loss_scale_growth_interval});
  r.tokenizer = tok::Tokenizer::load(o.base_model_path);
  r.student = load_student(o, r.device);
  r.teachers = std::make_unique<TeacherSet>(o, kind, *r.tokenizer, r.student->config());
  // Rank 0 tokenizes first and fills the dataset cache; the others then read it.
  group.main_first("loading the data", [&] { load_data(r); });
  group.check_same("the number of training samples", std::to_string(r.train.samples.size()));
  const auto teacher_of_domain = r.teachers->assign(r.train.domain_names);
  check_teacher_cache(r);
  const auto usable = usable_samples(r, teacher_of_domain);
  build_setup(r, teacher_of_domain);

  const DataStreamOptions stream_opts = train_stream_options(r, kind);
  DataStream stream(r.train, usable, stream_opts);
  r.on_policy = on_policy_options(o, *r.tokenizer, stream_opts);

  const Cadence cadence = plan_cadence(o, stream.micro_batches_per_epoch(), r.has_eval);
  const int64_t total_steps = cadence.total_steps;
  LrSchedule schedule(parse_lr_schedule(o.lr_scheduler), o.learning_rate, total_steps,
                      resolve_warmup_steps(o.warmup_steps, o.warmup_ratio, total_steps));
  AdamWOptions adam{o.adam_beta1, o.adam_beta2, o.adam_epsilon, o.weight_decay};
  ShardedOptimizer optimizer(r.trainable, adam, group, parse_sharding(o.sharding));
  std::vector<torch::Tensor> params;
  for (const auto& [name, p] : r.trainable) params.push_back(p);
  dist::GradientSync grad_sync(params, group, static_cast<int64_t>(o.dist_bucket_mb * (1 << 20)),
                               optimizer.gradient_owners());
  const int64_t job_batch = global_batch(o, group);

  int64_t step = 0;
  std::optional<int64_t> resume_step;
  nlohmann::json resumed_window;
  if (resuming) {
    const Resumed resumed = resume_run(r, optimizer, stream, job_batch, config_hash);
    step = resumed.step;
    resume_step = step;
    resumed_window = resumed.log_window;
  }

  EvalOptions eval_opts{o.eval_batch_size, o.seq_length, stream_opts.pad_id, kind == RunKind::align,
                        kind == RunKind::align, o.packing, &group};

  const bool main = group.is_main();
  if (main) announce_run(r, kind, stream, cadence, job_batch);

  // Rank 0 speaks for the job: progress, metrics.jsonl, TensorBoard, checkpoints, the final model.
  std::optional<MetricsLog> log;
  if (main) log.emplace(o.output_dir, true, resume_step);
  static std::ostream silent(nullptr);
  ProgressOptions bar_opts{.label = kind == RunKind::align ? "align" : "distill", .total = total_steps, .rate_unit = "tok"};
  if (!main) bar_opts.tty = false, bar_opts.out = &silent;
  Progress bar(bar_opts);
  bar.set_step(step);
  TrainSummary summary;
  nlohmann::json tail = nlohmann::json::array();
  Window window = window_from_json(resumed_window);
  reset_peak_resident();  // memory/peak_rss_gb: training's peak, not loading's
  auto save = [&] {
    // Collectives first (every rank takes part), then rank 0 writes.
    const Window job = job_window(r, window);
    const std::string what = "writing checkpoint-" + std::to_string(step);
    NamedTensors opt_state;
    std::vector<fs::path> opt_shards;
    if (optimizer.writes_shards()) {
      // Each rank writes its own part; rank 0 commits once every part is on disk.
      write_optimizer_shard(optimizer_shard_path(o.output_dir, step, group.rank(), group.size()), optimizer.local_state());
      group.barrier(what + ": optimizer parts");
      for (int rank = 0; rank < group.size(); ++rank)
        opt_shards.push_back(optimizer_shard_path(o.output_dir, step, rank, group.size()));
    } else if (main) {
      opt_state = optimizer.local_state();
    }
    if (!main) return group.main_first(what, [] {}, false);
    TrainerState state;
    state.step = step;
    state.epoch = stream.epoch_progress();
    state.sampler = stream.position();
    state.scheduler_step = step;
    state.config_hash = config_hash;
    state.metrics_tail = tail;
    state.log_window = window_to_json(job);
    state.global_batch = job_batch;
    state.world_size = group.size();
    if (r.scaler.enabled()) state.loss_scaler = r.scaler.to_json();
    capture_rng_states(state);
    NamedTensors model_tensors = checkpoint_model_tensors(r);
    CheckpointContents contents{&model_tensors, opt_shards.empty() ? &opt_state : nullptr, state, opt_shards, nullptr};
    if (o.use_peft && o.save_adapters)
      contents.write_extra = [&](const fs::path& staging) { save_adapters(r.student, o, staging / "adapters"); };
    group.main_first(what, [&] { save_checkpoint(o.output_dir, contents, static_cast<int>(o.save_total_limit)); }, false);
  };
  while (step < total_steps) {
    const auto started = std::chrono::steady_clock::now();
    StepBatches batches = next_step_batches(stream, r, step);
    accumulate(r, batches, step, window, [&] { grad_sync.prepare_for_backward("step " + std::to_string(step + 1)); });
    grad_sync.finish();
    const bool apply = r.scaler.unscale_and_update(params, optimizer.gradient_shards());
    torch::Tensor grad_norm = apply ? clip_grad_norm(params, o.max_grad_norm, optimizer.gradient_shards()) : torch::zeros({});
    const double lr = schedule.lr_at(step);
    if (apply) optimizer.step(lr);  // an fp16 overflow step is skipped; the schedule moves on, as in HF's Trainer
    optimizer.zero_grad();
    ++step;
    ++window.steps;
    window.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    bar.advance(1, batches.job_tokens);
    if (step % o.logging_steps == 0 || step == total_steps) {
      Scalars scalars = window_scalars(r, job_window(r, window), lr, grad_norm.item<double>());
      add_job_scalars(scalars, group, grad_sync, optimizer, step);
      if (main) {
        log->log(step, stream.epoch_progress(), scalars);
        log_completions(*log, *r.tokenizer, batches, step);  // rank 0's answers
      }
      nlohmann::json entry = {{"step", step}};
      for (const auto& [k, v] : scalars) entry[k] = v;
      tail.push_back(entry);
      if (tail.size() > 5) tail.erase(tail.begin());
      bar.set("loss", scalars[0].second);
      bar.set("lr", lr);
      window = Window();
    }
    if (cadence.eval_every > 0 && (step % cadence.eval_every == 0 || step == total_steps)) {
      summary.last_eval = evaluate(r.setup, r.eval, eval_opts);
      if (main) log->log(step, stream.epoch_progress(), summary.last_eval);
    }
    if ((cadence.save_every > 0 && step % cadence.save_every == 0) || step == total_steps) save();
  }
  bar.finish();
  if (log) log->close();
  summary.steps = step;
  summary.model_dir = fs::path(o.output_dir) / "model";
  group.main_first("writing the final model", [&] {
    if (o.use_peft && o.save_adapters) {
      save_adapters(r.student, o, fs::path(o.output_dir) / "adapters");
      std::cerr << "adapters (PEFT): " << (fs::path(o.output_dir) / "adapters").string() << "\n";
    }
    save_final_model(r.student, o, summary.model_dir);
    std::cerr << "final model: " << summary.model_dir.string() << "\n";
  }, false);
  return summary;
}

}  // namespace kdae::train
