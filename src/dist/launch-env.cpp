#include "dist/launch-env.h"

#include <charconv>
#include <cstdlib>
#include <optional>

#include "common/error.h"

namespace kdae::dist {
namespace {

std::optional<int> int_var(const EnvLookup& getenv, const char* name) {
  const char* raw = getenv(name);
  if (!raw || !*raw) return std::nullopt;
  const std::string s = raw;
  int v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || v < 0)
    fail("environment variable ", name, "='", s, "' is not a non-negative integer");
  return v;
}

std::string string_var(const EnvLookup& getenv, const char* name, const std::string& fallback) {
  const char* raw = getenv(name);
  return raw && *raw ? std::string(raw) : fallback;
}

// SLURM_NTASKS_PER_NODE may read "4" or "4(x2)"; its leading count is the tasks on this node.
std::optional<int> slurm_tasks_per_node(const EnvLookup& getenv) {
  const char* raw = getenv("SLURM_NTASKS_PER_NODE");
  if (!raw || !*raw) return std::nullopt;
  int v = 0;
  const std::string s = raw;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || v <= 0) return std::nullopt;
  return v;
}

struct Names {
  const char *launcher, *rank, *world, *local_rank, *local_world;
};

// The first launcher whose rank variable is set wins: torchrun inside an srun allocation still
// describes the job torchrun started.
std::optional<LaunchEnv> read(const EnvLookup& getenv, const Names& n) {
  const auto rank = int_var(getenv, n.rank);
  if (!rank) return std::nullopt;
  const auto world = int_var(getenv, n.world);
  if (!world || *world < 1) fail(n.rank, " is set but ", n.world, " is not (or is 0): the launcher's environment is incomplete");
  if (*rank >= *world) fail(n.rank, "=", *rank, " is not below ", n.world, "=", *world);
  LaunchEnv e;
  e.launcher = n.launcher;
  e.rank = *rank;
  e.world_size = *world;
  e.local_rank = int_var(getenv, n.local_rank).value_or(*rank);
  e.local_world_size = n.local_world ? int_var(getenv, n.local_world).value_or(*world) : *world;
  if (e.local_rank >= e.local_world_size)
    fail(n.local_rank, "=", e.local_rank, " is not below the local world size ", e.local_world_size);
  return e;
}

}  // namespace

LaunchEnv detect_launch_env(const EnvLookup& getenv) {
  std::optional<LaunchEnv> e = read(getenv, {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"});
  if (!e) {
    e = read(getenv, {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", nullptr});
    if (e) e->local_world_size = slurm_tasks_per_node(getenv).value_or(e->world_size);
  }
  if (!e)
    e = read(getenv, {"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                      "OMPI_COMM_WORLD_LOCAL_SIZE"});
  if (!e) return LaunchEnv{};
  e->master_addr = string_var(getenv, "MASTER_ADDR", e->master_addr);
  e->master_port = int_var(getenv, "MASTER_PORT").value_or(e->master_port);
  if (e->master_port == 0 || e->master_port > 65535) fail("MASTER_PORT=", e->master_port, " is not a TCP port");
  const std::string agent = string_var(getenv, "TORCHELASTIC_USE_AGENT_STORE", "");
  e->agent_store = agent == "True" || agent == "true" || agent == "1";
  e->restart_count = int_var(getenv, "TORCHELASTIC_RESTART_COUNT").value_or(0);
  return *e;
}

LaunchEnv detect_launch_env() {
  return detect_launch_env([](const char* name) { return std::getenv(name); });
}

}  // namespace kdae::dist
