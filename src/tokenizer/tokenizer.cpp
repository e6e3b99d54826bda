// Tokenizer::load: picks tokenizer.json or tokenizer.model and applies tokenizer_config.json,
// special_tokens_map.json and chat_template.jinja.
#include "tokenizer/tokenizer.h"

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/files.h"
#include "tokenizer/sentencepiece-tokenizer.h"
#include "tokenizer/tokenizer-json.h"

namespace kdae::tok {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

json read_json(const fs::path& path) {
  try {
    return json::parse(read_file(path));
  } catch (const json::parse_error& e) {
    fail(path.string(), ": not valid JSON: ", e.what());
  }
}

// A special token is a string or an AddedToken dict {"content": ...}.
std::optional<std::string> token_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

struct Config {
  std::optional<std::string> bos, eos, pad, unk;
  std::optional<bool> add_bos, add_eos;
  std::string chat_template;
  std::string hash_input;  // what of the config changes ids
};

Config read_config(const fs::path& dir) {
  Config c;
  const auto take = [&](const json& j, const fs::path& file) {
    if (!j.is_object()) fail(file.string(), ": expected a JSON object");
    for (auto [key, slot] : {std::pair{"bos_token", &c.bos}, {"eos_token", &c.eos}, {"pad_token", &c.pad}, {"unk_token", &c.unk}})
      if (j.contains(key) && !j[key].is_null()) {
        *slot = token_text(j[key]);
        if (!*slot) fail(file.string(), ": key ", key, " is neither a string nor a {\"content\": ...} object");
      }
    for (auto [key, slot] : {std::pair{"add_bos_token", &c.add_bos}, {"add_eos_token", &c.add_eos}})
      if (j.contains(key) && j[key].is_boolean()) *slot = j[key].get<bool>();
    if (j.contains("chat_template")) {
      const json& t = j["chat_template"];
      if (t.is_string()) {
        c.chat_template = t.get<std::string>();
      } else if (t.is_array()) {  // [{"name": "default", "template": ...}, ...]
        for (const json& entry : t)
          if (entry.value("name", std::string()) == "default") c.chat_template = entry.value("template", std::string());
      }
    }
  };
  // special_tokens_map.json first: tokenizer_config.json wins where both speak.
  if (fs::exists(dir / "special_tokens_map.json")) take(read_json(dir / "special_tokens_map.json"), dir / "special_tokens_map.json");
  if (fs::exists(dir / "tokenizer_config.json")) take(read_json(dir / "tokenizer_config.json"), dir / "tokenizer_config.json");
  if (c.chat_template.empty() && fs::exists(dir / "chat_template.jinja")) c.chat_template = read_file(dir / "chat_template.jinja");
  c.hash_input = str(c.bos.value_or(""), "\x1f", c.eos.value_or(""), "\x1f", c.pad.value_or(""), "\x1f",
                     c.unk.value_or(""), "\x1f", c.add_bos.value_or(false), c.add_bos.has_value(), "\x1f",
                     c.add_eos.value_or(false), c.add_eos.has_value());
  return c;
}

template <typename T>
void resolve(const T& tok, const Config& c, const fs::path& dir, SpecialTokens& s) {
  for (auto [name, slot, value] : {std::tuple{"bos_token", &s.bos, &c.bos}, {"eos_token", &s.eos, &c.eos},
                                   {"pad_token", &s.pad, &c.pad}, {"unk_token", &s.unk, &c.unk}}) {
    if (!*value) continue;
    const auto id = tok.token_to_id(**value);
    if (!id) fail((dir / "tokenizer_config.json").string(), ": ", name, " '", **value, "' is not in the vocabulary");
    *slot = *id;
  }
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::load(const fs::path& dir) {
  if (!fs::is_directory(dir)) fail(dir.string(), ": not a directory (expected a model or tokenizer directory)");
  const Config c = read_config(dir);
  if (fs::exists(dir / "tokenizer.json")) {
    auto tok = std::make_unique<JsonTokenizer>(read_file(dir / "tokenizer.json"), dir / "tokenizer.json");
    SpecialTokens s;
    resolve(*tok, c, dir, s);
    if (tok->has_post_processor()) {
      // The post-processor is what adds BOS/EOS in HF fast tokenizers; report what it does.
      s.add_bos = tok->template_bos().has_value();
      s.add_eos = tok->template_eos().has_value();
      if (s.add_bos && !s.bos) s.bos = tok->template_bos();
      if (s.add_eos && !s.eos) s.eos = tok->template_eos();
    } else {
      s.add_bos = c.add_bos.value_or(false);
      s.add_eos = c.add_eos.value_or(false);
    }
    tok->set_special(s, c.chat_template, c.hash_input);
    return tok;
  }
  if (fs::exists(dir / "tokenizer.model")) {
    auto tok = std::make_unique<SentencePieceTokenizer>(dir / "tokenizer.model");
    SpecialTokens s = tok->model_specials();
    resolve(*tok, c, dir, s);
    if (c.add_bos) s.add_bos = *c.add_bos;
    if (c.add_eos) s.add_eos = *c.add_eos;
    tok->set_special(s, c.chat_template, c.hash_input);
    return tok;
  }
  fail(dir.string(), ": no tokenizer.json or tokenizer.model");
}

}  // namespace kdae::tok
