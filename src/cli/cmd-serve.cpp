// kdae serve: the OpenAI-compatible HTTP server (serve/server.h), flags only.
#include "cli/commands.h"
#include "common/device.h"
#include "common/error.h"
#include "serve/server.h"

namespace kdae::cli {
namespace {

int run_serve(const Args& args) {
  apply_compute_options(args);
  serve::ServeOptions o;
  o.model_dir = args.get("model");
  o.model_name = args.maybe("model-name").value_or("");
  o.template_name = args.get("template");
  o.host = args.get("host");
  o.port = static_cast<int>(args.get_int("port"));
  o.max_batch = args.get_int("max-batch");
  o.default_chat_tokens = args.get_int("default-max-tokens");
  o.device = parse_device(args.get("device"));
  o.dtype = parse_dtype(args.get("dtype"));
  if (args.has("api-key-env")) {
    const char* key = std::getenv(args.get("api-key-env").c_str());
    if (!key || !*key) usage_fail("--api-key-env ", args.get("api-key-env"), ": that variable is not set");
    o.api_key = key;
  }
  if (args.has("api-key")) o.api_key = args.get("api-key");
  if (o.port < 0 || o.port > 65535) usage_fail("--port must be in [0, 65535]");
  if (o.max_batch < 1) usage_fail("--max-batch must be >= 1");
  if (o.default_chat_tokens < 1) usage_fail("--default-max-tokens must be >= 1");
  return serve::serve(o);
}

}  // namespace

Command serve_command() {
  std::vector<Option> options = {
      {"model", "DIR", "HF model directory with tokenizer files", "", false, true},
      {"model-name", "NAME", "the model id clients use (default: the directory's name)"},
      {"template", "NAME", "chat template: auto (detect from tokenizer_config.json) or a built-in name", "auto"},
      {"host", "ADDR", "address to bind (another than loopback exposes the model to the network)", "127.0.0.1"},
      {"port", "N", "TCP port (0 = any free port, printed at start)", "8000"},
      {"api-key", "KEY", "require 'Authorization: Bearer KEY' on every route but /health"},
      {"api-key-env", "VAR", "as --api-key, the key read from this environment variable"},
      {"max-batch", "N", "sequences decoded together (continuous batching)", "16"},
      {"default-max-tokens", "N", "max_tokens of a chat request that sets none", "512"},
  };
  for (auto& o : device_options()) options.push_back(o);
  for (auto& o : compute_options()) options.push_back(o);
  return {"serve", "serve a model over an OpenAI-compatible HTTP API",
          "Routes: POST /v1/chat/completions (stream: true sends server-sent events), POST /v1/completions\n"
          "(logprobs, echo), GET /v1/models, GET /health (batching counters). Concurrent requests share one\n"
          "forward per decoding step. Stops on SIGINT/SIGTERM. See docs/serving.md.",
          options, run_serve};
}

}  // namespace kdae::cli
