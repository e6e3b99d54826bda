// Prompt files: JSONL, one {"prompt": ...} or {"messages": [...]} per line, answered in batches.
// `kdae generate --input` and `kdae answer --bench jsonl` are this one path.
#pragma once
#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

#include "data/chat-template.h"
#include "generate/batch-decoder.h"
#include "generate/text-generator.h"

namespace kdae::eval {

struct PromptItem {
  nlohmann::json source;                // the input's prompt or conversation and training fields
  std::vector<data::Message> messages;  // chat turns; empty = plain prompt
  std::string prompt;
  std::string where;  // file:line
};

// chat: a plain {"prompt"} becomes one user turn. A conversation ending with an assistant turn is
// answered anew (that turn is dropped).
std::vector<PromptItem> read_prompt_file(const std::string& path, bool chat);

// The output line of an answered item, in a form kdae distill reads: {"prompt", "response"}, or the
// conversation with the answer as its last assistant turn; domain, is_domain and weight carried over.
nlohmann::json answered_line(const PromptItem& item, const std::string& answer);

// What generate() needs to answer many prompts at once.
struct BatchAnswerOptions {
  gen::GenerateOptions generate;  // stop ids are set per item (conversation or plain text)
  int64_t batch_size = 8;
  std::function<void(int64_t done, int64_t tokens)> on_progress;
};

// Every item's answer, in order. Each is decoded in its own rows of the batch cache, so an answer
// does not depend on its neighbours (batched greedy equals one-by-one greedy: test_generate.py).
std::vector<std::string> answer_items(gen::TextGenerator& generator, const std::vector<PromptItem>& items,
                                      const BatchAnswerOptions& options);

// Conversations, each with its own sampling options (per-category temperatures, seeds): the generated
// tokens, and (answer_conversations) their text.
std::vector<gen::Completion> complete_conversations(gen::TextGenerator& generator,
                                                    const std::vector<std::vector<data::Message>>& conversations,
                                                    const std::vector<gen::GenerateOptions>& options,
                                                    int64_t batch_size,
                                                    const std::function<void(int64_t, int64_t)>& on_progress = {});
std::vector<std::string> answer_conversations(gen::TextGenerator& generator,
                                              const std::vector<std::vector<data::Message>>& conversations,
                                              const std::vector<gen::GenerateOptions>& options, int64_t batch_size,
                                              const std::function<void(int64_t, int64_t)>& on_progress = {});

}  // namespace kdae::eval
