#include "cli/commands.h"

namespace kdae::cli {
Command forward_command() {
  return {"forward", "(stub)", "", {}, [](const Args&) { return 0; }};
}
}  // namespace kdae::cli
