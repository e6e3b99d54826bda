// kdae serve: an OpenAI-compatible HTTP server over one model (cpp-httplib from Debian for HTTP).
// Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health.
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <functional>
#include <string>

namespace kdae::serve {

struct ServeOptions {
  std::string model_dir;
  std::string model_name;            // the id clients name; default: the directory's name
  std::string template_name = "auto";
  std::string host = "127.0.0.1";
  int port = 8000;                   // 0 = any free port (printed)
  std::string api_key;               // empty = none required
  int64_t max_batch = 16;            // sequences decoded together
  int64_t default_chat_tokens = 512; // max_tokens of a chat request that gives none
  c10::Device device = c10::kCPU;
  c10::ScalarType dtype = c10::kFloat;
};

// Serves until SIGINT or SIGTERM; returns the exit code. Prints "listening on http://HOST:PORT"
// on stderr once the port is bound.
int serve(const ServeOptions& options);

}  // namespace kdae::serve
