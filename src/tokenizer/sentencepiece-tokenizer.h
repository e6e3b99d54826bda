// Tokenizer over a sentencepiece tokenizer.model (Llama 2 / Mistral), through libsentencepiece.
#pragma once
#include <filesystem>
#include <memory>

#include "tokenizer/tokenizer.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace kdae::tok {

class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::filesystem::path& model_file);
  ~SentencePieceTokenizer() override;

  Encoding encode_with_offsets(std::string_view text, bool add_special_tokens) const override;
  std::string decode(const std::vector<TokenId>& ids, bool skip_special_tokens) const override;
  int64_t vocab_size() const override;
  std::optional<TokenId> token_to_id(std::string_view token) const override;
  std::string id_to_token(TokenId id) const override;
  bool is_special(TokenId id) const override;
  std::string fingerprint() const override { return fingerprint_; }

  // Sentencepiece's own BOS/EOS/PAD/UNK ids, the defaults before tokenizer_config.json.
  SpecialTokens model_specials() const;
  void set_special(const SpecialTokens& s, const std::string& chat_template, const std::string& config_hash);

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::string model_hash_, fingerprint_;
};

}  // namespace kdae::tok
