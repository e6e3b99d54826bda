#include "cli/commands.h"

int main(int argc, char** argv) { return kdae::cli::run_cli(argc, argv); }
