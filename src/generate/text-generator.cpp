#include "generate/text-generator.h"

#include <iostream>

#include "common/error.h"
#include "data/dataset.h"
#include "io/hf-model.h"

namespace kdae::gen {
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

}  // namespace

std::vector<int64_t> reply_stop_ids(const tok::Tokenizer& tokenizer, const data::ChatTemplate* chat) {
  std::vector<int64_t> ids;
  if (tokenizer.special().eos) ids.push_back(*tokenizer.special().eos);
  const auto end_of_turn = chat ? end_of_turn_id(*chat, tokenizer) : std::nullopt;
  if (end_of_turn && (ids.empty() || ids[0] != *end_of_turn)) ids.push_back(*end_of_turn);
  return ids;
}

data::ChatTemplate resolve_chat_template(const tok::Tokenizer& tokenizer, const std::string& name) {
  auto chat = data::chat_template_for(tokenizer, name);
  if (!chat) fail("the tokenizer's chat_template matches no built-in template; pass --template NAME");
  return *chat;
}

std::string decode_text(const tok::Tokenizer& tokenizer, const std::vector<int64_t>& ids) {
  return tokenizer.decode(std::vector<tok::TokenId>(ids.begin(), ids.end()), /*skip_special_tokens=*/true);
}

std::string TextStreamer::add(int64_t id) {
  ids_.push_back(static_cast<tok::TokenId>(id));
  const std::string now = tokenizer_.decode(ids_, /*skip_special_tokens=*/true);
  // A partial character decodes to U+FFFD, which a later token may replace: wait for it.
  if (now.size() <= printed_.size() || now.compare(0, printed_.size(), printed_) != 0) return "";
  if (now.size() >= 3 && now.compare(now.size() - 3, 3, "\xEF\xBF\xBD") == 0) return "";
  std::string fresh = now.substr(printed_.size());
  printed_ = now;
  return fresh;
}

std::string TextStreamer::finish() {
  printed_ = tokenizer_.decode(ids_, true);
  return printed_;
}

TextGenerator::TextGenerator(const std::string& model_dir, const std::string& template_name, c10::Device device,
                             c10::ScalarType dtype, bool template_optional)
    : tokenizer_(tok::Tokenizer::load(model_dir)), model_(io::load_model(model_dir, {device, dtype})) {
  model_->eval();
  if (template_optional) chat_ = data::chat_template_for(*tokenizer_, template_name);
  else if (!template_name.empty()) chat_ = resolve_chat_template(*tokenizer_, template_name);
}

std::string TextGenerator::render(const std::vector<data::Message>& messages) const {
  if (!chat_)
    fail("a conversation needs a chat template, and the tokenizer's chat_template matches no built-in one; "
         "pass --template NAME");
  return chat_->render(messages, /*add_generation_prompt=*/true).text;
}

std::vector<int64_t> TextGenerator::conversation_ids(const std::vector<data::Message>& messages) const {
  // A rendered chat already carries its BOS text.
  auto ids = tokenizer_->encode(render(messages), /*add_special_tokens=*/false);
  if (ids.empty()) fail("the conversation encodes to no tokens");
  return {ids.begin(), ids.end()};
}

std::vector<int64_t> TextGenerator::text_ids(const std::string& text) const {
  auto ids = tokenizer_->encode(text, /*add_special_tokens=*/true);
  if (ids.empty()) fail("the prompt encodes to no tokens");
  return {ids.begin(), ids.end()};
}

std::vector<int64_t> TextGenerator::stop_ids(bool conversation) const {
  // An end-of-turn token means nothing outside a chat.
  return reply_stop_ids(*tokenizer_, conversation && chat_ ? &*chat_ : nullptr);
}

std::string TextGenerator::continue_text(const std::string& text, GenerateOptions options, std::ostream* stream) {
  options.stop_ids = stop_ids(false);
  return run(text_ids(text), options, stream);
}

std::string TextGenerator::reply(const std::vector<data::Message>& messages, GenerateOptions options,
                                 std::ostream* stream) {
  options.stop_ids = stop_ids(true);
  return run(conversation_ids(messages), options, stream);
}

std::string TextGenerator::run(const std::vector<int64_t>& prompt, GenerateOptions options, std::ostream* stream) {
  TextStreamer streamer(*tokenizer_);
  auto print = [&](int64_t id) {
    const std::string fresh = streamer.add(id);
    if (stream && !fresh.empty()) *stream << fresh << std::flush;
  };
  last_ids_ = generate(model_, prompt, options, print, &state_);
  const std::string printed = streamer.text(), text = streamer.finish();
  if (stream && text.size() > printed.size() && text.compare(0, printed.size(), printed) == 0) *stream << text.substr(printed.size()) << std::flush;
  return text;
}

}  // namespace kdae::gen
