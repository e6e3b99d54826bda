// Renders conversations with kdae's chat templates for tests/python/test_chat_template.py.
// stdin: JSON list of {"template": NAME or "", "jinja": STR (used when template is ""), "bos", "eos",
// "messages": [{role, content}], "add_generation_prompt": bool}.
// stdout: JSON list of {"name", "text", "spans": [[begin, end], ...]} (byte offsets).
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "data/chat-template.h"

int main() {
  using kdae::data::ChatTemplate;
  const std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  nlohmann::json out = nlohmann::json::array();
  for (const auto& job : nlohmann::json::parse(input)) {
    const std::string bos = job.at("bos"), eos = job.at("eos");
    std::optional<ChatTemplate> t;
    if (!job.at("template").get<std::string>().empty()) t = ChatTemplate::by_name(job.at("template"), bos, eos);
    else t = ChatTemplate::detect(job.at("jinja"), bos, eos);
    if (!t) {
      out.push_back({{"name", ""}});
      continue;
    }
    std::vector<kdae::data::Message> messages;
    for (const auto& m : job.at("messages")) messages.push_back({m.at("role"), m.at("content")});
    nlohmann::json result = {{"name", t->name()}};
    try {
      const auto r = t->render(messages, job.value("add_generation_prompt", false));
      result["text"] = r.text;
      result["spans"] = nlohmann::json::array();
      for (const auto& s : r.assistant_spans) result["spans"].push_back({s.begin, s.end});
    } catch (const std::exception& e) {
      result["error"] = e.what();
    }
    out.push_back(result);
  }
  std::cout << out.dump() << "\n";
}
