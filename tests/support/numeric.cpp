#include "numeric.h"

#include <cmath>
#include <sstream>

namespace kdae::test {

double fp32_reduction_tolerance(int64_t n, double magnitude) {
  return static_cast<double>(n) * kFp32Eps * magnitude;
}

::testing::AssertionResult all_close(const torch::Tensor& got, const torch::Tensor& want, double atol, double rtol) {
  if (got.sizes() != want.sizes()) {
    std::ostringstream s;
    s << "shapes differ: got " << got.sizes() << ", want " << want.sizes();
    return ::testing::AssertionFailure() << s.str();
  }
  if (got.numel() == 0) return ::testing::AssertionSuccess();
  auto g = got.detach().to(torch::kCPU, torch::kFloat64).reshape({-1});   // (n)
  auto w = want.detach().to(torch::kCPU, torch::kFloat64).reshape({-1});  // (n)
  auto err = (g - w).abs();                                               // (n)
  auto allowed = atol + rtol * w.abs();                                   // (n)
  auto excess = err - allowed;                                            // (n)
  const bool finite_ok = torch::equal(torch::isfinite(g), torch::isfinite(w));
  const int64_t worst = excess.nan_to_num(1e300).argmax().item<int64_t>();
  if (finite_ok && excess[worst].item<double>() <= 0) return ::testing::AssertionSuccess();
  const int64_t worst_abs = err.nan_to_num(1e300).argmax().item<int64_t>();
  const double max_rel = (err / w.abs().clamp_min(1e-300)).nan_to_num(1e300).max().item<double>();
  std::ostringstream s;
  s.precision(6);
  s << "max |got - want| = " << err[worst_abs].item<double>() << " at flat index " << worst_abs
    << " (got " << g[worst_abs].item<double>() << ", want " << w[worst_abs].item<double>() << "); max relative error "
    << max_rel << "; worst against the bound at index " << worst << ": error " << err[worst].item<double>()
    << " > allowed " << allowed[worst].item<double>() << " (atol " << atol << ", rtol " << rtol << ")"
    << (finite_ok ? "" : "; non-finite values differ");
  return ::testing::AssertionFailure() << s.str();
}

::testing::AssertionResult near(double got, double want, double atol, double rtol) {
  const double err = std::abs(got - want), allowed = atol + rtol * std::abs(want);
  if (err <= allowed) return ::testing::AssertionSuccess();
  std::ostringstream s;
  s.precision(10);
  s << "got " << got << ", want " << want << ": error " << err << " > allowed " << allowed << " (atol " << atol
    << ", rtol " << rtol << ")";
  return ::testing::AssertionFailure() << s.str();
}

}  // namespace kdae::test
