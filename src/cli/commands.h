// The table of subcommands. Each command lives in its own cli/cmd-<name>.cpp and is listed once
// in commands.cpp.
#pragma once
#include <vector>

#include "cli/options.h"

namespace kdae::cli {

const std::vector<Command>& all_commands();
int run_cli(int argc, char** argv);

// One factory per command file.
Command info_command();
Command forward_command();
Command generate_command();
Command chat_command();
Command convert_command();
Command tokenize_command();
Command data_command();
Command distill_command();
Command align_command();
Command eval_command();
Command demo_command();
Command upcycle_command();
Command teacher_cache_command();
Command prune_command();
Command lora_command();
Command serve_command();
Command answer_command();
Command judge_command();

}  // namespace kdae::cli
