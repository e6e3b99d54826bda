// The text side of generation shared by `kdae generate`, `chat`, `answer`, `serve` and `demo`: a model
// with its tokenizer and chat template, prompts and conversations turned into token ids, replies
// streamed as decoded text.
#pragma once
#include <iosfwd>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/chat-template.h"
#include "generate/decode.h"
#include "model/transformer.h"
#include "tokenizer/tokenizer.h"

namespace kdae::gen {

// The chat template named `name` ("auto": detected from the tokenizer's chat_template); an error
// naming the fix when detection fails.
data::ChatTemplate resolve_chat_template(const tok::Tokenizer& tokenizer, const std::string& name);

// Where an assistant reply ends: EOS, plus the template's end-of-turn token when there is a template.
std::vector<int64_t> reply_stop_ids(const tok::Tokenizer& tokenizer, const data::ChatTemplate* chat);

// Decodes a growing token list and hands out only the new text: decoding the whole list each time
// keeps characters that span several tokens whole (a partial UTF-8 sequence is held back).
// The text of generated tokens (special tokens skipped).
std::string decode_text(const tok::Tokenizer& tokenizer, const std::vector<int64_t>& ids);

class TextStreamer {
 public:
  explicit TextStreamer(const tok::Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
  std::string add(int64_t id);  // the text this token completes ("" while a character is partial)
  std::string finish();         // the whole text
  const std::string& text() const { return printed_; }

 private:
  const tok::Tokenizer& tokenizer_;
  std::vector<tok::TokenId> ids_;
  std::string printed_;
};

class TextGenerator {
 public:
  // template_name: "" = plain text prompts only; otherwise as resolve_chat_template. With
  // template_optional, a failed detection is only an error once a conversation is rendered.
  TextGenerator(const std::string& model_dir, const std::string& template_name, c10::Device device,
                c10::ScalarType dtype, bool template_optional = false);

  // The text the model sees for a conversation, ending with the assistant's generation prompt.
  std::string render(const std::vector<data::Message>& messages) const;
  // Token ids of a conversation (rendered; the template carries its BOS) or of plain text (with the
  // tokenizer's special tokens).
  std::vector<int64_t> conversation_ids(const std::vector<data::Message>& messages) const;
  std::vector<int64_t> text_ids(const std::string& text) const;
  // Where generation ends: EOS, plus the template's end-of-turn token for conversations.
  std::vector<int64_t> stop_ids(bool conversation) const;

  // Plain continuation of `text`, streamed to `stream` when given.
  std::string continue_text(const std::string& text, GenerateOptions options, std::ostream* stream);
  // The assistant's next reply; stops at EOS or the end-of-turn token. The KV cache is kept between
  // calls, so a growing conversation only runs its new tokens.
  std::string reply(const std::vector<data::Message>& messages, GenerateOptions options, std::ostream* stream);

  const tok::Tokenizer& tokenizer() const { return *tokenizer_; }
  model::Transformer& model() { return model_; }
  bool has_chat_template() const { return chat_.has_value(); }
  const std::vector<int64_t>& last_ids() const { return last_ids_; }  // tokens of the last reply
  void reset() { state_ = {}; }

 private:
  std::string run(const std::vector<int64_t>& prompt, GenerateOptions options, std::ostream* stream);

  std::unique_ptr<tok::Tokenizer> tokenizer_;
  model::Transformer model_{nullptr};
  std::optional<data::ChatTemplate> chat_;
  DecodeState state_;
  std::vector<int64_t> last_ids_;
};

}  // namespace kdae::gen
