#include "io/gguf-tokenizer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <map>
#include <set>
#include <unordered_map>

#include "common/error.h"

namespace kdae::io {
namespace {

using nlohmann::json;

// GGUF token types (llama.cpp's llama_token_type).
constexpr int64_t kTokenNormal = 1, kTokenUnknown = 2, kTokenControl = 3, kTokenUserDefined = 4, kTokenByte = 6;

// The pre-tokenizer splits transformers uses for tokenizer.ggml.pre values; anything else keeps
// GPT-2's built-in ByteLevel regex.
const char* kLlama3Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* kQwen2Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

const char* split_for_pre(const std::string& pre) {
  static const std::set<std::string> llama3 = {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                                               "midm-2.0", "lfm2", "dbrx", "smaug-bpe"};
  static const std::set<std::string> qwen2 = {"qwen2", "deepseek-r1-qwen", "megrez"};
  if (llama3.count(pre)) return kLlama3Split;
  if (qwen2.count(pre)) return kQwen2Split;
  return nullptr;
}

// Code points of a UTF-8 string, paired with their byte offsets; a malformed byte counts as one unit.
std::vector<std::pair<uint32_t, size_t>> code_points(const std::string& s) {
  std::vector<std::pair<uint32_t, size_t>> out;
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    if (i + len > s.size()) len = 1;
    uint32_t cp = len == 1 ? c : c & (0xFF >> (len + 1));
    for (int k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    out.emplace_back(cp, i);
    i += len;
  }
  return out;
}

std::string utf8(uint32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
  return out;
}

// GPT-2's byte -> printable code point table: printable Latin-1 bytes map to themselves, the other
// 68 bytes to 256, 257, ... in byte order.
const std::vector<uint32_t>& byte_alphabet() {
  static const std::vector<uint32_t> table = [] {
    std::vector<uint32_t> t(256);
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      t[b] = printable ? b : next++;
    }
    return t;
  }();
  return table;
}

bool in_byte_alphabet(const std::string& token) {
  static const std::set<uint32_t> alphabet(byte_alphabet().begin(), byte_alphabet().end());
  for (const auto& [cp, at] : code_points(token))
    if (!alphabet.count(cp)) return false;
  return true;
}

std::string byte_level_spelling(const std::string& token) {
  std::string out;
  for (unsigned char b : token) out += utf8(byte_alphabet()[b]);
  return out;
}

json added_token(int64_t id, const std::string& content, bool special) {
  return {{"id", id},          {"content", content}, {"single_word", false}, {"lstrip", false},
          {"rstrip", false},   {"normalized", false}, {"special", special}};
}

// A TemplateProcessing that adds BOS/EOS as the file asks.
json post_processor(const std::vector<std::string>& tokens, int64_t bos, int64_t eos, bool add_bos, bool add_eos) {
  json single = json::array(), pair = json::array(), specials = json::object();
  auto special = [&](int64_t id, int type_id, json& seq) {
    seq.push_back({{"SpecialToken", {{"id", tokens[id]}, {"type_id", type_id}}}});
    specials[tokens[id]] = {{"id", tokens[id]}, {"ids", {id}}, {"tokens", {tokens[id]}}};
  };
  const bool bos_ok = add_bos && bos >= 0, eos_ok = add_eos && eos >= 0;
  if (bos_ok) special(bos, 0, single);
  single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
  if (eos_ok) special(eos, 0, single);
  if (bos_ok) special(bos, 0, pair);
  pair.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
  if (eos_ok) special(eos, 0, pair);
  if (bos_ok) special(bos, 1, pair);
  pair.push_back({{"Sequence", {{"id", "B"}, {"type_id", 1}}}});
  if (eos_ok) special(eos, 1, pair);
  return {{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair}, {"special_tokens", specials}};
}

// Sentencepiece vocabularies store no merges: every split of a token into two vocabulary pieces is a
// merge, ranked by the token's score (best first), then by piece lengths; ties keep vocabulary order.
std::vector<std::pair<std::string, std::string>> merges_from_scores(const std::vector<std::string>& tokens,
                                                                    const std::vector<double>& scores) {
  std::unordered_map<std::string, int64_t> id;
  std::unordered_map<std::string, double> score;
  std::vector<std::string> order;
  for (size_t k = 0; k < tokens.size(); ++k) {
    if (!id.count(tokens[k])) order.push_back(tokens[k]);
    id[tokens[k]] = int64_t(k);
    score[tokens[k]] = scores[k];
  }
  struct Merge {
    std::string l, r;
    double score;
    size_t len_l, len_r;
  };
  std::vector<Merge> merges;
  for (const auto& token : order) {
    const auto cps = code_points(token);
    std::vector<Merge> local;
    for (size_t k = 1; k < cps.size(); ++k) {
      std::string l = token.substr(0, cps[k].second), r = token.substr(cps[k].second);
      if (id.count(l) && id.count(r)) local.push_back({l, r, score[token], k, cps.size() - k});
    }
    std::stable_sort(local.begin(), local.end(), [&](const Merge& a, const Merge& b) {
      return std::make_pair(id[a.l], id[a.r]) < std::make_pair(id[b.l], id[b.r]);
    });
    merges.insert(merges.end(), local.begin(), local.end());
  }
  std::stable_sort(merges.begin(), merges.end(), [](const Merge& a, const Merge& b) {
    return std::make_tuple(a.score, a.len_l, a.len_r) > std::make_tuple(b.score, b.len_l, b.len_r);
  });
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(merges.size());
  for (auto& m : merges) out.emplace_back(std::move(m.l), std::move(m.r));
  return out;
}

}  // namespace

