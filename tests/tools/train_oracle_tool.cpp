// Drives the trainer components for the Python oracle tests (tests/python/test_optimizer.py,
// test_lr_schedule.py, test_tensorboard.py).
//   train_oracle_tool lr KIND BASE_LR TOTAL WARMUP_STEPS WARMUP_RATIO   -> "step lr" lines, steps 0..TOTAL+2
//   train_oracle_tool adamw IN.safetensors OUT.safetensors FUSED WD B1 B2 EPS MAX_NORM LR1,LR2,...
//       IN holds "param.<name>" and "grad.<k>.<name>" (k = 0..steps-1; a missing grad = no grad that
//       step). OUT gets "param.<name>", the optimizer state, and "grad_norm.<k>".
//   train_oracle_tool tb LOG_DIR        stdin lines "tag step value" -> one event file in LOG_DIR
//   train_oracle_tool ckpt-loop OUT_DIR STEPS KEEP   saves checkpoints 1..STEPS (weights filled with
//       the step number, 4 MB each) with keep-last KEEP, continuing after the newest checkpoint
//       in OUT_DIR; the kill -9 test interrupts it anywhere.
#include <iostream>
#include <sstream>
#include <string>

#include "io/safetensors.h"
#include "train/checkpoint.h"
#include "train/lr-schedule.h"
#include "train/optimizer.h"
#include "train/tensorboard.h"

using namespace kdae;

static int run_lr(char** argv) {
  const auto kind = train::parse_lr_schedule(argv[2]);
  const double base = std::stod(argv[3]);
  const int64_t total = std::stoll(argv[4]);
  const int64_t warmup = train::resolve_warmup_steps(std::stoll(argv[5]), std::stod(argv[6]), total);
  train::LrSchedule schedule(kind, base, total, warmup);
  std::cout.precision(17);
  for (int64_t s = 0; s <= total + 2; ++s) std::cout << s << " " << schedule.lr_at(s) << "\n";
  return 0;
}

static int run_adamw(char** argv) {
  io::SafetensorsFile in(argv[2]);
  train::AdamWOptions opt;
  opt.fused = std::string(argv[4]) == "1";
  opt.weight_decay = std::stod(argv[5]);
  opt.beta1 = std::stod(argv[6]);
  opt.beta2 = std::stod(argv[7]);
  opt.eps = std::stod(argv[8]);
  const double max_norm = std::stod(argv[9]);
  std::vector<double> lrs;
  std::stringstream list(argv[10]);
  for (std::string item; std::getline(list, item, ',');) lrs.push_back(std::stod(item));

  train::NamedTensors params;
  for (const auto& name : in.names())
    if (name.rfind("param.", 0) == 0) params.emplace_back(name.substr(6), in.get(name).clone().requires_grad_(true));
  train::AdamW adamw(params, opt);
  std::vector<torch::Tensor> plist;
  for (auto& [n, p] : params) plist.push_back(p);
  io::NamedTensors out;
  for (size_t k = 0; k < lrs.size(); ++k) {
    adamw.zero_grad();
    for (auto& [name, p] : params) {
      const std::string g = "grad." + std::to_string(k) + "." + name;
      if (in.has(g)) p.mutable_grad() = in.get(g).clone();
    }
    out.emplace_back("grad_norm." + std::to_string(k), train::clip_grad_norm(plist, max_norm));
    adamw.step(lrs[k]);
  }
  for (auto& [name, p] : params) out.emplace_back("param." + name, p.detach());
  for (auto& [name, t] : adamw.state()) out.emplace_back("state." + name, t);
  io::write_safetensors(argv[3], out);
  return 0;
}

static int run_tb(char** argv) {
  train::TensorBoardWriter writer(argv[2], 1e9);  // flushed only on close: tests the close path
  std::string tag;
  int64_t step;
  double value;
  while (std::cin >> tag >> step >> value) writer.add_scalar(tag, value, step);
  writer.close();
  std::cout << writer.path().string() << "\n";
  return 0;
}

static int run_ckpt_loop(char** argv) {
  const int64_t steps = std::stoll(argv[3]);
  const int keep = std::stoi(argv[4]);
  // Resume after the newest checkpoint, as a restarted run would (load_checkpoint validates it).
  int64_t first = 1;
  if (auto latest = train::find_latest_checkpoint(argv[2])) first = train::load_checkpoint(*latest).state.step + 1;
  for (int64_t step = first; step <= steps; ++step) {
    const train::NamedTensors model = {{"model.embed_tokens.weight", torch::full({1024, 1024}, float(step))},
                                       {"model.norm.weight", torch::full({1024}, float(step))}};
    const train::NamedTensors opt = {{"model.norm.weight.step", torch::full({}, float(step))},
                                     {"model.norm.weight.exp_avg", torch::full({1024}, float(step))},
                                     {"model.norm.weight.exp_avg_sq", torch::full({1024}, float(step))}};
    train::CheckpointContents c;
    c.model = &model;
    c.optimizer = &opt;
    c.state.step = step;
    c.state.scheduler_step = step;
    train::capture_rng_states(c.state);
    train::save_checkpoint(argv[2], c, keep);
    std::cout << step << std::endl;
  }
  return 0;
}

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "lr" && argc == 7) return run_lr(argv);
    if (mode == "adamw" && argc == 11) return run_adamw(argv);
    if (mode == "tb" && argc == 3) return run_tb(argv);
    if (mode == "ckpt-loop" && argc == 5) return run_ckpt_loop(argv);
    std::cerr << "usage: see the comment at the top of tests/tools/train_oracle_tool.cpp\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
