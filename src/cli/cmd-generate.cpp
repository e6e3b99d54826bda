// kdae generate: text continuation with the KV cache, streamed to stdout. Greedy by default
// (equal to transformers' greedy generate); --temperature/--top-p sample with a seeded generator.
// Batch mode (--input/--output) loads the model once and answers every line of a JSONL file.
#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>
#include <sstream>

#include "cli/commands.h"
#include "cli/generation.h"
#include "generate/text-generator.h"
#include "common/device.h"
#include "common/error.h"
#include "common/files.h"
#include "common/progress.h"
#include "eval/prompt-file.h"

namespace kdae::cli {
namespace {

int run_batch(const Args& args, gen::TextGenerator& generator, const gen::GenerateOptions& options) {
  const auto items = eval::read_prompt_file(args.get("input"), args.flag("chat"));
  Progress progress({.label = "generate", .total = static_cast<int64_t>(items.size()), .rate_unit = "tok"});
  const auto answers = eval::answer_items(
      generator, items,
      {options, args.get_int("batch-size"), [&](int64_t done, int64_t tokens) { progress.advance(done, tokens); }});
  progress.finish();
  std::string out_text;
  for (size_t i = 0; i < items.size(); ++i) {
    out_text += eval::answered_line(items[i], answers[i]).dump() + "\n";
  }
  write_file_atomic(args.get("output"), out_text);
  return 0;
}

int run_generate(const Args& args) {
  apply_compute_options(args);
  const bool batch = args.has("input") || args.has("output");
  if (batch && !(args.has("input") && args.has("output"))) usage_fail("--input and --output go together");
  if (batch == args.has("prompt")) usage_fail("give either --prompt or --input/--output");
  if (args.get_int("batch-size") < 1) usage_fail("--batch-size must be >= 1");
  const gen::GenerateOptions options = generate_options_from(args);
  // Batch files may hold conversations even without --chat: they get a template when one is found.
  const std::string template_name = args.flag("chat") || batch ? args.get("template") : "";
  gen::TextGenerator generator(args.get("model"), template_name, parse_device(args.get("device")),
                               parse_dtype(args.get("dtype")), batch && !args.flag("chat"));
  if (batch) return run_batch(args, generator, options);

  const std::string prompt = args.get("prompt");
  if (args.flag("chat")) generator.reply({{"user", prompt}}, options, &std::cout);
  else generator.continue_text(prompt, options, &std::cout);
  std::cout << "\n";
  if (args.flag("print-ids")) {
    std::cerr << "ids:";
    for (auto id : generator.last_ids()) std::cerr << " " << id;
    std::cerr << "\n";
  }
  return 0;
}

}  // namespace

Command generate_command() {
  std::vector<Option> options = {
      {"model", "DIR", "HF model directory with tokenizer files", "", false, true},
      {"prompt", "TEXT", "prompt text (the user message with --chat)"},
      {"input", "FILE", "batch mode: JSONL, one {\"prompt\": ...} or {\"messages\": [...]} per line"},
      {"output", "FILE", "batch mode: JSONL written atomically, the input line plus \"response\""},
      {"chat", "", "wrap the prompt in the model's chat template as a user turn"},
      {"batch-size", "N", "batch mode: sequences decoded together (continuous batching)", "8"},
  };
  for (auto& o : generation_options()) options.push_back(o);
  options.push_back({"print-ids", "", "also print the generated token ids on stderr"});
  for (auto& o : device_options()) options.push_back(o);
  for (auto& o : compute_options()) options.push_back(o);
  return {"generate", "generate text from a prompt (KV cache, streamed output) or a JSONL file of prompts", "",
          options, run_generate};
}

}  // namespace kdae::cli
