#include "cli/generation.h"

#include <iostream>

#include "common/error.h"
#include "data/dataset.h"
#include "io/hf-model.h"

namespace kdae::cli {
namespace {

// The token that closes an assistant turn ("<|im_end|>", "<|eot_id|>", "</s>"): whatever the
// template writes after a reply's content inside its assistant span.
std::optional<int64_t> end_of_turn_id(const data::ChatTemplate& chat, const tok::Tokenizer& tokenizer) {
  const std::string content = "x";
  const data::Rendered r = chat.render({{"user", "u"}, {"assistant", content}});
  if (r.assistant_spans.empty()) return std::nullopt;
  const data::Span span = r.assistant_spans.back();
  std::string tail = r.text.substr(span.begin, span.end - span.begin);
  const size_t at = tail.rfind(content);
  if (at == std::string::npos) return std::nullopt;
  tail = tail.substr(at + content.size());
  if (tail.empty()) return std::nullopt;
  auto id = tokenizer.token_to_id(tail);
  return id ? std::optional<int64_t>(*id) : std::nullopt;
}

// Prints the new suffix of the decoded reply as tokens arrive: decoding the whole reply each time
// keeps characters that span several tokens whole.
class TextStreamer {
 public:
  TextStreamer(const tok::Tokenizer& tokenizer, std::ostream* out) : tokenizer_(tokenizer), out_(out) {}
  void add(int64_t id) {
    ids_.push_back(static_cast<tok::TokenId>(id));
    emit(tokenizer_.decode(ids_, /*skip_special_tokens=*/true));
  }
  std::string finish() {
    std::string text = tokenizer_.decode(ids_, true);
    emit(text);
    return text;
  }

 private:
  void emit(const std::string& now) {
    if (!out_ || now.size() <= printed_.size() || now.compare(0, printed_.size(), printed_) != 0) return;
    *out_ << now.substr(printed_.size()) << std::flush;
    printed_ = now;
  }
  const tok::Tokenizer& tokenizer_;
  std::ostream* out_;
  std::vector<tok::TokenId> ids_;
  std::string printed_;
};

}  // namespace

std::vector<Option> generation_options() {
  return {
      {"template", "NAME", "chat template: auto (detect from tokenizer_config.json) or a built-in name", "auto"},
      {"max-new-tokens", "N", "tokens to generate at most (stops early at EOS / end of turn)", "64"},
      {"temperature", "T", "0 = greedy; > 0 samples from softmax(logits / T)", "0"},
      {"top-p", "P", "nucleus sampling mass when sampling", "1.0"},
      {"seed", "N", "sampling seed", "0"},
  };
}

model::GenerateOptions generate_options_from(const Args& args) {
  model::GenerateOptions o;
  o.max_new_tokens = args.get_int("max-new-tokens");
  o.temperature = args.get_double("temperature");
  o.top_p = args.get_double("top-p");
  o.seed = static_cast<uint64_t>(args.get_int("seed"));
  if (o.max_new_tokens < 0) usage_fail("--max-new-tokens must be >= 0");
  if (o.top_p <= 0 || o.top_p > 1) usage_fail("--top-p must be in (0, 1]");
  return o;
}

data::ChatTemplate resolve_chat_template(const tok::Tokenizer& tokenizer, const std::string& name) {
  auto chat = data::chat_template_for(tokenizer, name);
  if (!chat) fail("the tokenizer's chat_template matches no built-in template; pass --template NAME");
  return *chat;
}

Generator::Generator(const std::string& model_dir, const std::string& template_name, c10::Device device,
                     c10::ScalarType dtype)
    : tokenizer_(tok::Tokenizer::load(model_dir)), model_(io::load_model(model_dir, {device, dtype})) {
  model_->eval();
  if (!template_name.empty()) chat_ = resolve_chat_template(*tokenizer_, template_name);
  if (tokenizer_->special().eos) stop_ids_.push_back(*tokenizer_->special().eos);
  if (chat_)
    if (auto eot = end_of_turn_id(*chat_, *tokenizer_)) stop_ids_.push_back(*eot);
}

std::string Generator::render(const std::vector<data::Message>& messages) const {
  if (!chat_) fail("a conversation needs a chat template");
  return chat_->render(messages, /*add_generation_prompt=*/true).text;
}

std::string Generator::continue_text(const std::string& text, model::GenerateOptions options, std::ostream* stream) {
  auto ids = tokenizer_->encode(text, /*add_special_tokens=*/true);
  if (ids.empty()) fail("the prompt encodes to no tokens");
  // Plain continuation stops at EOS only: an end-of-turn token means nothing outside a chat.
  options.stop_ids.clear();
  if (tokenizer_->special().eos) options.stop_ids.push_back(*tokenizer_->special().eos);
  return run({ids.begin(), ids.end()}, options, stream);
}

std::string Generator::reply(const std::vector<data::Message>& messages, model::GenerateOptions options,
                             std::ostream* stream) {
  // A rendered chat already carries its BOS text.
  auto ids = tokenizer_->encode(render(messages), /*add_special_tokens=*/false);
  if (ids.empty()) fail("the conversation encodes to no tokens");
  options.stop_ids = stop_ids_;
  return run({ids.begin(), ids.end()}, options, stream);
}

std::string Generator::run(const std::vector<int64_t>& prompt, model::GenerateOptions options, std::ostream* stream) {
  TextStreamer streamer(*tokenizer_, stream);
  last_ids_ = model::generate(model_, prompt, options, [&](int64_t id) { streamer.add(id); }, &state_);
  return streamer.finish();
}

}  // namespace kdae::cli
