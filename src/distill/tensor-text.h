// Tensor descriptions for error messages. kdae::fail's unqualified str() is ambiguous with
// c10::str when given an IntArrayRef, so shapes go in as ready-made text.
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
