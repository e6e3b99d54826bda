// Dimension legend: B = batch, T = time, Ds/Dt = student/teacher width, N = supervised tokens.
#include "distill/hidden-loss.h"

#include <cmath>

#include "common/error.h"
#include "distill/tensor-text.h"

namespace kdae::distill {

HiddenLossKind parse_hidden_loss(const std::string& name) {
  if (name == "mse") return HiddenLossKind::MSE;
  if (name == "cosine") return HiddenLossKind::Cosine;
  fail("unknown hidden-state loss '", name, "' (expected mse or cosine)");
}

HiddenLossImpl::HiddenLossImpl(HiddenLossOptions opts) : opts_(opts) {
  if (opts.student_dim <= 0 || opts.teacher_dim <= 0 || opts.pairs <= 0)
    fail("hidden-state loss needs positive widths and pair count, got student ", opts.student_dim,
         ", teacher ", opts.teacher_dim, ", pairs ", opts.pairs);
  if (opts.student_dim == opts.teacher_dim) return;
  // nn.Linear's default bound (1/sqrt(fan_in)) so a fresh projection starts at the student's scale.
  const double bound = 1.0 / std::sqrt(static_cast<double>(opts.student_dim));
  for (int64_t p = 0; p < opts.pairs; ++p) {
    auto w = torch::empty({opts.teacher_dim, opts.student_dim}).uniform_(-bound, bound);  // (Dt, Ds)
    projections_.push_back(register_parameter("projection_" + std::to_string(p), w));
  }
}

LossSum HiddenLossImpl::layer(int64_t pair, const torch::Tensor& student_hidden,
                              const torch::Tensor& teacher_hidden, const torch::Tensor& mask) {
  if (pair < 0 || pair >= opts_.pairs) fail("hidden-state loss: layer pair ", pair, " out of range [0, ", opts_.pairs, ")");
  if (student_hidden.dim() != 3 || student_hidden.size(2) != opts_.student_dim)
    fail("student hidden states must be (B, T, ", opts_.student_dim, "), got ", shape_of(student_hidden));
  if (teacher_hidden.dim() != 3 || teacher_hidden.size(2) != opts_.teacher_dim ||
      teacher_hidden.size(0) != student_hidden.size(0) || teacher_hidden.size(1) != student_hidden.size(1))
    fail("teacher hidden states must be (B, T, ", opts_.teacher_dim, ") matching the student's ",
         shape_of(student_hidden), ", got ", shape_of(teacher_hidden));
  auto rows = mask.to(student_hidden.device()).reshape({-1}).nonzero().squeeze(1);  // (N)
  auto h_s = student_hidden.reshape({-1, opts_.student_dim}).index_select(0, rows).to(torch::kFloat32);  // (N, Ds)
  auto h_t = teacher_hidden.detach().reshape({-1, opts_.teacher_dim}).index_select(0, rows).to(torch::kFloat32);  // (N, Dt)
  if (projects()) h_s = at::matmul(h_s, projections_[pair].to(h_s.device()).t());  // (N, Dt)
  torch::Tensor per_token;  // (N)
  if (opts_.kind == HiddenLossKind::MSE) {
    per_token = (h_s - h_t).pow(2).mean(1);
  } else {
    per_token = 1.0 - at::cosine_similarity(h_s, h_t, 1, 1e-8);
  }
  return {per_token.sum(), rows.size(0)};
}

}  // namespace kdae::distill
