#include "data/chat-template.h"

#include "common/error.h"

namespace kdae::data {

namespace {

constexpr const char* kQwen2System = "You are a helpful assistant.";
constexpr const char* kSmolLM2System = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
constexpr const char* kAlpacaPreamble =
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.";

// Jinja's trim filter is Python's str.strip(); this covers ASCII whitespace plus the separator
// controls Python also strips. Non-ASCII Unicode spaces are kept (documented in docs/data.md).
bool is_py_space(unsigned char c) { return c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f); }

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && is_py_space(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && is_py_space(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

// Appends text while recording assistant spans.
struct Writer {
  Rendered out;
  void add(const std::string& s) { out.text += s; }
  void assistant(const std::string& content, const std::string& end_of_turn) {
    Span span{out.text.size(), 0};
    out.text += content;
    out.text += end_of_turn;
    span.end = out.text.size();
    out.assistant_spans.push_back(span);
  }
};

void check_role(const Message& m, size_t index) {
  if (m.role != "system" && m.role != "user" && m.role != "assistant")
    fail("message ", index, ": unknown role '", m.role, "' (expected system, user or assistant)");
}

// Mistral templates accept one leading system message, then strictly alternating user/assistant.
size_t split_system(const std::vector<Message>& messages, const std::string& name, bool system_allowed) {
  const size_t first = (!messages.empty() && messages[0].role == "system") ? 1 : 0;
  if (first == 1 && !system_allowed) fail("template ", name, " has no system prompt; drop the system message");
  for (size_t i = first; i < messages.size(); ++i) {
    const bool want_user = (i - first) % 2 == 0;
    if ((messages[i].role == "user") != want_user || (!want_user && messages[i].role != "assistant"))
      fail("template ", name, ": message ", i, " is '", messages[i].role,
           "'; after the optional system message roles must alternate user/assistant");
  }
  return first;
}

}  // namespace

std::vector<std::string> ChatTemplate::names() {
  return {"mistral", "mistral-v3", "mistral-legacy", "llama3", "chatml", "qwen2", "smollm2", "zephyr", "alpaca"};
}

ChatTemplate ChatTemplate::by_name(const std::string& name, const std::string& bos, const std::string& eos) {
  ChatTemplate t;
  t.name_ = name;
  t.bos_ = bos;
  t.eos_ = eos;
  if (name == "mistral") t.kind_ = TemplateKind::mistral;
  else if (name == "mistral-v3") t.kind_ = TemplateKind::mistral_v3;
  else if (name == "mistral-legacy") t.kind_ = TemplateKind::mistral_legacy;
  else if (name == "llama3") t.kind_ = TemplateKind::llama3;
  else if (name == "chatml") t.kind_ = TemplateKind::chatml;
  else if (name == "qwen2") t.kind_ = TemplateKind::chatml, t.default_system_ = kQwen2System;
  else if (name == "smollm2") t.kind_ = TemplateKind::chatml, t.default_system_ = kSmolLM2System;
  else if (name == "zephyr") t.kind_ = TemplateKind::zephyr;
  else if (name == "alpaca") t.kind_ = TemplateKind::alpaca, t.default_system_ = kAlpacaPreamble;
  else {
    std::string known;
    for (const auto& n : names()) known += (known.empty() ? "" : ", ") + n;
    usage_fail("unknown chat template '", name, "' (known: ", known, ")");
  }
  return t;
}

// The literal after "<|im_start|>system\n" up to "<|im_end|>" inside a Jinja string, if the
// template writes one: that is the default system prompt of Qwen2-style ChatML templates.
static std::string chatml_default_system(const std::string& jinja) {
  for (const std::string& head : {std::string("<|im_start|>system\\n"), std::string("<|im_start|>system\n")}) {
    const size_t at = jinja.find(head);
    if (at == std::string::npos) continue;
    const size_t from = at + head.size();
    const size_t end = jinja.find("<|im_end|>", from);
    if (end == std::string::npos) continue;
    const std::string literal = jinja.substr(from, end - from);
    // A quote or plus means the system text is an expression (messages[0]['content']), not a literal.
    if (literal.find_first_of("'\"+{}\\") != std::string::npos) continue;
    return literal;
  }
  return "";
}

std::optional<ChatTemplate> ChatTemplate::detect(const std::string& jinja, const std::string& bos,
                                                 const std::string& eos) {
  auto has = [&](const char* s) { return jinja.find(s) != std::string::npos; };
  if (has("<|start_header_id|>")) return by_name("llama3", bos, eos);
  if (has("<|im_start|>")) {
    const std::string system = chatml_default_system(jinja);
    if (system == kQwen2System) return by_name("qwen2", bos, eos);
    if (system == kSmolLM2System) return by_name("smollm2", bos, eos);
    ChatTemplate t = by_name("chatml", bos, eos);
    t.default_system_ = system;
    return t;
  }
  if (has("[INST]")) {
    if (has("' [INST] '") || has("\" [INST] \"")) return by_name("mistral", bos, eos);
    if (has("' [/INST]'") || has("\" [/INST]\"")) return by_name("mistral-legacy", bos, eos);
    return by_name("mistral-v3", bos, eos);
  }
  if (has("<|assistant|>")) return by_name("zephyr", bos, eos);
  if (has("### Instruction")) return by_name("alpaca", bos, eos);
  return std::nullopt;
}

std::string ChatTemplate::fingerprint() const {
  return str(name_, '\x1f', bos_, '\x1f', eos_, '\x1f', default_system_);
}

Rendered ChatTemplate::render(const std::vector<Message>& messages, bool add_generation_prompt) const {
  if (messages.empty()) fail("empty conversation");
  for (size_t i = 0; i < messages.size(); ++i) check_role(messages[i], i);
  Writer w;
  switch (kind_) {
    case TemplateKind::mistral: {
      const size_t first = split_system(messages, name_, true);
      w.add(bos_);
      for (size_t i = first; i < messages.size(); ++i) {
        const Message& m = messages[i];
        if (m.role == "user") {
          if (i == first && first == 1) w.add(" [INST] " + messages[0].content + "\n\n" + m.content + " [/INST]");
          else w.add(" [INST] " + m.content + " [/INST]");
        } else {
          w.add(" ");
          w.assistant(m.content, eos_);
        }
      }
      break;
    }
    case TemplateKind::mistral_v3: {
      const size_t first = split_system(messages, name_, true);
      w.add(bos_);
      for (size_t i = first; i < messages.size(); ++i) {
        const Message& m = messages[i];
        if (m.role == "user") {
          // v0.3 writes the system prompt only into a user turn that is the very last message, so a
          // training conversation ending with the assistant loses it; kept as is for parity.
          if (i + 1 == messages.size() && first == 1)
            w.add("[INST] " + messages[0].content + "\n\n" + m.content + "[/INST]");
          else w.add("[INST] " + m.content + "[/INST]");
        } else {
          w.add(" ");
          w.assistant(trim(m.content), eos_);
        }
      }
      break;
    }
    case TemplateKind::mistral_legacy: {
      split_system(messages, name_, false);
      w.add(bos_);
      for (const Message& m : messages) {
        if (m.role == "user") w.add("[INST] " + m.content + " [/INST]");
        else w.assistant(m.content, eos_);
      }
      break;
    }
    case TemplateKind::llama3: {
      for (size_t i = 0; i < messages.size(); ++i) {
        const Message& m = messages[i];
        if (i == 0) w.add(bos_);
        w.add("<|start_header_id|>" + m.role + "<|end_header_id|>\n\n");
        if (m.role == "assistant") w.assistant(trim(m.content), "<|eot_id|>");
        else w.add(trim(m.content) + "<|eot_id|>");
      }
      if (add_generation_prompt) w.add("<|start_header_id|>assistant<|end_header_id|>\n\n");
      break;
    }
    case TemplateKind::chatml: {
      if (messages[0].role != "system" && !default_system_.empty())
        w.add("<|im_start|>system\n" + default_system_ + "<|im_end|>\n");
      for (const Message& m : messages) {
        w.add("<|im_start|>" + m.role + "\n");
        if (m.role == "assistant") w.assistant(m.content, "<|im_end|>");
        else w.add(m.content + "<|im_end|>");
        w.add("\n");
      }
      if (add_generation_prompt) w.add("<|im_start|>assistant\n");
      break;
    }
    case TemplateKind::zephyr: {
      for (const Message& m : messages) {
        w.add("<|" + m.role + "|>\n");
        if (m.role == "assistant") w.assistant(m.content, eos_);
        else w.add(m.content + eos_);
        w.add("\n");
      }
      if (add_generation_prompt) w.add("<|assistant|>\n");
      break;
    }
    case TemplateKind::alpaca: {
      size_t first = 0;
      if (messages[0].role == "system") {
        w.add(messages[0].content + "\n\n");
        first = 1;
      } else {
        w.add(default_system_ + "\n\n");
      }
      for (size_t i = first; i < messages.size(); ++i) {
        const Message& m = messages[i];
        if (m.role == "user") {
          w.add("### Instruction:\n" + m.content + "\n\n");
        } else if (m.role == "assistant") {
          w.add("### Response:\n");
          w.assistant(m.content, eos_);
          w.add("\n\n");
        } else {
          fail("template alpaca: message ", i, " is a system message after the first turn");
        }
      }
      if (add_generation_prompt) w.add("### Response:\n");
      break;
    }
  }
  return std::move(w.out);
}

}  // namespace kdae::data
