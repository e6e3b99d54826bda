// Device and dtype names as users type them on the command line and in configs.
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <string>

namespace kdae {

c10::Device parse_device(const std::string& name);     // "cpu", "cuda", "cuda:1", "auto"
c10::ScalarType parse_dtype(const std::string& name);  // "float32"/"fp32", "bfloat16"/"bf16", "float16"/"fp16"
std::string dtype_name(c10::ScalarType dtype);         // HF spelling: "float32", "bfloat16", "float16"
bool cuda_available();

}  // namespace kdae
