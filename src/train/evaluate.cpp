#include "train/evaluate.h"

#include <cmath>

#include "common/error.h"

namespace kdae::train {
namespace {

struct Totals {
  double loss = 0, ce = 0, kl = 0, attn = 0;
  int64_t ce_tokens = 0, kd_tokens = 0, batches = 0;

  void add(const StepResult& r) {
    const auto& t = r.terms;
    const double n_ce = static_cast<double>(t.ce_tokens), n_kd = static_cast<double>(t.supervised_tokens);
    ce += t.ce.item<double>() * n_ce;
    kl += t.pred_layer_loss.item<double>() * n_kd;
    attn += t.attention_loss.item<double>() * n_kd;
    loss += t.total.item<double>() * n_kd;
    ce_tokens += t.ce_tokens;
    kd_tokens += t.supervised_tokens;
  }
  void reduce(dist::Group* group) {
    if (!group || !group->distributed()) return;
    auto v = group->sum({loss, ce, kl, attn, static_cast<double>(ce_tokens), static_cast<double>(kd_tokens)},
                        "evaluation sums");
    loss = v[0], ce = v[1], kl = v[2], attn = v[3];
    ce_tokens = static_cast<int64_t>(v[4]), kd_tokens = static_cast<int64_t>(v[5]);
  }
  double mean(double sum, int64_t n) const { return n > 0 ? sum / static_cast<double>(n) : 0.0; }
};

Totals run_domain(StepSetup& setup, const data::Dataset& ds, const std::vector<bool>& usable, const EvalOptions& o) {
  DataStreamOptions stream_opts;
  stream_opts.batch_size = o.batch_size;
  stream_opts.seq_length = o.seq_length;
  stream_opts.shuffle = false;
  stream_opts.pad_id = o.pad_id;
  stream_opts.packing = o.packing;
  if (o.group) stream_opts.rank = o.group->rank(), stream_opts.world_size = o.group->size();
  DataStream stream(ds, usable, stream_opts);
  setup.packing = o.packing;
  Totals totals;
  for (int64_t i = 0; i < stream.micro_batches_per_epoch(); ++i) {
    MicroBatch mb = stream.next();
    if (!mb.row_samples.empty())
      totals.add(compute_step(setup, mb));
    else
      run_sharded_teachers_only(setup);
  }
  totals.reduce(o.group);
  return totals;
}

}  // namespace

Scalars evaluate(StepSetup setup, const data::Dataset& ds, const EvalOptions& o) {
  torch::NoGradGuard no_grad;
  const bool was_training = setup.student->is_training();
  setup.student->eval();
  setup.temperature_override = 1.0;
  setup.run_teachers = true;
  setup.objective.divergence.kind = distill::Divergence::ForwardKL;
  setup.objective.divergence.temperature = 1.0;
  setup.objective.ce_share = setup.objective.kd_share = 1.0;

  Scalars out;
  Totals all;
  const bool attn = setup.objective.lambda > 0 && setup.objective.attention_weight > 0;
  for (size_t d = 0; d < ds.domain_names.size(); ++d) {
    std::vector<bool> usable(ds.samples.size());
    bool any = false;
    for (size_t i = 0; i < ds.samples.size(); ++i) {
      usable[i] = ds.samples[i].domain == static_cast<int64_t>(d) && setup.teacher_of_domain.at(d) >= 0;
      any = any || usable[i];
    }
    if (!any) continue;
    Totals t = run_domain(setup, ds, usable, o);
    all.loss += t.loss, all.ce += t.ce, all.kl += t.kl, all.attn += t.attn;
    all.ce_tokens += t.ce_tokens, all.kd_tokens += t.kd_tokens;
    if (!o.per_domain) continue;
    const std::string prefix = "eval/" + ds.domain_names[d] + "/";
    out.emplace_back(prefix + "ce_loss", t.mean(t.ce, t.ce_tokens));
    out.emplace_back(prefix + "perplexity", std::exp(t.mean(t.ce, t.ce_tokens)));
    out.emplace_back(prefix + "kl", t.mean(t.kl, t.kd_tokens));
    const int reference = setup.teachers->reference_index();
    if (o.reference_kl && reference >= 0 && ds.domain_names[d] != "general") {
      StepSetup to_reference = setup;
      for (auto& teacher : to_reference.teacher_of_domain) teacher = reference;
      Totals r = run_domain(to_reference, ds, usable, o);
      out.emplace_back(prefix + "kl_reference", r.mean(r.kl, r.kd_tokens));
    }
  }
  if (all.ce_tokens == 0) fail(ds.path.string(), ": no evaluation sample has supervised tokens and a teacher");
  const double ce = all.mean(all.ce, all.ce_tokens);
  Scalars overall = {{"eval/loss", all.mean(all.loss, all.kd_tokens)},
                     {"eval/ce_loss", ce},
                     {"eval/perplexity", std::exp(ce)},
                     {"eval/kl", all.mean(all.kl, all.kd_tokens)},
                     {"eval/tokens", static_cast<double>(all.kd_tokens)}};
  if (attn) overall.emplace_back("eval/attn_kl", all.mean(all.attn, all.kd_tokens));
  overall.insert(overall.end(), out.begin(), out.end());
  if (was_training) setup.student->train();
  return overall;
}

}  // namespace kdae::train
