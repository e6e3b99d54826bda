#include "cli/generation.h"

#include "common/error.h"

namespace kdae::cli {

std::vector<Option> generation_options() {
  return {
      {"template", "NAME", "chat template: auto (detect from tokenizer_config.json) or a built-in name", "auto"},
      {"max-new-tokens", "N", "tokens to generate at most (stops early at EOS / end of turn)", "64"},
      {"temperature", "T", "0 = greedy; > 0 samples from softmax(logits / T)", "0"},
      {"top-p", "P", "nucleus sampling mass when sampling", "1.0"},
      {"seed", "N", "sampling seed", "0"},
  };
}

gen::GenerateOptions generate_options_from(const Args& args) {
  gen::GenerateOptions o;
  o.max_new_tokens = args.get_int("max-new-tokens");
  o.temperature = args.get_double("temperature");
  o.top_p = args.get_double("top-p");
  o.seed = static_cast<uint64_t>(args.get_int("seed"));
  if (o.max_new_tokens < 0) usage_fail("--max-new-tokens must be >= 0");
  if (o.top_p <= 0 || o.top_p > 1) usage_fail("--top-p must be in (0, 1]");
  return o;
}

}  // namespace kdae::cli
