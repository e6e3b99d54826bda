// The two kinds of judge: a kdae model directory (batched greedy decoding here) or any OpenAI-compatible
// chat endpoint (kdae serve, vLLM, llama.cpp's server, a hosted API), called with temperature 0.
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <memory>
#include <string>

#include "eval/judge.h"

namespace kdae::eval {

struct LocalJudgeOptions {
  std::string model_dir, template_name = "auto";
  c10::Device device = c10::kCPU;
  c10::ScalarType dtype = c10::kFloat;
  int64_t max_tokens = 512, batch_size = 8;
};
std::unique_ptr<JudgeBackend> local_judge(const LocalJudgeOptions& options);

struct EndpointJudgeOptions {
  std::string base_url;  // "http://host:port/v1"
  std::string model, api_key;
  int64_t max_tokens = 512, parallel = 8;  // requests in flight
  int retries = 3;                         // on connection errors, 429 and 5xx
};
std::unique_ptr<JudgeBackend> endpoint_judge(const EndpointJudgeOptions& options);

}  // namespace kdae::eval
