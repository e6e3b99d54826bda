#include "tokenizer/tokenizer-json.h"

#include <nlohmann/json.hpp>

#include <cstdio>

#include "common/error.h"
#include "common/hash.h"
#include "tokenizer/utf8.h"

namespace kdae::tok {

using json = nlohmann::json;

// Reads the single-sequence TemplateProcessing ("$A" with special tokens around it), possibly
// inside a Sequence post-processor. ByteLevel post-processors only trim offsets and are ignored.
static void read_post_processor(const json& pp, const std::string& where, bool& has_template,
                                std::vector<TokenId>& prefix, std::vector<TokenId>& suffix) {
  if (pp.is_null()) return;
  const std::string type = pp.value("type", std::string());
  if (type == "Sequence") {
    const json& list = pp.at("processors");
    for (size_t i = 0; i < list.size(); ++i)
      read_post_processor(list[i], str(where, ".processors[", i, "]"), has_template, prefix, suffix);
    return;
  }
  if (type == "ByteLevel") return;
  if (type != "TemplateProcessing") fail(where, ": unsupported post_processor type '", type, "'");
  has_template = true;
  bool after = false;
  for (const json& item : pp.at("single")) {
    if (item.contains("Sequence")) {
      after = true;
      continue;
    }
    const auto name = item.at("SpecialToken").at("id").get<std::string>();
    const json& spec = pp.at("special_tokens").at(name);
    for (const json& id : spec.at("ids")) (after ? suffix : prefix).push_back(id.get<TokenId>());
  }
}

JsonTokenizer::JsonTokenizer(const std::string& text, const std::filesystem::path& path) {
  const std::string where = path.string();
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    fail(where, ": not valid JSON: ", e.what());
  }
  try {
    if (!j.is_object() || !j.contains("model")) fail(where, ": no \"model\" key; is this an HF tokenizer.json?");
    const json& model = j["model"];
    const std::string type = model.value("type", std::string("BPE"));
    if (type != "BPE") fail(where, ": model.type '", type, "' is not supported (only BPE)");
    model_ = std::make_unique<BpeModel>(model, where + ": model");
    normalizer_ = make_normalizer(j.value("normalizer", json()), where + ": normalizer");
    pre_tokenizer_ = make_pre_tokenizer(j.value("pre_tokenizer", json()), where + ": pre_tokenizer");
    decoder_ = make_decoder(j.value("decoder", json()), where + ": decoder");
    read_post_processor(j.value("post_processor", json()), where + ": post_processor", has_template_,
                        template_prefix_, template_suffix_);
    if (j.contains("added_tokens")) {
      const json& list = j["added_tokens"];
      for (size_t i = 0; i < list.size(); ++i) {
        const json& a = list[i];
        AddedToken t;
        t.id = a.at("id").get<TokenId>();
        t.content = a.at("content").get<std::string>();
        t.single_word = a.value("single_word", false);
        t.lstrip = a.value("lstrip", false);
        t.rstrip = a.value("rstrip", false);
        t.special = a.value("special", false);
        t.normalized = a.value("normalized", !t.special);
        if (utf8_valid_prefix(t.content) != t.content.size())
          fail(where, ": added_tokens[", i, "] content is not valid UTF-8");
        (t.normalized && normalizer_ ? normalized_added_ : raw_added_).add(t);
        added_by_id_[t.id] = t;
        added_by_content_[t.content] = t.id;
      }
    }
  } catch (const json::exception& e) {
    fail(where, ": malformed tokenizer.json: ", e.what());
  }
  base_hash_ = fnv1a_hex(text);
  fingerprint_ = base_hash_;
}

void JsonTokenizer::set_special(const SpecialTokens& s, const std::string& chat_template, const std::string& config_hash) {
  special_ = s;
  chat_template_ = chat_template;
  fingerprint_ = fnv1a_hex(base_hash_ + config_hash);
}

