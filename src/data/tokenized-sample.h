// One training sample after tokenization. Torch-free.
#pragma once
#include <cstdint>
#include <vector>

namespace kdae::data {

struct TokenizedSample {
  std::vector<int32_t> ids;
  std::vector<uint8_t> supervised;  // per token: 1 = token is part of an assistant answer
  int64_t domain = 0;               // 0 = general, 1 = domain (DAE picks the expert teacher)
  float weight = 1.0f;
};

}  // namespace kdae::data
