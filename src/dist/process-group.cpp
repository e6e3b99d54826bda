#include "dist/process-group.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/types.h>

#include <cstdlib>
#include <iostream>

#include "common/error.h"
#include "dist/backends.h"

namespace kdae::dist {

struct Group::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  GroupOptions options;
  int64_t messages = 0;  // store keys are numbered: every rank issues the same calls in the same order
};

namespace {

Group& the_world() {
  static Group group;
  return group;
}

bool joined = false;

// What a user needs from a failed collective: who, during what, and the two usual causes.
[[noreturn]] void collective_failed(const Group&, const std::string& what, const std::exception& e) {
  std::string cause = e.what();
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) cause = c10_error->what_without_backtrace();
  if (const auto cut = cause.find('\n'); cut != std::string::npos) cause = cause.substr(0, cut);
  if (cause.rfind("[/", 0) == 0 && cause.find("] ") != std::string::npos) cause = cause.substr(cause.find("] ") + 2);
  fail(what, " failed: ", cause, " (another rank stopped - see its error - or did not get there within dist_timeout_s)");
}

c10::intrusive_ptr<c10d::Store> rendezvous(const LaunchEnv& env, std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions o;
  o.port = static_cast<uint16_t>(env.master_port);
  o.isServer = !env.agent_store && env.rank == 0;
  o.numWorkers = env.agent_store ? std::nullopt : std::optional<size_t>(env.world_size);
  o.waitWorkers = !env.agent_store;
  o.timeout = timeout;
  auto tcp = c10::make_intrusive<c10d::TCPStore>(env.master_addr, o);
  return c10::make_intrusive<c10d::PrefixStore>("kdae/attempt_" + std::to_string(env.restart_count), tcp);
}

}  // namespace

Backend parse_backend(const std::string& name) {
  if (name == "auto") return Backend::automatic;
  if (name == "gloo") return Backend::gloo;
  if (name == "nccl") return Backend::nccl;
  fail("backend '", name, "': expected auto, gloo or nccl");
}

Group::Group() : impl_(std::make_unique<Impl>()) {}
Group::~Group() = default;

bool Group::distributed() const { return static_cast<bool>(impl_->backend); }

std::string Group::backend_name() const { return impl_->backend ? impl_->backend->getBackendName() : "none"; }

void Group::all_reduce_sum(at::Tensor& tensor, const std::string& what) {
  if (!distributed()) return;
  std::vector<at::Tensor> one{tensor};
  try {
    impl_->backend->allreduce(one)->wait();
  } catch (const std::exception& e) {
    collective_failed(*this, what, e);
  }
}

namespace {

// Issues a collective now; the returned handle waits for it. Both turn c10d errors into ours.
Pending start_collective(Group& group, const std::function<c10::intrusive_ptr<c10d::Work>()>& issue,
                         const std::string& what) {
  c10::intrusive_ptr<c10d::Work> work;
  try {
    work = issue();
  } catch (const std::exception& e) {
    collective_failed(group, what, e);
  }
  Pending pending;
  pending.done = [work] { return work->isCompleted(); };
  pending.wait = [&group, work, what] {
    try {
      work->wait();
    } catch (const std::exception& e) {
      collective_failed(group, what, e);
    }
  };
  return pending;
}

}  // namespace

Pending Group::start_all_reduce_sum(at::Tensor& tensor, const std::string& what) {
  if (!distributed()) return {};
  return start_collective(*this, [&] {
    std::vector<at::Tensor> one{tensor};
    return impl_->backend->allreduce(one);
  }, what);
}

Pending Group::start_reduce_sum(at::Tensor& tensor, int root, const std::string& what) {
  if (!distributed()) return {};
  return start_collective(*this, [&] {
    std::vector<at::Tensor> one{tensor};
    c10d::ReduceOptions opts;
    opts.rootRank = root;
    return impl_->backend->reduce(one, opts);
  }, what);
}

namespace {

std::vector<double> reduce_host(Group& g, c10d::Backend& backend, const GroupOptions& o, std::vector<double> values,
                                c10d::ReduceOp op, const std::string& what) {
  auto t = torch::tensor(values, torch::kFloat64).to(o.device);  // (n)
  std::vector<at::Tensor> one{t};
  c10d::AllreduceOptions opts;
  opts.reduceOp = op;
  try {
    backend.allreduce(one, opts)->wait();
  } catch (const std::exception& e) {
    collective_failed(g, what, e);
  }
  auto host = t.to(torch::kCPU).contiguous();
  return {host.data_ptr<double>(), host.data_ptr<double>() + host.numel()};
}

}  // namespace

