// Regenerates docs/config.md from the key table: gen_config_doc docs/config.md
#include <iostream>

#include "cli/run-config.h"
#include "common/files.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: gen_config_doc OUT.md\n";
    return 2;
  }
  try {
    kdae::write_file_atomic(argv[1], kdae::cli::config_reference_markdown());
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