void JsonTokenizer::encode_segment(const std::string& s, size_t begin, size_t end, Encoding& enc) const {
  NormalizedText norm = NormalizedText::from_original(s, begin, end);
  if (normalizer_) normalizer_(norm);
  // Normalized added tokens are matched on the normalized text.
  std::vector<AddedMatch> matches;
  normalized_added_.find(norm.text, matches);
  std::vector<BpeToken> bpe;
  const auto run_model = [&](NormalizedText part) {
    if (part.text.empty()) return;
    std::vector<NormalizedText> words;
    words.push_back(std::move(part));
    if (pre_tokenizer_) pre_tokenizer_->apply(words);
    for (const auto& w : words) {
      bpe.clear();
      model_->tokenize(w.text, bpe);
      for (const auto& t : bpe) {
        enc.ids.push_back(t.id);
        enc.offsets.emplace_back(w.original_range(t.begin, t.end));
      }
    }
  };
  size_t at = 0;
  for (const auto& m : matches) {
    if (m.begin > at) run_model(norm.slice(at, m.begin));
    enc.ids.push_back(m.id);
    enc.offsets.emplace_back(norm.original_range(m.begin, m.end));
    at = m.end;
  }
  if (at == 0) run_model(std::move(norm));
  else if (at < norm.text.size()) run_model(norm.slice(at, norm.text.size()));
}

Encoding JsonTokenizer::encode_with_offsets(std::string_view text, bool add_special_tokens) const {
  // Invalid UTF-8 becomes U+FFFD (what Python's errors="replace" hands HF); offsets map back to raw bytes.
  std::vector<std::pair<uint32_t, uint32_t>> origin;
  const bool valid = utf8_valid_prefix(text) == text.size();
  const std::string s = valid ? std::string(text) : utf8_sanitize(text, &origin);

  Encoding enc;
  enc.ids.reserve(s.size() / 3 + 4);
  enc.offsets.reserve(s.size() / 3 + 4);
  std::vector<AddedMatch> matches;
  raw_added_.find(s, matches);
  size_t at = 0;
  for (const auto& m : matches) {
    if (m.begin > at) encode_segment(s, at, m.begin, enc);
    enc.ids.push_back(m.id);
    enc.offsets.emplace_back(m.begin, m.end);
    at = m.end;
  }
  if (at < s.size()) encode_segment(s, at, s.size(), enc);

  if (!valid)
    for (auto& [b, e] : enc.offsets) {
      b = origin[b].first;
      e = origin[e - 1].second;
    }
  if (add_special_tokens) {
    std::vector<TokenId> prefix = template_prefix_, suffix = template_suffix_;
    if (!has_template_) {  // no post-processor: tokenizer_config.json decides
      if (special_.add_bos && special_.bos) prefix = {*special_.bos};
      if (special_.add_eos && special_.eos) suffix = {*special_.eos};
    }
    if (!prefix.empty()) {
      enc.ids.insert(enc.ids.begin(), prefix.begin(), prefix.end());
      enc.offsets.insert(enc.offsets.begin(), prefix.size(), {0, 0});
    }
    enc.ids.insert(enc.ids.end(), suffix.begin(), suffix.end());
    enc.offsets.insert(enc.offsets.end(), suffix.size(), {text.size(), text.size()});
  }
  return enc;
}

std::string JsonTokenizer::decode(const std::vector<TokenId>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (TokenId id : ids) {
    const auto a = added_by_id_.find(id);
    if (a != added_by_id_.end()) {
      if (skip_special_tokens && a->second.special) continue;
      tokens.push_back(a->second.content);
    } else if (const std::string* t = model_->id_to_token(id)) {
      tokens.push_back(*t);
    }  // unknown ids are skipped, as HF does
  }
  if (!decoder_) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  decoder_->chain(tokens);
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

int64_t JsonTokenizer::vocab_size() const {
  int64_t n = model_->size();
  for (const auto& [id, t] : added_by_id_) n = std::max<int64_t>(n, id + 1);
  return n;
}

std::optional<TokenId> JsonTokenizer::token_to_id(std::string_view token) const {
  const auto a = added_by_content_.find(std::string(token));
  if (a != added_by_content_.end()) return a->second;
  return model_->token_to_id(token);
}

std::string JsonTokenizer::id_to_token(TokenId id) const {
  const auto a = added_by_id_.find(id);
  if (a != added_by_id_.end()) return a->second.content;
  const std::string* t = model_->id_to_token(id);
  if (!t) fail("token id ", id, " is outside the vocabulary (size ", vocab_size(), ")");
  return *t;
}

bool JsonTokenizer::is_special(TokenId id) const {
  const auto a = added_by_id_.find(id);
  return a != added_by_id_.end() && a->second.special;
}

}  // namespace kdae::tok
