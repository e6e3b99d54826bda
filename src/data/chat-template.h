// Chat templates: render a conversation to the exact text the model family was trained on, and
// report where each assistant turn sits in that text so the loss mask comes from the rendering
// itself (never from searching marker tokens after tokenizing).
// Torch-free on purpose.
#pragma once
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

namespace kdae::data {

struct Message {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

// Byte range [begin, end) of the rendered text.
struct Span {
  size_t begin = 0, end = 0;
  bool operator==(const Span&) const = default;
};

struct Rendered {
  std::string text;
  // One span per assistant turn: its content plus the end-of-turn token text ("</s>",
  // "<|eot_id|>", "<|im_end|>"), in order.
  std::vector<Span> assistant_spans;
};

enum class TemplateKind {
  mistral,     // Mistral-7B-Instruct v0.1/v0.2, Mixtral-8x7B-Instruct: "<s> [INST] s\n\nu [/INST] a</s>"
  mistral_v3,  // Mistral-7B-Instruct v0.3: "<s>[INST] u[/INST] a</s>", system only on a final user turn
  mistral_legacy,  // the first Mistral-7B-Instruct v0.1 template: "<s>[INST] u [/INST]a</s>", no system
  llama3,      // Meta-Llama-3-Instruct: header blocks, trimmed contents, <|eot_id|>
  chatml,      // Qwen2 / SmolLM2 / generic ChatML, optional default system prompt
  zephyr,      // HuggingFaceH4 zephyr: <|user|>\n...</s>\n
  alpaca,      // Stanford Alpaca "### Instruction:" / "### Response:" blocks
};

class ChatTemplate {
 public:
  // Names: mistral, mistral-v3, mistral-legacy, llama3, chatml, qwen2, smollm2, zephyr, alpaca. qwen2 and smollm2
  // are chatml with those models' default system prompts. bos/eos are the token texts the
  // template writes (the tokenizer's bos_token / eos_token). UsageError on an unknown name.
  static ChatTemplate by_name(const std::string& name, const std::string& bos, const std::string& eos);
  // Recognises a Hugging Face Jinja chat_template string (tokenizer_config.json), including a
  // ChatML template's literal default system prompt. nullopt when it matches no built-in family.
  static std::optional<ChatTemplate> detect(const std::string& jinja, const std::string& bos,
                                            const std::string& eos);
  static std::vector<std::string> names();

  // Errors (kdae::Error) on roles the template cannot express, e.g. non-alternating turns.
  Rendered render(const std::vector<Message>& messages, bool add_generation_prompt = false) const;

  const std::string& name() const { return name_; }
  TemplateKind kind() const { return kind_; }
  // Used when a conversation has no system message (chatml family); "" = none.
  const std::string& default_system() const { return default_system_; }
  // Identifies everything that changes the rendering (for cache keys).
  std::string fingerprint() const;

 private:
  std::string name_;
  TemplateKind kind_ = TemplateKind::chatml;
  std::string bos_, eos_, default_system_;
};

}  // namespace kdae::data
