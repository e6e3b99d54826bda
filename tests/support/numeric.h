// Tolerances derived from the arithmetic, and a comparison that says how far off it was.
//
// The rule (docs/developing.md): a result that two paths reach by different float32 operations (a chunked
// and a plain loss, a fused and an unfused head, two CPU kernels picked by ATEN_CPU_CAPABILITY) may differ
// by the rounding of the longest reduction involved. A sum of n terms whose absolute values add up to m,
// rounded in any order and blocking, is off by at most (n - 1) * eps * m to first order (Higham, "Accuracy
// and Stability of Numerical Algorithms", 4.2), eps = 2^-23 for float32. Tests state n and m (for a
// softmax-weighted sum such as a KL, m is the largest |log-ratio|, since the weights add up to 1) and take
// n * eps * m. That bound is loose (rounding errors grow like sqrt(n) in practice) but it holds for every
// summation order, so it cannot depend on the CPU's kernels, and it stays orders of magnitude below the
// difference a wrong formula makes.
#pragma once
#include <gtest/gtest.h>
#include <torch/types.h>

#include <cstdint>
#include <string>

namespace kdae::test {

inline constexpr double kFp32Eps = 1.1920928955078125e-07;  // 2^-23
inline constexpr double kBf16Eps = 0.0078125;                // 2^-7

// n * eps * magnitude: the worst-case rounding of a length-n float32 sum whose |terms| add up to magnitude.
double fp32_reduction_tolerance(int64_t n, double magnitude);

// Passes when |got - want| <= atol + rtol * |want| everywhere (shapes must match); the failure message
// gives the largest absolute and relative errors, where they occur, and the allowed bound there.
::testing::AssertionResult all_close(const torch::Tensor& got, const torch::Tensor& want, double atol,
                                     double rtol = 0.0);

// Scalar form of all_close.
::testing::AssertionResult near(double got, double want, double atol, double rtol = 0.0);

}  // namespace kdae::test
