#include "common/error.h"
#include "dist/backends.h"

#ifdef KDAE_HAS_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace kdae::dist {

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, const LaunchEnv& env,
                                                    std::chrono::milliseconds timeout) {
#ifdef KDAE_HAS_NCCL
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, env.rank, env.world_size, options);
#else
  (void)store, (void)env, (void)timeout;
  fail("backend nccl: this kdae was built without NCCL (cmake found no nccl.h and CUDA runtime headers); rebuild "
       "where the torch wheel's nvidia packages are installed, or use backend: gloo");
#endif
}

}  // namespace kdae::dist
