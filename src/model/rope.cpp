#include "model/rope.h"

#include <cmath>

namespace kdae::model {

torch::Tensor rope_inverse_frequencies(const ModelConfig& c) {
  const int64_t hd = c.head_dim;
  auto exponents = torch::arange(0, hd, 2, torch::kInt64).to(torch::kFloat32) / static_cast<double>(hd);  // (hd/2)
  torch::Tensor inv_freq = 1.0 / torch::pow(c.rope_theta, exponents);                                    // (hd/2)
  if (c.rope_scaling.type != "llama3") return inv_freq;
  // llama3: long wavelengths slowed by `factor`, short ones kept, a smooth blend between.
  const auto& s = c.rope_scaling;
  const double old_len = static_cast<double>(s.original_max_position_embeddings);
  const double low_wavelen = old_len / s.low_freq_factor;
  const double high_wavelen = old_len / s.high_freq_factor;
  torch::Tensor wavelen = 2.0 * M_PI / inv_freq;                                              // (hd/2)
  torch::Tensor scaled = torch::where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq);  // (hd/2)
  torch::Tensor smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
  torch::Tensor blended = (1 - smooth) * scaled / s.factor + smooth * scaled;                 // (hd/2)
  torch::Tensor medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
  return torch::where(medium, blended, scaled);
}

RopeTables rope_tables(const torch::Tensor& inv_freq, const torch::Tensor& position_ids, torch::ScalarType dtype) {
  torch::Tensor pos = position_ids.to(torch::kFloat32).unsqueeze(-1);     // (B, T, 1)
  torch::Tensor freqs = pos * inv_freq.to(position_ids.device());         // (B, T, hd/2)
  torch::Tensor emb = torch::cat({freqs, freqs}, -1);                     // (B, T, hd)
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

torch::Tensor apply_rope(const torch::Tensor& x, const RopeTables& t) {
  const int64_t half = x.size(-1) / 2;
  torch::Tensor x1 = x.narrow(-1, 0, half);                         // (B, H, T, hd/2)
  torch::Tensor x2 = x.narrow(-1, half, half);                      // (B, H, T, hd/2)
  torch::Tensor rotated = torch::cat({-x2, x1}, -1);                // (B, H, T, hd)
  return x * t.cos.unsqueeze(1) + rotated * t.sin.unsqueeze(1);     // (B, H, T, hd)
}

}  // namespace kdae::model
