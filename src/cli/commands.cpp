#include "cli/commands.h"

#include <iostream>

#include "common/error.h"
#include "dist/process-group.h"

namespace kdae::cli {

const std::vector<Command>& all_commands() {
  static const std::vector<Command> commands = {
      info_command(),
      forward_command(),
      generate_command(),
      chat_command(),
      convert_command(),
      tokenize_command(),
      data_command(),
      distill_command(),
      align_command(),
      eval_command(),
      demo_command(),
      upcycle_command(),
      teacher_cache_command(),
      prune_command(),
      lora_command(),
      serve_command(),
      answer_command(),
      judge_command(),
  };
  return commands;
}

static void print_overview(std::ostream& out) {
  out << "usage: kdae <command> [options]   (kdae <command> --help for its options)\n\n"
      << "Knowledge distillation and domain alignment for Hugging Face language models.\n\ncommands:\n";
  for (const auto& command : all_commands()) {
    out << "  " << command.name << std::string(command.name.size() < 16 ? 16 - command.name.size() : 1, ' ')
        << command.summary << "\n";
  }
  out << "\nexit codes: 0 ok, 1 runtime error, 2 usage error\n";
}

int run_cli(int argc, char** argv) {
  std::vector<std::string> words(argv + 1, argv + argc);
  if (words.empty() || words[0] == "--help" || words[0] == "-h" || words[0] == "help") {
    print_overview(words.empty() ? std::cerr : std::cout);
    return words.empty() ? 2 : 0;
  }
  const Command* command = nullptr;
  for (const auto& c : all_commands())
    if (c.name == words[0]) command = &c;
  if (!command) {
    std::cerr << "kdae: unknown command '" << words[0] << "'\n\n";
    print_overview(std::cerr);
    return 2;
  }
  std::vector<std::string> rest(words.begin() + 1, words.end());
  for (const auto& w : rest) {
    if (w == "--help" || w == "-h") {
      std::cout << help_text(*command);
      return 0;
    }
  }
  try {
    return command->run(parse_args(*command, rest));
  } catch (const UsageError& e) {
    std::cerr << "kdae " << command->name << ": " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    const std::string rank = dist::rank_label();  // in a multi-process job, which process failed
    std::cerr << "kdae " << command->name << (rank.empty() ? "" : " (" + rank + ")") << ": error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace kdae::cli
