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
#include "generate/batch-decoder.h"

namespace kdae::cli {
namespace {

struct BatchItem {
  nlohmann::json source;                  // the input line, echoed into the output
  std::vector<data::Message> messages;    // chat turns; empty = plain prompt
  std::string prompt;
  std::string where;  // file:line
};

// One input line: {"prompt": "..."} or {"messages": [{"role": ..., "content": ...}, ...]}.
BatchItem parse_item(const std::string& line, const std::string& where, bool chat) {
  nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) fail(where, ": not a JSON object");
  BatchItem item;
  item.where = where;
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

// Every line is answered from its own rows of the batch cache, so an answer does not depend on its
// neighbours (batched greedy equals one-by-one greedy: tests/python/test_generate.py).
int run_batch(const Args& args, gen::TextGenerator& generator, const gen::GenerateOptions& options) {
  const bool chat = args.flag("chat");
  const auto items = read_items(args.get("input"), chat);
  std::vector<gen::SequenceRequest> requests;
  for (const auto& item : items) {
    const bool conversation = !item.messages.empty();
    gen::SequenceRequest r;
    if (conversation && !generator.has_chat_template())
      fail(item.where, ": a conversation needs a chat template, and the tokenizer's chat_template matches no "
                       "built-in one; pass --template NAME");
    r.prompt = conversation ? generator.conversation_ids(item.messages) : generator.text_ids(item.prompt);
    r.options = options;
    r.options.stop_ids = generator.stop_ids(conversation);
    requests.push_back(std::move(r));
  }
  Progress progress({.label = "generate", .total = static_cast<int64_t>(items.size()), .rate_unit = "tok"});
  const auto completions = gen::decode_all(generator.model(), std::move(requests), args.get_int("batch-size"),
                                           [&](int64_t done, int64_t tokens) { progress.advance(done, tokens); });
  progress.finish();
  std::string out_text;
  for (size_t i = 0; i < items.size(); ++i) {
    nlohmann::json line = items[i].source;
    line["response"] = gen::decode_text(generator.tokenizer(), completions[i].tokens);
    out_text += line.dump() + "\n";
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
