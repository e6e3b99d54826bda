// kdae chat: an interactive multi-turn conversation on stdin/stdout. Each turn re-renders the whole
// conversation with the chat template (the exact text the model was trained on); the KV cache keeps
// the common prefix with the previous turn, so only the new tokens run. /reset starts over, /exit
// (or end of input) quits.
#include <unistd.h>

#include <iostream>

#include "cli/commands.h"
#include "cli/generation.h"
#include "generate/text-generator.h"
#include "common/device.h"

namespace kdae::cli {
namespace {

int run_chat(const Args& args) {
  apply_compute_options(args);
  const gen::GenerateOptions options = generate_options_from(args);
  gen::TextGenerator generator(args.get("model"), args.get("template"), parse_device(args.get("device")),
                      parse_dtype(args.get("dtype")));
  std::vector<data::Message> start;
  if (auto system = args.maybe("system")) start.push_back({"system", *system});
  std::vector<data::Message> conversation = start;
  const bool interactive = isatty(STDIN_FILENO);
  if (interactive) std::cout << "kdae chat: /reset clears the conversation, /exit quits\n";
  std::string line;
  while (true) {
    if (interactive) std::cout << "> " << std::flush;
    if (!std::getline(std::cin, line) || line == "/exit") break;
    if (line == "/reset") {
      conversation = start;
      generator.reset();
      continue;
    }
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    conversation.push_back({"user", line});
    if (args.flag("print-prompt")) std::cerr << "[prompt]\n" << generator.render(conversation) << "\n[/prompt]\n";
    const std::string answer = generator.reply(conversation, options, &std::cout);
    std::cout << "\n" << std::flush;
    conversation.push_back({"assistant", answer});
  }
  return 0;
}

}  // namespace

Command chat_command() {
  std::vector<Option> options = {
      {"model", "DIR", "HF model directory with tokenizer files", "", false, true},
      {"system", "TEXT", "system message opening the conversation (default: the template's own, if any)"},
      {"print-prompt", "", "print each turn's rendered conversation on stderr (debugging templates)"},
  };
  for (auto& o : generation_options()) options.push_back(o);
  for (auto& o : device_options()) options.push_back(o);
  for (auto& o : compute_options()) options.push_back(o);
  return {"chat", "talk with a model: multi-turn, streamed, on stdin/stdout",
          "Reads one user message per line; /reset clears the conversation, /exit or end of input quits.", options,
          run_chat};
}

}  // namespace kdae::cli
