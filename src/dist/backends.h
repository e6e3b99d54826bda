// The c10d backends a process group can run on, each in its own file so only it includes its
// library's headers: Gloo (CPU; needs Debian's libgloo-dev headers) and NCCL (CUDA; the wheel's
// nvidia-nccl and CUDA headers). Where cmake found no headers for one, it builds to a clear error.
#pragma once
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>

#include "dist/launch-env.h"

namespace kdae::dist {

c10::intrusive_ptr<c10d::Backend> make_gloo_backend(const c10::intrusive_ptr<c10d::Store>& store, const LaunchEnv& env,
                                                    std::chrono::milliseconds timeout);
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, const LaunchEnv& env,
                                                    std::chrono::milliseconds timeout);

}  // namespace kdae::dist
