#include "common/device.h"

#include <torch/cuda.h>

#include "common/error.h"

namespace kdae {

bool cuda_available() { return torch::cuda::is_available(); }

c10::Device parse_device(const std::string& name) {
  if (name == "auto") return cuda_available() ? c10::Device("cuda") : c10::Device("cpu");
  c10::Device device("cpu");
  try {
    device = c10::Device(name);
  } catch (const std::exception&) {
    usage_fail("unknown device '", name, "' (use cpu, cuda, cuda:N or auto)");
  }
  if (device.is_cuda() && !cuda_available()) fail("device '", name, "' requested but no CUDA GPU is available");
  return device;
}

c10::ScalarType parse_dtype(const std::string& name) {
  if (name == "float32" || name == "fp32" || name == "float") return c10::kFloat;
  if (name == "bfloat16" || name == "bf16") return c10::kBFloat16;
  if (name == "float16" || name == "fp16" || name == "half") return c10::kHalf;
  usage_fail("unknown dtype '", name, "' (use float32, bfloat16 or float16)");
}

std::string dtype_name(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::kFloat: return "float32";
    case c10::kBFloat16: return "bfloat16";
    case c10::kHalf: return "float16";
    default: return c10::toString(dtype);
  }
}

}  // namespace kdae