std::vector<double> Group::sum(std::vector<double> values, const std::string& what) {
  if (!distributed() || values.empty()) return values;
  return reduce_host(*this, *impl_->backend, impl_->options, std::move(values), c10d::ReduceOp::SUM, what);
}

std::vector<double> Group::max(std::vector<double> values, const std::string& what) {
  if (!distributed() || values.empty()) return values;
  return reduce_host(*this, *impl_->backend, impl_->options, std::move(values), c10d::ReduceOp::MAX, what);
}

void Group::broadcast(at::Tensor& tensor, int root, const std::string& what) {
  if (!distributed()) return;
  std::vector<at::Tensor> one{tensor};
  c10d::BroadcastOptions opts;
  opts.rootRank = root;
  try {
    impl_->backend->broadcast(one, opts)->wait();
  } catch (const std::exception& e) {
    collective_failed(*this, what, e);
  }
}

void Group::all_gather(const at::Tensor& part, at::Tensor& whole, const std::string& what) {
  if (!distributed()) return void(whole.copy_(part.reshape({-1})));
  const int64_t n = part.numel();
  std::vector<at::Tensor> input{part.reshape({-1})};
  std::vector<std::vector<at::Tensor>> outputs(1);
  for (int r = 0; r < size_; ++r) outputs[0].push_back(whole.narrow(0, r * n, n));
  try {
    impl_->backend->allgather(outputs, input)->wait();
  } catch (const std::exception& e) {
    collective_failed(*this, what, e);
  }
}

void Group::barrier(const std::string& what) { (void)sum({0.0}, what); }

void Group::main_first(const std::string& what, const std::function<void()>& fn, bool then_all) {
  if (!distributed()) return fn();
  const std::string key = "main_first/" + std::to_string(impl_->messages++);
  if (is_main()) {
    std::string outcome = "ok";
    try {
      fn();
    } catch (const std::exception& e) {
      outcome = std::string("error: ") + e.what();
      impl_->store->set(key, outcome);
      throw;
    }
    impl_->store->set(key, outcome);
    return;
  }
  std::string outcome;
  try {
    const auto bytes = impl_->store->get(key);
    outcome.assign(bytes.begin(), bytes.end());
  } catch (const std::exception& e) {
    collective_failed(*this, "waiting for rank 0 to finish " + what, e);
  }
  if (outcome != "ok") fail("rank 0 stopped during ", what, ": ", outcome.substr(7));
  if (then_all) fn();
}

void Group::check_same(const std::string& what, const std::string& value) {
  if (!distributed()) return;
  const std::string prefix = "check_same/" + std::to_string(impl_->messages++) + "/";
  try {
    impl_->store->set(prefix + std::to_string(rank_), value);
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) continue;
      const auto bytes = impl_->store->get(prefix + std::to_string(r));
      const std::string other(bytes.begin(), bytes.end());
      if (other != value)
        fail(what, " differs between ranks: rank ", rank_, " has '", value, "', rank ", r, " has '",
             other, "'; start every rank with the same config and data");
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    collective_failed(*this, "comparing " + what, e);
  }
}

Group& world() { return the_world(); }

void join(const LaunchEnv& env, const GroupOptions& options) {
  if (joined) fail("the process group is already joined");
  joined = true;
  Group& g = the_world();
  g.env_ = env;
  g.rank_ = env.rank;
  g.size_ = env.world_size;
  g.impl_->options = options;
  if (!env.distributed()) return;
  const bool cuda = options.device.is_cuda();
  Backend backend = options.backend == Backend::automatic ? (cuda ? Backend::nccl : Backend::gloo) : options.backend;
  if (backend == Backend::nccl && !cuda)
    fail("backend: nccl needs a CUDA device (device: ", options.device.str(), "); use backend: gloo on CPU");
  try {
    g.impl_->store = rendezvous(env, options.timeout);
    g.impl_->backend = backend == Backend::nccl ? make_nccl_backend(g.impl_->store, env, options.timeout)
                                                : make_gloo_backend(g.impl_->store, env, options.timeout);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    std::string cause = e.what();
    if (const auto cut = cause.find('\n'); cut != std::string::npos) cause = cause.substr(0, cut);
    fail("cannot join the process group at ", env.master_addr, ":", env.master_port, " (", env.launcher,
         ", world size ", env.world_size, "): ", cause);
  }
}

std::string rank_label() {
  const Group& g = the_world();
  return g.distributed() ? "rank " + std::to_string(g.rank()) + "/" + std::to_string(g.size()) : "";
}

}  // namespace kdae::dist
