// libFuzzer entry for the GGUF container parser: any input must parse or throw kdae::Error.
// Build: cmake -DKDAE_FUZZ=ON with clang (see fuzz/CMakeLists.txt); run: ./gguf_fuzz -max_total_time=60
#include <cstddef>
#include <cstdint>

#include "common/error.h"
#include "io/gguf-format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto file = kdae::io::parse_gguf(data, size, "fuzz.gguf");
    // Touch what a consumer would: every key lookup and every tensor's byte range.
    for (const auto& [key, value] : file.metadata) (void)file.find(key);
    uint64_t sum = 0;
    for (const auto& t : file.tensors)
      if (t.n_bytes > 0) sum += data[file.data_offset + t.offset] + data[file.data_offset + t.offset + t.n_bytes - 1];
    (void)sum;
  } catch (const kdae::Error&) {
  }
  return 0;
}