HfTokenizerFiles gguf_tokenizer_to_hf(const GgufFile& file) {
  const std::string& src = file.source;
  auto key = [&](const std::string& k) { return src + ": key " + k; };
  const std::string kind = file.get("tokenizer.ggml.model").as_string(key("tokenizer.ggml.model"));
  std::vector<std::string> tokens;
  for (const auto& v : file.get("tokenizer.ggml.tokens").as_array(key("tokenizer.ggml.tokens")))
    tokens.push_back(v.as_string(key("tokenizer.ggml.tokens")));
  if (tokens.empty()) fail(src, ": tokenizer.ggml.tokens is empty");
  std::vector<int64_t> types(tokens.size(), kTokenNormal);
  if (const GgufValue* t = file.find("tokenizer.ggml.token_type")) {
    const auto& items = t->as_array(key("tokenizer.ggml.token_type"));
    if (items.size() != tokens.size())
      fail(src, ": tokenizer.ggml.token_type has ", items.size(), " entries for ", tokens.size(), " tokens");
    for (size_t k = 0; k < items.size(); ++k) types[k] = items[k].as_int(key("tokenizer.ggml.token_type"));
  }
  auto token_id = [&](const char* name) -> int64_t {
    const GgufValue* v = file.find(std::string("tokenizer.ggml.") + name);
    if (!v) return -1;
    const int64_t id = v->as_int(key(std::string("tokenizer.ggml.") + name));
    if (id < 0 || id >= int64_t(tokens.size())) fail(src, ": tokenizer.ggml.", name, " ", id, " is out of range");
    return id;
  };
  auto flag = [&](const char* name, bool fallback) {
    const GgufValue* v = file.find(std::string("tokenizer.ggml.") + name);
    return v ? v->as_bool(key(std::string("tokenizer.ggml.") + name)) : fallback;
  };
  const int64_t bos = token_id("bos_token_id"), eos = token_id("eos_token_id");
  const int64_t unk = token_id("unknown_token_id"), pad = token_id("padding_token_id");

  json tok;
  tok["version"] = "1.0";
  tok["truncation"] = nullptr;
  tok["padding"] = nullptr;
  json added = json::array();
  json model = {{"type", "BPE"}, {"dropout", nullptr}, {"continuing_subword_prefix", ""}, {"end_of_word_suffix", ""},
                {"ignore_merges", false}};
  json vocab = json::object();
  json merges = json::array();
  bool add_bos;
  if (kind == "gpt2") {
    add_bos = flag("add_bos_token", false);
    for (size_t k = 0; k < tokens.size(); ++k) {
      const bool spelled = in_byte_alphabet(tokens[k]);
      vocab[spelled ? tokens[k] : byte_level_spelling(tokens[k])] = k;
      // A control token outside the byte alphabet is a mislabel in the file; it stays a plain token.
      if (types[k] == kTokenControl && spelled) added.push_back(added_token(int64_t(k), tokens[k], true));
      else if (types[k] == kTokenUserDefined) added.push_back(added_token(int64_t(k), tokens[k], false));
    }
    const GgufValue& m = file.get("tokenizer.ggml.merges");
    for (const auto& v : m.as_array(key("tokenizer.ggml.merges"))) {
      const std::string& s = v.as_string(key("tokenizer.ggml.merges"));
      const auto space = s.find(' ');
      if (space == std::string::npos) fail(src, ": tokenizer.ggml.merges entry '", s, "' has no space");
      merges.push_back({s.substr(0, space), s.substr(space + 1)});
    }
    model["unk_token"] = nullptr;
    model["fuse_unk"] = false;
    model["byte_fallback"] = false;
    tok["normalizer"] = nullptr;
    const GgufValue* pre = file.find("tokenizer.ggml.pre");
    const char* split = pre ? split_for_pre(pre->as_string(key("tokenizer.ggml.pre"))) : nullptr;
    const json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
                             {"use_regex", split == nullptr}};
    if (split) {
      tok["pre_tokenizer"] = {{"type", "Sequence"},
                              {"pretokenizers",
                               {{{"type", "Split"}, {"pattern", {{"Regex", split}}}, {"behavior", "Isolated"},
                                 {"invert", false}},
                                byte_level}}};
    } else {
      tok["pre_tokenizer"] = byte_level;
    }
    tok["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  } else if (kind == "llama") {
    add_bos = flag("add_bos_token", true);
    std::vector<double> scores(tokens.size(), 0.0);
    if (const GgufValue* s = file.find("tokenizer.ggml.scores")) {
      const auto& items = s->as_array(key("tokenizer.ggml.scores"));
      if (items.size() != tokens.size())
        fail(src, ": tokenizer.ggml.scores has ", items.size(), " entries for ", tokens.size(), " tokens");
      for (size_t k = 0; k < items.size(); ++k) scores[k] = items[k].as_double(key("tokenizer.ggml.scores"));
    }
    for (size_t k = 0; k < tokens.size(); ++k) {
      vocab[tokens[k]] = k;
      if (types[k] == kTokenControl || (int64_t(k) == unk && types[k] == kTokenUnknown))
        added.push_back(added_token(int64_t(k), tokens[k], true));
      else if (types[k] == kTokenUserDefined)
        added.push_back(added_token(int64_t(k), tokens[k], false));
    }
    for (auto& [l, r] : merges_from_scores(tokens, scores)) merges.push_back({l, r});
    model["unk_token"] = unk >= 0 ? json(tokens[unk]) : json(nullptr);
    model["fuse_unk"] = true;
    model["byte_fallback"] = true;
    tok["normalizer"] = nullptr;
    tok["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "first"},
                            {"split", false}};
    tok["decoder"] = {{"type", "Sequence"},
                      {"decoders",
                       {{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
                        {{"type", "ByteFallback"}},
                        {{"type", "Fuse"}},
                        {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  } else {
    fail(src, ": tokenizer.ggml.model '", kind, "' is not supported (supported: gpt2, llama)");
  }
  (void)kTokenByte;
  std::sort(added.begin(), added.end(), [](const json& a, const json& b) { return a["id"] < b["id"]; });
  tok["added_tokens"] = added;
  const bool add_eos = flag("add_eos_token", false);
  tok["post_processor"] = post_processor(tokens, bos, eos, add_bos, add_eos);
  model["vocab"] = std::move(vocab);
  model["merges"] = std::move(merges);
  tok["model"] = std::move(model);

  json config = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                 {"add_bos_token", add_bos},
                 {"add_eos_token", add_eos},
                 {"clean_up_tokenization_spaces", false},
                 {"model_max_length", 1000000000000000019ull}};
  if (bos >= 0) config["bos_token"] = tokens[bos];
  if (eos >= 0) config["eos_token"] = tokens[eos];
  if (unk >= 0) config["unk_token"] = tokens[unk];
  if (pad >= 0) config["pad_token"] = tokens[pad];
  HfTokenizerFiles out;
  if (const GgufValue* t = file.find("tokenizer.chat_template")) {
    out.chat_template = t->as_string(key("tokenizer.chat_template"));
    config["chat_template"] = out.chat_template;
  }
  out.tokenizer_json = tok.dump(2, ' ', false, json::error_handler_t::replace);
  out.tokenizer_config_json = config.dump(2, ' ', false, json::error_handler_t::replace);
  return out;
}

std::vector<std::pair<std::string, GgufValue>> hf_tokenizer_to_gguf(const std::string& tokenizer_json,
                                                                    const std::string& tokenizer_config_json,
                                                                    const std::string& source) {
  std::vector<std::pair<std::string, GgufValue>> md;
  json tok, config = json::object();
  try {
    tok = json::parse(tokenizer_json);
    if (!tokenizer_config_json.empty()) config = json::parse(tokenizer_config_json);
  } catch (const json::exception& e) {
    fail(source, ": tokenizer JSON does not parse: ", e.what());
  }
  if (!tok.contains("model") || tok["model"].value("type", "") != "BPE") return md;
  const json& model = tok["model"];
  const bool byte_fallback = model.value("byte_fallback", false);
  std::vector<std::string> tokens;
  for (const auto& [text, id] : model["vocab"].items()) {
    const int64_t k = id.get<int64_t>();
    if (k < 0 || k > 10'000'000) fail(source, ": token id ", k, " is out of range");
    if (size_t(k) >= tokens.size()) tokens.resize(k + 1);
    tokens[k] = text;
  }
  std::map<std::string, bool> added_special;
  for (const auto& a : tok.value("added_tokens", json::array())) {
    const int64_t k = a["id"].get<int64_t>();
    if (k < 0 || k > 10'000'000) fail(source, ": added token id ", k, " is out of range");
    if (size_t(k) >= tokens.size()) tokens.resize(k + 1);
    tokens[k] = a["content"].get<std::string>();
    added_special[tokens[k]] = a.value("special", false);
  }
  std::vector<GgufValue> tv, types;
  for (size_t k = 0; k < tokens.size(); ++k) {
    if (tokens[k].empty()) tokens[k] = "[PAD" + std::to_string(k) + "]";  // a hole in the id space
    tv.push_back(GgufValue::of_string(tokens[k]));
    auto it = added_special.find(tokens[k]);
    int type = kTokenNormal;
    if (it != added_special.end()) type = it->second ? kTokenControl : kTokenUserDefined;
    else if (byte_fallback && tokens[k].size() == 6 && tokens[k].rfind("<0x", 0) == 0) type = kTokenByte;
    types.push_back(GgufValue::of_i32(type));
  }
  md.emplace_back("tokenizer.ggml.model", GgufValue::of_string(byte_fallback ? "llama" : "gpt2"));
  if (!byte_fallback) md.emplace_back("tokenizer.ggml.pre", GgufValue::of_string("default"));
  md.emplace_back("tokenizer.ggml.tokens", GgufValue::of_array(GgufType::STRING, std::move(tv)));
  md.emplace_back("tokenizer.ggml.token_type", GgufValue::of_array(GgufType::I32, std::move(types)));
  std::vector<GgufValue> merges;
  for (const auto& m : model.value("merges", json::array()))
    merges.push_back(GgufValue::of_string(m.is_string() ? m.get<std::string>()
                                                        : m[0].get<std::string>() + " " + m[1].get<std::string>()));
  if (!byte_fallback) md.emplace_back("tokenizer.ggml.merges", GgufValue::of_array(GgufType::STRING, std::move(merges)));
  auto id_of = [&](const char* field) -> int64_t {
    if (!config.contains(field)) return -1;
    const json& v = config[field];
    const std::string text = v.is_string() ? v.get<std::string>() : v.is_object() ? v.value("content", "") : "";
    for (size_t k = 0; k < tokens.size(); ++k)
      if (tokens[k] == text) return int64_t(k);
    return -1;
  };
  const std::pair<const char*, const char*> ids[] = {{"bos_token", "tokenizer.ggml.bos_token_id"},
                                                     {"eos_token", "tokenizer.ggml.eos_token_id"},
                                                     {"unk_token", "tokenizer.ggml.unknown_token_id"},
                                                     {"pad_token", "tokenizer.ggml.padding_token_id"}};
  for (const auto& [field, gguf_key] : ids)
    if (int64_t k = id_of(field); k >= 0) md.emplace_back(gguf_key, GgufValue::of_u32(uint32_t(k)));
  if (config.contains("add_bos_token") && config["add_bos_token"].is_boolean())
    md.emplace_back("tokenizer.ggml.add_bos_token", GgufValue::of_bool(config["add_bos_token"].get<bool>()));
  if (config.contains("chat_template") && config["chat_template"].is_string())
    md.emplace_back("tokenizer.chat_template", GgufValue::of_string(config["chat_template"].get<std::string>()));
  return md;
}

}  // namespace kdae::io
