// libFuzzer entry for the JSONL data reader: any bytes must yield records or throw kdae::Error.
// Build: cmake -DKDAE_FUZZ=ON with clang (see fuzz/CMakeLists.txt); run: ./jsonl_fuzz -max_total_time=60
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/error.h"
#include "data/jsonl-reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    size_t chars = 0;
    kdae::data::read_jsonl(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.jsonl",
                           [&](kdae::data::JsonlRecord&& r) {
                             for (const auto& m : r.messages) chars += m.role.size() + m.content.size();
                             chars += r.text.size() + r.domain.size();
                           });
    (void)chars;
  } catch (const kdae::Error&) {
  }
  return 0;
}
