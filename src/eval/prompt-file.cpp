#include "eval/prompt-file.h"

#include <fstream>

#include "common/error.h"
#include "generate/batch-decoder.h"

namespace kdae::eval {
namespace {

// Fields a training file reads beside the conversation: kept, so an answered file trains as it is.
void carry_training_fields(const nlohmann::json& from, nlohmann::json& to) {
  for (const char* key : {"domain", "is_domain", "weight"})
    if (from.contains(key)) to[key] = from[key];
}

// One input line: {"prompt": "..."} or {"messages": [{"role": ..., "content": ...}, ...]}. A conversation
// that ends with an assistant turn is answered anew from the turn before it (a training file re-answered
// by a teacher is sequence-level KD's data).
PromptItem parse_item(const std::string& line, const std::string& where, bool chat) {
  nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) fail(where, ": not a JSON object");
  PromptItem item;
  item.where = where;
  if (j.contains("messages")) {
    if (!j["messages"].is_array() || j["messages"].empty()) fail(where, ": \"messages\" must be a non-empty array");
    nlohmann::json kept = nlohmann::json::array();
    for (const auto& m : j["messages"]) {
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
          !m["content"].is_string())
        fail(where, ": each message needs string \"role\" and \"content\"");
      item.messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
      kept.push_back(m);
    }
    if (item.messages.back().role == "assistant") {
      item.messages.pop_back();
      kept.erase(kept.end() - 1);
    }
    if (item.messages.empty()) fail(where, ": the conversation has no turn before its assistant answer");
    item.source = {{"messages", kept}};
  } else if (j.contains("prompt") && j["prompt"].is_string()) {
    item.prompt = j["prompt"].get<std::string>();
    if (chat) item.messages = {{"user", item.prompt}};
    item.source = {{"prompt", item.prompt}};
  } else {
    fail(where, ": expected a string \"prompt\" or a \"messages\" array");
  }
  carry_training_fields(j, item.source);
  return item;
}

std::vector<std::string> decode_texts(gen::TextGenerator& generator, std::vector<gen::SequenceRequest> requests,
                                      int64_t batch_size, const std::function<void(int64_t, int64_t)>& on_progress) {
  const auto completions = gen::decode_all(generator.model(), std::move(requests), batch_size, on_progress);
  std::vector<std::string> texts;
  for (const auto& c : completions) texts.push_back(gen::decode_text(generator.tokenizer(), c.tokens));
  return texts;
}

}  // namespace

std::vector<PromptItem> read_prompt_file(const std::string& path, bool chat) {
  std::ifstream in(path);
  if (!in) fail("cannot open ", path);
  std::vector<PromptItem> items;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    items.push_back(parse_item(line, str(path, ":", number), chat));
  }
  if (items.empty()) fail(path, ": no prompts");
  return items;
}

nlohmann::json answered_line(const PromptItem& item, const std::string& answer) {
  nlohmann::json line = item.source;
  if (line.contains("messages"))
    line["messages"].push_back({{"role", "assistant"}, {"content", answer}});
  else
    line["response"] = answer;
  return line;
}

std::vector<std::string> answer_items(gen::TextGenerator& generator, const std::vector<PromptItem>& items,
                                      const BatchAnswerOptions& options) {
  std::vector<gen::SequenceRequest> requests;
  for (const auto& item : items) {
    const bool conversation = !item.messages.empty();
    if (conversation && !generator.has_chat_template())
      fail(item.where, ": a conversation needs a chat template, and the tokenizer's chat_template matches no "
                       "built-in one; pass --template NAME");
    gen::SequenceRequest r;
    r.prompt = conversation ? generator.conversation_ids(item.messages) : generator.text_ids(item.prompt);
    r.options = options.generate;
    r.options.stop_ids = generator.stop_ids(conversation);
    requests.push_back(std::move(r));
  }
  return decode_texts(generator, std::move(requests), options.batch_size, options.on_progress);
}

std::vector<gen::Completion> complete_conversations(gen::TextGenerator& generator,
                                                    const std::vector<std::vector<data::Message>>& conversations,
                                                    const std::vector<gen::GenerateOptions>& options,
                                                    int64_t batch_size,
                                                    const std::function<void(int64_t, int64_t)>& on_progress) {
  std::vector<gen::SequenceRequest> requests;
  for (size_t i = 0; i < conversations.size(); ++i) {
    gen::SequenceRequest r;
    r.prompt = generator.conversation_ids(conversations[i]);
    r.options = options[i];
    r.options.stop_ids = generator.stop_ids(true);
    requests.push_back(std::move(r));
  }
  return gen::decode_all(generator.model(), std::move(requests), batch_size, on_progress);
}

std::vector<std::string> answer_conversations(gen::TextGenerator& generator,
                                              const std::vector<std::vector<data::Message>>& conversations,
                                              const std::vector<gen::GenerateOptions>& options, int64_t batch_size,
                                              const std::function<void(int64_t, int64_t)>& on_progress) {
  std::vector<std::string> texts;
  for (const auto& c : complete_conversations(generator, conversations, options, batch_size, on_progress))
    texts.push_back(gen::decode_text(generator.tokenizer(), c.tokens));
  return texts;
}

}  // namespace kdae::eval
