// Tokenizer over an HF tokenizer.json: added tokens -> normalizer -> pre-tokenizer -> BPE ->
// post-processor, and the decoder chain back. Ids and byte offsets match HF tokenizers.
#pragma once
#include <filesystem>
#include <memory>
#include <unordered_map>

#include "tokenizer/added-vocabulary.h"
#include "tokenizer/bpe-model.h"
#include "tokenizer/decoders.h"
#include "tokenizer/normalizers.h"
#include "tokenizer/pre-tokenizers.h"
#include "tokenizer/tokenizer.h"

namespace kdae::tok {

class JsonTokenizer : public Tokenizer {
 public:
  // Parses tokenizer.json text; `path` is only used in error messages.
  JsonTokenizer(const std::string& json_text, const std::filesystem::path& path);

  Encoding encode_with_offsets(std::string_view text, bool add_special_tokens) const override;
  std::string decode(const std::vector<TokenId>& ids, bool skip_special_tokens) const override;
  int64_t vocab_size() const override;
  std::optional<TokenId> token_to_id(std::string_view token) const override;
  std::string id_to_token(TokenId id) const override;
  bool is_special(TokenId id) const override;
  std::string fingerprint() const override { return fingerprint_; }

  // Called by Tokenizer::load once tokenizer_config.json is read.
  void set_special(const SpecialTokens& s, const std::string& chat_template, const std::string& config_hash);
  // BOS/EOS the post-processor template adds, so load() can report them in special().
  std::optional<TokenId> template_bos() const { return template_prefix_.empty() ? std::nullopt : std::optional(template_prefix_.front()); }
  std::optional<TokenId> template_eos() const { return template_suffix_.empty() ? std::nullopt : std::optional(template_suffix_.back()); }
  bool has_post_processor() const { return has_template_; }

 private:
  void encode_segment(const std::string& s, size_t begin, size_t end, Encoding& enc) const;

  std::unique_ptr<BpeModel> model_;
  Normalizer normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<Decoder> decoder_;
  AddedTokenMatcher raw_added_, normalized_added_;
  std::unordered_map<TokenId, AddedToken> added_by_id_;
  std::unordered_map<std::string, TokenId> added_by_content_;
  bool has_template_ = false;
  std::vector<TokenId> template_prefix_, template_suffix_;  // single-sequence template: prefix A suffix
  std::string fingerprint_, base_hash_;
};

}  // namespace kdae::tok
