// kdae generate: text continuation with the KV cache, streamed to stdout. Greedy by default
// (equal to transformers' greedy generate); --temperature/--top-p sample with a seeded generator.
#include <torch/types.h>

#include <iostream>

#include "cli/commands.h"
#include "common/device.h"
#include "common/error.h"
#include "data/chat-template.h"
#include "io/hf-model.h"
#include "tokenizer/tokenizer.h"

namespace kdae::cli {
namespace {

std::string render_chat(const tok::Tokenizer& tokenizer, const std::string& name, const std::string& prompt) {
  auto text_of = [&](std::optional<tok::TokenId> id) { return id ? tokenizer.id_to_token(*id) : std::string(); };
  const std::string bos = text_of(tokenizer.special().bos), eos = text_of(tokenizer.special().eos);
  std::optional<data::ChatTemplate> chat;
  if (name != "auto") chat = data::ChatTemplate::by_name(name, bos, eos);
  else chat = data::ChatTemplate::detect(tokenizer.chat_template(), bos, eos);
  if (!chat) fail("the tokenizer's chat_template matches no built-in template; pass --template NAME");
  return chat->render({{"user", prompt}}, /*add_generation_prompt=*/true).text;
}

// Next token from the last position's logits (V).
int64_t pick_token(torch::Tensor logits, double temperature, double top_p, torch::Generator& gen) {
  if (temperature <= 0) return logits.argmax().item<int64_t>();
  torch::Tensor probs = torch::softmax(logits.to(torch::kFloat32) / temperature, -1);  // (V)
  auto [sorted, order] = probs.sort(-1, /*descending=*/true);                         // (V), (V)
  torch::Tensor keep = (sorted.cumsum(-1) - sorted) < top_p;                          // (V) nucleus
  sorted = sorted * keep;
  const int64_t choice = torch::multinomial(sorted / sorted.sum(), 1, false, gen).item<int64_t>();
  return order[choice].item<int64_t>();
}

int run_generate(const Args& args) {
  apply_compute_options(args);
  const auto device = parse_device(args.get("device"));
  auto tokenizer = tok::Tokenizer::load(args.get("model"));
  model::Transformer model = io::load_model(args.get("model"), {device, parse_dtype(args.get("dtype"))});
  model->eval();
  const bool chat = args.flag("chat");
  const std::string text = chat ? render_chat(*tokenizer, args.get("template"), args.get("prompt")) : args.get("prompt");
  // A rendered chat already carries its BOS text.
  std::vector<tok::TokenId> prompt_ids = tokenizer->encode(text, /*add_special_tokens=*/!chat);
  if (prompt_ids.empty()) fail("the prompt encodes to no tokens");
  const int64_t max_new = args.get_int("max-new-tokens");
  const double temperature = args.get_double("temperature"), top_p = args.get_double("top-p");
  auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(args.get_int("seed")));

  torch::InferenceMode inference;
  model::KVCache cache;
  model::ForwardOptions opts;
  opts.cache = &cache;
  std::vector<int64_t> step(prompt_ids.begin(), prompt_ids.end());
  std::vector<tok::TokenId> produced;
  std::string printed;
  for (int64_t i = 0; i < max_new; ++i) {
    torch::Tensor input = torch::tensor(step, torch::kInt64).unsqueeze(0).to(device);  // (1, T)
    torch::Tensor logits = model->forward(input, opts).logits[0][-1].cpu();            // (V)
    const int64_t next = pick_token(logits, temperature, top_p, gen);
    if (tokenizer->special().eos && next == *tokenizer->special().eos) break;
    produced.push_back(static_cast<tok::TokenId>(next));
    // Decode the whole continuation and print the new suffix: multi-token characters stay whole.
    const std::string now = tokenizer->decode(produced, /*skip_special_tokens=*/true);
    if (now.size() > printed.size() && now.compare(0, printed.size(), printed) == 0) {
      std::cout << now.substr(printed.size()) << std::flush;
      printed = now;
    }
    step = {next};
  }
  const std::string final_text = tokenizer->decode(produced, true);
  if (final_text.size() > printed.size() && final_text.compare(0, printed.size(), printed) == 0)
    std::cout << final_text.substr(printed.size());
  std::cout << "\n";
  if (args.flag("print-ids")) {
    std::cerr << "ids:";
    for (auto id : produced) std::cerr << " " << id;
    std::cerr << "\n";
  }
  return 0;
}

}  // namespace

Command generate_command() {
  std::vector<Option> options = {
      {"model", "DIR", "HF model directory with tokenizer files", "", false, true},
      {"prompt", "TEXT", "prompt text (the user message with --chat)", "", false, true},
      {"chat", "", "wrap the prompt in the model's chat template as a user turn"},
      {"template", "NAME", "chat template: auto (detect from tokenizer_config.json) or a built-in name", "auto"},
      {"max-new-tokens", "N", "tokens to generate at most (stops early at EOS)", "64"},
      {"temperature", "T", "0 = greedy; > 0 samples from softmax(logits / T)", "0"},
      {"top-p", "P", "nucleus sampling mass when sampling", "1.0"},
      {"seed", "N", "sampling seed", "0"},
      {"print-ids", "", "also print the generated token ids on stderr"},
  };
  for (auto& o : device_options()) options.push_back(o);
  for (auto& o : compute_options()) options.push_back(o);
  return {"generate", "generate text from a prompt (KV cache, streamed output)", "", options, run_generate};
}

}  // namespace kdae::cli
