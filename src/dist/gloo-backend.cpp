#include <cstdlib>

#include "common/error.h"
#include "dist/backends.h"

#ifdef KDAE_HAS_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif

namespace kdae::dist {

#ifdef KDAE_HAS_GLOO
namespace {

std::shared_ptr<gloo::transport::Device> gloo_device(const LaunchEnv& env) {
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname)
    return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
  // A one-node job talks over loopback; across nodes, the address this host's name resolves to.
  const bool one_node = env.local_world_size == env.world_size;
  return one_node ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                  : c10d::ProcessGroupGloo::createDefaultDevice();
}

}  // namespace
#endif

c10::intrusive_ptr<c10d::Backend> make_gloo_backend(const c10::intrusive_ptr<c10d::Store>& store, const LaunchEnv& env,
                                                    std::chrono::milliseconds timeout) {
#ifdef KDAE_HAS_GLOO
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  options->devices.push_back(gloo_device(env));
  options->threads = 1;  // the trainer waits on each collective: one worker thread is enough
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, env.rank, env.world_size, options);
#else
  (void)store, (void)env, (void)timeout;
  fail("backend gloo: this kdae was built without Gloo (cmake found no gloo headers; scripts/setup.sh installs "
       "Debian's libgloo-dev)");
#endif
}

}  // namespace kdae::dist
