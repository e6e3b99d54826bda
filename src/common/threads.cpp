#include "common/threads.h"

#include <ATen/Parallel.h>

#include <thread>

#include "common/error.h"

namespace kdae {

void set_threads(int threads) {
  if (threads < 0) usage_fail("--threads must be >= 0, got ", threads);
  const int n = threads == 0 ? static_cast<int>(std::max(1u, std::thread::hardware_concurrency())) : threads;
  at::set_num_threads(n);
  static bool interop_set = false;  // LibTorch allows setting this once per process.
  if (!interop_set) {
    try {
      at::set_num_interop_threads(1);
    } catch (const std::exception&) {
    }
    interop_set = true;
  }
}

}  // namespace kdae
