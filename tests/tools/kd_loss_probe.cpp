// Computes every KD loss term and the student gradients for tensors in a .safetensors file, for the
// Python oracle test (tests/python/test_kd_losses.py).
//   kd_loss_probe IN.safetensors OUT.safetensors 'OPTIONS-JSON'
// IN: student_logits (B,T,Vs), teacher_logits (B,T,Vt) [or is_domain (B) + expert_logits +
// reference_logits for DAE routing], labels (B,T) int64, token_mask (B,T) bool, optional
// sample_weights (B), student_attn_<l> (B,Hs,T,T) and teacher_attn_<l> (B,Ht,T,T) for l = 0, 1, ...
// OUT: total, ce, pred, attn (), counts (3) int64 = [supervised, ce tokens, attention rows],
// grad_student_logits (B,T,Vs), grad_student_attn_<l>.
// Errors go to stderr with exit code 1.
#include <torch/types.h>

#include <ATen/Parallel.h>

#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "common/error.h"
#include "distill/attention-kl.h"
#include "distill/divergence.h"
#include "distill/kd-objective.h"
#include "io/safetensors.h"

using namespace kdae;
using namespace kdae::distill;

int main(int argc, char** argv) try {
  if (argc != 4) {
    std::cerr << "usage: kd_loss_probe IN.safetensors OUT.safetensors OPTIONS-JSON\n";
    return 2;
  }
  at::set_num_threads(1);
  io::SafetensorsFile in(argv[1]);
  const auto cfg = nlohmann::json::parse(argv[3]);
  KdObjectiveOptions opts;
  opts.lambda = cfg.value("lambda", 1.0);
  opts.attention_weight = cfg.value("attention_weight", 1.0);
  opts.alignment = parse_label_alignment(cfg.value("alignment", std::string("shifted")));
  auto& d = opts.divergence;
  d.kind = parse_divergence(cfg.value("divergence", std::string("forward_kl")));
  d.temperature = cfg.value("tau", 1.0);
  d.beta = cfg.value("beta", 0.5);
  d.alpha = cfg.value("alpha", 0.1);
  d.normalization = parse_normalization(cfg.value("normalization", std::string("token")));
  d.chunked = cfg.value("chunked", true);
  d.chunk_rows = cfg.value("chunk_rows", int64_t{0});
  d.student_vocab = cfg.value("student_vocab", int64_t{0});
  d.teacher_vocab = cfg.value("teacher_vocab", int64_t{0});
  AttentionKLOptions attn_opts;
  attn_opts.log_floor = cfg.value("log_floor", attn_opts.log_floor);

  // Copies: the mapped tensors are read-only and autograd needs leaves of our own.
  auto student = in.get("student_logits").clone().requires_grad_(true);  // (B, T, Vs)
  KdBatch batch;
  batch.student_logits = student;
  if (in.has("is_domain")) {
    auto expert = in.has("expert_logits") ? in.get("expert_logits").clone() : torch::Tensor();
    auto reference = in.has("reference_logits") ? in.get("reference_logits").clone() : torch::Tensor();
    batch.teacher_logits = route_teacher_logits(in.get("is_domain").clone(), expert, reference);  // (B, T, V)
  } else {
    batch.teacher_logits = in.get("teacher_logits").clone();  // (B, T, Vt)
  }
  batch.labels = in.get("labels").clone();  // (B, T)
  if (in.has("token_mask")) batch.token_mask = in.get("token_mask").clone();
  if (in.has("sample_weights")) batch.sample_weights = in.get("sample_weights").clone();

  io::NamedTensors out;
  std::vector<torch::Tensor> student_attn;
  auto attn_mask = supervised_mask(batch.labels, batch.token_mask, opts.alignment);  // (B, T)
  AttentionKL attention(attn_opts);
  for (int l = 0; in.has("student_attn_" + std::to_string(l)); ++l) {
    student_attn.push_back(in.get("student_attn_" + std::to_string(l)).clone().requires_grad_(true));
    attention.add_layer(student_attn.back(), in.get("teacher_attn_" + std::to_string(l)).clone(), attn_mask);
  }
  batch.attention = attention.total();

  auto terms = kd_objective(batch, opts);
  check_finite(terms, 0);
  terms.total.backward();
  out.emplace_back("total", terms.total.detach());
  out.emplace_back("ce", terms.ce.detach());
  out.emplace_back("pred", terms.pred_layer_loss.detach());
  out.emplace_back("attn", terms.attention_loss.detach());
  out.emplace_back("counts", torch::tensor({terms.supervised_tokens, terms.ce_tokens, attention.total().count}));
  out.emplace_back("grad_student_logits",
                   student.grad().defined() ? student.grad() : torch::zeros_like(student));
  for (size_t l = 0; l < student_attn.size(); ++l) {
    auto g = student_attn[l].grad();
    out.emplace_back("grad_student_attn_" + std::to_string(l), g.defined() ? g : torch::zeros_like(student_attn[l]));
  }
  io::write_safetensors(argv[2], out);
  return 0;
} catch (const std::exception& e) {
  std::cerr << "kd_loss_probe: " << e.what() << "\n";
  return 1;
}
