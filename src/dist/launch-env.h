// Who this process is in a multi-process job, read from the launcher's environment: torchrun (RANK,
// LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), SLURM's srun (SLURM_PROCID,
// SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE) or Open MPI's mpirun (OMPI_COMM_WORLD_*). No
// launcher means world size 1: kdae then runs exactly as a single process always has. Torch-free.
#pragma once
#include <functional>
#include <string>

namespace kdae::dist {

struct LaunchEnv {
  std::string launcher;  // "torchrun", "slurm", "openmpi", or "" (a plain single process)
  int rank = 0, world_size = 1;
  int local_rank = 0, local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  // torchrun's agent already serves a TCPStore at MASTER_ADDR:MASTER_PORT: every rank joins it as a
  // client. Without it (srun, mpirun, a hand launch) rank 0 serves the store.
  bool agent_store = false;
  int restart_count = 0;  // torchrun's TORCHELASTIC_RESTART_COUNT: a restarted job gets fresh store keys

  bool distributed() const { return world_size > 1 || !launcher.empty(); }
};

using EnvLookup = std::function<const char*(const char*)>;

// Throws kdae::Error naming the variable when one is malformed or the set is inconsistent
// (RANK >= WORLD_SIZE, RANK without WORLD_SIZE, ...).
LaunchEnv detect_launch_env(const EnvLookup& getenv);
LaunchEnv detect_launch_env();  // the process environment

}  // namespace kdae::dist
