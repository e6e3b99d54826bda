// Tensor descriptions for error messages: a shape as "[B, T, V]" text. (kdae::fail now accepts
// IntArrayRef directly too; error.h qualifies its str() call to avoid c10::str.)
#pragma once
#include <torch/types.h>

#include <sstream>
#include <string>

namespace kdae::distill {

inline std::string shape_of(const torch::Tensor& t) {
  std::ostringstream out;
  out << t.sizes();
  return out.str();
}

}  // namespace kdae::distill
