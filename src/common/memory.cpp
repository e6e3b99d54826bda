#include "common/memory.h"

#include <fstream>
#include <string>

namespace kdae {
namespace {

// A "VmRSS:    1234 kB" line of /proc/self/status, in bytes.
int64_t status_kb(const std::string& key) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind(key + ":", 0) == 0) return std::stoll(line.substr(key.size() + 1)) * 1024;
  return 0;
}

}  // namespace

int64_t resident_bytes() { return status_kb("VmRSS"); }

int64_t peak_resident_bytes() { return status_kb("VmHWM"); }

void reset_peak_resident() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
}

}  // namespace kdae
