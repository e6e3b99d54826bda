// kdae upcycle: a MixtralForCausalLM directory built from dense models (io/upcycle.h, docs/moe.md).
#include "cli/commands.h"
#include "common/error.h"
#include "io/upcycle.h"

namespace kdae::cli {
namespace {

int run_upcycle(const Args& args) {
  apply_compute_options(args);
  io::UpcycleOptions o;
  o.base = args.get("base");
  for (const auto& dir : args.all("experts")) o.donors.emplace_back(dir);
  o.num_experts = args.get_int("num-experts");
  o.top_k = args.get_int("top-k");
  o.router = io::parse_router_init(args.get("router"));
  if (auto prompts = args.maybe("prompts")) o.prompts = *prompts;
  o.noise = args.get_double("noise");
  o.router_std = args.get_double("router-std");
  const long long seed = args.get_int("seed");
  if (seed < 0) usage_fail("--seed must be >= 0, got ", seed);
  o.seed = static_cast<uint64_t>(seed);
  o.aux_loss_coef = args.get_double("aux-loss-coef");
  o.out = args.get("out");
  o.overwrite = args.flag("overwrite");
  io::upcycle(o);
  return 0;
}

}  // namespace

Command upcycle_command() {
  std::vector<Option> options = {
      {"base", "DIR", "dense HF model giving attention, norms, embeddings and head", "", false, true},
      {"experts", "DIR", "one dense donor per expert (its MLP becomes the expert); omitted = copies of the base",
       "", false, false, true},
      {"num-experts", "N", "experts per layer (num_local_experts)", "", false, true},
      {"top-k", "K", "experts per token (num_experts_per_tok)", "2"},
      {"router", "MODE", "router init: random (normal, --router-std), embed (mean prompt token embedding), "
                         "hidden (mean MoE input of the prompts per layer)", "random"},
      {"prompts", "FILE", "JSONL, one {\"expert\": E, \"text\": \"...\"} per line (embed and hidden)"},
      {"noise", "STD", "add STD * std(W) * N(0,1) to every expert weight W (breaks the symmetry of copies)", "0"},
      {"router-std", "STD", "standard deviation of random routers", "0.02"},
      {"seed", "S", "seed of random routers and noise", "0"},
      {"aux-loss-coef", "C", "router_aux_loss_coef written to config.json (load-balancing loss weight)", "0.02"},
      {"out", "DIR", "output MixtralForCausalLM directory (written atomically)", "", false, true},
      {"overwrite", "", "replace an existing --out directory"},
  };
  for (auto& o : compute_options()) options.push_back(o);
  return {"upcycle", "build a Mixtral-style MoE from dense models (experts from donors, routers initialised)",
          "Donors must share the base's architecture and tokenizer. See docs/moe.md.", options, run_upcycle, ""};
}

}  // namespace kdae::cli
