// Gradient checkpointing must change memory, never results: the loss and every gradient of one KD
// step equal those without it, for every objective that reads something from inside the student's
// layers (attention maps, router logits, hidden states) and with LoRA dropout (the recompute must
// draw the forward's masks). Same operations on the same data, so fp32 agrees to rounding of the
// gradient accumulation order only: 1e-6.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/layers.h"
#include "model/transformer.h"
#include "numeric.h"
#include "train/distill-step.h"
#include "train/teacher-set.h"

namespace kdae::train {
namespace {

model::ModelConfig tiny_config(int64_t layers, int64_t hidden, int64_t experts = 0) {
  model::ModelConfig c;
  c.vocab_size = 64;
  c.hidden_size = hidden;
  c.intermediate_size = 2 * hidden;
  c.num_layers = layers;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = hidden / 4;
  c.num_experts = experts;
  c.experts_per_token = experts ? 2 : 0;
  return c;
}

MicroBatch tiny_batch() {
  const int64_t B = 3, T = 12;
  torch::manual_seed(11);
  MicroBatch mb;
  auto& b = mb.batch;
  b.input_ids = torch::randint(0, 64, {B, T}, torch::kInt64);
  b.labels = torch::full({B, T}, -100, torch::kInt64);
  b.token_mask = torch::zeros({B, T}, torch::kBool);
  using torch::indexing::Slice;
  for (int64_t r = 0; r < B; ++r) {
    const int64_t prompt = 3 + r;  // answer tokens start here
    b.token_mask.index_put_({r, Slice(prompt, T)}, true);
    b.labels.index_put_({r, Slice(prompt - 1, T - 1)}, b.input_ids.index({r, Slice(prompt, T)}));
  }
  b.position_ids = torch::arange(T).expand({B, T}).contiguous();
  b.segment_ids = torch::ones({B, T}, torch::kInt32);
  b.domain = torch::zeros({B}, torch::kInt64);
  b.weight = torch::ones({B}, torch::kFloat32);
  for (int64_t r = 0; r < B; ++r) mb.row_samples.push_back({static_cast<size_t>(r)});
  return mb;
}

struct Case {
  int64_t experts = 0;
  double attention_weight = 0, hidden_weight = 0, router_aux = 0, router_z = 0, lora_dropout = -1;
  int64_t every = 1;
};

struct StepGrads {
  double loss = 0;
  std::vector<std::pair<std::string, torch::Tensor>> grads;
};

class CheckpointingTest : public ::testing::Test {
 protected:
  void build(const Case& c) {
    torch::manual_seed(3);
    student_ = model::Transformer(tiny_config(3, 32, c.experts));
    if (c.lora_dropout >= 0)
      for (const auto& item : student_->named_modules())
        if (auto* linear = dynamic_cast<model::LinearImpl*>(item.value().get()); linear && item.key().find("proj") != std::string::npos) {
          linear->enable_lora(4, 8, c.lora_dropout);
          torch::NoGradGuard no_grad;
          for (auto& p : linear->named_parameters(false))
            if (p.key() == "lora_B") p.value().normal_(0, 0.1);  // B = 0 would give A no gradient
        }
    student_->checkpoint_every = c.every;
    student_->train();
    auto teacher = model::Transformer(tiny_config(4, 48));
    teacher->eval();
    Teacher t;
    t.name = "*";
    t.model = teacher;
    teachers_ = std::make_unique<TeacherSet>(std::vector<Teacher>{t});
    setup_ = StepSetup();
    setup_.student = student_;
    setup_.teachers = teachers_.get();
    setup_.teacher_of_domain = {0};
    setup_.objective.lambda = 0.7;
    setup_.objective.attention_weight = c.attention_weight;
    setup_.objective.hidden_weight = c.hidden_weight;
    setup_.layer_pairs = build_layer_pairs({}, student_->config(), *teachers_);
    if (c.hidden_weight > 0) {
      distill::HiddenLossOptions h;
      h.student_dim = 32;
      h.teacher_dim = 48;
      h.pairs = 3;
      setup_.hidden = distill::HiddenLoss(h);
    }
    setup_.router_aux_coef = c.router_aux;
    setup_.router_z_coef = c.router_z;
  }

  StepGrads step(bool checkpointing) {
    student_->gradient_checkpointing = checkpointing;
    student_->zero_grad();
    if (setup_.hidden) setup_.hidden->zero_grad();
    torch::manual_seed(5);  // the same dropout masks for both runs
    StepResult r = compute_step(setup_, tiny_batch());
    torch::Tensor loss = r.terms.total;
    if (r.router_loss.defined()) loss = loss + r.router_loss;
    loss.backward();
    StepGrads out;
    out.loss = loss.item<double>();
    auto collect = [&](torch::nn::Module& m, const std::string& prefix) {
      for (const auto& p : m.named_parameters())
        if (p.value().requires_grad()) {
          EXPECT_TRUE(p.value().grad().defined()) << prefix << p.key() << " got no gradient";
          if (p.value().grad().defined()) out.grads.emplace_back(prefix + p.key(), p.value().grad().clone());
        }
    };
    collect(*student_, "");
    if (setup_.hidden) collect(*setup_.hidden, "hidden.");
    return out;
  }

