#include "cli/commands.h"

namespace kdae::cli {
Command info_command() {
  return {"info", "(stub)", "", {}, [](const Args&) { return 0; }};
}
}  // namespace kdae::cli
