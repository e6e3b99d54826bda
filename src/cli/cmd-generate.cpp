// kdae generate: text continuation with the KV cache, streamed to stdout. Greedy by default
// (equal to transformers' greedy generate); --temperature/--top-p sample with a seeded generator.
// Batch mode (--input/--output) loads the model once and answers every line of a JSONL file.
#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>
#include <sstream>

#include "cli/commands.h"
#include "cli/generation.h"
#include "common/device.h"
#include "common/error.h"
#include "common/files.h"
#include "common/progress.h"

namespace kdae::cli {
namespace {

struct BatchItem {
  nlohmann::json source;                  // the input line, echoed into the output
  std::vector<data::Message> messages;    // chat turns; empty = plain prompt
  std::string prompt;
};

// One input line: {"prompt": "..."} or {"messages": [{"role": ..., "content": ...}, ...]}.
BatchItem parse_item(const std::string& line, const std::string& where, bool chat) {
  nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) fail(where, ": not a JSON object");
  BatchItem item;
  if (j.contains("messages")) {
    if (!j["messages"].is_array() || j["messages"].empty()) fail(where, ": \"messages\" must be a non-empty array");
    for (const auto& m : j["messages"]) {
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
          !m["content"].is_string())
        fail(where, ": each message needs string \"role\" and \"content\"");
      item.messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    }
    item.source = {{"messages", j["messages"]}};
  } else if (j.contains("prompt") && j["prompt"].is_string()) {
    item.prompt = j["prompt"].get<std::string>();
    if (chat) item.messages = {{"user", item.prompt}};
    item.source = {{"prompt", item.prompt}};
  } else {
    fail(where, ": expected a string \"prompt\" or a \"messages\" array");
  }
  return item;
}

std::vector<BatchItem> read_items(const std::string& path, bool chat) {
  std::ifstream in(path);
  if (!in) fail("cannot open ", path);
  std::vector<BatchItem> items;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    items.push_back(parse_item(line, str(path, ":", number), chat));
  }
  if (items.empty()) fail(path, ": no prompts");
  return items;
}

// Every line is answered from a fresh cache, so an answer does not depend on its neighbours.
int run_batch(const Args& args, Generator& generator, const model::GenerateOptions& options) {
  const bool chat = args.flag("chat");
  const auto items = read_items(args.get("input"), chat);
  const std::string output = args.get("output");
  std::string out_text;
  Progress progress({.label = "generate", .total = static_cast<int64_t>(items.size()), .rate_unit = "tok"});
  for (const auto& item : items) {
    generator.reset();
    nlohmann::json line = item.source;
    line["response"] = item.messages.empty() ? generator.continue_text(item.prompt, options, nullptr)
                                             : generator.reply(item.messages, options, nullptr);
    out_text += line.dump() + "\n";
    progress.advance(1, static_cast<int64_t>(generator.last_ids().size()));
  }
  progress.finish();
  write_file_atomic(output, out_text);
  return 0;
}

int run_generate(const Args& args) {
  apply_compute_options(args);
  const bool batch = args.has("input") || args.has("output");
  if (batch && !(args.has("input") && args.has("output"))) usage_fail("--input and --output go together");
  if (batch == args.has("prompt")) usage_fail("give either --prompt or --input/--output");
  const model::GenerateOptions options = generate_options_from(args);
  // Batch files may hold conversations even without --chat, so they always get a template.
  const std::string template_name = args.flag("chat") || batch ? args.get("template") : "";
  Generator generator(args.get("model"), template_name, parse_device(args.get("device")),
                      parse_dtype(args.get("dtype")));
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
  };
  for (auto& o : generation_options()) options.push_back(o);
  options.push_back({"print-ids", "", "also print the generated token ids on stderr"});
  for (auto& o : device_options()) options.push_back(o);
  for (auto& o : compute_options()) options.push_back(o);
  return {"generate", "generate text from a prompt (KV cache, streamed output) or a JSONL file of prompts", "",
          options, run_generate};
}

}  // namespace kdae::cli