  void expect_same_step(const Case& c) {
    build(c);
    StepGrads plain = step(false);
    StepGrads recomputed = step(true);
    EXPECT_TRUE(test::near(recomputed.loss, plain.loss, 1e-6, 1e-6));
    ASSERT_EQ(plain.grads.size(), recomputed.grads.size());
    for (size_t i = 0; i < plain.grads.size(); ++i)
      EXPECT_TRUE(test::all_close(recomputed.grads[i].second, plain.grads[i].second, 1e-6, 1e-6))
          << plain.grads[i].first;
  }

  model::Transformer student_{nullptr};
  std::unique_ptr<TeacherSet> teachers_;
  StepSetup setup_;
};

TEST_F(CheckpointingTest, PlainKdMatches) { expect_same_step({}); }

TEST_F(CheckpointingTest, AttentionKdMatches) { expect_same_step({.attention_weight = 1.0}); }

TEST_F(CheckpointingTest, EveryOtherLayerWithAttentionKdMatches) {
  expect_same_step({.attention_weight = 1.0, .every = 2});
}

TEST_F(CheckpointingTest, HiddenStateKdMatches) { expect_same_step({.hidden_weight = 0.5}); }

TEST_F(CheckpointingTest, MoeStudentWithRouterLossesMatches) {
  expect_same_step({.experts = 4, .attention_weight = 1.0, .router_aux = 0.02, .router_z = 0.001});
}

TEST_F(CheckpointingTest, LoraWithDropoutMatches) { expect_same_step({.attention_weight = 1.0, .lora_dropout = 0.15}); }

// An explicit layer_map may name a teacher layer twice, or after a deeper one: the lock-step teacher has
// passed it by then and must still give its map. The attention term equals the one computed from every
// layer's maps at once (both models' forwards with attentions kept), with and without checkpointing.
TEST_F(CheckpointingTest, RepeatedAndBackwardLayerMapsMatchTheAllMapsFormula) {
  build({.attention_weight = 1.0});
  setup_.layer_pairs = {{{0, 2}, {1, 2}, {2, 0}}};
  const MicroBatch mb = tiny_batch();
  torch::Tensor want;
  {
    torch::NoGradGuard no_grad;
    model::ForwardOptions all;
    all.attentions = true;
    auto s = student_->forward(mb.batch.input_ids, all);
    auto t = teachers_->at(0).model->forward(mb.batch.input_ids, all);
    auto query = distill::supervised_mask(mb.batch.labels, mb.batch.token_mask, setup_.objective.alignment);
    distill::AttentionKL kl;
    for (const auto& [sl, tl] : setup_.layer_pairs[0]) kl.add_layer(s.attentions[sl], t.attentions[tl], query);
    want = kl.total().mean();
  }
  for (bool checkpointing : {false, true}) {
    student_->gradient_checkpointing = checkpointing;
    StepResult r = compute_step(setup_, mb);
    EXPECT_TRUE(test::near(r.terms.attention_loss.item<double>(), want.item<double>(), 1e-6, 1e-6)) << checkpointing;
    if (checkpointing) r.terms.total.backward();  // the backward asks for layer 2's and layer 0's maps again
  }
}

// The recompute runs in backward, outside the caller's autocast region: it must restore the
// forward's autocast state, so a bf16 forward is recomputed in bf16.
TEST_F(CheckpointingTest, RecomputeUsesTheForwardsAutocastDtype) {
  build({});
  student_->gradient_checkpointing = true;
  struct Call {
    bool recompute;  // grad mode is on only in the backward recompute
    torch::ScalarType matmul_dtype;
  };
  std::vector<Call> calls;
  model::ForwardOptions opts;
  opts.attention_term = [&](int64_t, const torch::Tensor& probs) {
    calls.push_back({torch::GradMode::is_enabled(), torch::matmul(probs, probs.transpose(-1, -2)).scalar_type()});
    return probs.to(torch::kFloat32).square().sum();
  };
  auto ids = tiny_batch().batch.input_ids;
  torch::Tensor loss;
  {
    ComputeDtypeGuard autocast(torch::kCPU, torch::kBFloat16);
    auto out = student_->forward(ids, opts);
    loss = out.logits.to(torch::kFloat32).mean();
    for (const auto& term : out.attention_terms) loss = loss + term;
  }
  loss.backward();
  ASSERT_EQ(calls.size(), 6u);  // 3 layers in forward, 3 recomputed
  int recomputes = 0;
  for (const auto& call : calls) {
    recomputes += call.recompute;
    EXPECT_EQ(call.matmul_dtype, torch::kBFloat16) << (call.recompute ? "recompute" : "forward");
  }
  EXPECT_EQ(recomputes, 3);
}

}  // namespace
}  // namespace kdae::train
