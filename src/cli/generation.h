// The text side of generation shared by `kdae generate`, `kdae chat` and `kdae demo`: a model with
// its tokenizer and chat template, replies to a prompt or a conversation, streamed as decoded text,
// and the generation flags of the option table.
#pragma once
#include <iosfwd>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli/options.h"
#include "data/chat-template.h"
#include "model/generate.h"
#include "model/transformer.h"
#include "tokenizer/tokenizer.h"

namespace kdae::cli {

// --max-new-tokens, --temperature, --top-p, --seed, --template.
std::vector<Option> generation_options();
model::GenerateOptions generate_options_from(const Args& args);

// The chat template named `name` ("auto": detected from the tokenizer's chat_template).
data::ChatTemplate resolve_chat_template(const tok::Tokenizer& tokenizer, const std::string& name);

class Generator {
 public:
  // template_name: "" = plain text prompts only; otherwise as resolve_chat_template.
  Generator(const std::string& model_dir, const std::string& template_name, c10::Device device, c10::ScalarType dtype);

  // The text the model sees for a conversation, ending with the assistant's generation prompt.
  std::string render(const std::vector<data::Message>& messages) const;
  // Plain continuation of `text` (tokenized with the tokenizer's special tokens).
  std::string continue_text(const std::string& text, model::GenerateOptions options, std::ostream* stream);
  // The assistant's next reply; stops at EOS or the template's end-of-turn token. The KV cache
  // is kept between calls, so a growing conversation only runs its new tokens.
  std::string reply(const std::vector<data::Message>& messages, model::GenerateOptions options, std::ostream* stream);

  const tok::Tokenizer& tokenizer() const { return *tokenizer_; }
  const std::vector<int64_t>& last_ids() const { return last_ids_; }  // tokens of the last reply
  void reset() { state_ = {}; }

 private:
  std::string run(const std::vector<int64_t>& prompt, model::GenerateOptions options, std::ostream* stream);

  std::unique_ptr<tok::Tokenizer> tokenizer_;
  model::Transformer model_{nullptr};
  std::optional<data::ChatTemplate> chat_;
  std::vector<int64_t> stop_ids_;  // EOS, plus the end-of-turn token in chat mode
  model::DecodeState state_;
  std::vector<int64_t> last_ids_;
};

}  // namespace kdae::cli
